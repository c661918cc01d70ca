//! Gradient buckets: the flat gradient is all-reduced in fixed-size pieces, so that reducing
//! one bucket on the network overlaps packing the next one on the CPU (as PyTorch DDP's 25 MiB
//! buckets do).

use std::ops::Range;
use std::sync::mpsc;
use std::thread;

use burn::prelude::*;
use burn::tensor::TensorData;

use super::{Collective, CollectiveError, HostBuffer, ReduceOp, TrainDevice, WireFormat};

/// Default bucket size in MiB (`cluster.bucket_mib`), PyTorch DDP's `bucket_cap_mb`.
pub const DEFAULT_BUCKET_MIB: f64 = 25.0;

/// Bytes in `mib` MiB (fractions allowed, for tests that want many small buckets).
pub fn mib_to_bytes(mib: f64) -> usize {
    (mib * f64::from(1 << 20)) as usize
}

/// How a flat gradient is cut into buckets, and the wire format they travel in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GradientBuckets {
    /// Values per bucket (the last one may be shorter).
    bucket_len: usize,
    wire: WireFormat,
}

impl Default for GradientBuckets {
    fn default() -> Self {
        GradientBuckets::new(mib_to_bytes(DEFAULT_BUCKET_MIB), WireFormat::F32)
    }
}

impl GradientBuckets {
    /// Buckets of `bucket_bytes` of f32 values (at least one value each).
    pub fn new(bucket_bytes: usize, wire: WireFormat) -> Self {
        GradientBuckets {
            bucket_len: (bucket_bytes / size_of::<f32>()).max(1),
            wire,
        }
    }

    /// The wire format every bucket is sent in.
    pub fn wire(&self) -> WireFormat {
        self.wire
    }

    /// The buckets of a buffer of `len` values, in order.
    pub fn ranges(&self, len: usize) -> impl Iterator<Item = Range<usize>> + use<> {
        let bucket_len = self.bucket_len;
        (0..len.div_ceil(bucket_len)).map(move |k| k * bucket_len..((k + 1) * bucket_len).min(len))
    }

