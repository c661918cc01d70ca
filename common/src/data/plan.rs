//! Epoch plans: which training samples each rank reads at each step.
//!
//! A training split is a list of shards (TFRecord files, or one shard for a random-access
//! source). Every epoch reads the shards in a seeded order of their own and passes the
//! concatenated stream through a seeded shuffle buffer (TensorFlow's `shuffle(buffer)`), so the
//! epoch's stream is a permutation of the whole split that is a pure function of
//! (seed, epoch). A buffer at least as large as the split gives a uniform permutation.
//!
//! The stream is cut into global micro-batches: step `s` consumes `world_size × accumulate`
//! consecutive ones, and rank `r` takes the `accumulate` starting at `r × accumulate`. So ranks
//! never share a sample within an epoch, every rank runs the same number of steps, and W
//! workers × batch B read exactly what one worker accumulating W micro-batches of B reads.
//!
//! Remainder: the tail of an epoch's stream shorter than one global batch is not read that
//! epoch (the stream is reshuffled every epoch, so no sample is skipped systematically).
//!
//! Resume: a [`DataPosition`] (epoch, samples of that epoch's stream already consumed) is stored
//! in every checkpoint and handed back in the assignment. A plan anchored there continues the
//! same stream, even with another world size or batch: the rest of that epoch is cut into the
//! new global batches, so a restarted run neither repeats nor skips samples.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Where a run stands in its training data: the next unread sample of an epoch's stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataPosition {
    /// Epoch being read, counted from 0.
    pub epoch: u64,
    /// Samples of the epoch's stream already consumed.
    pub offset: u64,
}

/// How a split's samples are grouped on disk and shuffled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardLayout {
    /// Samples per shard, in index order: sample `i` of shard `k` has global index
    /// `sizes[..k].sum() + i`.
    pub sizes: Vec<u64>,
    /// Samples held by the shuffle buffer.
    pub shuffle_buffer: u64,
}

impl ShardLayout {
    /// One shard shuffled whole: a uniform permutation, for random-access sources.
    pub fn uniform(samples: u64) -> Self {
        Self {
            sizes: vec![samples],
            shuffle_buffer: samples,
        }
    }

    /// Samples in the split: the sum of all shard sizes.
    pub fn samples(&self) -> u64 {
        self.sizes.iter().sum()
    }

    /// The global sample order of `epoch`: shards in a seeded order, through the shuffle buffer.
    pub fn epoch_order(&self, seed: u64, epoch: u64) -> Vec<u64> {
        let starts: Vec<u64> = self
            .sizes
            .iter()
            .scan(0, |next, &n| {
                let start = *next;
                *next += n;
                Some(start)
            })
            .collect();
        let mut shards: Vec<usize> = (0..self.sizes.len()).collect();
        shards.shuffle(&mut epoch_rng(seed, epoch, 0));
        let stream = shards
            .into_iter()
            .flat_map(|k| starts[k]..starts[k] + self.sizes[k]);
        shuffle_buffered(
            stream,
            self.shuffle_buffer.max(1) as usize,
            &mut epoch_rng(seed, epoch, 1),
        )
    }
}

/// TensorFlow's `Dataset.shuffle(buffer)`: fill a buffer, then emit a random element of it and
/// put the next input in its place; drain the rest in random order. Every input comes out once.
fn shuffle_buffered(
    stream: impl Iterator<Item = u64>,
    buffer: usize,
    rng: &mut impl Rng,
) -> Vec<u64> {
    let (lower, _) = stream.size_hint();
    let mut out = Vec::with_capacity(lower);
    let mut held = Vec::with_capacity(buffer.min(lower.max(1)));
    for sample in stream {
        if held.len() < buffer {
            held.push(sample);
        } else {
            let pick = rng.random_range(0..buffer);
            out.push(std::mem::replace(&mut held[pick], sample));
        }
    }
    while !held.is_empty() {
        let pick = rng.random_range(0..held.len());
        out.push(held.swap_remove(pick));
    }
    out
}

/// Mixed into the run's seed so that epoch plans draw from a stream of their own, apart from
/// augmentation's (whatever the value, it must never change: resumed runs replay it).
const PLAN_SEED_SALT: u64 = 0x5EED_0FE9;

/// The RNG of one epoch's plan; `purpose` keeps the shard order and the in-buffer shuffle apart.
fn epoch_rng(seed: u64, epoch: u64, purpose: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ PLAN_SEED_SALT);
    rng.set_stream(epoch * 2 + purpose);
    rng
}

