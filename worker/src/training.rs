//! The training loop of one rank: ring, replica, steps, validation.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use burn::tensor::backend::Backend;
use incept_common::TrainBackend;
use incept_common::collective::Ring;
use incept_common::config::Experiment;
use incept_common::model::registry;
use incept_common::proto::{Assignment, StepMetrics};
use incept_common::train::replica::Evaluation;
use incept_common::train::{Replica, StepStats};
use tokio::sync::mpsc::UnboundedSender;

/// Shared between the training thread and the heartbeat task.
pub struct Progress {
    /// Optimizer steps completed.
    pub step: AtomicU64,
    /// Set when the coordinator asks the run to stop.
    pub stop: AtomicBool,
}

/// Trains the assigned replica to the end of the run and evaluates it.
pub fn run(
    assignment: &Assignment,
    listener: TcpListener,
    metrics: &UnboundedSender<StepMetrics>,
    progress: &Progress,
) -> anyhow::Result<Evaluation> {
    let exp = Experiment::from_toml(&assignment.experiment_toml)
        .context("the assignment's experiment is invalid")?;
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
    let ring = Ring::connect(rank, &peers, listener, timeout).context("connecting the ring")?;
    let device = Default::default();
    TrainBackend::seed(&device, exp.run.seed);
    let model = registry::build::<TrainBackend>(&exp.model, &device);
    let mut replica = Replica::new(&exp, ring, model, device)?;

    let total = assignment.total_steps;
    let started = Instant::now();
    for step in 0..total {
        if progress.stop.load(Ordering::Relaxed) {
            bail!("stopped by the coordinator at step {step}");
        }
        let stats = replica.step(step)?;
        if (step + 1) % exp.train.log_every == 0 || step + 1 == total {
            tracing::info!(
                step = step + 1,
                total,
                loss = stats.loss,
                lr = stats.learning_rate,
                elapsed_s = started.elapsed().as_secs_f64(),
                "train"
            );
        }
        // The coordinator going away only loses metrics; training continues.
        let _ = metrics.send(to_metrics(&stats));
        progress.step.store(step + 1, Ordering::Relaxed);
    }
    replica.evaluate()
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
    }
}
