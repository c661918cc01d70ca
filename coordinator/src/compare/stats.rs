//! The numbers a comparison reports: each run's outcome (smoothed loss, steps to a target loss,
//! largest gradient norm, skipped steps, peak dead-unit fraction, whether it "died") and their
//! mean and spread over an arm's seeds.

use std::collections::BTreeMap;

use super::history::History;
use crate::run::DyingAlert;

/// The weight of TensorBoard's debiased exponential moving average applied to the training
/// loss before it is compared with a target (the dashboard's default slider position).
pub const LOSS_SMOOTHING: f64 = 0.9;

/// TensorBoard's debiased exponential moving average of `values` with weight `weight`.
pub fn smooth(values: &[f64], weight: f64) -> Vec<f64> {
    let mut average = 0.0;
    let mut debias = 1.0;
    values
        .iter()
        .map(|&value| {
            average = weight * average + (1.0 - weight) * value;
            debias *= weight;
            average / (1.0 - debias)
        })
        .collect()
}

/// A run's value at each step, in step order.
pub type Curve = Vec<(u64, f64)>;

/// What one run came to.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The last step reported.
    pub last_step: Option<u64>,
    /// (step, smoothed training loss) of each finite step.
    pub smoothed_loss: Curve,
    /// The largest finite pre-clip gradient norm.
    pub max_grad_norm: Option<f64>,
    /// Steps skipped because the loss or gradient was not finite.
    pub skipped: u64,
    pub peak_dead_fraction: Option<f64>,
    /// The step at which the dead-unit fraction had stayed above the run's `train.dead_alert`
    /// for `train.dead_alert_window` probes in a row (the dashboard's "dying" event).
    pub died_at: Option<u64>,
}

impl Outcome {
    pub fn of(run: &History) -> Self {
        let finite: Vec<_> = run.steps.iter().filter(|s| s.loss.is_finite()).collect();
        let losses: Vec<f64> = finite.iter().map(|s| s.loss).collect();
        let smoothed_loss = finite
            .iter()
            .map(|s| s.step)
            .zip(smooth(&losses, LOSS_SMOOTHING))
            .collect();
        let (threshold, window) = run.dead_alert;
        let mut alert = DyingAlert::new(threshold, window);
        let died_at = run
            .probes
            .iter()
            .find_map(|p| alert.observe(p.step, p.dead_fraction).map(|_| p.step));
        Self {
            last_step: run.steps.last().map(|s| s.step),
            smoothed_loss,
            max_grad_norm: maximum(run.steps.iter().map(|s| s.grad_norm)),
            skipped: run.steps.iter().filter(|s| s.skipped).count() as u64,
            peak_dead_fraction: maximum(run.probes.iter().map(|p| p.dead_fraction)),
            died_at,
        }
    }

    /// The smoothed loss at the last step.
    pub fn final_loss(&self) -> Option<f64> {
        self.smoothed_loss.last().map(|&(_, loss)| loss)
    }

    /// The first step at which the smoothed loss is at most `target`.
    pub fn steps_to(&self, target: f64) -> Option<u64> {
        self.smoothed_loss
            .iter()
            .find(|&&(_, loss)| loss <= target)
            .map(|&(step, _)| step)
    }
}

/// The largest finite value, if any.
fn maximum(values: impl Iterator<Item = f64>) -> Option<f64> {
    values.filter(|v| v.is_finite()).reduce(f64::max)
}

/// The default loss target: the median of the runs' final smoothed losses, so that about half
/// of them reach it and the steps they took say which got there faster.
pub fn median_final_loss(outcomes: &[Outcome]) -> Option<f64> {
    let mut finals: Vec<f64> = outcomes.iter().filter_map(Outcome::final_loss).collect();
    finals.sort_by(f64::total_cmp);
    match finals.len() {
        0 => None,
        n if n % 2 == 1 => Some(finals[n / 2]),
        n => Some((finals[n / 2 - 1] + finals[n / 2]) / 2.0),
    }
}

/// The mean of some values and their sample standard deviation (over an arm's seeds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub mean: f64,
    /// `None` for a single value.
    pub deviation: Option<f64>,
    pub count: usize,
}

impl Spread {
    /// `None` when there is no value.
    pub fn of(values: &[f64]) -> Option<Self> {
        let count = values.len();
        if count == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / count as f64;
        let deviation = (count > 1).then(|| {
            let squares: f64 = values.iter().map(|v| (v - mean).powi(2)).sum();
            (squares / (count - 1) as f64).sqrt()
        });
        Some(Self {
            mean,
            deviation,
            count,
        })
    }

