//! One data-parallel replica: its model, optimizer and share of the data, and the step that
//! keeps it identical to its peers.
//!
//! Per optimizer step: for each of `accumulate` micro-batches, forward, loss, backward and add
//! the flat gradients into one flat tensor; all-reduce it (mean over ranks) in gradient
//! buckets, and the summed loss apart (always in f32, whatever the gradients' wire format);
//! divide by `accumulate`; add weight decay; clip to the global norm; update the flat
//! parameters, whose views are the model's parameters. All of it runs as tensor operations on
//! the replica's device (the CPU, or a GPU): the host sees only the loss and the gradient norm,
//! and the buckets where the collective cannot reach device memory. Every rank applies the same
//! update to the same parameters, so replicas stay identical; a step whose loss or gradient is
//! not finite is skipped on every rank alike.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use burn::module::AutodiffModule;
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::prelude::*;
use burn::tensor::TensorData;

use super::backend::TrainBackend;
use super::checkpoint::TrainingState;
use super::clip::clip_global_norm;
use super::ema::WeightAverage;
use super::optim::{Optimizer, UpdateRule, to_host};
use super::quality::DataQuality;
use super::schedule::LrSchedule;
use super::timeline::{Lane, Timeline};
use crate::CRC32C;
use crate::collective::{
    Collective, GradientBuckets, HostBuffer, ReduceOp, Traced, TrainDevice, WireFormat,
};
use crate::config::Experiment;
use crate::data::augment::Preprocess;
use crate::data::plan::validation_share;
use crate::data::{self, Batch, DataPosition, EpochPlan, Job, Loader, Pipeline, Split};
use crate::model::params;
use crate::model::registry::{Network, Probe};

/// Timings and values of one optimizer step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepStats {
    /// The step, zero-based.
    pub step: u64,
    /// Epoch of the training data the step read, zero-based.
    pub epoch: u64,
    /// Training loss averaged over every rank's micro-batches.
    pub loss: f64,
    /// Learning rate the schedule gave this step.
    pub learning_rate: f64,
    /// Global norm of the averaged gradient (weight decay included) before clipping.
    pub grad_norm: f64,
    /// The loss or gradient was NaN/Inf and the update was skipped.
    pub skipped: bool,
    /// Images this rank processed.
    pub images: usize,
    /// Images this rank left out because they could not be decoded.
    pub bad_images: usize,
    /// Waiting for the loader's micro-batches.
    pub data: Duration,
    /// Forward, backward, and the optimizer update.
    pub compute: Duration,
    /// Packing the last micro-batch's gradients and all-reducing the buckets (overlapped).
    pub allreduce: Duration,
    /// Bytes this rank handed to the collective (gradient buckets in their wire format, and
    /// the loss): the payload, not what the ring sends, which is about `2 (W - 1) / W` of it.
    pub allreduce_bytes: u64,
}

/// Validation result summed over all ranks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// Samples whose label got the highest logit.
    pub top1_correct: u64,
    /// Samples whose label was among the five highest logits.
    pub top5_correct: u64,
    /// Validation samples evaluated.
    pub samples: u64,
    /// Mean cross-entropy (no label smoothing).
    pub loss: f64,
}

impl Evaluation {
    /// Top-1 accuracy in [0, 1] (0 when nothing was evaluated).
    pub fn top1(&self) -> f64 {
        self.top1_correct as f64 / self.samples.max(1) as f64
    }

    /// Top-5 accuracy in [0, 1] (0 when nothing was evaluated).
    pub fn top5(&self) -> f64 {
        self.top5_correct as f64 / self.samples.max(1) as f64
    }
}

