//! Stragglers: in data-parallel training every rank waits for the slowest in each all-reduce,
//! so one slow node (a throttled GPU, a busy disk) slows the whole run. A rank's own work per
//! step, data wait plus compute, shows it; its all-reduce time is mostly waiting for others.

use std::collections::VecDeque;

use incept_common::proto::StepMetrics;

/// Each rank's newest data + compute seconds per step, and the ranks already reported.
#[derive(Debug)]
pub(super) struct StragglerWatch {
    factor: f64,
    window: usize,
    busy: Vec<VecDeque<f64>>,
    /// Ranks named in an event and not yet back to normal (named again only after recovering).
    flagged: Vec<bool>,
}

impl StragglerWatch {
    /// `cluster.straggler_factor` (0: off) and `straggler_window` over `world` ranks.
    pub(super) fn new(factor: f64, window: usize, world: usize) -> Self {
        Self {
            factor,
            window: window.max(1),
            busy: vec![VecDeque::new(); world],
            flagged: vec![false; world],
        }
    }

    /// Adds `rank`'s steps; returns the event naming a rank that became a straggler.
    pub(super) fn observe(&mut self, rank: u32, steps: &[StepMetrics]) -> Option<String> {
        if self.factor == 0.0 || self.busy.len() < 2 {
            return None;
        }
        let busy = self.busy.get_mut(rank as usize)?;
        for m in steps {
            busy.push_back(m.data_seconds + m.compute_seconds);
            if busy.len() > self.window {
                busy.pop_front();
            }
        }
        if self.busy.iter().any(|b| b.len() < self.window) {
            return None;
        }
        let medians: Vec<f64> = self
            .busy
            .iter()
            .map(|b| median(b.iter().copied()))
            .collect();
        let mut event = None;
        for (rank, &own) in medians.iter().enumerate() {
            let others = median(
                medians
                    .iter()
                    .enumerate()
                    .filter(|(r, _)| *r != rank)
                    .map(|(_, m)| *m),
            );
            let slow = own > self.factor * others;
            if slow && !self.flagged[rank] && event.is_none() {
                event = Some(format!(
                    "straggler: rank {rank} takes {own:.3} s of data + compute per step (median of \
                     its newest {} steps), {:.1} × the other ranks' {others:.3} s \
                     (cluster.straggler_factor = {}); every all-reduce waits for it",
                    self.window,
                    own / others.max(f64::MIN_POSITIVE),
                    self.factor
                ));
                self.flagged[rank] = true;
            } else if !slow {
                self.flagged[rank] = false;
            }
        }
        event
    }
}

/// The median (the mean of the middle two for an even count); NaN for none.
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(compute: f64, count: usize) -> Vec<StepMetrics> {
        (0..count)
            .map(|_| StepMetrics {
                data_seconds: 0.01,
                compute_seconds: compute,
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn a_rank_twice_as_slow_as_the_others_is_named_once_until_it_recovers() {
        let mut watch = StragglerWatch::new(1.5, 4, 3);
        assert!(watch.observe(0, &steps(0.1, 4)).is_none());
        assert!(watch.observe(1, &steps(0.1, 4)).is_none());
        let event = watch.observe(2, &steps(0.25, 4)).expect("rank 2 is slow");
        assert!(
            event.starts_with("straggler: rank 2 takes 0.260 s"),
            "{event}"
        );
        assert!(event.contains("2.4 ×"), "{event}");
        assert!(watch.observe(2, &steps(0.25, 1)).is_none(), "named once");
        assert!(watch.observe(2, &steps(0.1, 4)).is_none(), "recovered");
        assert!(watch.observe(2, &steps(0.3, 4)).is_some(), "slow again");
    }

    #[test]
    fn nothing_is_said_before_every_rank_fills_its_window_or_when_off() {
        let mut watch = StragglerWatch::new(1.5, 4, 2);
        assert!(watch.observe(1, &steps(1.0, 10)).is_none());
        assert!(watch.observe(0, &steps(0.1, 3)).is_none());
        assert!(watch.observe(0, &steps(0.1, 1)).is_some());
        let mut off = StragglerWatch::new(0.0, 4, 2);
        off.observe(1, &steps(1.0, 10));
        assert!(off.observe(0, &steps(0.1, 10)).is_none());
        assert!(
            StragglerWatch::new(1.5, 1, 2)
                .observe(7, &steps(0.1, 1))
                .is_none()
        );
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0].into_iter()), 2.5);
        assert!(median(std::iter::empty()).is_nan());
    }
}
