//! Loading an experiment in layers: the TOML file, then `INCEPT__SECTION__KEY` environment
//! variables, then `--set section.key=value` overrides; unknown keys are errors naming their path.

use std::path::{Path, PathBuf};

use super::{Experiment, ValidationErrors};

/// Environment variable prefix; `INCEPT__TRAIN__BATCH_SIZE=8` sets `train.batch_size`.
pub const ENV_PREFIX: &str = "INCEPT";
/// Separator between the prefix, sections and keys in environment variable names.
pub const ENV_SEPARATOR: &str = "__";

/// Why an experiment could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The experiment file is not there.
    #[error("experiment file {0} does not exist")]
    Missing(PathBuf),
    /// The path names a directory (or something else that is not a file).
    #[error(
        "experiment file {0} is not a file (a TOML experiment, e.g. experiments/quickstart.toml)"
    )]
    NotAFile(PathBuf),
    /// The file is not TOML (the message has the line and column).
    #[error("{file}: malformed TOML: {message}")]
    Parse {
        /// The experiment file.
        file: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A key is unknown or its value has the wrong type.
    #[error("{origin}: key `{key}`: {message}")]
    Key {
        /// Where the value came from: the experiment file, `--set KEY=VALUE` or an
        /// `INCEPT__…` environment variable.
        origin: String,
        /// The key's full path.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// A `--set` override without `=` or without a key.
    #[error("override {0:?} must look like section.key=value")]
    Override(String),
    /// Values that break their rules, all of them.
    #[error("{file}: {problems}")]
    Invalid {
        /// The experiment file.
        file: PathBuf,
        /// Every invalid value (part of the message, so not a separate cause).
        problems: ValidationErrors,
    },
}

/// Reads `file` and layers environment variables and `--set` overrides over it. The values are
/// not checked yet: [`crate::resolve::load`] checks them with the model and the data in view.
pub fn read(file: &Path, overrides: &[String]) -> Result<Experiment, ConfigError> {
    if !file.exists() {
        return Err(ConfigError::Missing(file.to_path_buf()));
    }
    if !file.is_file() {
        return Err(ConfigError::NotAFile(file.to_path_buf()));
    }
    layered(
        config::File::from(file).format(config::FileFormat::Toml),
        file,
        overrides,
    )
}

/// A resolved experiment `text` (a run's own, say) with the environment and `--set` layers over
/// it, as [`read`] does for a file; `origin` names it in errors.
pub fn read_over(
    text: &str,
    origin: &Path,
    overrides: &[String],
) -> Result<Experiment, ConfigError> {
    layered(
        config::File::from_str(text, config::FileFormat::Toml),
        origin,
        overrides,
    )
}

/// The base layer, then `INCEPT__…` environment variables, then `--set` overrides.
fn layered<S>(base: S, file: &Path, overrides: &[String]) -> Result<Experiment, ConfigError>
where
    S: config::Source + Send + Sync + 'static,
{
    let mut builder = config::Config::builder().add_source(base).add_source(
        config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator(ENV_SEPARATOR)
            .separator(ENV_SEPARATOR)
            .try_parsing(true),
    );
    for item in overrides {
        let (key, value) = item
            .split_once('=')
            .filter(|(k, _)| !k.trim().is_empty())
            .ok_or_else(|| ConfigError::Override(item.clone()))?;
        builder = builder
            .set_override(key.trim(), override_value(value.trim()))
            .map_err(|e| ConfigError::Key {
                origin: format!("--set {item}"),
                key: key.trim().into(),
                message: e.to_string(),
            })?;
    }
    let merged = builder.build().map_err(|e| ConfigError::Parse {
        file: file.to_path_buf(),
        message: e.to_string(),
    })?;
    // Through JSON values, whose numbers keep their type: the config crate would round 2.5
    // into an integer key, and wrap 1e20.
    let values: serde_json::Value = merged.try_deserialize().map_err(|e| ConfigError::Parse {
        file: file.to_path_buf(),
        message: e.to_string(),
    })?;
    serde_path_to_error::deserialize(values).map_err(|e| {
        let key = e.path().to_string();
        ConfigError::Key {
            origin: origin_of(&key, file, overrides),
            key,
            message: e.inner().to_string(),
        }
    })
}

/// Which layer gave `key` its value: the last `--set` of it, else its environment variable,
/// else the file.
fn origin_of(key: &str, file: &Path, overrides: &[String]) -> String {
    let key = key.split('[').next().unwrap_or(key);
    let names = |candidate: &str| {
        let candidate = candidate.trim();
        candidate == key || key.starts_with(&format!("{candidate}."))
    };
    if let Some(item) = overrides
        .iter()
        .rev()
        .find(|item| item.split_once('=').is_some_and(|(k, _)| names(k)))
    {
        return format!("--set {item}");
    }
    let variable = std::iter::once(ENV_PREFIX)
        .chain(key.split('.'))
        .collect::<Vec<_>>()
        .join(ENV_SEPARATOR)
        .to_uppercase();
    if std::env::var_os(&variable).is_some() {
        return format!("environment variable {variable}");
    }
    file.display().to_string()
}

/// Reads an override's value as a TOML value (so `blocks=[1,1,1]` and `width=0.5` keep their
/// types), falling back to a plain string (`launcher=external`).
fn override_value(text: &str) -> config::Value {
    match toml::from_str::<toml::Table>(&format!("v = {text}")) {
        Ok(mut table) => table
            .remove("v")
            .map_or_else(|| config::Value::from(text), toml_to_config),
        Err(_) => config::Value::from(text),
    }
}

fn toml_to_config(value: toml::Value) -> config::Value {
    use config::{Value, ValueKind};
    let kind = match value {
        toml::Value::String(s) => ValueKind::String(s),
        toml::Value::Integer(i) => ValueKind::I64(i),
        toml::Value::Float(f) => ValueKind::Float(f),
        toml::Value::Boolean(b) => ValueKind::Boolean(b),
        toml::Value::Datetime(d) => ValueKind::String(d.to_string()),
        toml::Value::Array(items) => {
            ValueKind::Array(items.into_iter().map(toml_to_config).collect())
        }
        toml::Value::Table(table) => ValueKind::Table(
            table
                .into_iter()
                .map(|(k, v)| (k, toml_to_config(v)))
                .collect(),
        ),
    };
    Value::new(None, kind)
}

impl Experiment {
    /// Parses a resolved experiment (as sent in an assignment).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::Parse {
            file: PathBuf::from("<assignment>"),
            message: e.to_string(),
        })?;
        serde_path_to_error::deserialize(de).map_err(|e| ConfigError::Key {
            origin: "<assignment>".into(),
            key: e.path().to_string(),
            message: e.inner().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DEFAULT_RESIDUAL_SCALES, Launcher, ScheduleKind, WarmupKind};

    use crate::testing::experiment_file as write;

    const SMALL: &str =
        "[model]\narch = \"inception_resnet_v2\"\nnum_classes = 10\nimage_size = 75\n";

    #[test]
    fn loads_defaults_and_file_values() {
        let dir = tempfile::tempdir().unwrap();
        let exp = read(&write(&dir, SMALL), &[]).unwrap();
        assert_eq!(exp.model.num_classes, 10);
        assert_eq!(exp.train.batch_size, 32);
        assert_eq!(exp.model.residual_scales(), DEFAULT_RESIDUAL_SCALES);
    }

    #[test]
    fn overrides_keep_their_types() {
        let dir = tempfile::tempdir().unwrap();
        let sets = [
            "model.blocks=[1, 2, 3]".to_string(),
            "model.width = 0.5".into(),
            "cluster.launcher=external".into(),
            "model.residual_scale=0.3".into(),
            "model.residual_scale_b=0.1".into(),
        ];
        let exp = read(&write(&dir, SMALL), &sets).unwrap();
        assert_eq!(exp.model.blocks, Some([1, 2, 3]));
        assert_eq!(exp.model.width, 0.5);
        assert_eq!(exp.cluster.launcher, Launcher::External);
        assert_eq!(exp.model.residual_scales(), [0.3, 0.1, 0.3]);
    }

    #[test]
    fn missing_file_is_named() {
        let err = read(Path::new("/nonexistent/x.toml"), &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "experiment file /nonexistent/x.toml does not exist"
        );
    }

    #[test]
    fn malformed_toml_reports_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let err = read(&write(&dir, "[model]\nnum_classes = = 3\n"), &[]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("exp.toml"), "{text}");
        assert!(text.contains("line 2"), "{text}");
        assert!(text.contains("column"), "{text}");
    }

    #[test]
    fn unknown_key_reports_full_path() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[train.optimizer]\nlr = 0.1\n";
        let err = read(&write(&dir, text), &[]).unwrap_err().to_string();
        assert!(err.contains("train.optimizer.lr"), "{err}");
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn schedule_keys_load_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let sets = [
            "train.schedule.kind=step".to_string(),
            "train.schedule.milestones=[30, 60.5]".into(),
            "train.schedule.warmup=linear".into(),
            "train.schedule.warmup_steps=500".into(),
            "train.schedule.reference_batch=1600".into(),
        ];
        let exp = read(&write(&dir, SMALL), &sets).unwrap();
        let s = &exp.train.schedule;
        assert_eq!(s.kind, ScheduleKind::Step);
        assert_eq!(s.milestones, [30.0, 60.5]);
        assert_eq!((s.warmup, s.warmup_steps), (WarmupKind::Linear, 500));
        assert_eq!((s.warmup_factor, s.reference_batch), (0.1, Some(1600)));
        assert_eq!(Experiment::from_toml(&exp.to_toml()).unwrap(), exp);
    }

    #[test]
    fn a_float_for_an_integer_key_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        for (text, key) in [
            ("[train]\nbatch_size = 2.5\n", "train.batch_size"),
            ("[cluster]\nworld_size = 1e20\n", "cluster.world_size"),
        ] {
            let err = read(&write(&dir, text), &[]).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{err}");
            assert!(err.contains("floating point"), "{err}");
        }
        let err = read(&write(&dir, SMALL), &["train.epochs=1.5".into()]).unwrap_err();
        assert!(err.to_string().contains("`train.epochs`"), "{err}");
        // Integers still fill float keys.
        let exp = read(&write(&dir, SMALL), &["model.width=1".into()]).unwrap();
        assert_eq!(exp.model.width, 1.0);
    }

    #[test]
    fn override_errors_name_the_override_not_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = read(&write(&dir, SMALL), &["train.batch_size=many".into()])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--set train.batch_size=many: "), "{err}");
        assert!(!err.contains("exp.toml"), "{err}");
        let err = read(&write(&dir, "[train]\nbatch_size = \"x\"\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("exp.toml: key `train.batch_size`"), "{err}");
    }

    #[test]
    fn a_directory_is_not_an_experiment() {
        let dir = tempfile::tempdir().unwrap();
        let err = read(dir.path(), &[]).unwrap_err().to_string();
        assert!(err.contains("is not a file"), "{err}");
        assert!(!err.contains("does not exist"), "{err}");
    }
}
