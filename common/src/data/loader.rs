//! The threaded loader: reads, decodes and augments batches ahead of the training loop.
//!
//! Batch `k` of a job list is built by thread `k mod T` and handed over through that thread's
//! bounded channel; the consumer takes the channels in turn, so batches arrive in order while
//! up to `prefetch` ready batches per thread wait. Each sample's augmentation draws from an RNG
//! seeded by (seed, epoch, sample index) alone, so a batch is the same whichever thread built
//! it and however the threads were scheduled.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::augment::Preprocess;
use super::source::{SampleError, Source};
use super::{Batch, Split};

/// One batch to load.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Split the samples are read from (and augmented for).
    pub split: Split,
    /// Seeds augmentation together with each sample's index.
    pub epoch: u64,
    /// Indices of the batch's samples in the split, in batch order.
    pub indices: Vec<u64>,
}

/// A source and how its samples become model inputs.
pub struct Pipeline {
    /// Dataset the samples are read from.
    pub source: Arc<dyn Source>,
    /// Decoding, augmentation and scaling into model inputs.
    pub preprocess: Preprocess,
    /// Run seed that, with the epoch and sample index, seeds each sample's augmentation.
    pub seed: u64,
}

impl Pipeline {
    /// Builds one batch. Unusable samples are left out and listed in `bad_samples`; only a
    /// broken dataset is an error.
    pub fn load(&self, job: &Job) -> anyhow::Result<Batch> {
        let side = self.preprocess.image_size;
        let views = self.preprocess.views(job.split);
        let size = views * 3 * side * side;
        let mut pixels = vec![0.0f32; job.indices.len() * size];
        let mut labels = Vec::with_capacity(job.indices.len());
        let mut bad_samples = Vec::new();
        for &index in &job.indices {
            let out = &mut pixels[labels.len() * size..(labels.len() + 1) * size];
            let outcome = self.source.read(job.split, index).and_then(|sample| {
                let mut rng = sample_rng(self.seed, job.epoch, index);
                self.preprocess
                    .apply(&sample.image, job.split, &mut rng, out)
                    .map(|()| sample.label)
                    .map_err(|e| {
                        SampleError::Bad(format!("{}: {e}", self.source.locate(job.split, index)))
                    })
            });
            match outcome {
                Ok(label) => labels.push(label),
                Err(SampleError::Bad(reason)) => bad_samples.push(reason),
                Err(SampleError::Fatal(reason)) => anyhow::bail!(reason),
            }
        }
        pixels.truncate(labels.len() * size);
        Ok(Batch {
            pixels,
            labels,
            image_size: side,
            views,
            bad_samples,
        })
    }
}

/// Mixed into the run's seed so that augmentation draws from a stream of its own, apart from
/// the epoch plans' (whatever the value, it must never change: resumed runs replay it).
const AUGMENT_SEED_SALT: u64 = 0xA06_3E47;

/// The augmentation RNG of one sample in one epoch.
fn sample_rng(seed: u64, epoch: u64, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ AUGMENT_SEED_SALT);
    rng.set_stream(epoch);
    rng.set_word_pos(u128::from(index) << 16);
    rng
}

/// Batches of a job list, loaded ahead on worker threads.
pub struct Loader {
    channels: Vec<Receiver<anyhow::Result<Batch>>>,
    threads: Vec<JoinHandle<()>>,
    next: usize,
}

impl Loader {
    /// Starts `threads` threads on the jobs `jobs(0), jobs(1), …` until it returns `None`.
    pub fn spawn<J>(pipeline: Arc<Pipeline>, jobs: J, threads: usize, prefetch: usize) -> Self
    where
        J: FnMut(u64) -> Option<Job> + Clone + Send + 'static,
    {
        let threads = threads.max(1);
        let (channels, handles) = (0..threads)
            .map(|t| {
                let (sender, receiver) = sync_channel(prefetch.max(1));
                let (pipeline, jobs) = (pipeline.clone(), jobs.clone());
                let handle = std::thread::Builder::new()
                    .name(format!("loader-{t}"))
                    .spawn(move || produce(&pipeline, jobs, t as u64, threads as u64, sender))
                    .expect("spawning a loader thread");
                (receiver, handle)
            })
            .unzip();
        Self {
            channels,
            threads: handles,
            next: 0,
        }
    }

    /// The next batch in job order; `None` after the last job.
    pub fn next_batch(&mut self) -> Option<anyhow::Result<Batch>> {
        let channel = &self.channels[self.next % self.channels.len()];
        self.next += 1;
        channel.recv().ok()
    }
}

fn produce<J: FnMut(u64) -> Option<Job>>(
    pipeline: &Pipeline,
    mut jobs: J,
    first: u64,
    stride: u64,
    sender: SyncSender<anyhow::Result<Batch>>,
) {
    let mut k = first;
    while let Some(job) = jobs(k) {
        let batch = pipeline.load(&job);
        let failed = batch.is_err();
        // The consumer has gone (the run ended or moved on): stop.
        if sender.send(batch).is_err() || failed {
            return;
        }
        k += stride;
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Closing the channels makes every producer stop at its next send.
        self.channels.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