/// A model replica bound to its rank in the data-parallel group.
pub struct Replica<B: TrainBackend> {
    model: Network<B>,
    /// The trainable parameters, flat, on the device; the model's parameters are views of it
    /// (copies in host memory: see [`with_flat_params`]).
    params: Tensor<B::InnerBackend, 1>,
    optimizer: Optimizer<B::InnerBackend>,
    /// In host memory, the last step's flat gradient, whose buffer the next step gathers into.
    spare_grads: Option<Tensor<B::InnerBackend, 1>>,
    average: Option<WeightAverage<B::InnerBackend>>,
    /// `train.evaluate_average`: evaluations use `average` when there is one.
    evaluate_average: bool,
    /// Validation images this rank has evaluated in its current (or last) evaluation.
    evaluated: Arc<AtomicU64>,
    collective: Traced,
    /// The phases of the steps `train.trace_steps` names.
    timeline: Timeline,
    buckets: GradientBuckets,
    loss: CrossEntropyLoss<B>,
    schedule: LrSchedule,
    plan: EpochPlan,
    pipeline: Arc<Pipeline>,
    /// The training batches being loaded ahead, and the step they start at.
    loader: Option<(u64, Loader)>,
    loader_threads: usize,
    prefetch: usize,
    accumulate: usize,
    batch_size: usize,
    val_samples: usize,
    clip_norm: f64,
    aux_loss_weight: f64,
    max_nonfinite: u32,
    nonfinite_streak: u32,
    /// The training images this rank could not use, against `data.max_bad_fraction`.
    quality: DataQuality,
    seed: u64,
    device: B::Device,
}

impl<B: TrainBackend> Replica<B> {
    /// Wraps `model` (built from `exp.model`), adopting rank 0's parameters so every replica
    /// starts identical, and opens the dataset `exp.data` names (with the sample counts the
    /// coordinator resolved).
    pub fn new(
        exp: &Experiment,
        mut collective: Box<dyn Collective>,
        model: Network<B>,
        device: B::Device,
    ) -> anyhow::Result<Self> {
        let source = data::open(exp)?;
        let counts = (
            source.len(Split::Train),
            exp.data
                .validation_images(source.len(Split::Validation) as usize) as u64,
        );
        let planned = (exp.data.train_samples as u64, exp.data.val_samples as u64);
        if counts != planned {
            bail!(
                "the dataset has {} training and {} validation images (up to data.val_limit), the \
                 run was planned for {} and {} (did the data at {:?} change since launch?)",
                counts.0,
                counts.1,
                planned.0,
                planned.1,
                exp.data.root().unwrap_or_default()
            );
        }
        let mut params = params::flatten_params(&model);
        if collective.world_size() > 1 {
            collective
                .broadcast(&mut params, 0)
                .context("broadcasting rank 0's initial parameters")?;
        }
        let len = params.len();
        let params = Tensor::from_data(TensorData::new(params, [len]), &device);
        let model = with_flat_params(model, &params);
        let decayed: Vec<_> = params::trainable_segments(&model)
            .into_iter()
            .filter(|s| s.is_weight())
            .map(|s| s.range)
            .collect();
        let train = &exp.train;
        let smoothing = (train.label_smoothing > 0.0).then_some(train.label_smoothing as f32);
        Ok(Self {
            optimizer: Optimizer::new(
                UpdateRule::from(&train.optimizer),
                train.weight_decay,
                &decayed,
                len,
                &device,
            ),
            average: (train.ema_decay > 0.0).then(|| WeightAverage::new(train.ema_decay, &params)),
            evaluate_average: train.evaluate_average,
            evaluated: Arc::default(),
            params,
            spare_grads: None,
            model,
            collective: Traced::new(collective),
            timeline: Timeline::new(train.trace_steps),
            buckets: GradientBuckets::new(exp.cluster.bucket_bytes(), exp.cluster.gradient_wire),
            loss: CrossEntropyLossConfig::new()
                .with_smoothing(smoothing)
                .init(&device),
            schedule: LrSchedule::new(
                train.optimizer.learning_rate,
                &train.schedule,
                exp.steps_per_epoch(),
                exp.total_steps(),
                exp.global_batch(),
            ),
            plan: EpochPlan::new(
                exp.run.seed,
                source.train_layout(),
                exp.cluster.world_size,
                train.batch_size,
                train.accumulate,
            ),
            pipeline: Arc::new(Pipeline {
                source,
                preprocess: Preprocess {
                    image_size: exp.model.image_size,
                    augment: exp.data.augment.clone(),
                },
                seed: exp.run.seed,
            }),
            loader: None,
            loader_threads: exp.data.threads,
            prefetch: exp.data.prefetch,
            accumulate: train.accumulate,
            batch_size: train.batch_size,
            val_samples: exp.data.val_samples,
            clip_norm: train.clip_global_norm,
            aux_loss_weight: train.aux_loss_weight,
            max_nonfinite: train.max_nonfinite_steps,
            nonfinite_streak: 0,
            quality: DataQuality::new(exp.data.max_bad_fraction),
            seed: exp.run.seed,
            device,
        })
    }

