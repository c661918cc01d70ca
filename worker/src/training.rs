//! The training loop of one rank: communicator, replica, steps, validation.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use incept_common::collective::AbortHandle;
use incept_common::config::Experiment;
use incept_common::data::DataPosition;
use incept_common::device;
use incept_common::model::{import, registry};
use incept_common::proto::{
    Assignment, CheckpointReport, EvaluationReport, ProbeMetrics, StepMetrics, TraceSpan,
};
use incept_common::train::checkpoint;
use incept_common::train::{BackendJob, TrainBackend, backend};
use incept_common::train::{Evaluation, Lane, Replica, Span, StepStats};
use tokio::sync::mpsc::UnboundedSender;

use crate::communicator;

/// What the training thread hands to the reporting task.
#[derive(Debug)]
pub enum Report {
    Step(StepMetrics),
    Evaluation(EvaluationReport),
    Checkpoint(CheckpointReport),
}

/// Shared between the training thread and the heartbeat task.
#[derive(Default)]
pub struct Progress {
    /// Optimizer steps completed.
    pub step: AtomicU64,
    /// The replica's count of validation images evaluated (see [`Replica::evaluated`]), once
    /// it exists.
    pub evaluated: OnceLock<Arc<AtomicU64>>,
    /// Set when training must stop (the coordinator said so, or is lost).
    pub stop: AtomicBool,
    /// Set with `stop` when the worker then joins again: its generation ended, or its
    /// coordinator is lost (a resumed one takes it back).
    pub rejoin: AtomicBool,
    /// Set when the coordinator asks for a checkpoint after the current step (it is about to
    /// stop the run); only rank 0 writes one.
    pub checkpoint_now: AtomicBool,
    /// Aborts the communicator once it is connected, so a stop also ends a collective blocked on a
    /// lost peer at once instead of at its deadline.
    pub abort: OnceLock<AbortHandle>,
    /// Why training stopped, reported instead of the aborted collective's error.
    pub stop_reason: OnceLock<String>,
    /// What the replica computes with (`libtorch on cpu`, ...), once resolved; the heartbeats
    /// tell the coordinator.
    pub compute: OnceLock<String>,
}

impl Progress {
    /// Stops training because of `reason` (the first one given is kept), aborting its
    /// collectives.
    pub fn stop(&self, reason: String) {
        let _ = self.stop_reason.set(reason);
        self.stop.store(true, Ordering::Relaxed);
        if let Some(abort) = self.abort.get() {
            abort.abort();
        }
    }

    /// Stops training because of `reason`, to join the run again.
    pub fn stop_to_rejoin(&self, reason: String) {
        self.rejoin.store(true, Ordering::Relaxed);
        self.stop(reason);
    }
}

/// Trains the assigned replica to the end of the run on the device `cluster.device` names
/// (GPU `LOCAL_RANK` for CUDA, checked before anything is built), with the kernels
/// `cluster.kernels` names, and evaluates it.
pub fn run(
    assignment: &Assignment,
    listener: TcpListener,
    reports: &UnboundedSender<Report>,
    progress: &Progress,
) -> anyhow::Result<Evaluation> {
    let exp = Experiment::from_toml(&assignment.experiment_toml)
        .context("the assignment's experiment is invalid")?;
    let compute = device::resolve_compute(
        exp.cluster.device,
        exp.cluster.kernels,
        device::local_rank()?,
    )?;
    tracing::info!(%compute, "computing with");
    let _ = progress.compute.set(compute.to_string());
    let job = Training {
        exp: &exp,
        assignment,
        listener,
        reports,
        progress,
    };
    backend::run_on(compute, job)
}

/// One rank's training, run on the backend its [`Compute`](device::Compute) selects.
struct Training<'a> {
    exp: &'a Experiment,
    assignment: &'a Assignment,
    listener: TcpListener,
    reports: &'a UnboundedSender<Report>,
    progress: &'a Progress,
}

impl BackendJob for Training<'_> {
    type Output = Evaluation;

    fn run<B: TrainBackend>(self, device: B::Device) -> anyhow::Result<Evaluation> {
        train::<B>(
            self.exp,
            device,
            self.assignment,
            self.listener,
            self.reports,
            self.progress,
        )
    }
}

