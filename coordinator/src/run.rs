//! `coordinator launch`: creates the run, serves the gRPC API, starts (or waits for) workers,
//! and follows the run to its end, recording everything in the run database.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use incept_common::config::{self, Experiment, Launcher};
use incept_common::data::{DataPosition, ShardLayout, source};
use incept_common::fsutil::write_atomic;
use incept_common::proto::{DataPlan, EvaluationReport, WorkerResult};
use incept_common::train::checkpoint;
use tokio::sync::mpsc::{self, UnboundedReceiver};

use crate::launcher::{self, LocalWorkers, WorkerCommand};
use crate::progress::{Progress, human};
use crate::rendezvous::Rendezvous;
use crate::service::{self, Event, RunContext};
use crate::store::{RunStatus, Store, rates};

/// Name of the run database inside the state directory.
pub const DATABASE: &str = "incept.db";

/// How a run ended.
#[derive(Debug)]
enum Outcome {
    Succeeded(EvaluationReport),
    Failed(String),
    Interrupted,
}

/// What `launch` starts.
pub enum Start<'a> {
    /// A new run of an experiment file, with `--set` overrides.
    New {
        experiment: &'a Path,
        overrides: &'a [String],
    },
    /// A stopped run, continued from its latest valid committed checkpoint.
    Resume { run_id: &'a str },
}

/// Where a resumed run continues.
struct Resume {
    step: u64,
    path: PathBuf,
    position: DataPosition,
}

/// A run ready to start: its experiment, identity and starting point.
struct Prepared {
    store: Store,
    exp: Experiment,
    run_id: String,
    run_dir: PathBuf,
    resolved: String,
    /// Checkpoint to continue from, if resuming.
    resume_from: Option<Resume>,
    /// How the training split is sharded, for the epoch plan.
    layout: ShardLayout,
}

/// Starts (or resumes) a run, follows it to completion and returns the process exit code.
pub async fn launch(start: Start<'_>, state_dir: &Path) -> anyhow::Result<ExitCode> {
    let Prepared {
        mut store,
        exp,
        run_id,
        run_dir,
        resolved,
        resume_from,
        layout,
    } = match start {
        Start::New {
            experiment,
            overrides,
        } => prepare_new(experiment, overrides, state_dir)?,
        Start::Resume { run_id } => prepare_resume(run_id, state_dir)?,
    };
    let worker_bin = match exp.cluster.launcher {
        Launcher::Local => Some(WorkerCommand::locate()?),
        Launcher::External => None,
    };
    let token = new_token();
    write_atomic(&run_dir.join("token"), token.as_bytes(), 0o600)?;
    let total_steps = exp.total_steps();
    if let Some(Resume { step, path, .. }) = &resume_from {
        store.reopen_run(&run_id)?;
        let message = format!("resuming from step {step} ({})", path.display());
        store.event(&run_id, "info", &message)?;
        println!("{message}");
    }

    let listener = tokio::net::TcpListener::bind(&exp.cluster.bind)
        .await
        .with_context(|| format!("binding cluster.bind = {}", exp.cluster.bind))?;
    let addr: SocketAddr = listener.local_addr()?;
    let url = format!("http://{addr}");
    let (events, events_rx) = mpsc::unbounded_channel();
    let ctx = Arc::new(RunContext {
        run_id: run_id.clone(),
        experiment_toml: resolved,
        world_size: exp.cluster.world_size as u32,
        total_steps,
        heartbeat_interval_ms: exp.cluster.heartbeat_interval_ms as u32,
        checkpoint_dir: run_dir.join("checkpoints").display().to_string(),
        resume_from: resume_from
            .as_ref()
            .map(|r| r.path.display().to_string())
            .unwrap_or_default(),
        data_plan: data_plan(&layout, resume_from.as_ref()),
        join_timeout: Duration::from_secs(exp.cluster.join_timeout_s),
        rendezvous: Rendezvous::new(exp.cluster.world_size),
        events,
        stopping: AtomicBool::new(false),
    });
    let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service::server(ctx.clone(), token.clone()))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async {
                    let _ = shutdown_rx.await;
                },
            ),
    );

    println!(
        "run {run_id}: {} × {} ({} steps, global batch {}), coordinator at {url}",
        exp.cluster.world_size,
        exp.model.arch,
        total_steps,
        exp.global_batch()
    );
    println!("state: {}", run_dir.display());
    let mut workers = match worker_bin {
        Some(bin) => Some(LocalWorkers::spawn(
            &bin,
            &exp.cluster,
            &url,
            &token,
            &run_dir,
        )?),
        None => {
            println!(
                "waiting for {} workers; start each with:\n  INCEPT_TOKEN={token} worker --coordinator {url}",
                exp.cluster.world_size
            );
            None
        }
    };

    let started = Instant::now();
    let mut monitor = Monitor::new(&exp, &ctx, &mut store, workers.as_mut());
    let outcome = monitor.follow(events_rx).await;
    let final_loss = monitor.last_loss;
    drop(monitor);

    ctx.stopping.store(true, Ordering::Relaxed);
    if let Some(workers) = workers.as_mut() {
        match outcome {
            Outcome::Succeeded(_) => workers.stop(Duration::from_secs(30)).await,
            _ => workers.kill().await,
        }
    }
    let _ = shutdown.send(());
    let _ = server.await;
    let elapsed = started.elapsed().as_secs_f64();
    report(
        &store, &run_id, &run_dir, &exp, outcome, final_loss, elapsed,
    )
}