    /// The count of validation images this rank has evaluated in its current (or last)
    /// evaluation, for progress reports from another thread.
    pub fn evaluated(&self) -> Arc<AtomicU64> {
        self.evaluated.clone()
    }

    /// This replica's rank in the data-parallel group.
    pub fn rank(&self) -> usize {
        self.collective.rank()
    }

    /// The model with the current parameters.
    pub fn model(&self) -> &Network<B> {
        &self.model
    }

    /// Continues the data at `position` from step `step` on (a resumed run's plan).
    pub fn resume_data(&mut self, step: u64, position: DataPosition) {
        self.plan = self.plan.clone().resumed(step, position);
        self.loader = None;
    }

    /// The epoch plan this replica reads by.
    pub fn plan(&self) -> &EpochPlan {
        &self.plan
    }

    /// The trainable parameters in flat module order, copied to the host.
    pub fn params(&self) -> Vec<f32> {
        to_host(self.params.clone())
    }

    /// Everything needed to continue after `steps_done` steps, copied to the host.
    pub fn state(&self, steps_done: u64) -> TrainingState {
        let (mean_square, velocity) = self.optimizer.state();
        TrainingState {
            step: steps_done,
            params: self.params(),
            buffers: params::flatten_buffers(&self.model.valid()),
            mean_square,
            velocity,
            average: self
                .average
                .as_ref()
                .map(|a| (a.updates(), to_host(a.values().clone()))),
            nonfinite_streak: self.nonfinite_streak,
            data: self.plan.position(steps_done),
        }
    }

    /// Continues from a checkpointed state (the same on every rank).
    pub fn restore(&mut self, state: TrainingState) -> anyhow::Result<()> {
        let len = self.params.dims()[0];
        let expected = (len, params::flatten_buffers(&self.model.valid()).len());
        if (state.params.len(), state.buffers.len()) != expected {
            bail!(
                "checkpoint holds {} parameters and {} buffers, the model has {} and {}",
                state.params.len(),
                state.buffers.len(),
                expected.0,
                expected.1
            );
        }
        let upload =
            |values: Vec<f32>| Tensor::from_data(TensorData::new(values, [len]), &self.device);
        self.optimizer
            .restore(state.mean_square, state.velocity, &self.device)
            .map_err(anyhow::Error::msg)?;
        match (&mut self.average, state.average) {
            (Some(average), Some((updates, values))) => average.restore(updates, upload(values)),
            (None, None) => {}
            (Some(_), None) => {
                bail!("the checkpoint has no weight average but train.ema_decay is set")
            }
            (None, Some(_)) => {
                bail!("the checkpoint has a weight average but train.ema_decay is 0")
            }
        }
        self.params = upload(state.params);
        self.nonfinite_streak = state.nonfinite_streak;
        let model = with_flat_params(self.model.clone(), &self.params);
        self.model = params::load_buffers(model, &state.buffers);
        Ok(())
    }