/// The sample schedule of a run from an anchor (step, position) onwards.
#[derive(Debug, Clone)]
pub struct EpochPlan {
    seed: u64,
    layout: ShardLayout,
    world_size: usize,
    batch_size: usize,
    accumulate: usize,
    anchor_step: u64,
    anchor: DataPosition,
    /// The order of the epoch last asked for.
    cached: Option<(u64, Vec<u64>)>,
}

impl EpochPlan {
    /// A plan from the first step of the first epoch.
    pub fn new(
        seed: u64,
        layout: ShardLayout,
        world_size: usize,
        batch_size: usize,
        accumulate: usize,
    ) -> Self {
        Self {
            seed,
            layout,
            world_size,
            batch_size,
            accumulate,
            anchor_step: 0,
            anchor: DataPosition::default(),
            cached: None,
        }
    }

    /// The same plan, continuing at `position` when step `step` runs.
    pub fn resumed(mut self, step: u64, position: DataPosition) -> Self {
        self.anchor_step = step;
        self.anchor = position;
        self
    }

    /// The shard layout the plan orders samples over.
    pub fn layout(&self) -> &ShardLayout {
        &self.layout
    }

    /// Images one optimizer step consumes across all ranks.
    pub fn global_batch(&self) -> u64 {
        (self.batch_size * self.accumulate * self.world_size) as u64
    }

    /// Optimizer steps per full epoch.
    pub fn steps_per_epoch(&self) -> u64 {
        self.layout.samples() / self.global_batch()
    }

    /// Where the data stands before step `step` runs (`step` ≥ the anchor step).
    pub fn position(&self, step: u64) -> DataPosition {
        let global = self.global_batch();
        let since = step
            .checked_sub(self.anchor_step)
            .expect("steps before the plan's anchor are not planned");
        let first = self.layout.samples().saturating_sub(self.anchor.offset) / global;
        if since < first {
            return DataPosition {
                epoch: self.anchor.epoch,
                offset: self.anchor.offset + since * global,
            };
        }
        let later = since - first;
        DataPosition {
            epoch: self.anchor.epoch + 1 + later / self.steps_per_epoch(),
            offset: (later % self.steps_per_epoch()) * global,
        }
    }

    /// The epoch a step belongs to.
    pub fn epoch_of(&self, step: u64) -> u64 {
        self.position(step).epoch
    }

    /// Sample indices of micro-batch `micro` of `step` for `rank`.
    pub fn micro_batch(&mut self, step: u64, rank: usize, micro: usize) -> Vec<u64> {
        let position = self.position(step);
        let index = (rank * self.accumulate + micro) * self.batch_size;
        let start = (position.offset + index as u64) as usize;
        let end = start + self.batch_size;
        self.order(position.epoch)[start..end].to_vec()
    }

