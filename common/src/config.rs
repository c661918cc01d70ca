//! The experiment: every knob of a run, in one serde tree.
//!
//! Loaded in layers with the `config` crate: the TOML file, then `INCEPT__SECTION__KEY`
//! environment variables, then `--set section.key=value` overrides. Unknown keys are errors
//! naming their full path, and [`Experiment::validate`] reports every invalid value at once.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::collective::{WireFormat, bucket};

/// Environment variable prefix; `INCEPT__TRAIN__BATCH_SIZE=8` sets `train.batch_size`.
pub const ENV_PREFIX: &str = "INCEPT";
/// Separator between the prefix, sections and keys in environment variable names.
pub const ENV_SEPARATOR: &str = "__";

/// A whole experiment, as written in `experiments/*.toml`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Experiment {
    pub run: RunSection,
    pub cluster: ClusterSection,
    pub model: ModelSection,
    pub data: DataSection,
    pub train: TrainSection,
    pub checkpoint: CheckpointSection,
}

/// When rank 0 checkpoints and how many checkpoints are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSection {
    /// Checkpoint every this many steps (0 = only at the end of the run).
    pub every_steps: u64,
    /// Newest committed checkpoints kept; older ones are deleted.
    pub keep: usize,
}

impl Default for CheckpointSection {
    fn default() -> Self {
        Self {
            every_steps: 0,
            keep: 3,
        }
    }
}

/// Naming and seeding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    pub name: String,
    /// Seeds model initialisation, data generation and shuffling: same seed, same run.
    pub seed: u64,
}

impl Default for RunSection {
    fn default() -> Self {
        Self {
            name: "experiment".into(),
            seed: 42,
        }
    }
}

/// How workers are started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Launcher {
    /// The coordinator spawns `world_size` worker processes on this machine.
    Local,
    /// Workers are started elsewhere (`worker --coordinator URL --token T`).
    External,
}

/// Processes, addresses and timeouts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    pub launcher: Launcher,
    /// Number of data-parallel replicas.
    pub world_size: usize,
    /// Address the coordinator's gRPC API binds (port 0: ephemeral).
    pub bind: String,
    /// How long the rendezvous waits for every rank to join.
    pub join_timeout_s: u64,
    pub heartbeat_interval_ms: u64,
    /// A worker silent for this long is declared lost and fails the run.
    pub heartbeat_timeout_s: u64,
    /// Deadline of every collective operation (ring connection, all-reduce, broadcast).
    pub collective_timeout_s: u64,
    /// How workers all-reduce gradients.
    pub backend: CollectiveBackend,
    /// Gradient bucket size: bucket `k` is all-reduced while bucket `k + 1` is packed.
    /// (Fractions allowed: tests use small buckets to exercise several on tiny models.)
    pub bucket_mib: f64,
    /// Format gradients travel in between workers: `f32` (exact), or `f16`/`bf16` to halve
    /// the traffic at some precision (the reduction itself stays in f32).
    pub gradient_wire: WireFormat,
    /// CPU threads each locally launched worker computes with.
    pub threads_per_worker: usize,
    /// What each worker computes on: `cpu`, `cuda` (GPU `LOCAL_RANK`), or `auto` (cuda where
    /// the preflight finds a driver, a GPU and NVRTC; else cpu).
    pub device: DeviceKind,
    /// GPUs of one node: the local launcher gives its worker `i` `LOCAL_RANK = i % gpus_per_node`
    /// (two workers share GPU 0 with the default 1).
    pub gpus_per_node: usize,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            launcher: Launcher::Local,
            world_size: 1,
            bind: "127.0.0.1:0".into(),
            join_timeout_s: 120,
            heartbeat_interval_ms: 1000,
            heartbeat_timeout_s: 60,
            collective_timeout_s: 300,
            backend: CollectiveBackend::Ring,
            bucket_mib: bucket::DEFAULT_BUCKET_MIB,
            gradient_wire: WireFormat::F32,
            threads_per_worker: 1,
            device: DeviceKind::Cpu,
            gpus_per_node: 1,
        }
    }
}

impl ClusterSection {
    /// `bucket_mib` in whole bytes.
    pub fn bucket_bytes(&self) -> usize {
        bucket::mib_to_bytes(self.bucket_mib)
    }
}

/// What a worker computes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    /// burn's flex backend on the CPU.
    Cpu,
    /// burn's CUDA backend on GPU `LOCAL_RANK` (workers built with the `cuda` feature).
    Cuda,
    /// CUDA where the preflight passes, else the CPU.
    Auto,
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
            DeviceKind::Auto => "auto",
        })
    }
}