    /// Runs optimizer step `step` (zero-based).
    pub fn step(&mut self, step: u64) -> anyhow::Result<StepStats> {
        // Dropout draws from the backend RNG: seeding it per step makes a resumed run draw
        // exactly what the uninterrupted run drew.
        B::seed(
            &self.device,
            step_seed(self.seed, step, self.collective.rank()),
        );
        let (mut data, mut compute) = (Duration::ZERO, Duration::ZERO);
        let mut grads_sum: Option<Tensor<B::InnerBackend, 1>> = None;
        let mut loss_sum = 0f32;
        let mut images = 0;
        let mut bad_samples = Vec::new();
        let mut loader = self.take_loader(step);
        let traced = step + 1;
        for _ in 0..self.accumulate {
            let started = Instant::now();
            let batch = loader
                .next_batch()
                .expect("the training job list is endless")
                .with_context(|| format!("loading the data of step {}", step + 1))?;
            images += batch.len();
            for reason in &batch.bad_samples {
                tracing::warn!(step = step + 1, "image skipped: {reason}");
            }
            bad_samples.extend_from_slice(&batch.bad_samples);
            data += started.elapsed();
            self.timeline
                .record_until_now(traced, Lane::Training, "data wait", started);
            if batch.is_empty() {
                continue;
            }
            let (inputs, targets) = batch_tensors::<B>(batch, &self.device);

            let started = Instant::now();
            let (logits, aux) = self.model.forward_with_aux(inputs);
            let mut loss = self.loss.forward(logits, targets.clone());
            if let Some(aux) = aux {
                let aux_loss = self.loss.forward(aux, targets);
                loss = loss.add(aux_loss.mul_scalar(self.aux_loss_weight));
            }
            loss_sum += loss.clone().into_scalar().elem::<f32>();
            self.timeline
                .record_until_now(traced, Lane::Training, "forward", started);
            let backward_started = Instant::now();
            let mut backward = loss.backward();
            grads_sum = Some(match (grads_sum, self.spare_grads.take()) {
                (Some(sum), _) => sum.add(params::flat_grads(&self.model, &mut backward)),
                (None, Some(spare)) => {
                    let mut buffer = HostBuffer::take(spare);
                    params::flat_grads_into(&self.model, &mut backward, buffer.values());
                    buffer.into_tensor(&self.device)
                }
                (None, None) => params::flat_grads(&self.model, &mut backward),
            });
            compute += started.elapsed();
            self.timeline
                .record_until_now(traced, Lane::Training, "backward", backward_started);
        }
        self.loader = Some((step + 1, loader));
        self.quality.record(step + 1, images, &bad_samples)?;
        let grads_sum =
            grads_sum.unwrap_or_else(|| Tensor::zeros(self.params.shape(), &self.device));

        let started = Instant::now();
        if self.timeline.traces(traced) {
            self.collective.record();
        }
        let grads = self
            .buckets
            .all_reduce_mean_tensor(&mut self.collective, grads_sum)
            .with_context(|| format!("all-reduce of step {step}"))?;
        let mut loss = [loss_sum];
        self.collective
            .all_reduce(&mut loss, ReduceOp::Mean, WireFormat::F32)
            .with_context(|| format!("all-reduce of the loss of step {step}"))?;
        let allreduce = started.elapsed();
        self.timeline
            .record_until_now(traced, Lane::Training, "all-reduce", started);
        self.trace_all_reduces(traced);
        let wire_bytes = self.buckets.wire().bytes_per_value() * self.params.dims()[0];
        let allreduce_bytes = (wire_bytes + size_of::<f32>()) as u64;

        let started = Instant::now();
        let scale = 1.0 / self.accumulate as f32;
        let loss = f64::from(loss[0] * scale);
        let grads = if self.accumulate > 1 {
            grads.mul_scalar(scale)
        } else {
            grads
        };
        let grads = self.optimizer.add_weight_decay(&mut self.params, grads);
        let (mut grads, grad_norm) = clip_global_norm(grads, self.clip_norm);
        let learning_rate = self.schedule.at(step);
        let skipped = !(loss.is_finite() && grad_norm.is_finite());
        if skipped {
            self.nonfinite_streak += 1;
            if self.nonfinite_streak >= self.max_nonfinite {
                bail!(
                    "{} consecutive steps with a non-finite loss or gradient, the last at step {} \
                     (loss {loss}, gradient norm {grad_norm}; train.max_nonfinite_steps)",
                    self.nonfinite_streak,
                    step + 1
                );
            }
        } else {
            self.nonfinite_streak = 0;
            // Taken out, the parameters are their buffer's only owner on flex (the model holds
            // copies there): the optimizer updates them in place.
            let params = std::mem::replace(&mut self.params, Tensor::empty([0], &self.device));
            self.params = self.optimizer.step(learning_rate, params, &mut grads);
            self.model = with_flat_params(self.model.clone(), &self.params);
            if let Some(average) = &mut self.average {
                average.update(&mut self.params);
            }
        }
        if B::InnerBackend::host_memory(&self.device) {
            self.spare_grads = Some(grads);
        }
        compute += started.elapsed();
        self.timeline
            .record_until_now(traced, Lane::Training, "optimizer", started);

        Ok(StepStats {
            step,
            epoch: self.plan.epoch_of(step),
            loss,
            learning_rate,
            grad_norm,
            skipped,
            images,
            bad_images: bad_samples.len(),
            data,
            compute,
            allreduce,
            allreduce_bytes,
        })
    }

