//! A sweep's file (`arms.toml` in its folder): the profiles an arm can start from, the axes
//! whose levels combine into arms, and the seeds each arm is trained with.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

/// The file a sweep folder holds.
const SWEEP_FILE: &str = "arms.toml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SweepFile {
    seeds: Vec<u64>,
    /// The profile `--profile` defaults to (else the first by name).
    default_profile: Option<String>,
    profiles: BTreeMap<String, ProfileFile>,
    axes: Vec<AxisFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    /// The experiment, relative to the sweep folder.
    experiment: PathBuf,
    /// Overrides every arm of the profile starts with.
    #[serde(default)]
    set: toml::Table,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AxisFile {
    name: String,
    levels: Vec<LevelFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LevelFile {
    name: String,
    set: toml::Table,
}

/// A sweep, read and checked.
#[derive(Debug)]
pub struct Sweep {
    /// The folder's name: the study, and the prefix of its run ids.
    pub study: String,
    file: SweepFile,
    dir: PathBuf,
}

/// One run of a sweep: a profile, a level of every axis, and a seed.
#[derive(Debug, Clone, PartialEq)]
pub struct Arm {
    /// `STUDY-PROFILE-AXISLEVEL…-sSEED`: a run id, stable across reruns, so a sweep finds
    /// its finished and interrupted arms in the state directory.
    pub run_id: String,
    /// (axis, level) of each axis: the arm without its seed, as `compare` groups it.
    pub levels: Vec<(String, String)>,
    pub seed: u64,
    /// The experiment the arm starts from.
    pub experiment: PathBuf,
    /// `KEY=VALUE` overrides: the profile's, the levels', then the seed and the run name.
    pub overrides: Vec<String>,
}

impl Sweep {
    /// Reads `dir/arms.toml`.
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(SWEEP_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (a sweep folder holds {SWEEP_FILE})",
                path.display()
            )
        })?;
        let file: SweepFile =
            toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
        if file.seeds.is_empty()
            || file.profiles.is_empty()
            || file.axes.iter().any(|a| a.levels.is_empty())
        {
            bail!(
                "{}: `seeds`, `profiles` and every axis's `levels` need at least one entry",
                path.display()
            );
        }
        if let Some(default) = &file.default_profile
            && !file.profiles.contains_key(default)
        {
            bail!(
                "{}: default_profile {default:?} is not among the profiles",
                path.display()
            );
        }
        let study = std::path::absolute(dir)?
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "sweep".into());
        Ok(Self {
            study,
            file,
            dir: dir.to_path_buf(),
        })
    }

    /// The profile names, in order.
    pub fn profiles(&self) -> Vec<&str> {
        self.file.profiles.keys().map(String::as_str).collect()
    }

    /// The profile a sweep runs unless told otherwise.
    pub fn default_profile(&self) -> &str {
        self.file
            .default_profile
            .as_deref()
            .unwrap_or_else(|| self.profiles()[0])
    }

    /// Every arm of `profile` with `seeds` seeds (the file's first ones, then the next integers
    /// after its largest; default: all the file's), in axis-major order.
    pub fn arms(&self, profile: &str, seeds: Option<usize>) -> anyhow::Result<Vec<Arm>> {
        let Some(chosen) = self.file.profiles.get(profile) else {
            bail!(
                "--profile {profile:?}: the sweep has {}",
                self.profiles().join(", ")
            );
        };
        let mut combinations: Vec<Vec<&LevelFile>> = vec![Vec::new()];
        for axis in &self.file.axes {
            combinations = combinations
                .into_iter()
                .flat_map(|prefix| {
                    axis.levels.iter().map(move |level| {
                        let mut next = prefix.clone();
                        next.push(level);
                        next
                    })
                })
                .collect();
        }
        let mut arms = Vec::new();
        for levels in combinations {
            for seed in self.seeds(seeds) {
                let named: Vec<(String, String)> = self
                    .file
                    .axes
                    .iter()
                    .zip(&levels)
                    .map(|(axis, level)| (axis.name.clone(), level.name.clone()))
                    .collect();
                let tag: Vec<String> = named.iter().map(|(a, l)| format!("{a}{l}")).collect();
                let run_id = safe_id(&format!(
                    "{}-{profile}-{}-s{seed}",
                    self.study,
                    tag.join("-")
                ));
                let name: Vec<String> = named.iter().map(|(a, l)| format!("{a}={l}")).collect();
                let mut overrides = settings(&chosen.set);
                overrides.extend(levels.iter().flat_map(|level| settings(&level.set)));
                overrides.push(format!("run.seed={seed}"));
                overrides.push(format!(
                    "run.name={:?}",
                    format!("{} {}", self.study, name.join(" "))
                ));
                arms.push(Arm {
                    run_id,
                    levels: named,
                    seed,
                    experiment: self.dir.join(&chosen.experiment),
                    overrides,
                });
            }
        }
        Ok(arms)
    }

    fn seeds(&self, count: Option<usize>) -> Vec<u64> {
        let listed = &self.file.seeds;
        let count = count.unwrap_or(listed.len());
        let after = listed.iter().max().copied().unwrap_or(0);
        listed
            .iter()
            .copied()
            .chain((1..).map(|k| after + k))
            .take(count)
            .collect()
    }
}

