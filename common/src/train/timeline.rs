//! The step timeline: when each phase of a traced step ran on this rank, as wall-clock spans
//! that line up across machines (the coordinator writes them as a Chrome trace).

use std::ops::RangeInclusive;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Where a span ran: phases of the training thread, or the network thread's all-reduces,
/// which overlap the packing of later buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// The training thread: data wait, forward, backward, optimizer, checkpoint.
    Training = 0,
    /// The network thread: each all-reduce.
    Network = 1,
}

/// One phase of a step.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// The phase, e.g. `forward` or `all-reduce bucket 3 (25.0 MiB)`.
    pub name: String,
    /// The step it belongs to, 1-based.
    pub step: u64,
    /// Where it ran.
    pub lane: Lane,
    /// Microseconds since the Unix epoch.
    pub start_us: u64,
    /// How long it took, in microseconds.
    pub duration_us: u64,
}

/// The spans of the steps `train.trace_steps` names; records nothing outside them.
#[derive(Debug)]
pub struct Timeline {
    steps: Option<RangeInclusive<u64>>,
    /// An instant and the wall-clock time it stands for: spans are measured on the monotonic
    /// clock and placed on the wall clock through it.
    anchor: (Instant, u64),
    spans: Vec<Span>,
}

impl Timeline {
    /// Records the 1-based steps `[from, to]`, or none.
    pub fn new(steps: Option<[u64; 2]>) -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            steps: steps.map(|[from, to]| from..=to),
            anchor: (Instant::now(), wall.as_micros() as u64),
            spans: Vec::new(),
        }
    }

    /// Whether step `step` (1-based) is traced.
    pub fn traces(&self, step: u64) -> bool {
        self.steps.as_ref().is_some_and(|s| s.contains(&step))
    }

    /// Records `name` of step `step` from `started` until `ended`, when the step is traced.
    pub fn record(&mut self, step: u64, lane: Lane, name: &str, started: Instant, ended: Instant) {
        if !self.traces(step) {
            return;
        }
        let (anchor, anchor_us) = self.anchor;
        let offset_us = |t: Instant| match t.checked_duration_since(anchor) {
            Some(after) => anchor_us + after.as_micros() as u64,
            None => anchor_us.saturating_sub(anchor.duration_since(t).as_micros() as u64),
        };
        self.spans.push(Span {
            name: name.to_string(),
            step,
            lane,
            start_us: offset_us(started),
            duration_us: ended.saturating_duration_since(started).as_micros() as u64,
        });
    }

    /// Records `name` of step `step` from `started` until now.
    pub fn record_until_now(&mut self, step: u64, lane: Lane, name: &str, started: Instant) {
        self.record(step, lane, name, started, Instant::now());
    }

    /// The spans recorded since the last call.
    pub fn take(&mut self) -> Vec<Span> {
        std::mem::take(&mut self.spans)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn only_the_named_steps_are_recorded_on_the_wall_clock() {
        let mut timeline = Timeline::new(Some([2, 3]));
        let started = Instant::now();
        let ended = started + Duration::from_millis(5);
        for step in 1..=4 {
            timeline.record(step, Lane::Training, "forward", started, ended);
        }
        let spans = timeline.take();
        assert_eq!(spans.iter().map(|s| s.step).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(spans[0].duration_us, 5000);
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        assert!(now_us.abs_diff(spans[0].start_us) < 1_000_000);
        assert!(timeline.take().is_empty());
        assert!(!Timeline::new(None).traces(1));
    }
}
