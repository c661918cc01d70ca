//! `coordinator launch`: creates the run, serves the gRPC API, starts (or waits for) workers,
//! and follows the run to its end, recording everything in the run database.
//!
//! [`prepare`] turns an experiment file or a run id into a run ready to start, [`monitor`]
//! follows its events and workers, and [`report`] records and prints how it ended.

mod disk;
mod dying;
mod evaluate;
mod monitor;
mod prepare;
mod regroup;
mod report;
mod signals;
mod straggler;
mod trace;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use incept_common::config::{Experiment, Launcher};
use incept_common::data::ShardLayout;
use incept_common::fsutil::write_atomic;
use incept_common::proto::EvaluationReport;
use tokio::sync::mpsc;

use crate::dashboard;
use crate::launcher::{LocalWorkers, WorkerCommand};
use crate::rendezvous::{Rendezvous, new_key};
use crate::service::{self, RunContext};
use crate::store::{Store, hostname};
use crate::tensorboard::EventWriter;

pub(crate) use self::dying::DyingAlert;
use self::evaluate::prepare_eval;
pub use self::evaluate::{EvalRequest, Weights};
use self::monitor::Monitor;
use self::prepare::{
    Checkpoint, Prepared, Resume, data_plan, newest_verified_checkpoint, prepare_continue,
    prepare_new, prepare_resume, run_exists,
};
use self::report::report;
pub(crate) use self::signals::Signals;
pub use self::trace::TRACE_FILE;
use self::trace::TraceFile;

/// Name of the run database inside the state directory.
pub const DATABASE: &str = "incept.db";
/// The run's join token (mode 0600), inside its run folder.
const TOKEN: &str = "token";
/// The address the run's coordinator listened on (inside its run folder): a resumed run with
/// an ephemeral `cluster.bind` port listens there again, where its workers knock.
const ADDRESS: &str = "coordinator.addr";
/// The folder of a run's checkpoints, inside its run folder.
pub(super) const CHECKPOINTS: &str = "checkpoints";

/// How a run ended.
#[derive(Debug)]
enum Outcome {
    Succeeded(EvaluationReport),
    Failed(String),
    /// Stopped by a signal to the coordinator (Ctrl-C, or a scheduler's SIGTERM or SIGHUP).
    Interrupted(signals::Signal),
    /// The run database could not be written (a full disk, most often): re-forming the group
    /// would not help.
    Unrecorded(String),
    /// A re-forming group did not fill within `cluster.rejoin_timeout_s`; this many workers
    /// joined (at least `cluster.min_workers`): the run goes on with them.
    Shrink(usize),
}

/// What `launch` starts.
pub enum Start<'a> {
    /// A new run of an experiment file, with `--set` overrides; with `run_id`, that run is
    /// continued if the state directory holds it.
    New {
        experiment: &'a Path,
        overrides: &'a [String],
        run_id: Option<&'a str>,
    },
    /// A stopped run, continued from its latest valid committed checkpoint.
    Resume { run_id: &'a str },
    /// An evaluation of a run's checkpoint or a weights file (`coordinator eval`).
    Eval(&'a EvalRequest<'a>),
}

