//! The rules every value of an experiment must follow on its own; the rules that need the
//! model or the dataset are [`crate::resolve`]'s.

use std::fmt;

use super::{CollectiveBackend, Crops, DataSource, Experiment, ScheduleKind, WarmupKind};
use crate::collective::WireFormat;

impl Experiment {
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
        check.require(
            c.tls_cert.is_some() == c.tls_key.is_some(),
            "cluster.tls_key",
            c.tls_key
                .as_ref()
                .map_or("unset".into(), |key| key.display().to_string()),
            "cluster.tls_cert and cluster.tls_key go together: set both (TLS) or neither",
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
        check.require(
            c.straggler_factor == 0.0 || c.straggler_factor > 1.0,
            "cluster.straggler_factor",
            c.straggler_factor,
            "must be above 1 (or 0: off)",
        );
        check.at_least("cluster.straggler_window", c.straggler_window, 1);
        check.at_least("cluster.gpus_per_node", c.gpus_per_node, 1);
        if let Some(min) = c.min_workers {
            check.require(
                min >= 1 && min <= c.world_size,
                "cluster.min_workers",
                min,
                format!("must be in 1..=cluster.world_size ({})", c.world_size),
            );
        }
        check.at_least("cluster.rejoin_timeout_s", c.rejoin_timeout_s, 1);
        check.at_least("cluster.reconnect_timeout_s", c.reconnect_timeout_s, 1);

        let m = &self.model;
        check.at_least("model.num_classes", m.num_classes, 2);
        check.require(
            m.width > 0.0 && m.width <= 4.0,
            "model.width",
            m.width,
            "must be in (0, 4]",
        );
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
        check.require(
            (0.0..=1.0).contains(&d.max_bad_fraction),
            "data.max_bad_fraction",
            d.max_bad_fraction,
            "must be in [0, 1]",
        );
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
        check.require(
            a.eval_crops == Crops::One || d.source != DataSource::Synthetic,
            "data.augment.eval_crops",
            a.eval_crops.count(),
            "needs images to crop: the synthetic source makes model-ready inputs (use 1)",
        );

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
        check.fraction("train.dead_alert", t.dead_alert);
        check.at_least("train.dead_alert_window", t.dead_alert_window, 1);
        if let Some([from, to]) = t.trace_steps {
            check.require(
                from >= 1 && from <= to,
                "train.trace_steps",
                format!("{:?}", [from, to]),
                "must be [from, to] with 1 ≤ from ≤ to (steps are numbered from 1)",
            );
        }
        // A run with no step to train (an evaluation) needs no training batch.
        let trains = t.max_steps != Some(0);
        if trains && t.batch_size >= 1 && t.accumulate >= 1 && c.world_size >= 1 {
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
}

/// One invalid value.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// The key's full path, e.g. `train.batch_size`.
    pub key: String,
    /// The value as given.
    pub value: String,
    /// What the value must be.
    pub rule: String,
}

impl Problem {
    /// A problem with `key`, whose `value` breaks `rule`.
    pub fn new(key: impl Into<String>, value: impl fmt::Display, rule: impl Into<String>) -> Self {
        Problem {
            key: key.into(),
            value: value.to_string(),
            rule: rule.into(),
        }
    }
}

/// Collects the problems of one validation; each method checks one rule and names the key.
#[derive(Default)]
struct Checker(Vec<Problem>);

impl Checker {
    fn require(&mut self, ok: bool, key: &str, value: impl fmt::Display, rule: impl Into<String>) {
        if !ok {
            self.0.push(Problem::new(key, value, rule));
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
pub struct ValidationErrors(
    /// The problems, in the order the keys are checked.
    pub Vec<Problem>,
);

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ScheduleSection;

    #[test]
    fn lr_zero_is_invalid() {
        let mut exp = Experiment::default();
        exp.train.optimizer.learning_rate = 0.0;
        let err = exp.validate().unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert_eq!(err.0[0].key, "train.optimizer.learning_rate");
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
}