    /// Puts the all-reduces the collective recorded for step `step` on the network lane: the
    /// gradient buckets in order, then the loss.
    fn trace_all_reduces(&mut self, step: u64) {
        let calls = self.collective.take_calls();
        let count = calls.len();
        for (k, call) in calls.into_iter().enumerate() {
            let name = if k + 1 == count {
                "all-reduce loss".to_string()
            } else {
                format!(
                    "all-reduce bucket {k} ({:.1} MiB)",
                    (call.values * self.buckets.wire().bytes_per_value()) as f64 / 1048576.0
                )
            };
            self.timeline
                .record(step, Lane::Network, &name, call.started, call.ended);
        }
    }

    /// The step timeline, where the caller adds its own phases of a step (a checkpoint) and
    /// takes the spans to report.
    pub fn timeline(&mut self) -> &mut Timeline {
        &mut self.timeline
    }

    /// The loader whose next batch is the first micro-batch of `step`: the running one, or a
    /// new one (at the start, and after a restore or a failed step).
    fn take_loader(&mut self, step: u64) -> Loader {
        match self.loader.take() {
            Some((next, loader)) if next == step => loader,
            _ => self.training_loader(step),
        }
    }

    /// A loader of this rank's micro-batches from step `start` on.
    fn training_loader(&self, start: u64) -> Loader {
        let (mut plan, rank, accumulate) =
            (self.plan.clone(), self.collective.rank(), self.accumulate);
        let jobs = move |k: u64| {
            let step = start + k / accumulate as u64;
            let micro = (k % accumulate as u64) as usize;
            Some(Job {
                split: Split::Train,
                epoch: plan.epoch_of(step),
                indices: plan.micro_batch(step, rank, micro),
            })
        };
        Loader::spawn(
            self.pipeline.clone(),
            jobs,
            self.loader_threads,
            self.prefetch,
        )
    }

    /// This rank's validation samples in batches, loaded ahead.
    fn validation_loader(&self) -> Loader {
        let share = validation_share(
            self.val_samples,
            self.collective.rank(),
            self.collective.world_size(),
        );
        // About `batch_size` model inputs per forward pass, whatever the crops per image.
        let views = self.pipeline.preprocess.views(Split::Validation);
        let per_batch = (self.batch_size / views).max(1);
        let chunks: Arc<Vec<Vec<u64>>> =
            Arc::new(share.chunks(per_batch).map(<[u64]>::to_vec).collect());
        let jobs = move |k: u64| {
            chunks.get(k as usize).map(|indices| Job {
                split: Split::Validation,
                epoch: 0,
                indices: indices.clone(),
            })
        };
        Loader::spawn(
            self.pipeline.clone(),
            jobs,
            self.loader_threads,
            self.prefetch,
        )
    }

