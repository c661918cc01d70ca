//! The incept worker: joins a run, trains one data-parallel replica with its peers, and
//! reports heartbeats, step metrics and its result to the coordinator.
//!
//! A library so that the `coordinator` binary also acts as a worker (`coordinator worker`): the
//! local launcher runs that, the same build as the coordinator that starts it.

#![warn(missing_docs)]

mod communicator;
mod session;

pub use session::Credentials;
mod training;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Stack of the runtime's threads, training included: burn modules are moved by value, and a
/// full Inception network's stack frames take a few hundred KiB each (std's 2 MiB default can
/// overflow). Only touched pages cost memory.
const TRAINING_STACK_BYTES: usize = 64 << 20;

/// Where schedulers and launchers put a task's global index, in the order they are read.
const RANK_VARS: [&str; 4] = [
    "SLURM_PROCID",
    "JOB_COMPLETION_INDEX",
    "RANK",
    "OMPI_COMM_WORLD_RANK",
];

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
    /// The run's join token (prefer --token-file or INCEPT_TOKEN: a command line is visible to
    /// every user of the machine).
    #[arg(long, env = "INCEPT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the run's join token: the run folder's `token` (mode 0600), which
    /// `coordinator launch` names. Taken over --token and INCEPT_TOKEN.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Host the ring listener binds; peers connect to it. Default: this machine's address on
    /// the route to the coordinator (127.0.0.1 for a local one).
    #[arg(long)]
    listen_host: Option<String>,
    /// The rank to ask for (given when free). Default: the scheduler's task index, the first of
    /// SLURM_PROCID, JOB_COMPLETION_INDEX (a Kubernetes Indexed Job), RANK,
    /// OMPI_COMM_WORLD_RANK that is set; none: the lowest free rank.
    #[arg(long, value_name = "RANK")]
    rank_hint: Option<u32>,
    /// PEM certificate(s) of the CA that signed the coordinator's `cluster.tls_cert` (for a
    /// self-signed one, the certificate itself): the worker then speaks TLS to an `https://`
    /// coordinator and trusts nothing else.
    #[arg(long, env = "INCEPT_TLS_CA", value_name = "FILE")]
    tls_ca: Option<PathBuf>,
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
            // Its log may be on a full disk: an unwritable stderr must not turn the error into
            // a panic.
            let _ = writeln!(std::io::stderr(), "worker error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let token = join_token(&args)?;
    let listen_host = match &args.listen_host {
        Some(host) => host.clone(),
        None => address_towards(&args.coordinator)?.to_string(),
    };
    let mut rank_hint = match args.rank_hint {
        Some(rank) => Some(rank),
        None => rank_hint_from(|var| std::env::var(var).ok())?,
    };
    let tls = session::tls_config(&args.coordinator, args.tls_ca.as_deref())?;
    let mut session =
        session::Session::connect(&args.coordinator, &token, tls, args.connect_attempts).await?;
    // Set once a generation this worker trained in ended: join the next one by then.
    let mut rejoin_by = None;
    loop {
        // A fresh listener each generation: the last one's ring may still hold the old port.
        let listener = TcpListener::bind((listen_host.as_str(), 0))
            .map_err(|e| anyhow::anyhow!("binding the ring listener on {listen_host}: {e}"))?;
        let ring_addr = listener.local_addr()?;
        let assignment = session
            .join(
                ring_addr,
                communicator::nccl_id_for_join(),
                rank_hint,
                rejoin_by,
            )
            .await?;
        tracing::info!(
            run = %assignment.run_id,
            generation = assignment.generation,
            rank = assignment.rank,
            world_size = assignment.world_size,
            "joined"
        );
        // Asking for the same rank again keeps rank 0 (which writes the checkpoints) in place.
        rank_hint = Some(assignment.rank);
        match session.train(assignment, listener).await? {
            session::Ended::Finished => return Ok(()),
            session::Ended::Rejoin { reason, within } => {
                tracing::warn!(%reason, within_s = within.as_secs(), "joining the run again");
                rejoin_by = Some(std::time::Instant::now() + within);
            }
        }
    }
}

