//! The interface every dataset implements, and opening the one an experiment names.
//!
//! A source hands out raw samples by split and index; the loader decodes and augments them.
//! Two kinds of failure are kept apart: a [`SampleError::Bad`] sample (an image that does not
//! decode) is skipped and counted, while [`SampleError::Fatal`] (a missing file, a truncated
//! shard, a checksum mismatch) stops the run with a message that names the file and offset.

use std::path::PathBuf;
use std::sync::Arc;

use super::Split;
use super::folders::ImagenetFolders;
use super::idx::FashionMnist;
use super::plan::ShardLayout;
use super::shards::TfRecordShards;
use super::synthetic::SyntheticImages;
use crate::config::{DataSource, Experiment};

/// One sample as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub label: i64,
    pub image: RawImage,
}

/// Image content before decoding and augmentation.
#[derive(Debug, Clone, PartialEq)]
pub enum RawImage {
    /// A compressed file (JPEG).
    Encoded(Vec<u8>),
    /// 8-bit pixels, row-major, `channels` (1 or 3) interleaved.
    Pixels {
        width: usize,
        height: usize,
        channels: usize,
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

/// Default root of the Debian package `dataset-fashion-mnist`.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The root a file-backed source reads: `data.path`, or the source's default.
pub fn data_root(exp: &Experiment) -> Option<PathBuf> {
    match exp.data.source {
        DataSource::Synthetic => None,
        DataSource::FashionMnist => Some(
            exp.data
                .path
                .clone()
                .unwrap_or_else(|| PathBuf::from(FASHION_MNIST_DIR)),
        ),
        DataSource::Imagenet | DataSource::Tfrecord => exp.data.path.clone(),
    }
}

/// Opens the dataset `exp.data` describes. Errors name the missing or malformed file.
pub fn open(exp: &Experiment) -> anyhow::Result<Arc<dyn Source>> {
    let data = &exp.data;
    let root = || -> anyhow::Result<PathBuf> {
        data_root(exp).ok_or_else(|| anyhow::anyhow!("data.path is required for {:?}", data.source))
    };
    let source: Arc<dyn Source> = match data.source {
        DataSource::Synthetic => Arc::new(SyntheticImages::new(
            exp.run.seed,
            exp.model.num_classes,
            exp.model.image_size,
            data.noise,
            data.train_samples as u64,
            data.val_samples as u64,
        )),
        DataSource::FashionMnist => Arc::new(FashionMnist::open(&root()?)?),
        DataSource::Imagenet => {
            Arc::new(ImagenetFolders::open(&root()?, data.val_labels.as_deref())?)
        }
        DataSource::Tfrecord => Arc::new(TfRecordShards::open(
            &root()?,
            data.shuffle_buffer as u64,
            data.background_class,
        )?),
    };
    check_labels(source.as_ref(), exp)?;
    Ok(source)
}

/// Every label a dataset can produce must fit the classifier.
fn check_labels(source: &dyn Source, exp: &Experiment) -> anyhow::Result<()> {
    let classes = source.classes();
    anyhow::ensure!(
        classes <= exp.model.num_classes,
        "the dataset at {} has {classes} classes but model.num_classes is {}",
        data_root(exp).unwrap_or_default().display(),
        exp.model.num_classes
    );
    Ok(())
}

/// Opens the dataset and fixes the experiment's sample counts to it (file-backed sources), so
/// that steps per epoch and the run length are those of the real data; validates the result.
pub fn resolve(exp: &mut Experiment) -> anyhow::Result<Arc<dyn Source>> {
    let source = open(exp)?;
    if exp.data.source != DataSource::Synthetic {
        exp.data.train_samples = source.len(Split::Train) as usize;
        exp.data.val_samples = source.len(Split::Validation) as usize;
        if let Err(problems) = exp.validate() {
            anyhow::bail!(
                "the dataset at {} does not fit the experiment:\n{problems}",
                data_root(exp).unwrap_or_default().display()
            );
        }
    }
    Ok(source)
}