/// The communicator between workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CollectiveBackend {
    /// TCP ring on the CPUs: works everywhere.
    Ring,
    /// NCCL on the GPUs: workers built with the `cuda` feature, one GPU each.
    Nccl,
}

/// The network to train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    pub arch: String,
    pub num_classes: usize,
    /// Square input side in pixels.
    pub image_size: usize,
    /// Channel multiplier for small experiments (1.0 = the reference network).
    pub width: f64,
    /// Blocks per stage (Inception-v4: A, B, C; Inception-ResNet: scaled A, B, C, the final
    /// unscaled block apart). Unset: `block_preset`, else the architecture's reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocks: Option<[usize; 3]>,
    /// Named block counts for Inception-ResNet: `tfslim` (v2: 10/20/9 + final, the released
    /// code), `paper` (5/10/5 with the final block among the 5 C), `facenet` (v1: 5/10/5 + final).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_preset: Option<BlockPreset>,
    /// Sets the residual scale of every block type; `residual_scale_{a,b,c}` override it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub residual_scale: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub residual_scale_a: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub residual_scale_b: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub residual_scale_c: Option<f64>,
    /// The released code's final Block8: scale 1.0, no ReLU.
    pub final_block: bool,
    pub dropout: f64,
    /// PyTorch-style BatchNorm momentum; TF's decay 0.9997 is 0.0003.
    pub bn_momentum: f64,
    /// TF-slim's auxiliary classifier on the 17×17 map (needs image_size ≥ 107).
    pub aux_head: bool,
    /// Initial weights: a file written by `coordinator models import` (incept module paths).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            arch: "inception_resnet_v2".into(),
            num_classes: 1000,
            image_size: 299,
            width: 1.0,
            blocks: None,
            block_preset: None,
            residual_scale: None,
            residual_scale_a: None,
            residual_scale_b: None,
            residual_scale_c: None,
            final_block: true,
            dropout: 0.2,
            bn_momentum: 0.0003,
            aux_head: false,
            init_from: None,
        }
    }
}

/// Named block counts (see [`ModelSection::block_preset`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockPreset {
    Tfslim,
    Paper,
    Facenet,
}

/// Reference residual scales of the released Inception-ResNet-v2 code (A, B, C).
pub const DEFAULT_RESIDUAL_SCALES: [f64; 3] = [0.17, 0.10, 0.20];

impl ModelSection {
    /// Effective residual scales (A, B, C): per-type override, else `residual_scale`, else the reference.
    pub fn residual_scales(&self) -> [f64; 3] {
        let per_type = [
            self.residual_scale_a,
            self.residual_scale_b,
            self.residual_scale_c,
        ];
        std::array::from_fn(|i| {
            per_type[i]
                .or(self.residual_scale)
                .unwrap_or(DEFAULT_RESIDUAL_SCALES[i])
        })
    }
}

/// Where images come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataSource {
    /// Deterministic generated images with learnable class structure.
    Synthetic,
    /// ILSVRC-2012 folder layout under `data.path` (`train/<wnid>/*.JPEG`, `val/`).
    Imagenet,
    /// TFRecord shards of `tf.train.Example`s with an `index.json` under `data.path`.
    Tfrecord,
    /// Fashion-MNIST IDX files (default folder: Debian's `dataset-fashion-mnist`).
    FashionMnist,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    pub source: DataSource,
    /// Dataset root for file-backed sources.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Training images per epoch (synthetic; file-backed sources: set from the dataset at launch).
    pub train_samples: usize,
    /// Held-out validation images (synthetic; file-backed sources: set from the dataset).
    pub val_samples: usize,
    /// Synthetic source: standard deviation of the pixel noise (signal amplitude is 1).
    pub noise: f64,
    /// `imagenet` with a flat `val/`: ground truth, one wnid per image in file-name order
    /// (relative to `data.path`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_labels: Option<PathBuf>,
    /// `tfrecord`: keep the stored labels (0 = background, 1001-way models) instead of
    /// shifting build_imagenet_data.py's 1–1000 to 0–999.
    pub background_class: bool,
    /// `tfrecord`: samples in the shuffle buffer after the per-epoch shard shuffle. Other
    /// sources are shuffled whole.
    pub shuffle_buffer: usize,
    /// Threads each worker decodes and augments with.
    pub threads: usize,
    /// Ready batches each loader thread keeps ahead.
    pub prefetch: usize,
    pub augment: AugmentSection,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            source: DataSource::Synthetic,
            path: None,
            train_samples: 10_000,
            val_samples: 1_000,
            noise: 0.5,
            val_labels: None,
            background_class: false,
            shuffle_buffer: 10_000,
            threads: 2,
            prefetch: 2,
            augment: AugmentSection::default(),
        }
    }
}