/// Validates a new experiment and creates its run: folder, resolved config, database row.
fn prepare_new(
    experiment: &Path,
    overrides: &[String],
    state_dir: &Path,
) -> anyhow::Result<Prepared> {
    let mut exp = config::load(experiment, overrides)?;
    let origin = experiment.display().to_string();
    if exp.cluster.launcher == Launcher::Local {
        launcher::check_local_devices(&exp.cluster)?;
    }
    check_data_paths(&exp, &origin)?;
    let layout = open_dataset(&mut exp, &origin)?;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating the state directory {}", state_dir.display()))?;
    let store = Store::open(&state_dir.join(DATABASE))?;
    let run_id = new_run_id(&exp.run.name);
    let run_dir = run_dir(state_dir, &run_id)?;
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("creating the run directory {}", run_dir.display()))?;
    let resolved = exp.to_toml();
    write_atomic(&run_dir.join("config.toml"), resolved.as_bytes(), 0o644)?;
    store.create_run(
        &run_id,
        &exp.run.name,
        &resolved,
        exp.cluster.world_size,
        exp.total_steps(),
    )?;
    Ok(Prepared {
        store,
        exp,
        run_id,
        run_dir,
        resolved,
        resume_from: None,
        layout,
    })
}

/// Loads a stopped run and picks the newest committed checkpoint that verifies.
fn prepare_resume(run_id: &str, state_dir: &Path) -> anyhow::Result<Prepared> {
    let database = state_dir.join(DATABASE);
    if !database.is_file() {
        bail!("no run database at {}", database.display());
    }
    let store = Store::open(&database)?;
    let Some((resolved, status)) = store
        .run_config(run_id)
        .with_context(|| format!("reading {}", database.display()))?
    else {
        bail!(
            "no run {run_id:?} in {}",
            state_dir.join(DATABASE).display()
        );
    };
    if status == RunStatus::Succeeded {
        bail!("run {run_id} already succeeded; nothing to resume");
    }
    let exp = Experiment::from_toml(&resolved)?;
    let origin = format!("run {run_id}");
    check_data_paths(&exp, &origin)?;
    let mut reopened = exp.clone();
    let layout = open_dataset(&mut reopened, &origin)?;
    if reopened.data != exp.data {
        bail!(
            "the dataset of {origin} changed since it started: {} training and {} validation \
             images now, {} and {} then",
            reopened.data.train_samples,
            reopened.data.val_samples,
            exp.data.train_samples,
            exp.data.val_samples
        );
    }
    let mut resume_from = None;
    for (step, path) in store.checkpoints(run_id)? {
        match checkpoint::verify_position(&path) {
            Ok((found, position)) if found == step => {
                resume_from = Some(Resume {
                    step,
                    path,
                    position,
                });
                break;
            }
            Ok((found, _)) => tracing::warn!(
                step,
                found,
                "checkpoint manifest names another step; skipped"
            ),
            Err(err) => {
                let message = format!("checkpoint of step {step} is unusable: {err}");
                eprintln!("{message}");
                store.event(run_id, "warn", &message)?;
            }
        }
    }
    let Some(resume_from) = resume_from else {
        bail!("run {run_id} has no valid committed checkpoint to resume from");
    };
    Ok(Prepared {
        store,
        exp,
        run_id: run_id.to_string(),
        run_dir: run_dir(state_dir, run_id)?,
        resolved,
        resume_from: Some(resume_from),
        layout,
    })
}

