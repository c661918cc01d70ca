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
    /// Evaluate on the first this many validation images only (0 = all of them), e.g. a study
    /// whose many short runs would spend most of their time in the final evaluation.
    pub val_limit: usize,
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
            val_limit: 0,
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
    /// Evaluation: the central fraction of each side kept before resizing (with 10 crops: the
    /// side of each crop, as a fraction of the image's shorter side).
    pub eval_crop: f64,
    /// Evaluation protocol: 1 central crop, 10 crops (corners and centre, each flipped) or
    /// GoogLeNet's 144; the model's logits are averaged over an image's crops.
    pub eval_crops: Crops,
}

/// The evaluation crop protocols of the Inception papers' tables (1 crop: Inception-v4 Table 2;
/// multi-crop: Tables 3 and 4). See `data::crops` for the crop boxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub enum Crops {
    /// The central `eval_crop` fraction of each side.
    One,
    /// The four corners and the centre, each also flipped.
    Ten,
    /// GoogLeNet's: 4 scales × 3 squares × 6 crops × 2 flips.
    GoogLeNet144,
}

impl Crops {
    /// Model inputs per image.
    pub fn count(self) -> usize {
        match self {
            Crops::One => 1,
            Crops::Ten => 10,
            Crops::GoogLeNet144 => 144,
        }
    }

    /// The protocol's name in reports and the run database: `1-crop`, `10-crop`, `144-crop`.
    pub fn name(self) -> String {
        format!("{}-crop", self.count())
    }
}

impl TryFrom<u32> for Crops {
    type Error = String;

    fn try_from(count: u32) -> Result<Self, String> {
        match count {
            1 => Ok(Crops::One),
            10 => Ok(Crops::Ten),
            144 => Ok(Crops::GoogLeNet144),
            other => Err(format!("{other} crops: the protocols are 1, 10 and 144")),
        }
    }
}

impl From<Crops> for u32 {
    fn from(crops: Crops) -> Self {
        crops.count() as u32
    }
}

impl std::str::FromStr for Crops {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let count: u32 = text
            .parse()
            .map_err(|_| format!("{text:?}: the crop protocols are 1, 10 and 144"))?;
        Crops::try_from(count)
    }
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
            eval_crops: Crops::One,
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

    /// How many of a dataset's `available` validation images a run evaluates: all of them, or
    /// the first `val_limit`.
    pub fn validation_images(&self, available: usize) -> usize {
        match self.val_limit {
            0 => available,
            limit => limit.min(available),
        }
    }
}