    /// Verifies that every replica holds bit-identical parameters: each rank contributes the
    /// CRC-32C of its flat parameters (as two exact 16-bit halves in its own slots) to one
    /// all-reduce, and all ranks compare the gathered checksums. `steps_done` names the step in
    /// the error. The parameters are read to the host for it (every
    /// `train.check_replicas_every` steps): burn has no bit-cast to checksum them on the device.
    pub fn check_consistency(&mut self, steps_done: u64) -> anyhow::Result<()> {
        let mut digest = CRC32C.digest();
        for value in self.params() {
            digest.update(&value.to_le_bytes());
        }
        let checksum = digest.finalize();
        let (rank, world) = (self.collective.rank(), self.collective.world_size());
        let mut slots = vec![0f32; 2 * world];
        slots[2 * rank] = (checksum >> 16) as f32;
        slots[2 * rank + 1] = (checksum & 0xFFFF) as f32;
        self.collective
            .all_reduce(&mut slots, ReduceOp::Sum, WireFormat::F32)
            .context("all-reduce of parameter checksums")?;
        let checksums: Vec<u32> = slots
            .chunks_exact(2)
            .map(|pair| ((pair[0] as u32) << 16) | pair[1] as u32)
            .collect();
        if checksums.iter().any(|&c| c != checksums[0]) {
            let listed: Vec<String> = checksums.iter().map(|c| format!("{c:08x}")).collect();
            bail!(
                "replicas diverged at step {steps_done}: parameter checksums by rank [{}]",
                listed.join(", ")
            );
        }
        Ok(())
    }

    /// Runs the dead-unit probe with the current weights on the first validation batch (the same
    /// images every time, so successive probes are comparable).
    pub fn probe(&self) -> anyhow::Result<Probe> {
        let indices: Vec<u64> = (0..self.batch_size.min(self.val_samples) as u64).collect();
        let job = Job {
            split: Split::Validation,
            epoch: 0,
            indices,
        };
        let batch = self.pipeline.load(&job)?;
        let (images, _) = batch_tensors::<B::InnerBackend>(batch, &self.device);
        Ok(self.model.valid().probe(images))
    }

    /// Evaluates this rank's share of the validation split (with the weight average when
    /// enabled and `train.evaluate_average`; each image's crops' logits averaged) and sums the
    /// result over all ranks.
    pub fn evaluate(&mut self) -> anyhow::Result<Evaluation> {
        self.adopt_rank0_statistics()?;
        let weights = match &self.average {
            Some(average) if self.evaluate_average => average.values(),
            _ => &self.params,
        };
        let model = with_flat_params(self.model.clone(), weights).valid();
        let loss = CrossEntropyLossConfig::new().init(&self.device);
        let mut totals = [0f32; 4]; // top-1, top-5, samples, summed loss
        self.evaluated.store(0, Ordering::Relaxed);
        let mut loader = self.validation_loader();
        while let Some(batch) = loader.next_batch() {
            let batch = batch.context("loading validation data")?;
            for reason in &batch.bad_samples {
                tracing::warn!("validation image skipped: {reason}");
            }
            let seen = batch.len() + batch.bad_samples.len();
            self.evaluated.fetch_add(seen as u64, Ordering::Relaxed);
            if batch.is_empty() {
                continue;
            }
            let (count, views) = (batch.len(), batch.views);
            let (inputs, targets) = batch_tensors::<B::InnerBackend>(batch, &self.device);
            let logits = average_views(model.forward(inputs), count, views);
            let count = count as f32;
            let batch_loss: f32 = loss
                .forward(logits.clone(), targets.clone())
                .into_scalar()
                .elem();
            let [top1, top5] = [1, 5].map(|k| hits_within_top(logits.clone(), targets.clone(), k));
            totals[0] += top1 as f32;
            totals[1] += top5 as f32;
            totals[2] += count;
            totals[3] += batch_loss * count;
        }
        self.collective
            .all_reduce(&mut totals, ReduceOp::Sum, WireFormat::F32)
            .context("all-reduce of validation results")?;
        if totals[2] == 0.0 {
            bail!(
                "none of the {} validation images could be used (each is named in the workers' \
                 logs)",
                self.val_samples
            );
        }
        Ok(Evaluation {
            top1_correct: totals[0].round() as u64,
            top5_correct: totals[1].round() as u64,
            samples: totals[2].round() as u64,
            loss: f64::from(totals[3]) / f64::from(totals[2].max(1.0)),
        })
    }