/// The join token: from `--token-file`, else `--token` / `INCEPT_TOKEN`.
fn join_token(args: &WorkerArgs) -> anyhow::Result<String> {
    match (&args.token_file, &args.token) {
        (Some(path), _) => read_token_file(path),
        (None, Some(token)) => Ok(token.clone()),
        (None, None) => anyhow::bail!(
            "no join token: pass --token-file RUN_DIR/token (the path `coordinator launch` \
             prints) or set INCEPT_TOKEN"
        ),
    }
}

/// A join token kept in a file (the run folder's `token`, a Kubernetes Secret): its one line,
/// which must be printable ASCII without spaces to travel in a gRPC header.
pub fn read_token_file(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading the token file {}: {e}", path.display()))?;
    let token = text.trim();
    anyhow::ensure!(
        !token.is_empty(),
        "the token file {} is empty",
        path.display()
    );
    anyhow::ensure!(
        token.chars().all(|c| c.is_ascii_graphic()),
        "the token file {} holds spaces or characters a gRPC header cannot carry (use hex, \
         e.g. `openssl rand -hex 32`)",
        path.display()
    );
    Ok(token.to_string())
}

/// The scheduler's task index: the first of [`RANK_VARS`] that `lookup` finds.
fn rank_hint_from(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<u32>> {
    let Some((var, value)) = RANK_VARS
        .iter()
        .find_map(|&var| lookup(var).map(|value| (var, value)))
    else {
        return Ok(None);
    };
    value
        .trim()
        .parse()
        .map(Some)
        .map_err(|_| anyhow::anyhow!("{var}={value:?} is not a rank (a task index like 0)"))
}

/// This machine's address on the route to the coordinator at `url`: where its peers, which
/// reach the coordinator the same way, can reach this worker. A UDP socket is connected to
/// learn it; nothing is sent.
fn address_towards(url: &str) -> anyhow::Result<IpAddr> {
    let authority = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default();
    let coordinator = authority
        .to_socket_addrs()
        .map_err(|e| anyhow::anyhow!("resolving the coordinator address {authority:?}: {e}"))?
        .next()
        .ok_or_else(|| {
            anyhow::anyhow!("the coordinator address {authority:?} resolves to nothing")
        })?;
    let unspecified: IpAddr = if coordinator.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let socket = UdpSocket::bind((unspecified, 0))?;
    socket
        .connect(coordinator)
        .map_err(|e| anyhow::anyhow!("no route to the coordinator at {coordinator}: {e}"))?;
    Ok(socket.local_addr()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_coordinator_means_a_loopback_listener() {
        let ip = address_towards("http://127.0.0.1:50051").unwrap();
        assert!(ip.is_loopback(), "{ip}");
        assert!(address_towards("http://no-such-host.invalid:1").is_err());
    }

    #[test]
    fn the_rank_hint_comes_from_the_first_scheduler_variable_set() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |var: &str| {
                pairs
                    .iter()
                    .find(|(name, _)| *name == var)
                    .map(|(_, value)| value.to_string())
            }
        };
        assert_eq!(rank_hint_from(env(&[])).unwrap(), None);
        assert_eq!(
            rank_hint_from(env(&[("RANK", "5"), ("JOB_COMPLETION_INDEX", "3")])).unwrap(),
            Some(3)
        );
        assert_eq!(
            rank_hint_from(env(&[("SLURM_PROCID", "7"), ("RANK", "5")])).unwrap(),
            Some(7)
        );
        let err = rank_hint_from(env(&[("SLURM_PROCID", "x")])).unwrap_err();
        assert!(err.to_string().contains("SLURM_PROCID=\"x\""), "{err}");
    }

    #[test]
    fn the_token_file_wins_and_an_empty_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "abc123\n").unwrap();
        let mut args = WorkerArgs::parse_from(["worker", "--coordinator", "http://127.0.0.1:1"]);
        args.token = Some("from-env".into());
        assert_eq!(join_token(&args).unwrap(), "from-env");
        args.token_file = Some(file.clone());
        assert_eq!(join_token(&args).unwrap(), "abc123");
        std::fs::write(&file, "\n").unwrap();
        assert!(
            join_token(&args)
                .unwrap_err()
                .to_string()
                .contains("is empty")
        );
        std::fs::write(&file, "two words\n").unwrap();
        assert!(
            join_token(&args)
                .unwrap_err()
                .to_string()
                .contains("gRPC header")
        );
        args.token_file = None;
        args.token = None;
        assert!(
            join_token(&args)
                .unwrap_err()
                .to_string()
                .contains("--token-file")
        );
    }
}
