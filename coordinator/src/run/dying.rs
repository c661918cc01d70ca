//! The "dying" alert: the Inception-v4 paper (§3.3) saw residual networks with more than 1000
//! filters "die" early in training, the last layer before the average pooling giving only
//! zeros. The dead-unit probe measures that fraction; this flags it while the run goes on.

/// Watches rank 0's probes for `window` in a row above `threshold`.
#[derive(Debug)]
pub(crate) struct DyingAlert {
    threshold: f64,
    window: u32,
    /// Probes in a row above the threshold, and the step of the first.
    streak: Option<(u32, u64)>,
}

impl DyingAlert {
    /// `train.dead_alert` and `train.dead_alert_window`.
    pub(crate) fn new(threshold: f64, window: u32) -> Self {
        Self {
            threshold,
            window: window.max(1),
            streak: None,
        }
    }

    /// Feeds the probe of step `step`; returns the alert when this probe completes a window
    /// above the threshold (once per streak: again only after the fraction came back down).
    pub(crate) fn observe(&mut self, step: u64, dead_fraction: f64) -> Option<String> {
        if dead_fraction <= self.threshold {
            self.streak = None;
            return None;
        }
        let (count, first) = self.streak.map_or((1, step), |(n, first)| (n + 1, first));
        self.streak = Some((count, first));
        (count == self.window).then(|| {
            format!(
                "dying: {:.1}% of the final feature map is zero at step {step}, above \
                 train.dead_alert = {} for {count} probe(s) in a row since step {first} (the \
                 Inception-v4 paper's dying network, §3.3; scaling the residuals by 0.1-0.3, \
                 model.residual_scale, prevented it there)",
                100.0 * dead_fraction,
                self.threshold
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_once_per_streak_of_window_probes_above_the_threshold() {
        let mut alert = DyingAlert::new(0.9, 3);
        let fractions = [0.95, 0.97, 0.5, 0.91, 0.99, 1.0, 1.0, 0.2, 0.95, 0.96, 0.97];
        let alerts: Vec<(u64, String)> = fractions
            .iter()
            .enumerate()
            .filter_map(|(i, &f)| {
                let step = 10 * (i as u64 + 1);
                alert.observe(step, f).map(|m| (step, m))
            })
            .collect();
        let steps: Vec<u64> = alerts.iter().map(|(s, _)| *s).collect();
        assert_eq!(steps, [60, 110]);
        assert!(alerts[0].1.starts_with("dying: 100.0% "), "{}", alerts[0].1);
        assert!(alerts[0].1.contains("since step 40"), "{}", alerts[0].1);
        assert!(DyingAlert::new(0.9, 1).observe(1, 0.9).is_none());
    }
}
