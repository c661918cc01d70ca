//! The checks that span domains, above [`crate::config`], [`crate::model`] and [`crate::data`]:
//! an experiment's model knobs against its architecture, its image size against the network,
//! the files it reads, and the sample counts of the dataset it names. The coordinator runs them
//! before any worker starts; workers receive the resolved experiment.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{self, ConfigError, DataSource, Experiment, Problem, ValidationErrors};
use crate::data::{self, Source, Split};
use crate::model::registry;

/// Reads `file` with its environment and `--set` layers ([`config::read`]) and [`check`]s it.
pub fn load(file: &Path, overrides: &[String]) -> Result<Experiment, ConfigError> {
    checked(config::read(file, overrides)?, file)
}

/// [`load`] for a resolved experiment's text ([`config::read_over`]); `origin` names it.
pub fn load_over(
    text: &str,
    origin: &Path,
    overrides: &[String],
) -> Result<Experiment, ConfigError> {
    checked(config::read_over(text, origin, overrides)?, origin)
}

fn checked(experiment: Experiment, origin: &Path) -> Result<Experiment, ConfigError> {
    check(&experiment).map_err(|problems| ConfigError::Invalid {
        file: origin.to_path_buf(),
        problems,
    })?;
    Ok(experiment)
}

/// Checks every value on its own ([`Experiment::validate`]) and the model knobs against the
/// architecture; returns all problems at once, each naming its key.
pub fn check(exp: &Experiment) -> Result<(), ValidationErrors> {
    let mut problems = exp.validate().err().unwrap_or_default().0;
    let m = &exp.model;
    if let Err(rule) = registry::check_knobs(m) {
        problems.push(Problem::new("model", m.arch, rule));
    } else if let Err(rule) = registry::check_image_size(m) {
        problems.push(Problem::new("model.image_size", m.image_size, rule));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ValidationErrors(problems))
    }
}

/// Files and folders the run reads, each with the key that names it: checked before any
/// worker starts.
pub fn required_paths(exp: &Experiment) -> Vec<(&'static str, PathBuf)> {
    let mut paths = Vec::new();
    match (exp.data.source, exp.data.root()) {
        (DataSource::Imagenet, Some(root)) => {
            paths.push(("data.path", root.join("train")));
            paths.push(("data.path", root.join("val")));
        }
        (DataSource::Tfrecord, Some(root)) => {
            paths.push(("data.path", root.join(data::shards::INDEX_FILE)));
        }
        (DataSource::FashionMnist, Some(root)) => paths.push(("data.path", root)),
        _ => {}
    }
    if let Some(weights) = &exp.model.init_from {
        paths.push(("model.init_from", weights.clone()));
    }
    paths
}

/// Opens the dataset and fixes the experiment's sample counts to it (file-backed sources), so
/// that steps per epoch and the run length are those of the real data; caps the validation
/// images at `data.val_limit` (every source: a worker checks the count it opens against this);
/// checks the result.
pub fn open_dataset(exp: &mut Experiment) -> anyhow::Result<Arc<dyn Source>> {
    let source = data::open(exp)?;
    exp.data.val_samples = exp
        .data
        .validation_images(source.len(Split::Validation) as usize);
    if exp.data.source != DataSource::Synthetic {
        exp.data.train_samples = source.len(Split::Train) as usize;
        if let Err(problems) = check(exp) {
            anyhow::bail!(
                "the dataset at {} does not fit the experiment:\n{problems}",
                exp.data.root().unwrap_or_default().display()
            );
        }
    }
    Ok(source)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::experiment_file as write;

    #[test]
    fn invalid_values_are_all_reported_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[cluster]\nworld_size = 0\n[train]\nbatch_size = 0\n[train.optimizer]\nlearning_rate = -0.1\n[model]\nresidual_scale = -0.2\n";
        let err = load(&write(&dir, text), &[]).unwrap_err().to_string();
        for key in [
            "cluster.world_size = 0",
            "train.batch_size = 0",
            "train.optimizer.learning_rate = -0.1",
            "model.residual_scale = -0.2",
        ] {
            assert!(err.contains(key), "missing {key} in {err}");
        }
    }

    #[test]
    fn data_keys_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[data]\nsource = \"tfrecord\"\nthreads = 0\n[data.augment]\n\
                    area_range = [0.0, 1.0]\naspect_range = [1.5, 0.5]\neval_crop = 1.5\n";
        let err = load(&write(&dir, text), &[]).unwrap_err().to_string();
        for key in [
            "data.path = (unset)",
            "data.threads = 0",
            "data.augment.area_range = [0.0, 1.0]",
            "data.augment.aspect_range = [1.5, 0.5]",
            "data.augment.eval_crop = 1.5",
        ] {
            assert!(err.contains(key), "missing {key} in {err}");
        }
        let err = load(&write(&dir, "[data]\nsource = \"lmdb\"\n"), &[]).unwrap_err();
        assert!(err.to_string().contains("lmdb"), "{err}");
    }

    #[test]
    fn val_limit_caps_the_validation_images_of_a_dataset() {
        let dir = tempfile::tempdir().unwrap();
        crate::data::idx::fixture::dataset(dir.path(), &[1, 2, 3, 4, 5]);
        for (limit, expected) in [(0, 5), (2, 2), (9, 5)] {
            let mut exp = Experiment::default();
            exp.data.source = DataSource::FashionMnist;
            exp.data.path = Some(dir.path().to_path_buf());
            exp.data.val_limit = limit;
            exp.model.num_classes = 10;
            exp.train.batch_size = 1;
            open_dataset(&mut exp).unwrap();
            assert_eq!(
                (exp.data.train_samples, exp.data.val_samples),
                (5, expected)
            );
        }
        // The synthetic source's split is its own setting; the limit caps it the same way.
        let mut exp = Experiment::default();
        exp.data.val_limit = 100;
        open_dataset(&mut exp).unwrap();
        assert_eq!(exp.data.val_samples, 100);
    }

    #[test]
    fn invalid_values_are_listed_once() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(&write(&dir, "[train]\nbatch_size = 0\n"), &[]).unwrap_err();
        let text = format!("{:#}", anyhow::Error::from(err));
        assert_eq!(text.matches("train.batch_size = 0").count(), 1, "{text}");
    }

    #[test]
    fn an_unknown_arch_is_only_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[model]\narch = \"resnet50\"\nblocks = [1, 1, 1]\n";
        let err = load(&write(&dir, text), &[]).unwrap_err().to_string();
        assert!(err.contains("unknown architecture \"resnet50\""), "{err}");
        assert!(!err.contains("block counts"), "{err}");
    }
}