    /// Mean all-reduce of `data` bucket by bucket: `pack(range, bucket)` fills each bucket on
    /// this thread (adding into what the bucket already holds), and the bucket is handed to a
    /// communication thread that reduces it while `pack` works on the next one.
    ///
    /// Packing stops at the first collective error, which is returned; `data` is then partly
    /// reduced and must not be used.
    pub fn all_reduce_mean(
        &self,
        collective: &mut dyn Collective,
        data: &mut [f32],
        mut pack: impl FnMut(Range<usize>, &mut [f32]),
    ) -> Result<(), CollectiveError> {
        let wire = self.wire;
        thread::scope(|scope| {
            // One bucket queued while another is on the wire: packing runs at most one bucket
            // ahead of the network.
            let (to_network, packed) = mpsc::sync_channel::<&mut [f32]>(1);
            let network = scope.spawn(move || {
                packed
                    .into_iter()
                    .try_for_each(|bucket| collective.all_reduce(bucket, ReduceOp::Mean, wire))
            });
            for (range, bucket) in self
                .ranges(data.len())
                .zip(data.chunks_mut(self.bucket_len))
            {
                pack(range, &mut *bucket);
                if to_network.send(bucket).is_err() {
                    break; // The network thread stopped on an error, returned below.
                }
            }
            drop(to_network);
            network
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Mean all-reduce of a flat gradient on its device, bucket by bucket in the same order as
    /// [`all_reduce_mean`](Self::all_reduce_mean). Where the collective reaches device memory
    /// (NCCL on CUDA) each bucket is reduced in place, and so is a gradient in host memory
    /// (flex); otherwise each is downloaded on this thread into a host buffer while the previous
    /// one is on the wire, and the reduced gradient is uploaded in one piece.
    pub fn all_reduce_mean_tensor<B: TrainDevice>(
        &self,
        collective: &mut dyn Collective,
        flat: Tensor<B, 1>,
    ) -> Result<Tensor<B, 1>, CollectiveError> {
        let [len] = flat.dims();
        if B::reduces_in_place(collective) {
            let reduced = self
                .ranges(len)
                .map(|range| B::all_reduce_in_place(flat.clone().slice(range), collective))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Tensor::cat(reduced, 0));
        }
        let device = flat.device();
        if B::host_memory(&device) {
            let mut buffer = HostBuffer::take(flat);
            self.all_reduce_mean(collective, buffer.values(), |_, _| {})?;
            return Ok(buffer.into_tensor(&device));
        }
        let mut host = vec![0.0; len];
        let mut download_error = None;
        self.all_reduce_mean(collective, &mut host, |range, bucket| {
            match flat.clone().slice(range).into_data().as_slice::<f32>() {
                Ok(values) => bucket.copy_from_slice(values),
                Err(e) => download_error = Some(format!("{e:?}")),
            }
        })?;
        if let Some(error) = download_error {
            return Err(CollectiveError::Invalid(format!(
                "a gradient bucket is not f32: {error}"
            )));
        }
        Ok(Tensor::from_data(
            TensorData::new(host, [len]),
            &flat.device(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::collective::Ring;
    use crate::collective::ring::tests::with_ring;

    /// Connected rings, one per rank, for the test to drive from threads of its own.
    fn rings(world: usize) -> Vec<Ring> {
        with_ring(world, Duration::from_secs(5), |ring| ring)
    }

    /// A gradient that is not a multiple of the bucket size, with distinct values.
    fn gradient(len: usize) -> Vec<f32> {
        (0..len).map(|i| (i as f32 * 0.37).sin() * 1e-3).collect()
    }

    #[test]
    fn ranges_tile_the_buffer_in_order() {
        let buckets = GradientBuckets::new(40, WireFormat::F32); // 10 values
        let ranges: Vec<_> = buckets.ranges(23).collect();
        assert_eq!(ranges, [0..10, 10..20, 20..23]);
        assert_eq!(buckets.ranges(0).count(), 0);
        assert_eq!(
            GradientBuckets::new(1, WireFormat::F32).ranges(3).count(),
            3
        );
        assert_eq!(GradientBuckets::default().bucket_len, 25 << 18);
    }

    #[test]
    fn packing_per_bucket_round_trips_the_gradient_exactly() {
        // Identical gradients on every rank: the mean must give them back bit for bit (a sum
        // of W equal values times 1/W is exact for W = 2 and 4), whichever bucket they fell in.
        for world in [1, 2, 4] {
            let full = gradient(1003);
            let results: Vec<_> = thread::scope(|scope| {
                let handles: Vec<_> = rings(world)
                    .into_iter()
                    .map(|mut ring| {
                        let full = &full;
                        scope.spawn(move || {
                            let mut packed = Vec::new();
                            let mut data = vec![0.0; full.len()];
                            GradientBuckets::new(400, WireFormat::F32)
                                .all_reduce_mean(&mut ring, &mut data, |range, bucket| {
                                    packed.push(range.clone());
                                    for (b, g) in bucket.iter_mut().zip(&full[range]) {
                                        *b += g;
                                    }
                                })
                                .unwrap();
                            (packed, data)
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for (packed, data) in results {
                assert_eq!(
                    packed.len(),
                    11,
                    "world {world}: 1003 values in buckets of 100"
                );
                assert_eq!(data, full, "world {world}");
            }
        }
    }

    #[test]
    fn a_failing_collective_stops_packing() {
        let mut ring = rings(2).remove(0); // its peer is gone
        let mut calls = 0;
        let error = GradientBuckets::new(40, WireFormat::F16)
            .all_reduce_mean(&mut ring, &mut [0.0; 100], |_, _| calls += 1)
            .unwrap_err();
        // One bucket on the wire, one queued, one blocked in the hand-off when the error comes.
        assert!(
            calls <= 3,
            "packed {calls} of 10 buckets after the first failure"
        );
        assert!(matches!(error, CollectiveError::Io { .. }), "{error}");
    }
}