    /// Gives every rank rank 0's BatchNorm running statistics. Each rank accumulates them from
    /// its own batches; rank 0's are the ones checkpointed, so after this every rank evaluates
    /// the model a checkpoint holds (and `coordinator eval` of it, or a resumed run, agrees).
    /// Training is unaffected: it normalises with batch statistics.
    fn adopt_rank0_statistics(&mut self) -> anyhow::Result<()> {
        if self.collective.world_size() == 1 {
            return Ok(());
        }
        let mut buffers = params::flatten_buffers(&self.model.valid());
        if self.collective.rank() != 0 {
            buffers.fill(0.0);
        }
        self.collective
            .all_reduce(&mut buffers, ReduceOp::Sum, WireFormat::F32)
            .context("sharing rank 0's BatchNorm statistics")?;
        self.model = params::load_buffers(self.model.clone(), &buffers);
        Ok(())
    }
}

/// `model` with its trainable parameters taken from `flat`: views of it on a device, copies of
/// their own in host memory, where flex would copy a view into a buffer's middle at every use.
fn with_flat_params<B: TrainBackend>(
    model: Network<B>,
    flat: &Tensor<B::InnerBackend, 1>,
) -> Network<B> {
    params::load_flat_params(model, flat, B::InnerBackend::host_memory(&flat.device()))
}

/// splitmix64's increment (2^64 / φ), which spreads consecutive steps over the seed space.
const SPLITMIX_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// A well-mixed seed for the backend RNG of one (run, step, rank).
fn step_seed(seed: u64, step: u64, rank: usize) -> u64 {
    let mut x = seed ^ step.wrapping_mul(SPLITMIX_GAMMA) ^ (rank as u64).rotate_left(32);
    // splitmix64's finaliser (its published multipliers)
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The mean logits of each image's `views` consecutive rows (the multi-crop protocols).
fn average_views<B: Backend>(logits: Tensor<B, 2>, images: usize, views: usize) -> Tensor<B, 2> {
    if views == 1 {
        return logits;
    }
    let classes = logits.dims()[1];
    logits
        .reshape([images, views, classes])
        .mean_dim(1)
        .reshape([images, classes])
}

/// Samples whose true class is among the `k` highest logits (ties count in the sample's favour).
fn hits_within_top<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>, k: usize) -> i64 {
    let truth = logits.clone().gather(1, targets.unsqueeze_dim(1));
    let higher = logits.greater(truth).int().sum_dim(1);
    higher.lower_elem(k as i64).int().sum().into_scalar().elem()
}

/// A batch as model inputs (`len × views` images, an image's views together) and labels.
fn batch_tensors<B: Backend>(
    batch: Batch,
    device: &B::Device,
) -> (Tensor<B, 4>, Tensor<B, 1, Int>) {
    let side = batch.image_size;
    let n = batch.len();
    let pixels = TensorData::new(batch.pixels, [n * batch.views, 3, side, side]);
    let labels = TensorData::new(batch.labels, [n]);
    (
        Tensor::from_data(pixels, device),
        Tensor::from_data(labels, device),
    )
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;

    use super::*;

    #[test]
    fn top_k_hits_count_the_true_class_rank() {
        let device = Default::default();
        let logits = Tensor::<Flex, 2>::from_floats(
            [
                [0.1, 0.9, 0.3, 0.2],
                [0.8, 0.1, 0.05, 0.05],
                [0.1, 0.2, 0.3, 0.4],
            ],
            &device,
        );
        let targets = Tensor::<Flex, 1, Int>::from_ints([1, 1, 0], &device);
        assert_eq!(hits_within_top(logits.clone(), targets.clone(), 1), 1);
        assert_eq!(hits_within_top(logits.clone(), targets.clone(), 2), 2);
        assert_eq!(hits_within_top(logits, targets, 4), 3);
    }
}
