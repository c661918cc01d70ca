//! One data-parallel replica: its model, optimizer and share of the data, and the step that
//! keeps it identical to its peers.
//!
//! Per optimizer step: for each of `accumulate` micro-batches, forward, loss, backward and add
//! the flat gradients into one buffer; append the summed loss; all-reduce the buffer (mean over
//! ranks) on the ring; divide by `accumulate`; hand the gradients to the optimizer. Every rank
//! applies the same averaged gradient to the same parameters, so replicas stay identical.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use burn::module::AutodiffModule;
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::optim::Optimizer as _;
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::backend::AutodiffBackend;

use super::optim::{Optimizer, optimizer};
use super::params;
use super::schedule::LrSchedule;
use crate::collective::{ReduceOp, Ring};
use crate::config::{DataSource, Experiment};
use crate::data::plan::validation_share;
use crate::data::{Batch, EpochPlan, Split, SyntheticImages};
use crate::model::registry::Network;

/// Timings and values of one optimizer step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepStats {
    pub step: u64,
    pub epoch: u64,
    /// Training loss averaged over every rank's micro-batches.
    pub loss: f64,
    pub learning_rate: f64,
    /// Images this rank processed.
    pub images: usize,
    pub data: Duration,
    pub compute: Duration,
    pub allreduce: Duration,
}

/// Validation result summed over all ranks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    pub correct: u64,
    pub samples: u64,
    pub loss: f64,
}

impl Evaluation {
    pub fn top1(&self) -> f64 {
        self.correct as f64 / self.samples.max(1) as f64
    }
}

/// A model replica bound to its rank in the ring.
pub struct Replica<B: AutodiffBackend> {
    model: Network<B>,
    optimizer: Optimizer<Network<B>, B>,
    ring: Ring,
    loss: CrossEntropyLoss<B>,
    schedule: LrSchedule,
    plan: EpochPlan,
    source: SyntheticImages,
    accumulate: usize,
    batch_size: usize,
    val_samples: usize,
    /// Flat gradients plus one slot for the loss; reused every step.
    buffer: Vec<f32>,
    device: B::Device,
}

impl<B: AutodiffBackend> Replica<B> {
    /// Wraps `model` (built from `exp.model`), adopting rank 0's parameters so every replica
    /// starts identical.
    pub fn new(
        exp: &Experiment,
        ring: Ring,
        model: Network<B>,
        device: B::Device,
    ) -> anyhow::Result<Self> {
        if exp.data.source != DataSource::Synthetic {
            bail!(
                "data.source = {:?} is not supported by this build's workers (only \"synthetic\")",
                exp.data.source
            );
        }
        let (mut model, mut ring) = (model, ring);
        if ring.world_size() > 1 {
            let mut flat = params::flatten_params(&model);
            ring.broadcast(&mut flat, 0)
                .context("broadcasting rank 0's initial parameters")?;
            model = params::load_params(model, &flat);
        }
        let train = &exp.train;
        let smoothing = (train.label_smoothing > 0.0).then_some(train.label_smoothing as f32);
        let buffer = vec![0.0; params::trainable_len(&model) + 1];
        Ok(Self {
            model,
            optimizer: optimizer(&train.optimizer),
            ring,
            loss: CrossEntropyLossConfig::new()
                .with_smoothing(smoothing)
                .init(&device),
            schedule: LrSchedule::new(
                train.optimizer.learning_rate,
                &train.schedule,
                exp.steps_per_epoch(),
                exp.total_steps(),
            ),
            plan: EpochPlan::new(
                exp.run.seed,
                exp.data.train_samples,
                exp.cluster.world_size,
                train.batch_size,
                train.accumulate,
            ),
            source: SyntheticImages::new(
                exp.run.seed,
                exp.model.num_classes,
                exp.model.image_size,
                exp.data.noise,
            ),
            accumulate: train.accumulate,
            batch_size: train.batch_size,
            val_samples: exp.data.val_samples,
            buffer,
            device,
        })
    }

    pub fn rank(&self) -> usize {
        self.ring.rank()
    }