/// Inception preprocessing of file-backed images (the synthetic source is not augmented).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentSection {
    /// Training crop: fraction of the image area, drawn uniformly from [min, max].
    pub area_range: [f64; 2],
    /// Training crop: width / height, drawn uniformly from [min, max].
    pub aspect_range: [f64; 2],
    /// A crop must cover at least this fraction of the image.
    pub min_object_covered: f64,
    /// Tries to draw a crop that fits before falling back to a central crop.
    pub max_attempts: u32,
    /// Random horizontal flip.
    pub flip: bool,
    /// TF-slim's colour distortion (brightness, saturation, hue, contrast).
    pub color: bool,
    /// Evaluation: the central fraction of each side kept before resizing.
    pub eval_crop: f64,
}

impl Default for AugmentSection {
    fn default() -> Self {
        Self {
            area_range: [0.05, 1.0],
            aspect_range: [0.75, 4.0 / 3.0],
            min_object_covered: 0.1,
            max_attempts: 100,
            flip: true,
            color: false,
            eval_crop: 0.875,
        }
    }
}

impl Experiment {
    /// Files and folders the run reads, each with the key that names it: checked before any
    /// worker starts.
    pub fn required_paths(&self) -> Vec<(&'static str, PathBuf)> {
        let mut paths = Vec::new();
        match (self.data.source, crate::data::source::data_root(self)) {
            (DataSource::Imagenet, Some(root)) => {
                paths.push(("data.path", root.join("train")));
                paths.push(("data.path", root.join("val")));
            }
            (DataSource::Tfrecord, Some(root)) => {
                paths.push(("data.path", root.join(crate::data::shards::INDEX_FILE)));
            }
            (DataSource::FashionMnist, Some(root)) => paths.push(("data.path", root)),
            _ => {}
        }
        if let Some(weights) = &self.model.init_from {
            paths.push(("model.init_from", weights.clone()));
        }
        paths
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// RMSProp with TensorFlow semantics (the paper's optimizer).
    Rmsprop,
    /// SGD with momentum (dampening 0).
    Sgd,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerSection {
    pub kind: OptimizerKind,
    pub learning_rate: f64,
    pub momentum: f64,
    /// RMSProp: decay of the mean-square accumulator.
    pub decay: f64,
    /// RMSProp: added inside the square root (TF semantics; the paper uses 1.0).
    pub epsilon: f64,
    /// SGD: Nesterov momentum.
    pub nesterov: bool,
}

impl Default for OptimizerSection {
    fn default() -> Self {
        Self {
            kind: OptimizerKind::Rmsprop,
            learning_rate: 0.045,
            momentum: 0.9,
            decay: 0.9,
            epsilon: 1.0,
            nesterov: false,
        }
    }
}

/// How the learning rate decays over the run (after the linear scaling rule, before warm-up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// The base rate throughout, to isolate other effects.
    Constant,
    /// `lr × decay_rate^(epoch / decay_epochs)`, floored to whole periods when `staircase`:
    /// the Inception papers' ×0.94 every 2 epochs.
    Exponential,
    /// `lr × decay_rate^k` where k counts the `milestones` already reached (ResNet-style).
    Step,
    /// Half-cosine from the base rate to zero over the run.
    Cosine,
}

/// What happens during the first `warmup_steps` steps; the residual-scaling study compares
/// these against scaling the residuals (Inception-v4 paper §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WarmupKind {
    /// The decay schedule from the first step.
    None,
    /// He et al.'s two phases: `lr × warmup_factor` for `warmup_steps`, then the full schedule.
    Constant,
    /// Goyal et al.: a straight ramp from `lr × warmup_factor` at step 0 to the scheduled
    /// value at step `warmup_steps`, so the rate is continuous where the ramp ends.
    Linear,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleSection {
    pub kind: ScheduleKind,
    /// Factor applied per period (`exponential`) or per milestone (`step`).
    pub decay_rate: f64,
    /// `exponential`: epochs per decay period.
    pub decay_epochs: f64,
    /// `exponential`: decay in whole periods (TF `staircase`) rather than smoothly.
    pub staircase: bool,
    /// `step`: epochs (increasing, may be fractional) at which the rate is multiplied by
    /// `decay_rate`.
    pub milestones: Vec<f64>,
    pub warmup: WarmupKind,
    /// Length of the warm-up in optimizer steps (at least 1 when `warmup` is not `none`).
    pub warmup_steps: u64,
    /// Fraction of the rate that warm-up starts from, in (0, 1].
    pub warmup_factor: f64,
    /// Linear scaling rule (Goyal et al.): when set, the base rate is
    /// `learning_rate × global_batch / reference_batch`, so changing the number of workers,
    /// the batch or the accumulation keeps the per-image step size. 0.045 was tuned for
    /// 50 replicas × 32 = 1600 images (Inception-v3 paper, the RMSProp recipe TF-slim
    /// reproduces). Unset, `learning_rate` is used as given whatever the global batch, as the
    /// Inception-v4 paper did (0.045 with 20 replicas × 32).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_batch: Option<usize>,
}

impl Default for ScheduleSection {
    fn default() -> Self {
        Self {
            kind: ScheduleKind::Exponential,
            decay_rate: 0.94,
            decay_epochs: 2.0,
            staircase: true,
            milestones: Vec::new(),
            warmup: WarmupKind::None,
            warmup_steps: 0,
            warmup_factor: 0.1,
            reference_batch: None,
        }
    }
}

impl ScheduleSection {
    /// Milestones are epochs after the start, in order, so each one decays the rate once.
    fn milestones_are_valid(&self) -> bool {
        let positive = self.milestones.iter().all(|m| m.is_finite() && *m > 0.0);
        positive && self.milestones.windows(2).all(|w| w[0] < w[1])
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    /// Images per micro-batch per worker.
    pub batch_size: usize,
    /// Micro-batches whose gradients are summed before each optimizer step.
    pub accumulate: usize,
    pub epochs: usize,
    /// Stops earlier than `epochs` when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u64>,
    pub label_smoothing: f64,
    /// Weight of the auxiliary head's loss, when the model has one (the papers: 0.4).
    pub aux_loss_weight: f64,
    /// L2 penalty on convolution and fully connected weights (not BatchNorm, not biases).
    pub weight_decay: f64,
    /// Global-norm clipping of the averaged gradient (0 = off; the paper uses 2.0).
    pub clip_global_norm: f64,
    /// Decay of the weight moving average used for evaluation (0 = off). As in TF, the
    /// effective decay at update n is min(ema_decay, (1 + n) / (10 + n)).
    pub ema_decay: f64,
    /// Distributed evaluation every this many steps (0 = only at the end).
    pub eval_every: u64,
    /// Dead-unit probe every this many steps (0 = off): zero fraction of the final feature
    /// map and per-stage residual/shortcut norm ratios on a fixed validation batch.
    pub probe_every: u64,
    /// Replicas compare parameter checksums every this many steps (0 = never); a mismatch
    /// stops the run naming the step.
    pub check_replicas_every: u64,
    /// A step whose loss or gradient is NaN/Inf is skipped; this many in a row stop the run.
    pub max_nonfinite_steps: u32,
    /// Workers log progress every this many steps.
    pub log_every: u64,
    pub optimizer: OptimizerSection,
    pub schedule: ScheduleSection,
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            batch_size: 32,
            accumulate: 1,
            epochs: 1,
            max_steps: None,
            label_smoothing: 0.1,
            aux_loss_weight: 0.4,
            weight_decay: 4e-5,
            clip_global_norm: 2.0,
            ema_decay: 0.9999,
            eval_every: 0,
            probe_every: 0,
            check_replicas_every: 100,
            max_nonfinite_steps: 5,
            log_every: 10,
            optimizer: OptimizerSection::default(),
            schedule: ScheduleSection::default(),
        }
    }
}

