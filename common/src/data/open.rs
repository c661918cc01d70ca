//! Opening the dataset an experiment names: the one place that knows every [`Source`].

use std::path::PathBuf;
use std::sync::Arc;

use super::Source;
use super::folders::ImagenetFolders;
use super::idx::FashionMnist;
use super::shards::TfRecordShards;
use super::synthetic::SyntheticImages;
use crate::config::{DataSource, Experiment};

/// Opens the dataset `exp.data` describes. Errors name the missing or malformed file.
pub fn open(exp: &Experiment) -> anyhow::Result<Arc<dyn Source>> {
    let data = &exp.data;
    let root = || -> anyhow::Result<PathBuf> {
        exp.data
            .root()
            .ok_or_else(|| anyhow::anyhow!("data.path is required for {:?}", data.source))
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
        exp.data.root().unwrap_or_default().display(),
        exp.model.num_classes
    );
    Ok(())
}
