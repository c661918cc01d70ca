//! Training and validation data: datasets, how they are sharded and planned between ranks, and
//! the threaded pipeline that turns stored images into model inputs.
//!
//! - [`source`]: the [`Source`] trait every dataset implements: the [`synthetic`] gratings,
//!   Fashion-MNIST [`idx`] files, ILSVRC [`folders`], or TFRecord [`shards`] (framing in
//!   [`tfrecord`], written by [`pack`]); [`open()`] opens the one an experiment names;
//! - [`plan`]: epoch plans over shards, with resume positions;
//! - [`devkit`]: the ILSVRC-2012 devkit's `meta.mat`, for numeric validation labels;
//! - [`image`], [`augment`] and [`crops`]: JPEG decoding, Inception preprocessing and the
//!   evaluation crop protocols;
//! - [`loader`]: threads that build batches ahead of the training loop.

pub mod augment;
pub mod crops;
pub mod devkit;
pub mod folders;
pub mod idx;
pub mod image;
pub mod loader;
mod open;
pub mod pack;
pub mod plan;
pub mod shards;
pub mod source;
pub mod synthetic;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tfrecord;

pub use loader::{Job, Loader, Pipeline};
pub use open::open;
pub use plan::{DataPosition, EpochPlan, ShardLayout};
pub use source::Source;
pub use synthetic::SyntheticImages;

/// Which part of a dataset a sample comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// Samples the model trains on.
    Train,
    /// Held-out samples for evaluation, never trained on.
    Validation,
}

/// A batch of images in NCHW layout, scaled to [-1, 1], with their class labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `len() * views * 3 * image_size * image_size` values, image after image (an image's
    /// views one after another).
    pub pixels: Vec<f32>,
    /// One class index per image.
    pub labels: Vec<i64>,
    /// Square image side.
    pub image_size: usize,
    /// Model inputs per image: 1, or the evaluation protocol's crops.
    pub views: usize,
    /// Samples left out because they could not be used (each with its location and reason).
    pub bad_samples: Vec<String>,
}

impl Batch {
    /// Number of images in the batch.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the batch holds no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}