/// The run's folder, absolute: workers (possibly elsewhere) write checkpoints into it.
fn run_dir(state_dir: &Path, run_id: &str) -> anyhow::Result<PathBuf> {
    std::path::absolute(state_dir.join(run_id))
        .with_context(|| format!("resolving the state directory {}", state_dir.display()))
}

/// Fails before any worker starts when a file or folder the run reads is missing.
fn check_data_paths(exp: &Experiment, origin: &str) -> anyhow::Result<()> {
    for (key, path) in exp.required_paths() {
        if !path.exists() {
            bail!("{} does not exist ({key} in {origin})", path.display());
        }
    }
    Ok(())
}

/// Opens the dataset before any worker starts, fixing the experiment's sample counts to it;
/// returns the training split's layout.
fn open_dataset(exp: &mut Experiment, origin: &str) -> anyhow::Result<ShardLayout> {
    let source =
        source::resolve(exp).with_context(|| format!("opening the dataset of {origin}"))?;
    Ok(source.train_layout())
}

/// The epoch plan every rank receives.
fn data_plan(layout: &ShardLayout, resume: Option<&Resume>) -> DataPlan {
    let (start_step, position) =
        resume.map_or((0, DataPosition::default()), |r| (r.step, r.position));
    DataPlan {
        train_shards: layout.sizes.clone(),
        shuffle_buffer: layout.shuffle_buffer,
        start_step,
        start_epoch: position.epoch,
        start_offset: position.offset,
    }
}

/// Records the outcome, prints the summary, and picks the exit code.
fn report(
    store: &Store,
    run_id: &str,
    run_dir: &Path,
    exp: &Experiment,
    outcome: Outcome,
    final_loss: f64,
    elapsed: f64,
) -> anyhow::Result<ExitCode> {
    match outcome {
        Outcome::Succeeded(eval) => {
            store.finish_run(run_id, RunStatus::Succeeded, Some(&eval), None)?;
            let [top1, top5] = rates(&eval);
            let images = exp.total_steps() as f64 * exp.global_batch() as f64;
            println!("run {run_id} succeeded in {}", human(elapsed));
            println!(
                "  steps {} ({} workers × batch {} × accumulate {})",
                exp.total_steps(),
                exp.cluster.world_size,
                exp.train.batch_size,
                exp.train.accumulate
            );
            println!("  final training loss {final_loss:.4}");
            println!(
                "  validation top-1 {:.2}%, top-5 {:.2}% ({} images), loss {:.4}",
                100.0 * top1,
                100.0 * top5,
                eval.samples,
                eval.loss
            );
            println!(
                "  throughput {:.1} images/s (whole run, all workers)",
                images / elapsed
            );
            println!("  database {}", run_dir.with_file_name(DATABASE).display());
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Failed(error) => {
            store.finish_run(run_id, RunStatus::Failed, None, Some(&error))?;
            store.event(run_id, "error", &error)?;
            eprintln!("run {run_id} failed: {error}");
            Ok(ExitCode::FAILURE)
        }
        Outcome::Interrupted => {
            store.finish_run(run_id, RunStatus::Interrupted, None, Some("interrupted"))?;
            eprintln!("run {run_id} interrupted; workers stopped");
            Ok(ExitCode::from(130))
        }
    }
}

/// Follows a run's events and the health of its workers.
struct Monitor<'a> {
    ctx: &'a RunContext,
    store: &'a mut Store,
    workers: Option<&'a mut LocalWorkers>,
    progress: Progress,
    heartbeat_timeout: Duration,
    join_deadline: Instant,
    last_seen: Vec<Option<Instant>>,
    results: Vec<Option<WorkerResult>>,
    last_loss: f64,
    keep_checkpoints: usize,
}

