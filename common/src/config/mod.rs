//! The experiment: every knob of a run, in one serde tree.
//!
//! One file per section ([`run`], [`cluster`], [`model`], [`data`], [`train`]), [`load`]ing in
//! layers, and the [`check`]s each value must pass on its own. This module imports nothing of
//! the model or the data: the checks that need them are [`crate::resolve`]'s.

mod check;
mod cluster;
mod data;
mod load;
mod model;
mod run;
mod train;

use serde::{Deserialize, Serialize};

pub use check::{Problem, ValidationErrors};
pub use cluster::{ClusterSection, CollectiveBackend, DeviceKind, KernelsKind, Launcher};
pub use data::{AugmentSection, Crops, DataSection, DataSource, FASHION_MNIST_DIR};
pub use load::{ConfigError, ENV_PREFIX, ENV_SEPARATOR, read, read_over};
pub use model::{Arch, BlockPreset, DEFAULT_RESIDUAL_SCALES, ModelSection};
pub use run::{CheckpointSection, RunSection};
pub use train::{
    OptimizerKind, OptimizerSection, ScheduleKind, ScheduleSection, TrainSection, WarmupKind,
};

/// A whole experiment, as written in `experiments/*.toml`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Experiment {
    /// Name and seed.
    pub run: RunSection,
    /// Workers, addresses, device and collective.
    pub cluster: ClusterSection,
    /// The network.
    pub model: ModelSection,
    /// The dataset and its preprocessing.
    pub data: DataSection,
    /// The training recipe.
    pub train: TrainSection,
    /// When to checkpoint.
    pub checkpoint: CheckpointSection,
}

/// `section.key = value` for every value of a TOML document (nested tables joined by dots,
/// values in TOML syntax): how runs are compared key by key. Empty when it does not parse.
pub fn flatten(toml_text: &str) -> std::collections::BTreeMap<String, String> {
    fn walk(
        prefix: &str,
        value: &toml::Value,
        out: &mut std::collections::BTreeMap<String, String>,
    ) {
        match value {
            toml::Value::Table(table) => {
                for (key, value) in table {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    walk(&path, value, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    if let Ok(table) = toml::from_str::<toml::Table>(toml_text) {
        walk("", &toml::Value::Table(table), &mut out);
    }
    out
}

/// The keys of flattened experiments ([`flatten`]) whose values are not the same in all of
/// them (a key some lack counts as differing), in key order: what tells runs or arms apart.
pub fn differing_keys<'a>(
    configs: &[&'a std::collections::BTreeMap<String, String>],
) -> Vec<&'a String> {
    let keys: std::collections::BTreeSet<&String> = configs.iter().flat_map(|c| c.keys()).collect();
    keys.into_iter()
        .filter(|key| {
            let first = configs.first().and_then(|c| c.get(*key));
            configs.iter().any(|c| c.get(*key) != first)
        })
        .collect()
}

impl Experiment {
    /// Images consumed by one optimizer step across all replicas.
    pub fn global_batch(&self) -> usize {
        self.train.batch_size * self.train.accumulate * self.cluster.world_size
    }

    /// Optimizer steps per pass over the training set (the remainder is dropped).
    pub fn steps_per_epoch(&self) -> u64 {
        (self.data.train_samples / self.global_batch().max(1)) as u64
    }

    /// Optimizer steps of the whole run.
    pub fn total_steps(&self) -> u64 {
        let full = self.steps_per_epoch() * self.train.epochs as u64;
        self.train.max_steps.map_or(full, |cap| cap.min(full))
    }

    /// The resolved experiment as TOML: what workers receive and what the run directory keeps.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("an Experiment always serialises to TOML")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differing_keys_are_those_not_equal_everywhere() {
        let a = flatten("[run]\nseed = 1\n[model]\nresidual_scale = 1.0\nwidth = 0.5\n");
        let b = flatten("[run]\nseed = 2\n[model]\nresidual_scale = 0.1\nwidth = 0.5\n");
        let c = flatten("[run]\nseed = 2\n[model]\nwidth = 0.5\n");
        assert_eq!(
            differing_keys(&[&a, &b]),
            ["model.residual_scale", "run.seed"]
        );
        assert_eq!(differing_keys(&[&b, &c]), ["model.residual_scale"]);
        assert!(differing_keys(&[&a]).is_empty() && differing_keys(&[]).is_empty());
    }

    #[test]
    fn resolved_toml_round_trips() {
        let mut exp = Experiment::default();
        exp.model.residual_scale = Some(0.2);
        exp.data.path = Some("/data/imagenet".into());
        assert_eq!(Experiment::from_toml(&exp.to_toml()).unwrap(), exp);
    }

    #[test]
    fn steps_follow_global_batch() {
        let mut exp = Experiment::default();
        exp.cluster.world_size = 2;
        exp.train.batch_size = 8;
        exp.train.accumulate = 2;
        exp.data.train_samples = 100;
        exp.train.epochs = 3;
        assert_eq!(exp.global_batch(), 32);
        assert_eq!(exp.steps_per_epoch(), 3);
        assert_eq!(exp.total_steps(), 9);
        exp.train.max_steps = Some(4);
        assert_eq!(exp.total_steps(), 4);
    }
}
