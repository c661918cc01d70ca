//! The incept worker: joins a run, trains one data-parallel replica with its peers, and
//! reports heartbeats, step metrics and its result to the coordinator.
//!
//! A library so that the `coordinator` binary also acts as a worker (`coordinator worker`): the
//! local launcher runs that, the same build as the coordinator that starts it.

#![warn(missing_docs)]

mod communicator;
mod session;
mod training;

use std::net::TcpListener;
use std::process::ExitCode;

use clap::Parser;

/// Stack of the runtime's threads, training included: burn modules are moved by value, and a
/// full Inception network's stack frames take a few hundred KiB each (std's 2 MiB default can
/// overflow). Only touched pages cost memory.
const TRAINING_STACK_BYTES: usize = 64 << 20;

/// Command line of a worker.
#[derive(Parser, Debug)]
#[command(
    version,
    about = "Join an incept run and train one data-parallel replica"
)]
pub struct WorkerArgs {
    /// Coordinator gRPC address, e.g. http://10.0.0.1:50051.
    #[arg(long, env = "INCEPT_COORDINATOR")]
    coordinator: String,
    /// The run's join token, printed by `coordinator launch`.
    #[arg(long, env = "INCEPT_TOKEN", hide_env_values = true)]
    token: String,
    /// Host the ring listener binds; peers connect to it.
    #[arg(long, default_value = "127.0.0.1")]
    listen_host: String,
    /// Attempts to reach the coordinator before giving up.
    #[arg(long, default_value_t = 8)]
    connect_attempts: u32,
}

/// Runs a worker process to completion: sets up logging, joins, trains, reports.
pub fn main_with(args: WorkerArgs) -> ExitCode {
    incept_common::logging::init("info");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_stack_size(TRAINING_STACK_BYTES)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("worker error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind((args.listen_host.as_str(), 0))
        .map_err(|e| anyhow::anyhow!("binding the ring listener on {}: {e}", args.listen_host))?;
    let ring_addr = listener.local_addr()?;
    let mut session =
        session::Session::connect(&args.coordinator, &args.token, args.connect_attempts).await?;
    let assignment = session
        .join(ring_addr, communicator::nccl_id_for_join())
        .await?;
    tracing::info!(
        run = %assignment.run_id,
        rank = assignment.rank,
        world_size = assignment.world_size,
        "joined"
    );
    session.train(assignment, listener).await
}