/// Starts (or resumes) a run, follows it to completion and returns the process exit code.
/// Workers join with `token` (default: a new random one).
///
/// A run is a sequence of generations: when one fails, the group re-forms from the newest
/// checkpoint that verifies, up to `cluster.max_restarts` times: the local launcher restarts its
/// workers (as torchrun restarts its worker group); external ones that survive join the next
/// generation by themselves, and a lost one is replaced by running `worker` again, or, after
/// `cluster.rejoin_timeout_s`, the run goes on without it down to `cluster.min_workers` (as
/// Horovod Elastic does).
pub async fn launch(
    start: Start<'_>,
    state_dir: &Path,
    token: Option<String>,
) -> anyhow::Result<ExitCode> {
    let Prepared {
        mut store,
        exp,
        run_id,
        run_dir,
        resolved,
        resume_from,
        layout,
        evaluation,
    } = match start {
        Start::New {
            run_id: Some(run_id),
            ..
        } if run_exists(state_dir, run_id)? => match prepare_continue(run_id, state_dir)? {
            Some(prepared) => prepared,
            None => return Ok(ExitCode::SUCCESS),
        },
        Start::New {
            experiment,
            overrides,
            run_id,
        } => prepare_new(experiment, overrides, run_id, state_dir)?,
        Start::Resume { run_id } => prepare_resume(run_id, state_dir, Checkpoint::Required)?,
        Start::Eval(request) => prepare_eval(request, state_dir)?,
    };
    let worker_bin = match exp.cluster.launcher {
        Launcher::Local => Some(WorkerCommand::locate()?),
        Launcher::External => None,
    };
    // A resumed run keeps its token: its workers, cut off from the coordinator, join it again.
    let token = token
        .or_else(|| existing_token(&run_dir))
        .unwrap_or_else(new_key);
    write_atomic(&run_dir.join(TOKEN), token.as_bytes(), 0o600)?;
    if let Some(protocol) = &evaluation {
        let message = format!(
            "evaluating the {} with the {} protocol",
            protocol.weights, protocol.crops
        );
        store.event(&run_id, "info", &message)?;
        println!("{message}");
    } else if let Some(Resume { step, path, .. }) = &resume_from {
        let message = format!("resuming from step {step} ({})", path.display());
        store.event(&run_id, "info", &message)?;
        println!("{message}");
    }

    let tls = crate::tls::server_config(&exp.cluster)?;
    let listener = bind(&exp.cluster.bind, &run_dir)?;
    let generation = Generation {
        run_id: &run_id,
        run_dir: &run_dir,
        listener: &listener,
        tls: tls.as_ref(),
        layout: &layout,
        token: &token,
        worker_bin: worker_bin.as_ref(),
        evaluation: evaluation.is_some(),
    };
    let mut files = RunFiles {
        tensorboard: match EventWriter::create(&run_dir) {
            Ok(events) => Some(events),
            Err(err) => {
                eprintln!("warning: no TensorBoard events for this run: {err}");
                None
            }
        },
        trace: TraceFile::new(&run_dir, exp.train.trace_steps),
    };
    if !exp.cluster.dashboard_bind.is_empty() {
        let url = dashboard::start(state_dir, &exp.cluster.dashboard_bind)
            .await
            .context("cluster.dashboard_bind")?;
        println!("dashboard: {url}");
    }
    let mut signals = Signals::install().context("installing the signal handlers")?;
    let started = Instant::now();
    let mut plan = Plan {
        number: 0,
        exp: exp.clone(),
        resolved: resolved.clone(),
        resume_from,
        may_regroup: exp.cluster.max_restarts > 0,
    };
    let mut causes = Vec::new();
    let (outcome, final_loss) = loop {
        let (outcome, final_loss) = generation
            .run(&mut store, &plan, &mut signals, &mut files)
            .await?;
        match outcome {
            // Another generation would fill the same disk: stop, saying so.
            Outcome::Failed(cause) if disk::mentions_full(&cause) => {
                break (
                    Outcome::Unrecorded(disk::explain(&run_dir, &cause)),
                    final_loss,
                );
            }
            Outcome::Failed(cause) if plan.may_regroup => {
                // An evaluation starts again from the weights it evaluates.
                if evaluation.is_none() {
                    plan.resume_from = newest_verified_checkpoint(&store, &run_id, &run_dir)?;
                }
                let from = plan.resume_from.as_ref().map_or(0, |r| r.step);
                causes.push(cause);
                let message = format!(
                    "generation {} failed: {}\nthe group re-forms from step {from} as generation \
                     {} (restart {} of cluster.max_restarts = {})",
                    plan.number,
                    causes[causes.len() - 1],
                    plan.number + 1,
                    causes.len(),
                    exp.cluster.max_restarts
                );
                eprintln!("{message}");
                store.event(&run_id, "error", &message)?;
                plan.number += 1;
                plan.may_regroup = causes.len() < exp.cluster.max_restarts;
            }
            Outcome::Shrink(workers) => {
                let (smaller, change) = regroup::shrink(&exp, workers);
                let message = format!(
                    "generation {}: {workers} of {} workers joined within {} s \
                     (cluster.rejoin_timeout_s); generation {} goes on with them: {change}",
                    plan.number,
                    plan.exp.cluster.world_size,
                    exp.cluster.rejoin_timeout_s,
                    plan.number + 1
                );
                eprintln!("{message}");
                store.event(&run_id, "warn", &message)?;
                store.forget_workers_from(&run_id, workers)?;
                plan.resolved = smaller.to_toml();
                plan.exp = smaller;
                plan.number += 1;
            }
            Outcome::Failed(cause) if !causes.is_empty() => {
                let earlier: Vec<String> = causes
                    .iter()
                    .enumerate()
                    .map(|(n, cause)| format!("  generation {n}: {cause}"))
                    .collect();
                let message = format!(
                    "{cause}\n(after {} restarts; earlier generations failed with:\n{})",
                    causes.len(),
                    earlier.join("\n")
                );
                break (Outcome::Failed(message), final_loss);
            }
            outcome => break (outcome, final_loss),
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    let ended = report::Ended {
        run_id: &run_id,
        run_dir: &run_dir,
        exp: &exp,
        evaluation: evaluation.as_ref(),
        final_loss,
        elapsed,
    };
    report(&store, &ended, outcome)
}

/// What every generation of a run shares.
struct Generation<'a> {
    run_id: &'a str,
    run_dir: &'a Path,
    /// The coordinator's gRPC listener, bound once: every generation serves on the same
    /// address, where external workers join again.
    listener: &'a std::net::TcpListener,
    /// The control plane's TLS identity (`cluster.tls_cert`), if any.
    tls: Option<&'a tonic::transport::ServerTlsConfig>,
    layout: &'a ShardLayout,
    token: &'a str,
    /// The worker program, when this coordinator starts the workers itself.
    worker_bin: Option<&'a WorkerCommand>,
    /// Whether the run is an evaluation (`coordinator eval`): no steps, only the evaluation.
    evaluation: bool,
}

/// What one generation starts from.
struct Plan {
    /// 0 at launch, one more each time the group re-forms.
    number: u32,
    /// The experiment as this generation trains it (a group continuing smaller changes it).
    exp: Experiment,
    /// `exp` as TOML, what the workers receive.
    resolved: String,
    /// The checkpoint it continues from.
    resume_from: Option<Resume>,
    /// Whether a failure re-forms the group (restarts are left) rather than failing the run.
    may_regroup: bool,
}

/// What a run writes beside its database, kept across its generations; a file that cannot be
/// written is given up with a warning (the database keeps everything).
pub(super) struct RunFiles {
    tensorboard: Option<EventWriter>,
    trace: Option<TraceFile>,
}

impl Generation<'_> {
    /// Serves the gRPC API, starts (or waits for) the workers, follows them from the plan's
    /// checkpoint to the outcome, and stops them (or, when the group re-forms, tells them to
    /// join again); returns the outcome and the last training loss.
    async fn run(
        &self,
        store: &mut Store,
        plan: &Plan,
        signals: &mut Signals,
        files: &mut RunFiles,
    ) -> anyhow::Result<(Outcome, f64)> {
        let exp = &plan.exp;
        let resume_from = plan.resume_from.as_ref();
        // A clone of the one socket: the server closes its copy when the generation ends.
        let listener = tokio::net::TcpListener::from_std(self.listener.try_clone()?)?;
        let addr: SocketAddr = listener.local_addr()?;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{addr}");
        if plan.number == 0 && self.tls.is_none() && !addr.ip().is_loopback() {
            eprintln!(
                "warning: the coordinator listens on {addr} without TLS: anyone who can reach it \
                 sees the join token of the workers that connect (set cluster.tls_cert and \
                 tls_key, bind 127.0.0.1, or keep the network private)"
            );
        }
        let (events, events_rx) = mpsc::unbounded_channel();
        let ctx = Arc::new(RunContext {
            run_id: self.run_id.to_string(),
            generation: plan.number,
            experiment_toml: plan.resolved.clone(),
            world_size: exp.cluster.world_size as u32,
            total_steps: exp.total_steps(),
            heartbeat_interval_ms: exp.cluster.heartbeat_interval_ms as u32,
            heartbeat_timeout_s: u32::try_from(exp.cluster.heartbeat_timeout_s).unwrap_or(u32::MAX),
            reconnect_timeout_s: u32::try_from(exp.cluster.reconnect_timeout_s).unwrap_or(u32::MAX),
            checkpoint_dir: self.run_dir.join(CHECKPOINTS).display().to_string(),
            resume_from: resume_from
                .map(|r| r.path.display().to_string())
                .unwrap_or_default(),
            data_plan: data_plan(self.layout, resume_from),
            join_timeout: Duration::from_secs(exp.cluster.join_timeout_s),
            rendezvous: Rendezvous::new(exp.cluster.world_size),
            events,
            stopping: AtomicBool::new(false),
            regroup: AtomicBool::new(false),
            checkpoint_now: AtomicBool::new(false),
        });
        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        // The standard gRPC health service, without the token: what a Kubernetes probe asks.
        let (_health, health_service) = tonic_health::server::health_reporter();
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = self.tls {
            builder = builder.tls_config(tls.clone())?;
        }
        let server = tokio::spawn(
            builder
                .add_service(health_service)
                .add_service(service::server(ctx.clone(), self.token.to_string()))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async {
                        let _ = shutdown_rx.await;
                    },
                ),
        );

        if plan.number == 0 {
            println!(
                "run {}: {} × {} ({} steps, global batch {}), coordinator at {url}",
                self.run_id,
                exp.cluster.world_size,
                exp.model.arch,
                exp.total_steps(),
                exp.global_batch()
            );
            println!("state: {}", self.run_dir.display());
        }
        let mut workers = match self.worker_bin {
            Some(bin) => Some(LocalWorkers::spawn(
                bin,
                &exp.cluster,
                &url,
                self.token,
                self.run_dir,
            )?),
            None => {
                // Listening on every interface: workers elsewhere reach it by this host's name.
                let reachable = if addr.ip().is_unspecified() {
                    format!("{scheme}://{}:{}", hostname(), addr.port())
                } else {
                    url.clone()
                };
                let trust = match &exp.cluster.tls_cert {
                    Some(cert) => format!(" --tls-ca {}", cert.display()),
                    None => String::new(),
                };
                let command = format!(
                    "worker --coordinator {reachable} --token-file {}{trust}",
                    self.run_dir.join(TOKEN).display()
                );
                if plan.number == 0 {
                    println!(
                        "waiting for {} workers; start each with (the token file is the run \
                         folder's: on a shared filesystem, or copied with mode 0600):\n  {command}",
                        exp.cluster.world_size,
                    );
                } else {
                    println!(
                        "generation {}: waiting for {} workers; the survivors join again by \
                         themselves, replace a lost one with:\n  {command}",
                        plan.number, exp.cluster.world_size,
                    );
                }
                None
            }
        };

        let mut monitor = Monitor::new(exp, &ctx, store, workers.as_mut(), self.evaluation, files);
        let outcome = monitor.follow(events_rx, signals).await;
        let final_loss = monitor.last_loss;
        let still_training = monitor.still_training();
        drop(monitor);

        let regroup = match outcome {
            Outcome::Failed(_) => plan.may_regroup,
            Outcome::Shrink(_) => true,
            Outcome::Succeeded(_) | Outcome::Interrupted(_) | Outcome::Unrecorded(_) => false,
        };
        ctx.regroup.store(regroup, Ordering::Relaxed);
        ctx.stopping.store(true, Ordering::Relaxed);
        // Workers still held at the rendezvous hear it now: join again, or the run has ended.
        ctx.rendezvous.close(if regroup {
            tonic::Status::unavailable(format!(
                "generation {} ended before it started: the group re-forms; join again",
                plan.number
            ))
        } else {
            tonic::Status::aborted(format!("run {} has ended", self.run_id))
        });
        match workers.as_mut() {
            Some(workers) => match outcome {
                Outcome::Succeeded(_) => workers.stop(Duration::from_secs(30)).await,
                _ => workers.kill().await,
            },
            // External workers still training learn of the stop (or regroup) from their next
            // heartbeat's answer: keep answering for three beats before the server goes.
            None if !matches!(outcome, Outcome::Succeeded(_)) && still_training > 0 => {
                let beats = 3 * Duration::from_millis(exp.cluster.heartbeat_interval_ms);
                tokio::time::sleep(beats.min(Duration::from_secs(10))).await;
            }
            None => {}
        }
        let _ = shutdown.send(());
        let _ = server.await;
        Ok((outcome, final_loss))
    }
}

