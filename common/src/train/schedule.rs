//! Learning rate as a function of the optimizer step.
//!
//! Three stages compose, in this order: the linear scaling rule fixes the base rate from the
//! global batch, the decay schedule (`constant`, `exponential`, `step`, `cosine`) gives the rate
//! of each step, and a warm-up (`none`, `constant`, `linear`) overrides the first steps. Every
//! stage runs on the same step clock, so warm-up does not shift the decay.

use std::f64::consts::PI;

use crate::config::{ScheduleKind, ScheduleSection, WarmupKind};

/// A learning-rate schedule resolved against the run's length and global batch.
#[derive(Debug, Clone)]
pub struct LrSchedule {
    base: f64,
    section: ScheduleSection,
    steps_per_epoch: u64,
    total_steps: u64,
}

impl LrSchedule {
    /// `learning_rate` is the configured rate; it is rescaled by `global_batch /
    /// reference_batch` when `section.reference_batch` is set (linear scaling rule).
    pub fn new(
        learning_rate: f64,
        section: &ScheduleSection,
        steps_per_epoch: u64,
        total_steps: u64,
        global_batch: usize,
    ) -> Self {
        Self {
            base: scaled_base(learning_rate, section.reference_batch, global_batch),
            section: section.clone(),
            steps_per_epoch: steps_per_epoch.max(1),
            total_steps: total_steps.max(1),
        }
    }

    /// The base rate after the linear scaling rule: what the schedule starts from and what a
    /// run should log as its effective learning rate.
    pub fn base(&self) -> f64 {
        self.base
    }

    /// Learning rate of (zero-based) `step`.
    pub fn at(&self, step: u64) -> f64 {
        let s = &self.section;
        let warmup_steps = s.warmup_steps;
        if step >= warmup_steps {
            return self.decayed(step);
        }
        let start = self.base * s.warmup_factor;
        match s.warmup {
            WarmupKind::None => self.decayed(step),
            WarmupKind::Constant => start,
            WarmupKind::Linear => {
                let progress = step as f64 / warmup_steps as f64;
                start + (self.decayed(warmup_steps) - start) * progress
            }
        }
    }

    /// The decay schedule alone, ignoring warm-up.
    fn decayed(&self, step: u64) -> f64 {
        let s = &self.section;
        let epoch = step as f64 / self.steps_per_epoch as f64;
        match s.kind {
            ScheduleKind::Constant => self.base,
            ScheduleKind::Exponential => {
                let periods = epoch / s.decay_epochs;
                let periods = if s.staircase {
                    periods.floor()
                } else {
                    periods
                };
                self.base * s.decay_rate.powf(periods)
            }
            ScheduleKind::Step => {
                let reached = s.milestones.iter().filter(|&&m| epoch >= m).count();
                self.base * s.decay_rate.powi(reached as i32)
            }
            ScheduleKind::Cosine => {
                let progress = step as f64 / self.total_steps as f64;
                0.5 * self.base * (1.0 + (PI * progress.min(1.0)).cos())
            }
        }
    }
}

