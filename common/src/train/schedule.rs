//! Learning rate as a function of the optimizer step.

use std::f64::consts::PI;

use crate::config::{ScheduleKind, ScheduleSection};

/// A learning-rate schedule resolved against the run's length.
#[derive(Debug, Clone)]
pub struct LrSchedule {
    base: f64,
    section: ScheduleSection,
    steps_per_epoch: u64,
    total_steps: u64,
}

impl LrSchedule {
    pub fn new(
        base: f64,
        section: &ScheduleSection,
        steps_per_epoch: u64,
        total_steps: u64,
    ) -> Self {
        Self {
            base,
            section: section.clone(),
            steps_per_epoch: steps_per_epoch.max(1),
            total_steps: total_steps.max(1),
        }
    }

    /// Learning rate of (zero-based) `step`.
    pub fn at(&self, step: u64) -> f64 {
        let s = &self.section;
        match s.kind {
            ScheduleKind::Constant => self.base,
            ScheduleKind::Exponential => {
                let epoch = step as f64 / self.steps_per_epoch as f64;
                let periods = epoch / s.decay_epochs;
                let periods = if s.staircase {
                    periods.floor()
                } else {
                    periods
                };
                self.base * s.decay_rate.powf(periods)
            }
            ScheduleKind::Cosine => {
                let progress = step as f64 / self.total_steps as f64;
                0.5 * self.base * (1.0 + (PI * progress.min(1.0)).cos())
            }
        }
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
        };
        LrSchedule::new(0.045, &section, 10, 100)
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
}
