//! `[data]`: where images come from and how they are prepared.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where images come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataSource {
    /// Deterministic generated images with learnable class structure.
    Synthetic,
    /// ILSVRC-2012 folder layout under `data.path` (`train/<wnid>/*.JPEG`, `val/`).
    Imagenet,
    /// TFRecord shards of `tf.train.Example`s with an `index.json` under `data.path`.
    Tfrecord,
    /// Fashion-MNIST IDX files (default folder: Debian's `dataset-fashion-mnist`).
    FashionMnist,
}

/// Default root of the Debian package `dataset-fashion-mnist`.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The dataset and how its images are prepared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    /// Which kind of dataset.
    pub source: DataSource,
    /// Dataset root for file-backed sources.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Training images per epoch (synthetic; file-backed sources: set from the dataset at launch).
    pub train_samples: usize,
    /// Held-out validation images (synthetic; file-backed sources: set from the dataset).
    pub val_samples: usize,
    /// Synthetic source: standard deviation of the pixel noise (signal amplitude is 1).
    pub noise: f64,
    /// `imagenet` with a flat `val/`: ground truth, one wnid per image in file-name order
    /// (relative to `data.path`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_labels: Option<PathBuf>,
    /// `tfrecord`: keep the stored labels (0 = background, 1001-way models) instead of
    /// shifting build_imagenet_data.py's 1–1000 to 0–999.
    pub background_class: bool,
    /// `tfrecord`: samples in the shuffle buffer after the per-epoch shard shuffle. Other
    /// sources are shuffled whole.
    pub shuffle_buffer: usize,
    /// The fraction of training images that may fail to decode (each is skipped, logged and
    /// counted); above it, once 1,000 have been seen, the run fails. A step in which no image
    /// decodes fails at once.
    pub max_bad_fraction: f64,
    /// Threads each worker decodes and augments with.
    pub threads: usize,
    /// Ready batches each loader thread keeps ahead.
    pub prefetch: usize,
    /// Training-time augmentation and the evaluation crop.
    pub augment: AugmentSection,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            source: DataSource::Synthetic,
            path: None,
            train_samples: 10_000,
            val_samples: 1_000,
            noise: 0.5,
            val_labels: None,
            background_class: false,
            shuffle_buffer: 10_000,
            max_bad_fraction: 0.01,
            threads: 2,
            prefetch: 2,
            augment: AugmentSection::default(),
        }
    }
}

/// Inception preprocessing of file-backed images (the synthetic source is not augmented).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentSection {
    /// Training crop: fraction of the image area, drawn uniformly from [min, max].
    pub area_range: [f64; 2],
    /// Training crop: width / height, drawn uniformly from [min, max].
    pub aspect_range: [f64; 2],
    /// A crop must cover at least this fraction of the image.
    pub min_object_covered: f64,
    /// Tries to draw a crop that fits before falling back to a central crop.
    pub max_attempts: u32,
    /// Random horizontal flip.
    pub flip: bool,
    /// TF-slim's colour distortion (brightness, saturation, hue, contrast).
    pub color: bool,
    /// Evaluation: the central fraction of each side kept before resizing.
    pub eval_crop: f64,
}

impl Default for AugmentSection {
    fn default() -> Self {
        Self {
            area_range: [0.05, 1.0],
            aspect_range: [0.75, 4.0 / 3.0],
            min_object_covered: 0.1,
            max_attempts: 100,
            flip: true,
            color: false,
            eval_crop: 0.875,
        }
    }
}

impl DataSection {
    /// The root a file-backed source reads: `data.path`, or the source's default.
    pub fn root(&self) -> Option<PathBuf> {
        match self.source {
            DataSource::Synthetic => None,
            DataSource::FashionMnist => Some(
                self.path
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(FASHION_MNIST_DIR)),
            ),
            DataSource::Imagenet | DataSource::Tfrecord => self.path.clone(),
        }
    }
}