impl Experiment {
    /// Images consumed by one optimizer step across all replicas.
    pub fn global_batch(&self) -> usize {
        self.train.batch_size * self.train.accumulate * self.cluster.world_size
    }

    /// Optimizer steps per pass over the training set (the remainder is dropped).
    pub fn steps_per_epoch(&self) -> u64 {
        (self.data.train_samples / self.global_batch().max(1)) as u64
    }

    /// Optimizer steps of the whole run.
    pub fn total_steps(&self) -> u64 {
        let full = self.steps_per_epoch() * self.train.epochs as u64;
        self.train.max_steps.map_or(full, |cap| cap.min(full))
    }

    /// Checks every value; returns all problems, each naming its key.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut check = Checker::default();
        let c = &self.cluster;
        check.at_least("cluster.world_size", c.world_size, 1);
        check.require(
            c.bind.parse::<std::net::SocketAddr>().is_ok(),
            "cluster.bind",
            format!("{:?}", c.bind),
            "must be an address like 127.0.0.1:0",
        );
        check.at_least("cluster.join_timeout_s", c.join_timeout_s, 1);
        check.at_least("cluster.heartbeat_interval_ms", c.heartbeat_interval_ms, 10);
        check.require(
            c.heartbeat_timeout_s * 1000 > c.heartbeat_interval_ms,
            "cluster.heartbeat_timeout_s",
            c.heartbeat_timeout_s,
            "must exceed the heartbeat interval",
        );
        check.at_least("cluster.collective_timeout_s", c.collective_timeout_s, 1);
        check.require(
            c.bucket_bytes() >= 4 && c.bucket_mib <= 4096.0,
            "cluster.bucket_mib",
            c.bucket_mib,
            "must hold at least one f32 value (4 bytes) and at most 4096 MiB",
        );
        check.require(
            c.backend == CollectiveBackend::Ring || c.gradient_wire == WireFormat::F32,
            "cluster.gradient_wire",
            c.gradient_wire,
            "must be f32 with cluster.backend = \"nccl\" (NCCL reduces in the wire type)",
        );
        check.at_least("cluster.threads_per_worker", c.threads_per_worker, 1);
        check.at_least("cluster.gpus_per_node", c.gpus_per_node, 1);