impl<'a> Monitor<'a> {
    fn new(
        exp: &Experiment,
        ctx: &'a RunContext,
        store: &'a mut Store,
        workers: Option<&'a mut LocalWorkers>,
    ) -> Self {
        let world = exp.cluster.world_size;
        Self {
            ctx,
            store,
            workers,
            progress: Progress::new(exp.total_steps()),
            heartbeat_timeout: Duration::from_secs(exp.cluster.heartbeat_timeout_s),
            join_deadline: Instant::now() + Duration::from_secs(exp.cluster.join_timeout_s),
            last_seen: vec![None; world],
            results: vec![None; world],
            last_loss: f64::NAN,
            keep_checkpoints: exp.checkpoint.keep,
        }
    }

    async fn follow(&mut self, mut events: UnboundedReceiver<Event>) -> Outcome {
        let mut ticker = tokio::time::interval(Duration::from_millis(250));
        let interrupted = tokio::signal::ctrl_c();
        tokio::pin!(interrupted);
        let outcome = loop {
            let step = tokio::select! {
                Some(event) = events.recv() => self.on_event(event),
                _ = ticker.tick() => Ok(self.check_health()),
                _ = &mut interrupted => Ok(Some(Outcome::Interrupted)),
            };
            match step {
                Ok(Some(outcome)) => break outcome,
                Ok(None) => {}
                Err(err) => break Outcome::Failed(format!("recording the run failed: {err:#}")),
            }
        };
        self.progress.finish();
        outcome
    }

    fn on_event(&mut self, event: Event) -> anyhow::Result<Option<Outcome>> {
        let run_id = &self.ctx.run_id;
        match event {
            Event::Joined { rank, request } => {
                self.last_seen[rank as usize] = Some(Instant::now());
                self.store.record_worker(run_id, rank, &request)?;
                self.progress.println(&format!(
                    "rank {rank} joined: {} (pid {}, ring {})",
                    request.hostname, request.pid, request.ring_addr
                ));
            }
            Event::Heartbeat { rank } => self.last_seen[rank as usize] = Some(Instant::now()),
            Event::Metrics { rank, steps } => {
                self.last_seen[rank as usize] = Some(Instant::now());
                self.store.insert_metrics(run_id, rank, &steps)?;
                for (step, probe) in steps
                    .iter()
                    .filter(|_| rank == 0)
                    .filter_map(|m| m.probe.as_ref().map(|p| (m.step, p)))
                {
                    let ratios: Vec<String> = probe
                        .residual_ratios
                        .iter()
                        .map(|r| format!("{r:.3}"))
                        .collect();
                    self.progress.println(&format!(
                        "probe at step {step}: {:.2}% of the final feature map is zero; \
                         residual/shortcut per stage [{}]",
                        100.0 * probe.dead_fraction,
                        ratios.join(", ")
                    ));
                }
                if let Some(last) = steps.iter().filter(|_| rank == 0).max_by_key(|m| m.step) {
                    self.last_loss = last.loss;
                    self.progress
                        .update(last.step, last.loss, last.images_per_sec);
                }
            }
            Event::Evaluation(eval) => {
                self.store.record_evaluation(run_id, &eval)?;
                let [top1, top5] = rates(&eval);
                self.progress.println(&format!(
                    "evaluation at step {}: top-1 {:.2}%, top-5 {:.2}%, loss {:.4}",
                    eval.step,
                    100.0 * top1,
                    100.0 * top5,
                    eval.loss
                ));
            }
            Event::Checkpoint(report) => self.commit_checkpoint(report.step, &report.path)?,
            Event::Finished(result) => {
                let rank = result.rank as usize;
                if !result.error.is_empty() {
                    return Ok(Some(Outcome::Failed(format!(
                        "rank {rank} failed after {} steps: {}",
                        result.steps_done, result.error
                    ))));
                }
                self.results[rank] = Some(result);
                if self.results.iter().all(Option::is_some) {
                    // Every rank all-reduced the same totals; rank 0's stand for the run.
                    let final_eval = self.results[0].as_ref().and_then(|r| r.evaluation);
                    return Ok(final_eval.map(Outcome::Succeeded));
                }
            }
        }
        Ok(None)
    }