/// `key=value` for each entry (values in TOML syntax, as `--set` reads them).
fn settings(table: &toml::Table) -> Vec<String> {
    table
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect()
}

/// `id` with anything a run id cannot hold replaced by `_`.
fn safe_id(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARMS: &str = r#"
seeds = [3, 5]
[profiles.small]
experiment = "small.toml"
set = { "train.max_steps" = 4 }
[[axes]]
name = "scale"
levels = [{ name = "1.0", set = { "model.residual_scale" = 1.0 } },
          { name = "0.1", set = { "model.residual_scale" = 0.1 } }]
[[axes]]
name = "warmup"
levels = [{ name = "none", set = { "train.schedule.warmup" = "none" } },
          { name = "linear", set = { "train.schedule.warmup" = "linear", "train.schedule.warmup_steps" = 2 } }]
"#;

    fn sweep() -> (tempfile::TempDir, Sweep) {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("study");
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join(SWEEP_FILE), ARMS).unwrap();
        let sweep = Sweep::read(&folder).unwrap();
        (dir, sweep)
    }

    #[test]
    fn arms_are_every_level_combination_times_every_seed() {
        let (_dir, sweep) = sweep();
        let arms = sweep.arms("small", None).unwrap();
        assert_eq!(arms.len(), 8);
        let ids: Vec<&str> = arms.iter().map(|a| a.run_id.as_str()).collect();
        assert_eq!(ids[0], "study-small-scale1.0-warmupnone-s3");
        assert_eq!(ids[7], "study-small-scale0.1-warmuplinear-s5");
        assert_eq!(
            arms[7].levels,
            [
                ("scale".into(), "0.1".into()),
                ("warmup".into(), "linear".into())
            ]
        );
        let unique: std::collections::BTreeSet<&str> = ids.iter().copied().collect();
        assert_eq!(unique.len(), 8);
        assert_eq!(
            arms[3].overrides,
            [
                "train.max_steps=4",
                "model.residual_scale=1.0",
                "train.schedule.warmup=\"linear\"",
                "train.schedule.warmup_steps=2",
                "run.seed=5",
                "run.name=\"study scale=1.0 warmup=linear\"",
            ]
        );
        assert_eq!(sweep.arms("small", Some(3)).unwrap().len(), 12);
        assert_eq!(sweep.arms("small", Some(3)).unwrap()[2].seed, 6);
        assert_eq!(sweep.arms("small", Some(1)).unwrap().len(), 4);
    }

    #[test]
    fn an_unknown_profile_or_key_is_named() {
        let (dir, sweep) = sweep();
        let err = sweep.arms("big", None).unwrap_err().to_string();
        assert!(err.contains("\"big\"") && err.contains("small"), "{err}");
        let folder = dir.path().join("study");
        std::fs::write(folder.join(SWEEP_FILE), format!("{ARMS}\nsteps = 3\n")).unwrap();
        let err = format!("{:#}", Sweep::read(&folder).unwrap_err());
        assert!(err.contains("steps"), "{err}");
        let err = format!("{:#}", Sweep::read(dir.path()).unwrap_err());
        assert!(err.contains(SWEEP_FILE), "{err}");
    }
}
