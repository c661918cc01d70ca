//! The interface every dataset implements ([`crate::data::open`] opens the one an experiment
//! names).
//!
//! A source hands out raw samples by split and index; the loader decodes and augments them.
//! Two kinds of failure are kept apart: a [`SampleError::Bad`] sample (an image that does not
//! decode) is skipped and counted, while [`SampleError::Fatal`] (a missing file, a truncated
//! shard, a checksum mismatch) stops the run with a message that names the file and offset.

use super::Split;
use super::plan::ShardLayout;

/// One sample as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Class index, `0..classes`.
    pub label: i64,
    /// The image as stored.
    pub image: RawImage,
}

/// Image content before decoding and augmentation.
#[derive(Debug, Clone, PartialEq)]
pub enum RawImage {
    /// A compressed file (JPEG).
    Encoded(Vec<u8>),
    /// 8-bit pixels, row-major, `channels` (1 or 3) interleaved.
    Pixels {
        /// Columns.
        width: usize,
        /// Rows.
        height: usize,
        /// 1 (grey) or 3 (RGB).
        channels: usize,
        /// `height × width × channels` bytes.
        data: Vec<u8>,
    },
    /// Already at the model's input size: CHW in [-1, 1] (the synthetic source).
    Ready(Vec<f32>),
}

/// Why a sample could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// This sample is unusable; the loader skips it and counts it.
    #[error("{0}")]
    Bad(String),
    /// The dataset itself is broken or gone; the run stops.
    #[error("{0}")]
    Fatal(String),
}

/// A dataset of labelled images.
pub trait Source: Send + Sync {
    /// Samples in `split`.
    fn len(&self, split: Split) -> u64;
    /// How the training split is sharded on disk (see [`ShardLayout`]).
    fn train_layout(&self) -> ShardLayout;
    /// Sample `index` of `split`.
    fn read(&self, split: Split, index: u64) -> Result<Sample, SampleError>;
    /// Where sample `index` lives, for messages (a file, or a shard and offset).
    fn locate(&self, split: Split, index: u64) -> String;
    /// Number of distinct labels (labels are `0..classes`).
    fn classes(&self) -> usize;
}