    /// Verifies a checkpoint rank 0 wrote, commits it, and prunes beyond `checkpoint.keep`.
    fn commit_checkpoint(&mut self, step: u64, path: &str) -> anyhow::Result<()> {
        let run_id = &self.ctx.run_id;
        let dir = PathBuf::from(path);
        match checkpoint::verify_position(&dir) {
            Ok((found, _)) if found == step => {}
            Ok((found, _)) => {
                bail!("checkpoint {path} holds step {found}, reported as step {step}")
            }
            Err(err) => {
                let message = format!("checkpoint of step {step} not committed: {err}");
                self.progress.println(&message);
                return self.store.event(run_id, "warn", &message);
            }
        }
        self.store.commit_checkpoint(run_id, step, &dir)?;
        let root = dir.parent().unwrap_or(Path::new("."));
        for removed in checkpoint::prune(root, self.keep_checkpoints)? {
            self.store.remove_checkpoint(run_id, removed)?;
        }
        self.progress
            .println(&format!("checkpoint step {step} committed: {path}"));
        Ok(())
    }

    fn check_health(&mut self) -> Option<Outcome> {
        if let Some(failure) = self.workers.as_mut().and_then(|w| w.failure()) {
            return Some(Outcome::Failed(failure));
        }
        if !self.ctx.rendezvous.is_complete() && Instant::now() > self.join_deadline {
            return Some(Outcome::Failed(format!(
                "rendezvous timed out: {} of {} workers joined within {} s (cluster.join_timeout_s)",
                self.ctx.rendezvous.joined_count(),
                self.ctx.world_size,
                self.ctx.join_timeout.as_secs()
            )));
        }
        let silent =
            self.last_seen
                .iter()
                .zip(&self.results)
                .enumerate()
                .find(|(_, (seen, result))| {
                    result.is_none() && seen.is_some_and(|t| t.elapsed() > self.heartbeat_timeout)
                });
        silent.map(|(rank, _)| {
            Outcome::Failed(format!(
                "rank {rank} sent no heartbeat for {} s (cluster.heartbeat_timeout_s)",
                self.heartbeat_timeout.as_secs()
            ))
        })
    }
}

/// `<name>-<UTC time>-<4 hex>`: sortable, readable, unique enough for one state dir.
fn new_run_id(name: &str) -> String {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let compact: String = stamp.chars().filter(char::is_ascii_digit).collect();
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "{safe}-{}-{}-{:04x}",
        &compact[..8],
        &compact[8..14],
        rand::random::<u16>()
    )
}

/// A random 128-bit join token, hex-encoded.
fn new_token() -> String {
    rand::random::<[u8; 16]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Default state directory.
pub fn default_state_dir() -> PathBuf {
    PathBuf::from("runs")
}