    /// `mean ± deviation`, each with `decimals` decimals.
    pub fn format(&self, decimals: usize) -> String {
        match self.deviation {
            Some(d) => format!("{:.decimals$} ± {d:.decimals$}", self.mean),
            None => format!("{:.decimals$}", self.mean),
        }
    }
}

/// Per step, the mean, minimum and maximum of the runs' values at that step (each run's
/// points given as (step, value)); steps only some runs reached average those runs.
pub fn across_runs<'a>(
    runs: impl IntoIterator<Item = &'a [(u64, f64)]>,
) -> Vec<(u64, f64, f64, f64)> {
    let mut by_step: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for points in runs {
        for &(step, value) in points {
            if value.is_finite() {
                by_step.entry(step).or_default().push(value);
            }
        }
    }
    by_step
        .into_iter()
        .map(|(step, values)| {
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            let low = values.iter().copied().fold(f64::INFINITY, f64::min);
            let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (step, mean, low, high)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::history::{Probe, Step};

    fn run(losses: &[f64], dead: &[f64]) -> History {
        History {
            id: "r".into(),
            status: "succeeded".into(),
            seed: 1,
            config_hash: String::new(),
            code_version: None,
            config: BTreeMap::new(),
            dead_alert: (0.9, 2),
            steps: losses
                .iter()
                .enumerate()
                .map(|(i, &loss)| Step {
                    step: i as u64 + 1,
                    loss,
                    learning_rate: 0.1,
                    grad_norm: if loss.is_finite() {
                        loss * 10.0
                    } else {
                        f64::INFINITY
                    },
                    skipped: !loss.is_finite(),
                })
                .collect(),
            evaluations: Vec::new(),
            final_accuracy: None,
            probes: dead
                .iter()
                .enumerate()
                .map(|(i, &dead_fraction)| Probe {
                    step: 10 * (i as u64 + 1),
                    dead_fraction,
                    ratios: [None; 3],
                })
                .collect(),
        }
    }

    #[test]
    fn smoothing_is_tensorboards_debiased_average() {
        let smoothed = smooth(&[2.0, 2.0, 2.0], 0.9);
        assert!(
            smoothed.iter().all(|v| (v - 2.0).abs() < 1e-12),
            "{smoothed:?}"
        );
        let smoothed = smooth(&[1.0, 0.0], 0.5);
        // (0.5·0.5·1 + 0.5·0) / (1 − 0.25)
        assert!((smoothed[1] - 1.0 / 3.0).abs() < 1e-12, "{smoothed:?}");
    }

    #[test]
    fn an_outcome_counts_skips_peaks_and_the_death_window() {
        let outcome = Outcome::of(&run(
            &[3.0, f64::NAN, 2.0, 1.0, 0.5],
            &[0.5, 0.95, 0.8, 0.95, 0.99, 1.0],
        ));
        assert_eq!(outcome.last_step, Some(5));
        assert_eq!(outcome.skipped, 1);
        assert_eq!(outcome.max_grad_norm, Some(30.0));
        assert_eq!(outcome.smoothed_loss.len(), 4, "the NaN step is left out");
        assert_eq!(outcome.peak_dead_fraction, Some(1.0));
        // Two probes in a row above 0.9: steps 40 and 50.
        assert_eq!(outcome.died_at, Some(50));
        assert_eq!(outcome.steps_to(10.0), Some(1));
        assert_eq!(outcome.steps_to(0.0), None);
        let healthy = Outcome::of(&run(&[1.0], &[0.95, 0.5, 0.95]));
        assert_eq!(healthy.died_at, None);
    }

    #[test]
    fn spread_is_the_mean_and_sample_deviation() {
        let spread = Spread::of(&[1.0, 3.0]).unwrap();
        assert_eq!((spread.mean, spread.count), (2.0, 2));
        assert!((spread.deviation.unwrap() - 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(spread.format(1), "2.0 ± 1.4");
        assert_eq!(Spread::of(&[0.25]).unwrap().format(2), "0.25");
        assert_eq!(Spread::of(&[]), None);
    }

    #[test]
    fn the_default_target_is_the_median_final_loss() {
        let outcomes: Vec<Outcome> = [[3.0], [1.0], [2.0]]
            .iter()
            .map(|l| Outcome::of(&run(l, &[])))
            .collect();
        assert_eq!(median_final_loss(&outcomes), Some(2.0));
        assert_eq!(median_final_loss(&outcomes[..2]), Some(2.0));
        assert_eq!(median_final_loss(&[]), None);
    }

    #[test]
    fn runs_are_averaged_step_by_step() {
        let a = [(1, 1.0), (2, 2.0)];
        let b = [(1, 3.0)];
        assert_eq!(
            across_runs([&a[..], &b[..]]),
            [(1, 2.0, 1.0, 3.0), (2, 2.0, 2.0, 2.0)]
        );
    }
}
