//! `[train]`: the recipe: batch, loss, regularisation, optimizer and learning-rate schedule.

use serde::{Deserialize, Serialize};

/// The update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// RMSProp with TensorFlow semantics (the paper's optimizer).
    Rmsprop,
    /// SGD with momentum (dampening 0).
    Sgd,
}

/// The optimizer and its hyper-parameters (defaults: the paper's RMSProp).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerSection {
    /// RMSProp or SGD.
    pub kind: OptimizerKind,
    /// Base learning rate, before the linear scaling rule, the schedule and warm-up.
    pub learning_rate: f64,
    /// Momentum of the update (both optimizers).
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

/// The learning-rate schedule and its warm-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleSection {
    /// How the rate decays.
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
    /// What the first `warmup_steps` steps do.
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
    pub(super) fn milestones_are_valid(&self) -> bool {
        let positive = self.milestones.iter().all(|m| m.is_finite() && *m > 0.0);
        positive && self.milestones.windows(2).all(|w| w[0] < w[1])
    }
}

/// The training recipe (defaults: the Inception-v4 paper's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    /// Images per micro-batch per worker.
    pub batch_size: usize,
    /// Micro-batches whose gradients are summed before each optimizer step.
    pub accumulate: usize,
    /// Passes over the training set.
    pub epochs: usize,
    /// Stops earlier than `epochs` when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u64>,
    /// Weight of the uniform distribution mixed into the one-hot targets (the papers: 0.1).
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
    /// Whether evaluations use the weight average (when `ema_decay` > 0) rather than the
    /// trained weights, as the paper's reported figures do.
    pub evaluate_average: bool,
    /// Distributed evaluation every this many steps (0 = only at the end).
    pub eval_every: u64,
    /// Dead-unit probe every this many steps (0 = off): zero fraction of the final feature
    /// map and per-stage residual/shortcut norm ratios on a fixed validation batch.
    pub probe_every: u64,
    /// A "dying" event is raised when the probe's dead-unit fraction is above this for
    /// `dead_alert_window` probes in a row (the paper's symptom, flagged while the run goes on).
    pub dead_alert: f64,
    /// Consecutive probes above `dead_alert` that raise the "dying" event.
    pub dead_alert_window: u32,
    /// Steps `[from, to]` (1-based, inclusive) whose phases every rank records for the
    /// run's timeline (`runs/<id>/trace.json`, Chrome trace format); unset, none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_steps: Option<[u64; 2]>,
    /// Replicas compare parameter checksums every this many steps (0 = never); a mismatch
    /// stops the run naming the step.
    pub check_replicas_every: u64,
    /// A step whose loss or gradient is NaN/Inf is skipped; this many in a row stop the run.
    pub max_nonfinite_steps: u32,
    /// Workers log progress every this many steps.
    pub log_every: u64,
    /// The update rule.
    pub optimizer: OptimizerSection,
    /// The learning rate over the run.
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
            evaluate_average: true,
            eval_every: 0,
            probe_every: 0,
            dead_alert: 0.9,
            dead_alert_window: 3,
            trace_steps: None,
            check_replicas_every: 100,
            max_nonfinite_steps: 5,
            log_every: 10,
            optimizer: OptimizerSection::default(),
            schedule: ScheduleSection::default(),
        }
    }
}
