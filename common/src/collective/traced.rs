//! A communicator that notes when each of its all-reduces ran, for the step timeline: gradient
//! buckets are reduced on a network thread while the next one is packed, so only the
//! communicator sees each start and end.

use std::time::Instant;

use super::{AbortHandle, Collective, CollectiveError, ReduceOp, WireFormat};

/// One all-reduce this communicator made while recording.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    /// When the call began.
    pub started: Instant,
    /// When it returned.
    pub ended: Instant,
    /// Values reduced.
    pub values: usize,
}

/// Wraps a communicator; between [`Traced::record`] and [`Traced::take_calls`] it keeps each
/// all-reduce's times (NCCL's in-place reductions bypass it: see [`Collective::as_nccl`]).
pub struct Traced {
    inner: Box<dyn Collective>,
    recording: bool,
    calls: Vec<Call>,
}

impl Traced {
    /// Wraps `inner`, not recording.
    pub fn new(inner: Box<dyn Collective>) -> Self {
        Self {
            inner,
            recording: false,
            calls: Vec::new(),
        }
    }

    /// Starts keeping the all-reduces' times.
    pub fn record(&mut self) {
        self.recording = true;
    }

    /// Stops keeping them; returns those kept since [`Traced::record`].
    pub fn take_calls(&mut self) -> Vec<Call> {
        self.recording = false;
        std::mem::take(&mut self.calls)
    }
}

impl Collective for Traced {
    fn rank(&self) -> usize {
        self.inner.rank()
    }

    fn world_size(&self) -> usize {
        self.inner.world_size()
    }

    fn all_reduce(
        &mut self,
        data: &mut [f32],
        op: ReduceOp,
        wire: WireFormat,
    ) -> Result<(), CollectiveError> {
        let started = Instant::now();
        let result = self.inner.all_reduce(data, op, wire);
        if self.recording {
            self.calls.push(Call {
                started,
                ended: Instant::now(),
                values: data.len(),
            });
        }
        result
    }

    fn broadcast(&mut self, data: &mut [f32], root: usize) -> Result<(), CollectiveError> {
        self.inner.broadcast(data, root)
    }

    fn abort_handle(&self) -> AbortHandle {
        self.inner.abort_handle()
    }

    #[cfg(feature = "cuda")]
    fn as_nccl(&mut self) -> Option<&mut super::nccl::Nccl> {
        self.inner.as_nccl()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::collective::Ring;
    use crate::collective::ring::tests::with_ring;

    #[test]
    fn only_the_recorded_all_reduces_are_kept_and_results_are_unchanged() {
        let results = with_ring(2, Duration::from_secs(5), |ring: Ring| {
            let mut traced = Traced::new(Box::new(ring));
            let mut before = [1.0, 2.0];
            traced
                .all_reduce(&mut before, ReduceOp::Sum, WireFormat::F32)
                .unwrap();
            traced.record();
            let mut bucket = [3.0; 5];
            traced
                .all_reduce(&mut bucket, ReduceOp::Mean, WireFormat::F32)
                .unwrap();
            let calls = traced.take_calls();
            traced
                .all_reduce(&mut [0.0], ReduceOp::Sum, WireFormat::F32)
                .unwrap();
            (
                before,
                bucket,
                calls.iter().map(|c| c.values).collect::<Vec<_>>(),
            )
        });
        for (before, bucket, calls) in results {
            assert_eq!(before, [2.0, 4.0]);
            assert_eq!(bucket, [3.0; 5]);
            assert_eq!(calls, [5]);
        }
    }
}