        let m = &self.model;
        let archs = crate::model::registry::ARCHS;
        check.require(
            crate::model::registry::is_known(&m.arch),
            "model.arch",
            format!("{:?}", m.arch),
            format!("must be one of {archs:?}"),
        );
        check.at_least("model.num_classes", m.num_classes, 2);
        check.require(
            m.width > 0.0 && m.width <= 4.0,
            "model.width",
            m.width,
            "must be in (0, 4]",
        );
        if let Err(rule) = crate::model::registry::check_knobs(m) {
            check.require(false, "model", format!("{:?}", m.arch), rule);
        } else if let Err(rule) = crate::model::registry::check_image_size(m) {
            check.require(false, "model.image_size", m.image_size, rule);
        }
        for (key, scale) in [
            ("model.residual_scale", m.residual_scale),
            ("model.residual_scale_a", m.residual_scale_a),
            ("model.residual_scale_b", m.residual_scale_b),
            ("model.residual_scale_c", m.residual_scale_c),
        ] {
            if let Some(scale) = scale {
                check.non_negative(key, scale);
            }
        }
        check.fraction("model.dropout", m.dropout);
        check.rate("model.bn_momentum", m.bn_momentum);

        let d = &self.data;
        if matches!(d.source, DataSource::Imagenet | DataSource::Tfrecord) {
            check.require(
                d.path.is_some(),
                "data.path",
                "(unset)",
                format!("is required when data.source = {:?}", d.source),
            );
        }
        check.non_negative("data.noise", d.noise);
        check.at_least("data.val_samples", d.val_samples, 1);
        check.at_least("data.shuffle_buffer", d.shuffle_buffer, 1);
        check.at_least("data.threads", d.threads, 1);
        check.at_least("data.prefetch", d.prefetch, 1);
        let a = &d.augment;
        for (key, [lo, hi], max) in [
            ("data.augment.area_range", a.area_range, 1.0),
            ("data.augment.aspect_range", a.aspect_range, f64::INFINITY),
        ] {
            check.require(
                lo > 0.0 && lo <= hi && hi <= max,
                key,
                format!("{:?}", [lo, hi]),
                format!("must be [min, max] with 0 < min ≤ max ≤ {max}"),
            );
        }
        check.fraction("data.augment.min_object_covered", a.min_object_covered);
        check.at_least("data.augment.max_attempts", a.max_attempts, 1);
        check.rate("data.augment.eval_crop", a.eval_crop);