/// [`run`] on backend `B`.
fn train<B: TrainBackend>(
    exp: &Experiment,
    device: B::Device,
    assignment: &Assignment,
    listener: TcpListener,
    reports: &UnboundedSender<Report>,
    progress: &Progress,
) -> anyhow::Result<Evaluation> {
    let peers = assignment
        .peers
        .iter()
        .map(|p| {
            p.parse::<SocketAddr>()
                .with_context(|| format!("invalid peer address {p:?}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let rank = assignment.rank as usize;
    if peers.len() != assignment.world_size as usize || rank >= peers.len() {
        bail!(
            "inconsistent assignment: rank {rank}, world size {}, {} peers",
            assignment.world_size,
            peers.len()
        );
    }
    let timeout = Duration::from_secs(exp.cluster.collective_timeout_s);
    let collective =
        communicator::connect(exp.cluster.backend, assignment, &peers, listener, timeout)?;
    // Set once per run: this thread is the only writer.
    let _ = progress.abort.set(collective.abort_handle());
    if progress.stop.load(Ordering::Relaxed) {
        bail!("stopped by the coordinator while the workers connected");
    }
    B::seed(&device, exp.run.seed);
    let mut model = registry::build::<B>(&exp.model, &device);
    if let Some(weights) = &exp.model.init_from {
        model = import::load_incept(model, weights)?;
        tracing::info!(path = %weights.display(), "initialised from imported weights");
    }
    let mut replica = Replica::new(exp, collective, model, device)?;
    let _ = progress.evaluated.set(replica.evaluated());
    let start = match assignment.resume_from.as_str() {
        "" => 0,
        path => {
            let state = checkpoint::read(Path::new(path))?;
            let step = state.step;
            replica
                .restore(state)
                .with_context(|| format!("resuming from {path}"))?;
            tracing::info!(step, path, "resumed");
            step
        }
    };
    apply_plan(&mut replica, assignment, start)?;
    progress.step.store(start, Ordering::Relaxed);

    let total = assignment.total_steps;
    let checkpoints = Checkpointer {
        root: PathBuf::from(&assignment.checkpoint_dir),
        every: exp.checkpoint.every_steps,
        config: &assignment.experiment_toml,
        enabled: rank == 0,
    };
    let started = Instant::now();
    for step in start..total {
        if progress.stop.load(Ordering::Relaxed) {
            bail!("stopped by the coordinator at step {step}");
        }
        let stats = replica.step(step)?;
        if (step + 1).is_multiple_of(exp.train.log_every) || step + 1 == total {
            tracing::info!(
                step = step + 1,
                total,
                loss = stats.loss,
                lr = stats.learning_rate,
                elapsed_s = started.elapsed().as_secs_f64(),
                "train"
            );
        }
        let mut metrics = to_metrics(&stats);
        if rank == 0
            && exp.train.probe_every > 0
            && (step + 1).is_multiple_of(exp.train.probe_every)
        {
            let probe = replica.probe()?;
            metrics.probe = Some(ProbeMetrics {
                dead_fraction: probe.dead_fraction,
                residual_ratios: probe.residual_ratios,
            });
        }
        // Spans of this step, and of the previous step's checkpoint (timed after its report).
        metrics.trace = replica
            .timeline()
            .take()
            .into_iter()
            .map(to_trace_span)
            .collect();
        // The coordinator going away only loses metrics; training continues. They go before
        // the step's checkpoint is written: its report may end a stopping run.
        let _ = reports.send(Report::Step(metrics));
        progress.step.store(step + 1, Ordering::Relaxed);
        let done = step + 1;
        let every = exp.train.check_replicas_every;
        if every > 0 && done.is_multiple_of(every) {
            replica.check_consistency(done)?;
        }
        let asked = checkpoints.enabled && progress.checkpoint_now.swap(false, Ordering::Relaxed);
        if asked || checkpoints.due(done, total) {
            let started = Instant::now();
            let report = checkpoints.write(&replica, done, asked)?;
            replica
                .timeline()
                .record_until_now(done, Lane::Training, "checkpoint", started);
            let _ = reports.send(Report::Checkpoint(report));
            // The coordinator asks only when it stops the run; a step past its checkpoint would
            // be trained again, and a checkpoint past it would be resumed without its metrics.
            if asked && done < total {
                bail!(
                    "stopped by the coordinator after step {done}, whose checkpoint it asked for"
                );
            }
        }
        if exp.train.eval_every > 0 && done.is_multiple_of(exp.train.eval_every) && done < total {
            let eval = replica.evaluate()?;
            tracing::info!(
                step = done,
                top1 = eval.top1(),
                top5 = eval.top5(),
                "evaluation"
            );
            if rank == 0 {
                let _ = reports.send(Report::Evaluation(evaluation_report(&eval, 0, done)));
            }
        }
    }
    replica.evaluate()
}

/// Adopts the coordinator's epoch plan: the same shards as the dataset this worker opened, and
/// the data position a resumed run continues from.
fn apply_plan<B: TrainBackend>(
    replica: &mut Replica<B>,
    assignment: &Assignment,
    start: u64,
) -> anyhow::Result<()> {
    let Some(plan) = &assignment.data_plan else {
        bail!("the assignment carries no data plan");
    };
    let layout = replica.plan().layout();
    if plan.train_shards != layout.sizes || plan.shuffle_buffer != layout.shuffle_buffer {
        bail!(
            "this worker's dataset has {} training shards ({} images), the coordinator planned {} \
             ({} images): do both see the same data.path?",
            layout.sizes.len(),
            layout.samples(),
            plan.train_shards.len(),
            plan.train_shards.iter().sum::<u64>()
        );
    }
    if plan.start_step != start {
        bail!(
            "the data plan starts at step {}, the checkpoint at step {start}",
            plan.start_step
        );
    }
    let position = DataPosition {
        epoch: plan.start_epoch,
        offset: plan.start_offset,
    };
    replica.resume_data(start, position);
    Ok(())
}

/// Rank 0's checkpoint writer.
struct Checkpointer<'a> {
    root: PathBuf,
    every: u64,
    config: &'a str,
    enabled: bool,
}

impl Checkpointer<'_> {
    /// Every `every` steps, and after the last step.
    fn due(&self, done: u64, total: u64) -> bool {
        self.enabled && (done == total || (self.every > 0 && done.is_multiple_of(self.every)))
    }

    /// Writes the checkpoint of step `done`; `asked`: because the coordinator asked for it.
    fn write<B: TrainBackend>(
        &self,
        replica: &Replica<B>,
        done: u64,
        asked: bool,
    ) -> anyhow::Result<CheckpointReport> {
        let dir = checkpoint::write(&self.root, &replica.state(done), self.config)
            .with_context(|| format!("writing the checkpoint of step {done}"))?;
        tracing::info!(step = done, path = %dir.display(), "checkpoint written");
        Ok(CheckpointReport {
            rank: 0,
            step: done,
            path: dir.display().to_string(),
            asked,
        })
    }
}

/// The wire form of an evaluation made by `rank` after `step` steps.
pub fn evaluation_report(eval: &Evaluation, rank: u32, step: u64) -> EvaluationReport {
    EvaluationReport {
        rank,
        step,
        top1_correct: eval.top1_correct,
        top5_correct: eval.top5_correct,
        samples: eval.samples,
        loss: eval.loss,
    }
}

fn to_metrics(stats: &StepStats) -> StepMetrics {
    let busy = stats.data + stats.compute + stats.allreduce;
    StepMetrics {
        step: stats.step + 1,
        epoch: stats.epoch as u32,
        loss: stats.loss,
        learning_rate: stats.learning_rate,
        images_per_sec: stats.images as f64 / busy.as_secs_f64().max(1e-9),
        data_seconds: stats.data.as_secs_f64(),
        compute_seconds: stats.compute.as_secs_f64(),
        allreduce_seconds: stats.allreduce.as_secs_f64(),
        grad_norm: stats.grad_norm,
        skipped: stats.skipped,
        probe: None,
        bad_images: stats.bad_images as u32,
        allreduce_bytes: stats.allreduce_bytes,
        trace: Vec::new(),
    }
}

fn to_trace_span(span: Span) -> TraceSpan {
    TraceSpan {
        name: span.name,
        step: span.step,
        lane: span.lane as u32,
        start_us: span.start_us,
        duration_us: span.duration_us,
    }
}
