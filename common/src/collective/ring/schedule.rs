//! Which part of the buffer each rank sends and receives at each step of a ring all-reduce,
//! and how a broadcast is cut into messages.

use std::ops::Range;

/// Values per pipelined all-reduce segment (512 KiB of f32): small enough that a step's chunk of
/// a large bucket spans several segments in flight, large enough that the per-message header,
/// system calls and thread hand-offs stay a small fraction of the transfer.
pub(super) const SEGMENT_VALUES: usize = 128 * 1024;
/// Elements per broadcast message: large enough to amortise the per-message cost, small enough
/// that downstream ranks start forwarding long before the root has sent everything.
pub(super) const BROADCAST_SEGMENT: usize = 64 * 1024;

/// Which ranges of the buffer one rank sends and receives at each all-reduce unit.
///
/// Step `g` of `2 (W - 1)` sends chunk `rank - g` and receives chunk `rank - g - 1` (mod `W`):
/// the first `W - 1` steps reduce, the rest gather. Every chunk is cut into the same number of
/// segments, so unit `(g, s)` of the sender is unit `(g - 1, s)` of the receiver.
pub(super) struct Schedule {
    rank: usize,
    world: usize,
    len: usize,
    /// Segments per chunk.
    pub(super) segments: usize,
}

impl Schedule {
    pub(super) fn new(rank: usize, world: usize, len: usize) -> Self {
        let segments = len.div_ceil(world).div_ceil(SEGMENT_VALUES).max(1);
        Schedule {
            rank,
            world,
            len,
            segments,
        }
    }

    pub(super) fn steps(&self) -> usize {
        2 * (self.world - 1)
    }

    /// Units completed once unit `(step, segment)` is (the progress counters count units).
    pub(super) fn units_through(&self, step: usize, segment: usize) -> usize {
        step * self.segments + segment + 1
    }

    pub(super) fn sent(&self, step: usize, segment: usize) -> Range<usize> {
        self.range((self.rank + 2 * self.world - step) % self.world, segment)
    }

    pub(super) fn received(&self, step: usize, segment: usize) -> Range<usize> {
        self.range(
            (self.rank + 2 * self.world - step - 1) % self.world,
            segment,
        )
    }

    pub(super) fn is_reduce(&self, step: usize) -> bool {
        step < self.world - 1
    }

    fn range(&self, chunk_index: usize, segment: usize) -> Range<usize> {
        let chunk = chunk(self.len, self.world, chunk_index);
        let part = self::chunk(chunk.len(), self.segments, segment);
        chunk.start + part.start..chunk.start + part.end
    }
}

/// Range of chunk `index` when `len` elements are split into `world` chunks whose sizes
/// differ by at most one (the first `len % world` chunks hold one extra element).
fn chunk(len: usize, world: usize, index: usize) -> Range<usize> {
    let (base, extra) = (len / world, len % world);
    let start = index * base + index.min(extra);
    start..start + base + usize::from(index < extra)
}

/// Ranges of the broadcast messages: full segments, then a shorter (possibly empty) tail.
///
/// The tail is always sent, even when empty, so that two different lengths never produce the
/// same sequence of message sizes.
pub(super) fn broadcast_segments(len: usize) -> impl Iterator<Item = Range<usize>> {
    (0..=len / BROADCAST_SEGMENT).map(move |i| {
        let start = i * BROADCAST_SEGMENT;
        start..(start + BROADCAST_SEGMENT).min(len)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_buffer_with_sizes_within_one() {
        for (len, world) in [(0, 3), (2, 4), (7, 3), (1001, 4), (12, 4)] {
            let chunks: Vec<_> = (0..world).map(|c| chunk(len, world, c)).collect();
            assert_eq!(chunks[0].start, 0);
            assert_eq!(chunks[world - 1].end, len);
            assert!(chunks.windows(2).all(|w| w[0].end == w[1].start));
            let sizes: Vec<_> = chunks.iter().map(|c| c.len()).collect();
            assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
        }
    }
}