    fn order(&mut self, epoch: u64) -> &[u64] {
        if self.cached.as_ref().is_none_or(|(e, _)| *e != epoch) {
            self.cached = Some((epoch, self.layout.epoch_order(self.seed, epoch)));
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

    fn layout(sizes: &[u64], buffer: u64) -> ShardLayout {
        ShardLayout {
            sizes: sizes.to_vec(),
            shuffle_buffer: buffer,
        }
    }

    /// Every rank's samples over the steps `steps`, in reading order.
    fn read(
        plan: &mut EpochPlan,
        steps: std::ops::Range<u64>,
        world: usize,
        acc: usize,
    ) -> Vec<Vec<u64>> {
        (0..world)
            .map(|rank| {
                steps
                    .clone()
                    .flat_map(|s| (0..acc).map(move |m| (s, m)))
                    .flat_map(|(s, m)| plan.micro_batch(s, rank, m))
                    .collect()
            })
            .collect()
    }

    /// A small deterministic generator for the property tests' parameters.
    fn cases(count: usize) -> Vec<(Vec<u64>, u64, usize, usize, usize)> {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        (0..count)
            .map(|_| {
                let shards = rng.random_range(1..12);
                let sizes = (0..shards)
                    .map(|_| rng.random_range(0..40))
                    .collect::<Vec<u64>>();
                let buffer = rng.random_range(1..60);
                let (world, batch, acc) = (
                    rng.random_range(1..6),
                    rng.random_range(1..5),
                    rng.random_range(1..3),
                );
                (sizes, buffer, world, batch, acc)
            })
            .filter(|(sizes, _, w, b, a)| sizes.iter().sum::<u64>() >= (w * b * a) as u64)
            .collect()
    }

    #[test]
    fn epoch_orders_are_permutations_of_the_split() {
        for (sizes, buffer, ..) in cases(200) {
            let layout = layout(&sizes, buffer);
            for epoch in 0..3 {
                let mut order = layout.epoch_order(5, epoch);
                order.sort_unstable();
                assert_eq!(
                    order,
                    (0..layout.samples()).collect::<Vec<_>>(),
                    "{sizes:?}"
                );
            }
        }
    }

    #[test]
    fn ranks_are_disjoint_equal_and_cover_all_but_the_remainder() {
        let tested = cases(300);
        assert!(tested.len() > 150, "too few usable cases: {}", tested.len());
        for (sizes, buffer, world, batch, acc) in tested {
            let mut plan = EpochPlan::new(3, layout(&sizes, buffer), world, batch, acc);
            let steps = plan.steps_per_epoch();
            for epoch in 0..2 {
                let per_rank = read(&mut plan, epoch * steps..(epoch + 1) * steps, world, acc);
                let mut seen = HashSet::new();
                for samples in &per_rank {
                    assert_eq!(samples.len() as u64, steps * (batch * acc) as u64);
                    for &s in samples {
                        assert!(
                            seen.insert(s),
                            "sample {s} twice in epoch {epoch} of {sizes:?}"
                        );
                    }
                }
                let total = plan.layout().samples();
                assert!(total - (seen.len() as u64) < plan.global_batch());
            }
        }
    }

    #[test]
    fn shard_order_and_stream_change_every_epoch() {
        let layout = layout(&[50, 50, 50, 50], 10);
        let (first, second) = (layout.epoch_order(1, 0), layout.epoch_order(1, 1));
        assert_ne!(first, second);
        // A small buffer keeps the stream local: the first outputs come from one shard.
        let shard_of = |s: u64| s / 50;
        let leading: HashSet<u64> = first[..20].iter().map(|&s| shard_of(s)).collect();
        assert!(leading.len() <= 2, "{leading:?}");
        let firsts: HashSet<u64> = (0..8)
            .map(|e| shard_of(layout.epoch_order(1, e)[0]))
            .collect();
        assert!(firsts.len() > 1, "every epoch starts in shard {firsts:?}");
    }

    #[test]
    fn workers_read_what_one_accumulating_worker_reads() {
        let mut two = EpochPlan::new(9, ShardLayout::uniform(200), 2, 5, 1);
        let mut one = EpochPlan::new(9, ShardLayout::uniform(200), 1, 5, 2);
        for step in 0..20 {
            for r in 0..2 {
                assert_eq!(two.micro_batch(step, r, 0), one.micro_batch(step, 0, r));
            }
        }
    }

    #[test]
    fn resuming_with_another_world_size_neither_repeats_nor_skips() {
        for (sizes, buffer, world, batch, acc) in cases(150) {
            let mut before = EpochPlan::new(4, layout(&sizes, buffer), world, batch, acc);
            let steps = before.steps_per_epoch();
            let stop = steps / 2;
            let mut consumed: Vec<u64> = read(&mut before, 0..stop, world, acc).concat();
            let position = before.position(stop);
            assert_eq!(
                position,
                DataPosition {
                    epoch: 0,
                    offset: stop * before.global_batch()
                }
            );

            // Restart at `stop` with one rank fewer (or more) and a different batch.
            let world2 = if world > 1 { world - 1 } else { 2 };
            let mut after = EpochPlan::new(4, layout(&sizes, buffer), world2, batch + 1, 1)
                .resumed(stop, position);
            if after.steps_per_epoch() == 0 {
                continue; // the new global batch is larger than the split
            }
            let rest = (after.layout().samples() - position.offset) / after.global_batch();
            consumed.extend(read(&mut after, stop..stop + rest, world2, 1).concat());
            let unique: HashSet<u64> = consumed.iter().copied().collect();
            assert_eq!(
                unique.len(),
                consumed.len(),
                "a sample repeated in {sizes:?}"
            );
            let total = after.layout().samples();
            assert!(total - (unique.len() as u64) < after.global_batch());
            // The next step starts the next epoch at its beginning.
            assert_eq!(
                after.position(stop + rest),
                DataPosition {
                    epoch: 1,
                    offset: 0
                }
            );
        }
    }

    #[test]
    fn a_resumed_plan_reads_what_the_uninterrupted_plan_reads() {
        let mut whole = EpochPlan::new(2, layout(&[30, 17, 25], 8), 2, 3, 2);
        let position = whole.position(7);
        let mut resumed = EpochPlan::new(2, layout(&[30, 17, 25], 8), 2, 3, 2).resumed(7, position);
        for step in 7..40 {
            assert_eq!(whole.position(step), resumed.position(step));
            for (r, m) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                assert_eq!(
                    whole.micro_batch(step, r, m),
                    resumed.micro_batch(step, r, m)
                );
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