/// Linear scaling rule (Goyal et al.): the rate grows with the global batch relative to the
/// batch it was tuned for; without a reference batch the rate is taken as given.
fn scaled_base(learning_rate: f64, reference_batch: Option<usize>, global_batch: usize) -> f64 {
    match reference_batch {
        Some(reference) => learning_rate * global_batch as f64 / reference as f64,
        None => learning_rate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(kind: ScheduleKind, staircase: bool) -> LrSchedule {
        let section = ScheduleSection {
            kind,
            decay_rate: 0.94,
            decay_epochs: 2.0,
            staircase,
            ..ScheduleSection::default()
        };
        LrSchedule::new(0.045, &section, 10, 100, 32)
    }

    /// 10 steps per epoch, 100 steps, global batch 32, base 0.045.
    fn with(section: ScheduleSection) -> LrSchedule {
        LrSchedule::new(0.045, &section, 10, 100, 32)
    }

    fn warmup(warmup: WarmupKind, kind: ScheduleKind, staircase: bool) -> LrSchedule {
        with(ScheduleSection {
            kind,
            staircase,
            warmup,
            warmup_steps: 10,
            warmup_factor: 0.1,
            ..ScheduleSection::default()
        })
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn exponential_staircase_drops_every_two_epochs() {
        let s = schedule(ScheduleKind::Exponential, true);
        assert_eq!(s.at(0), 0.045);
        assert_eq!(s.at(19), 0.045);
        assert!((s.at(20) - 0.045 * 0.94).abs() < 1e-12);
        assert!((s.at(45) - 0.045 * 0.94 * 0.94).abs() < 1e-12);
    }

    #[test]
    fn exponential_smooth_decays_continuously() {
        let s = schedule(ScheduleKind::Exponential, false);
        assert!((s.at(10) - 0.045 * 0.94f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn cosine_goes_from_base_to_zero() {
        let s = schedule(ScheduleKind::Cosine, false);
        assert_eq!(s.at(0), 0.045);
        assert!((s.at(50) - 0.0225).abs() < 1e-12);
        assert!(s.at(100).abs() < 1e-12);
    }

    #[test]
    fn step_decays_at_each_milestone() {
        let s = with(ScheduleSection {
            kind: ScheduleKind::Step,
            decay_rate: 0.1,
            milestones: vec![3.0, 6.5],
            ..ScheduleSection::default()
        });
        assert_eq!(s.at(0), 0.045);
        assert_eq!(s.at(29), 0.045);
        assert!(close(s.at(30), 0.0045));
        assert!(close(s.at(64), 0.0045));
        assert!(close(s.at(65), 0.00045));
        assert!(close(s.at(99), 0.00045));
    }

    #[test]
    fn linear_scaling_rule_scales_base_by_global_batch() {
        let section = ScheduleSection {
            kind: ScheduleKind::Constant,
            reference_batch: Some(1600),
            ..ScheduleSection::default()
        };
        let s = LrSchedule::new(0.045, &section, 10, 100, 640);
        assert!(close(s.base(), 0.045 * 640.0 / 1600.0));
        assert!(close(s.at(50), 0.018));
        let unscaled = ScheduleSection {
            reference_batch: None,
            ..section
        };
        assert_eq!(
            LrSchedule::new(0.045, &unscaled, 10, 100, 640).base(),
            0.045
        );
    }

    #[test]
    fn no_warmup_is_the_decay_schedule() {
        let s = warmup(WarmupKind::None, ScheduleKind::Exponential, true);
        assert_eq!(s.at(0), 0.045);
        assert_eq!(s.at(5), 0.045);
    }

    #[test]
    fn constant_warmup_is_low_then_full() {
        let s = warmup(WarmupKind::Constant, ScheduleKind::Constant, true);
        assert!(close(s.at(0), 0.0045));
        assert!(close(s.at(9), 0.0045));
        assert_eq!(s.at(10), 0.045);
        assert_eq!(s.at(99), 0.045);
    }

    #[test]
    fn constant_warmup_composes_with_exponential_decay() {
        let decay = schedule(ScheduleKind::Exponential, false);
        let s = warmup(WarmupKind::Constant, ScheduleKind::Exponential, false);
        assert!(close(s.at(9), 0.0045));
        for step in [10, 20, 55, 99] {
            assert_eq!(s.at(step), decay.at(step), "step {step}");
        }
        assert!(close(s.at(10), 0.045 * 0.94f64.sqrt()));
    }

    #[test]
    fn linear_warmup_ramps_to_the_schedule() {
        let s = warmup(WarmupKind::Linear, ScheduleKind::Exponential, true);
        assert!(close(s.at(0), 0.0045));
        assert!(close(s.at(5), 0.0045 + (0.045 - 0.0045) / 2.0));
        assert_eq!(s.at(10), 0.045);
        assert!(s.at(1) > s.at(0) && s.at(9) > s.at(8) && s.at(9) < s.at(10));
    }

    #[test]
    fn linear_warmup_is_continuous_where_it_ends() {
        let s = warmup(WarmupKind::Linear, ScheduleKind::Exponential, false);
        let target = 0.045 * 0.94f64.sqrt();
        assert!(close(s.at(10), target));
        let slope = (target - 0.0045) / 10.0;
        assert!(close(s.at(9), target - slope));
        assert!((s.at(11) - s.at(10)).abs() < slope);
    }
}