        let t = &self.train;
        check.at_least("train.batch_size", t.batch_size, 1);
        check.at_least("train.accumulate", t.accumulate, 1);
        check.at_least("train.epochs", t.epochs, 1);
        check.at_least("train.log_every", t.log_every, 1);
        check.non_negative("train.aux_loss_weight", t.aux_loss_weight);
        check.non_negative("train.weight_decay", t.weight_decay);
        check.non_negative("train.clip_global_norm", t.clip_global_norm);
        check.fraction("train.ema_decay", t.ema_decay);
        check.at_least("train.max_nonfinite_steps", t.max_nonfinite_steps, 1);
        check.fraction("train.label_smoothing", t.label_smoothing);
        if t.batch_size >= 1 && t.accumulate >= 1 && c.world_size >= 1 {
            check.require(
                self.steps_per_epoch() >= 1,
                "data.train_samples",
                d.train_samples,
                format!(
                    "must hold at least one global batch ({} images)",
                    self.global_batch()
                ),
            );
        }
        let o = &t.optimizer;
        check.positive("train.optimizer.learning_rate", o.learning_rate);
        check.fraction("train.optimizer.momentum", o.momentum);
        check.fraction("train.optimizer.decay", o.decay);
        check.positive("train.optimizer.epsilon", o.epsilon);
        let s = &t.schedule;
        check.rate("train.schedule.decay_rate", s.decay_rate);
        check.positive("train.schedule.decay_epochs", s.decay_epochs);
        if s.kind == ScheduleKind::Step {
            check.require(
                s.milestones_are_valid(),
                "train.schedule.milestones",
                format!("{:?}", s.milestones),
                "must be finite epochs > 0, strictly increasing",
            );
        }
        if s.warmup != WarmupKind::None {
            check.require(
                s.warmup_steps >= 1,
                "train.schedule.warmup_steps",
                s.warmup_steps,
                "must be at least 1 when train.schedule.warmup is not \"none\"",
            );
        }
        check.rate("train.schedule.warmup_factor", s.warmup_factor);
        if let Some(reference) = s.reference_batch {
            check.at_least("train.schedule.reference_batch", reference, 1);
        }
        check.at_least("checkpoint.keep", self.checkpoint.keep, 1);
        check.finish()
    }

    /// The resolved experiment as TOML: what workers receive and what the run directory keeps.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("an Experiment always serialises to TOML")
    }

    /// Parses a resolved experiment (as sent in an assignment).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::Parse {
            file: PathBuf::from("<assignment>"),
            message: e.to_string(),
        })?;
        serde_path_to_error::deserialize(de).map_err(|e| ConfigError::Key {
            file: PathBuf::from("<assignment>"),
            key: e.path().to_string(),
            message: e.inner().to_string(),
        })
    }
}

/// One invalid value.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub key: String,
    pub value: String,
    pub rule: String,
}

/// Collects the problems of one validation; each method checks one rule and names the key.
#[derive(Default)]
struct Checker(Vec<Problem>);

impl Checker {
    fn require(&mut self, ok: bool, key: &str, value: impl fmt::Display, rule: impl Into<String>) {
        if !ok {
            self.0.push(Problem {
                key: key.into(),
                value: value.to_string(),
                rule: rule.into(),
            });
        }
    }

    fn at_least<T: PartialOrd + fmt::Display>(&mut self, key: &str, value: T, min: T) {
        let rule = format!("must be at least {min}");
        self.require(value >= min, key, value, rule);
    }

    fn non_negative(&mut self, key: &str, value: f64) {
        let ok = value >= 0.0 && value.is_finite();
        self.require(ok, key, value, "must be a finite number ≥ 0");
    }

    fn positive(&mut self, key: &str, value: f64) {
        let ok = value > 0.0 && value.is_finite();
        self.require(ok, key, value, "must be a finite number > 0");
    }

    /// In [0, 1).
    fn fraction(&mut self, key: &str, value: f64) {
        self.require((0.0..1.0).contains(&value), key, value, "must be in [0, 1)");
    }

    /// In (0, 1].
    fn rate(&mut self, key: &str, value: f64) {
        self.require(value > 0.0 && value <= 1.0, key, value, "must be in (0, 1]");
    }

    fn finish(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(self.0))
        }
    }
}

/// Every invalid value of an experiment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ValidationErrors(pub Vec<Problem>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} invalid value(s):", self.0.len())?;
        for p in &self.0 {
            write!(f, "\n  - {} = {}: {}", p.key, p.value, p.rule)?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

/// Why an experiment could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("experiment file {0} does not exist")]
    Missing(PathBuf),
    #[error("{file}: malformed TOML: {message}")]
    Parse { file: PathBuf, message: String },
    #[error("{file}: key `{key}`: {message}")]
    Key {
        file: PathBuf,
        key: String,
        message: String,
    },
    #[error("override {0:?} must look like section.key=value")]
    Override(String),
    #[error("{file}: {source}")]
    Invalid {
        file: PathBuf,
        source: ValidationErrors,
    },
}