    pub fn model(&self) -> &Network<B> {
        &self.model
    }

    /// Runs optimizer step `step` (zero-based).
    pub fn step(&mut self, step: u64) -> anyhow::Result<StepStats> {
        let (mut data, mut compute) = (Duration::ZERO, Duration::ZERO);
        self.buffer.fill(0.0);
        let (grads_len, rank) = (self.buffer.len() - 1, self.ring.rank());
        let mut images = 0;
        for micro in 0..self.accumulate {
            let started = Instant::now();
            let indices = self.plan.micro_batch(step, rank, micro);
            let batch = self.source.batch(Split::Train, &indices);
            images += batch.len();
            let (inputs, targets) = batch_tensors::<B>(batch, &self.device);
            data += started.elapsed();

            let started = Instant::now();
            let logits = self.model.forward(inputs);
            let loss = self.loss.forward(logits, targets);
            self.buffer[grads_len] += loss.clone().into_scalar().elem::<f32>();
            let grads = loss.backward();
            params::accumulate_grads(&self.model, &grads, &mut self.buffer[..grads_len]);
            compute += started.elapsed();
        }

        let started = Instant::now();
        self.ring
            .all_reduce(&mut self.buffer, ReduceOp::Mean)
            .with_context(|| format!("all-reduce of step {step}"))?;
        let allreduce = started.elapsed();

        let started = Instant::now();
        let scale = 1.0 / self.accumulate as f32;
        self.buffer.iter_mut().for_each(|v| *v *= scale);
        let loss = self.buffer[grads_len] as f64;
        if !loss.is_finite() {
            bail!("loss became {loss} at step {step}");
        }
        let grads = params::to_gradients::<B, _>(&self.model, &self.buffer[..grads_len]);
        let learning_rate = self.schedule.at(step);
        self.model = self
            .optimizer
            .step(learning_rate, self.model.clone(), grads);
        compute += started.elapsed();

        Ok(StepStats {
            step,
            epoch: self.plan.epoch_of(step),
            loss,
            learning_rate,
            images,
            data,
            compute,
            allreduce,
        })
    }

    /// Evaluates this rank's share of the validation split and sums the result over all ranks.
    pub fn evaluate(&mut self) -> anyhow::Result<Evaluation> {
        let model = self.model.valid();
        let share = validation_share(self.val_samples, self.ring.rank(), self.ring.world_size());
        let (mut correct, mut loss_sum) = (0u64, 0f64);
        let loss = CrossEntropyLossConfig::new().init(&self.device);
        for chunk in share.chunks(self.batch_size) {
            let batch = self.source.batch(Split::Validation, chunk);
            let (inputs, targets) = batch_tensors::<B::InnerBackend>(batch, &self.device);
            let logits = model.forward(inputs);
            let batch_loss: f32 = loss
                .forward(logits.clone(), targets.clone())
                .into_scalar()
                .elem();
            loss_sum += batch_loss as f64 * chunk.len() as f64;
            let hits: i64 = logits
                .argmax(1)
                .squeeze_dim::<1>(1)
                .equal(targets)
                .int()
                .sum()
                .into_scalar()
                .elem();
            correct += hits as u64;
        }
        let mut totals = [correct as f32, share.len() as f32, loss_sum as f32];
        self.ring
            .all_reduce(&mut totals, ReduceOp::Sum)
            .context("all-reduce of validation results")?;
        Ok(Evaluation {
            correct: totals[0].round() as u64,
            samples: totals[1].round() as u64,
            loss: totals[2] as f64 / totals[1].max(1.0) as f64,
        })
    }
}

fn batch_tensors<B: Backend>(
    batch: Batch,
    device: &B::Device,
) -> (Tensor<B, 4>, Tensor<B, 1, Int>) {
    let side = batch.image_size;
    let n = batch.len();
    let pixels = TensorData::new(batch.pixels, [n, 3, side, side]);
    let labels = TensorData::new(batch.labels, [n]);
    (
        Tensor::from_data(pixels, device),
        Tensor::from_data(labels, device),
    )
}