/// Binds the control plane's socket: `cluster.bind`, except that with port 0 a run that has
/// listened before takes its previous address again when it is free, so workers cut off from
/// a coordinator that died find the resumed one. The address is recorded for the next time.
fn bind(configured: &str, run_dir: &Path) -> anyhow::Result<std::net::TcpListener> {
    let wanted: SocketAddr = configured
        .parse()
        .with_context(|| format!("cluster.bind = {configured} is not an address"))?;
    let previous = std::fs::read_to_string(run_dir.join(ADDRESS))
        .ok()
        .and_then(|text| text.trim().parse::<SocketAddr>().ok())
        .filter(|previous| wanted.port() == 0 && previous.ip() == wanted.ip());
    let listener = match previous.and_then(|addr| std::net::TcpListener::bind(addr).ok()) {
        Some(listener) => listener,
        None => std::net::TcpListener::bind(wanted)
            .with_context(|| format!("binding cluster.bind = {configured}"))?,
    };
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?.to_string();
    write_atomic(&run_dir.join(ADDRESS), bound.as_bytes(), 0o644)?;
    Ok(listener)
}

/// The token a run was started with (its run folder's `token`), if it has one.
fn existing_token(run_dir: &Path) -> Option<String> {
    let path = run_dir.join(TOKEN);
    path.is_file()
        .then(|| incept_worker::read_token_file(&path).ok())
        .flatten()
}

/// Default state directory.
pub fn default_state_dir() -> PathBuf {
    PathBuf::from("runs")
}