/// Loads `file`, applies environment variables and `--set` overrides, and validates the result.
pub fn load(file: &Path, overrides: &[String]) -> Result<Experiment, ConfigError> {
    if !file.is_file() {
        return Err(ConfigError::Missing(file.to_path_buf()));
    }
    let mut builder = config::Config::builder()
        .add_source(config::File::from(file).format(config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator(ENV_SEPARATOR)
                .separator(ENV_SEPARATOR)
                .try_parsing(true),
        );
    for item in overrides {
        let (key, value) = item
            .split_once('=')
            .filter(|(k, _)| !k.trim().is_empty())
            .ok_or_else(|| ConfigError::Override(item.clone()))?;
        builder = builder
            .set_override(key.trim(), override_value(value.trim()))
            .map_err(|e| ConfigError::Key {
                file: file.to_path_buf(),
                key: key.into(),
                message: e.to_string(),
            })?;
    }
    let merged = builder.build().map_err(|e| ConfigError::Parse {
        file: file.to_path_buf(),
        message: e.to_string(),
    })?;
    let experiment: Experiment =
        serde_path_to_error::deserialize(merged).map_err(|e| ConfigError::Key {
            file: file.to_path_buf(),
            key: e.path().to_string(),
            message: e.inner().to_string(),
        })?;
    experiment
        .validate()
        .map_err(|source| ConfigError::Invalid {
            file: file.to_path_buf(),
            source,
        })?;
    Ok(experiment)
}

/// Reads an override's value as a TOML value (so `blocks=[1,1,1]` and `width=0.5` keep their
/// types), falling back to a plain string (`launcher=external`).
fn override_value(text: &str) -> config::Value {
    match toml::from_str::<toml::Table>(&format!("v = {text}")) {
        Ok(mut table) => toml_to_config(table.remove("v").expect("key v was just parsed")),
        Err(_) => config::Value::from(text),
    }
}

fn toml_to_config(value: toml::Value) -> config::Value {
    use config::{Value, ValueKind};
    let kind = match value {
        toml::Value::String(s) => ValueKind::String(s),
        toml::Value::Integer(i) => ValueKind::I64(i),
        toml::Value::Float(f) => ValueKind::Float(f),
        toml::Value::Boolean(b) => ValueKind::Boolean(b),
        toml::Value::Datetime(d) => ValueKind::String(d.to_string()),
        toml::Value::Array(items) => {
            ValueKind::Array(items.into_iter().map(toml_to_config).collect())
        }
        toml::Value::Table(table) => ValueKind::Table(
            table
                .into_iter()
                .map(|(k, v)| (k, toml_to_config(v)))
                .collect(),
        ),
    };
    Value::new(None, kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let path = dir.path().join("exp.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    const SMALL: &str =
        "[model]\narch = \"inception_resnet_v2\"\nnum_classes = 10\nimage_size = 75\n";

    #[test]
    fn loads_defaults_and_file_values() {
        let dir = tempfile::tempdir().unwrap();
        let exp = load(&write(&dir, SMALL), &[]).unwrap();
        assert_eq!(exp.model.num_classes, 10);
        assert_eq!(exp.train.batch_size, 32);
        assert_eq!(exp.model.residual_scales(), DEFAULT_RESIDUAL_SCALES);
    }

    #[test]
    fn overrides_keep_their_types() {
        let dir = tempfile::tempdir().unwrap();
        let sets = [
            "model.blocks=[1, 2, 3]".to_string(),
            "model.width = 0.5".into(),
            "cluster.launcher=external".into(),
            "model.residual_scale=0.3".into(),
            "model.residual_scale_b=0.1".into(),
        ];
        let exp = load(&write(&dir, SMALL), &sets).unwrap();
        assert_eq!(exp.model.blocks, Some([1, 2, 3]));
        assert_eq!(exp.model.width, 0.5);
        assert_eq!(exp.cluster.launcher, Launcher::External);
        assert_eq!(exp.model.residual_scales(), [0.3, 0.1, 0.3]);
    }

    #[test]
    fn missing_file_is_named() {
        let err = load(Path::new("/nonexistent/x.toml"), &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "experiment file /nonexistent/x.toml does not exist"
        );
    }

    #[test]
    fn malformed_toml_reports_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(&write(&dir, "[model]\nnum_classes = = 3\n"), &[]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("exp.toml"), "{text}");
        assert!(text.contains("line 2"), "{text}");
        assert!(text.contains("column"), "{text}");
    }

    #[test]
    fn unknown_key_reports_full_path() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[train.optimizer]\nlr = 0.1\n";
        let err = load(&write(&dir, text), &[]).unwrap_err().to_string();
        assert!(err.contains("train.optimizer.lr"), "{err}");
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn invalid_values_are_all_reported_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[cluster]\nworld_size = 0\n[train]\nbatch_size = 0\n[train.optimizer]\nlearning_rate = -0.1\n[model]\nresidual_scale = -0.2\n";
        let err = load(&write(&dir, text), &[]).unwrap_err().to_string();
        for key in [
            "cluster.world_size = 0",
            "train.batch_size = 0",
            "train.optimizer.learning_rate = -0.1",
            "model.residual_scale = -0.2",
        ] {
            assert!(err.contains(key), "missing {key} in {err}");
        }
    }

    #[test]
    fn data_keys_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[data]\nsource = \"tfrecord\"\nthreads = 0\n[data.augment]\n\
                    area_range = [0.0, 1.0]\naspect_range = [1.5, 0.5]\neval_crop = 1.5\n";
        let err = load(&write(&dir, text), &[]).unwrap_err().to_string();
        for key in [
            "data.path = (unset)",
            "data.threads = 0",
            "data.augment.area_range = [0.0, 1.0]",
            "data.augment.aspect_range = [1.5, 0.5]",
            "data.augment.eval_crop = 1.5",
        ] {
            assert!(err.contains(key), "missing {key} in {err}");
        }
        let err = load(&write(&dir, "[data]\nsource = \"lmdb\"\n"), &[]).unwrap_err();
        assert!(err.to_string().contains("lmdb"), "{err}");
    }

    #[test]
    fn lr_zero_is_invalid() {
        let mut exp = Experiment::default();
        exp.train.optimizer.learning_rate = 0.0;
        let err = exp.validate().unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert_eq!(err.0[0].key, "train.optimizer.learning_rate");
    }

    #[test]
    fn resolved_toml_round_trips() {
        let mut exp = Experiment::default();
        exp.model.residual_scale = Some(0.2);
        exp.data.path = Some("/data/imagenet".into());
        assert_eq!(Experiment::from_toml(&exp.to_toml()).unwrap(), exp);
    }

    #[test]
    fn steps_follow_global_batch() {
        let mut exp = Experiment::default();
        exp.cluster.world_size = 2;
        exp.train.batch_size = 8;
        exp.train.accumulate = 2;
        exp.data.train_samples = 100;
        exp.train.epochs = 3;
        assert_eq!(exp.global_batch(), 32);
        assert_eq!(exp.steps_per_epoch(), 3);
        assert_eq!(exp.total_steps(), 9);
        exp.train.max_steps = Some(4);
        assert_eq!(exp.total_steps(), 4);
    }

    fn schedule_problems(edit: impl FnOnce(&mut ScheduleSection)) -> Vec<String> {
        let mut exp = Experiment::default();
        edit(&mut exp.train.schedule);
        exp.validate()
            .err()
            .map_or_else(Vec::new, |e| e.0.into_iter().map(|p| p.key).collect())
    }

    #[test]
    fn schedule_warmup_keys_are_checked() {
        let key = |k: &str| vec![format!("train.schedule.{k}")];
        assert_eq!(
            schedule_problems(|s| s.warmup = WarmupKind::Linear),
            key("warmup_steps")
        );
        assert_eq!(
            schedule_problems(|s| {
                s.warmup = WarmupKind::Constant;
                s.warmup_steps = 500;
            }),
            Vec::<String>::new()
        );
        for factor in [0.0, -0.1, 1.5, f64::NAN] {
            assert_eq!(
                schedule_problems(|s| s.warmup_factor = factor),
                key("warmup_factor")
            );
        }
        assert!(schedule_problems(|s| s.warmup_factor = 1.0).is_empty());
        assert_eq!(
            schedule_problems(|s| s.reference_batch = Some(0)),
            key("reference_batch")
        );
        assert!(schedule_problems(|s| s.reference_batch = Some(1600)).is_empty());
    }

    #[test]
    fn step_milestones_must_increase_from_above_zero() {
        let step = |milestones: Vec<f64>| {
            schedule_problems(|s| {
                s.kind = ScheduleKind::Step;
                s.milestones = milestones;
            })
        };
        let bad = vec!["train.schedule.milestones".to_string()];
        assert_eq!(step(vec![0.0, 30.0]), bad);
        assert_eq!(step(vec![30.0, 30.0]), bad);
        assert_eq!(step(vec![60.0, 30.0]), bad);
        assert_eq!(step(vec![f64::INFINITY]), bad);
        assert!(step(vec![0.5, 30.0, 60.0]).is_empty());
    }

    #[test]
    fn schedule_keys_load_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let sets = [
            "train.schedule.kind=step".to_string(),
            "train.schedule.milestones=[30, 60.5]".into(),
            "train.schedule.warmup=linear".into(),
            "train.schedule.warmup_steps=500".into(),
            "train.schedule.reference_batch=1600".into(),
        ];
        let exp = load(&write(&dir, SMALL), &sets).unwrap();
        let s = &exp.train.schedule;
        assert_eq!(s.kind, ScheduleKind::Step);
        assert_eq!(s.milestones, [30.0, 60.5]);
        assert_eq!((s.warmup, s.warmup_steps), (WarmupKind::Linear, 500));
        assert_eq!((s.warmup_factor, s.reference_batch), (0.1, Some(1600)));
        assert_eq!(Experiment::from_toml(&exp.to_toml()).unwrap(), exp);
    }
}
