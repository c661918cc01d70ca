//! Epoch plans: which training samples each rank reads at each step.
//!
//! Every epoch is a seeded permutation of the training set cut into global micro-batches.
//! Step `s` consumes `world_size × accumulate` consecutive micro-batches; rank `r` takes the
//! `accumulate` of them starting at `r × accumulate`. So ranks never share a sample within an
//! epoch, every rank runs the same number of steps, the trailing remainder of the permutation
//! (fewer than one global batch) is skipped, and W workers × batch B read exactly what one
//! worker accumulating W micro-batches of B reads.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// The sample schedule of a run.
#[derive(Debug, Clone)]
pub struct EpochPlan {
    seed: u64,
    train_samples: usize,
    world_size: usize,
    batch_size: usize,
    accumulate: usize,
    /// The permutation of the epoch last asked for.
    cached: Option<(u64, Vec<u64>)>,
}

impl EpochPlan {
    pub fn new(
        seed: u64,
        train_samples: usize,
        world_size: usize,
        batch_size: usize,
        accumulate: usize,
    ) -> Self {
        Self {
            seed,
            train_samples,
            world_size,
            batch_size,
            accumulate,
            cached: None,
        }
    }

    /// Optimizer steps per epoch.
    pub fn steps_per_epoch(&self) -> u64 {
        (self.train_samples / (self.batch_size * self.accumulate * self.world_size)) as u64
    }

    /// The epoch a step belongs to.
    pub fn epoch_of(&self, step: u64) -> u64 {
        step / self.steps_per_epoch()
    }

    /// Sample indices of micro-batch `micro` of `step` for `rank`.
    pub fn micro_batch(&mut self, step: u64, rank: usize, micro: usize) -> Vec<u64> {
        let per_epoch = self.steps_per_epoch();
        let (epoch, in_epoch) = (step / per_epoch, step % per_epoch);
        let group = self.world_size * self.accumulate;
        let global = in_epoch as usize * group + rank * self.accumulate + micro;
        let (start, len) = (global * self.batch_size, self.batch_size);
        self.permutation(epoch)[start..start + len].to_vec()
    }

    fn permutation(&mut self, epoch: u64) -> &[u64] {
        if self.cached.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut order: Vec<u64> = (0..self.train_samples as u64).collect();
            let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x5EED_0FE9);
            rng.set_stream(epoch);
            order.shuffle(&mut rng);
            self.cached = Some((epoch, order));
        }
        &self.cached.as_ref().expect("filled above").1
    }
}

/// Validation samples of `rank`: a strided, disjoint share of `0..val_samples`.
pub fn validation_share(val_samples: usize, rank: usize, world_size: usize) -> Vec<u64> {
    (rank..val_samples)
        .step_by(world_size)
        .map(|i| i as u64)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn epoch_samples(plan: &mut EpochPlan, epoch: u64, world: usize, acc: usize) -> Vec<Vec<u64>> {
        let steps = plan.steps_per_epoch();
        (0..world)
            .map(|rank| {
                (epoch * steps..(epoch + 1) * steps)
                    .flat_map(|s| (0..acc).map(move |m| (s, m)))
                    .flat_map(|(s, m)| plan.micro_batch(s, rank, m))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn ranks_are_disjoint_equal_and_never_repeat_within_an_epoch() {
        for (n, world, batch, acc) in [
            (100, 2, 8, 1),
            (101, 3, 4, 2),
            (64, 4, 4, 1),
            (1000, 5, 7, 3),
        ] {
            let mut plan = EpochPlan::new(3, n, world, batch, acc);
            for epoch in 0..2 {
                let per_rank = epoch_samples(&mut plan, epoch, world, acc);
                let expected = plan.steps_per_epoch() as usize * batch * acc;
                let mut seen = HashSet::new();
                for samples in &per_rank {
                    assert_eq!(samples.len(), expected);
                    for &s in samples {
                        assert!(s < n as u64);
                        assert!(seen.insert(s), "sample {s} twice in epoch {epoch}");
                    }
                }
                // Only the remainder (less than one global batch) is skipped.
                assert!(n - seen.len() < world * batch * acc);
            }
        }
    }

    #[test]
    fn epochs_are_shuffled_differently() {
        let mut plan = EpochPlan::new(3, 100, 1, 10, 1);
        let first = plan.micro_batch(0, 0, 0);
        let next_epoch = plan.micro_batch(plan.steps_per_epoch(), 0, 0);
        assert_ne!(first, next_epoch);
    }

    #[test]
    fn workers_read_what_one_accumulating_worker_reads() {
        let mut two = EpochPlan::new(9, 200, 2, 5, 1);
        let mut one = EpochPlan::new(9, 200, 1, 5, 2);
        for step in 0..20 {
            for r in 0..2 {
                assert_eq!(two.micro_batch(step, r, 0), one.micro_batch(step, 0, r));
            }
        }
    }

    #[test]
    fn validation_shares_partition_the_split() {
        let all: Vec<u64> = (0..3).flat_map(|r| validation_share(10, r, 3)).collect();
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
    }
}
