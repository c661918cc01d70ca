//! `coordinator eval`: a run's newest checkpoint, or a weights file, evaluated on a dataset's
//! validation split by workers that share the split through the usual rendezvous.
//!
//! An evaluation is a run of its own (folder, logs, database row, named `eval-<name>`) whose
//! training steps are already done: its workers load the weights, have no step left to train,
//! and make the final evaluation with the crop protocol asked for. Its result is recorded in
//! the `evaluations` table with the protocol and the weights it evaluated.

use std::path::Path;

use anyhow::{Context, bail};
use incept_common::config::{Arch, Crops, Experiment, ModelSection};
use incept_common::model::registry;
use incept_common::resolve;

use crate::store::{Protocol, Store};

use super::DATABASE;
use super::prepare::{Prepared, create_run, newest_verified_checkpoint, run_dir};

/// The weights an evaluation evaluates.
pub enum Weights<'a> {
    /// The newest checkpoint of a run in the state directory that verifies.
    Run(&'a str),
    /// Weights written by `coordinator models import` (or any incept weights file).
    File { path: &'a Path, arch: Arch },
}

/// What `coordinator eval` was asked.
pub struct EvalRequest<'a> {
    pub weights: Weights<'a>,
    /// `--set KEY=VALUE` over the run's experiment (or the defaults, for a weights file):
    /// typically the `data.*` keys of the dataset to evaluate on.
    pub overrides: &'a [String],
    pub crops: Crops,
    /// Evaluate a run's trained weights rather than its weight average.
    pub raw: bool,
    /// Workers sharing the validation split.
    pub workers: usize,
}

/// Prepares the evaluation run: its experiment, the checkpoint its workers start from, and the
/// protocol its result is recorded with.
pub(super) fn prepare_eval(request: &EvalRequest, state_dir: &Path) -> anyhow::Result<Prepared> {
    let (base, origin, resume_from) = match request.weights {
        Weights::Run(run_id) => {
            let database = state_dir.join(DATABASE);
            if !database.is_file() {
                bail!("no run database at {}", database.display());
            }
            let store = Store::open(&database)?;
            let Some((resolved, _)) = store
                .run_config(run_id)
                .with_context(|| format!("reading {}", database.display()))?
            else {
                bail!("no run {run_id:?} in {}", database.display());
            };
            let dir = run_dir(state_dir, run_id)?;
            let Some(resume) = newest_verified_checkpoint(&store, run_id, &dir)? else {
                bail!("run {run_id} has no checkpoint that verifies: nothing to evaluate");
            };
            (resolved, format!("run {run_id}"), Some(resume))
        }
        Weights::File { path, arch } => {
            if !path.is_file() {
                bail!("weights file {} does not exist", path.display());
            }
            let model = ModelSection {
                arch,
                image_size: registry::native_image_size(arch),
                init_from: Some(std::path::absolute(path)?),
                ..ModelSection::default()
            };
            let exp = Experiment {
                model,
                ..Experiment::default()
            };
            (exp.to_toml(), path.display().to_string(), None)
        }
    };
    let step = resume_from.as_ref().map_or(0, |r| r.step);
    let mut layers = vec![
        format!("cluster.world_size={}", request.workers),
        format!("train.max_steps={step}"),
        format!("data.augment.eval_crops={}", request.crops.count()),
        format!("train.evaluate_average={}", !request.raw),
    ];
    layers.extend(request.overrides.iter().cloned());
    let mut exp = resolve::load_over(&base, Path::new(&origin), &layers)?;
    exp.run.name = format!("eval-{}", exp.run.name);
    let weights = match request.weights {
        Weights::Run(run_id) => {
            let kind = Protocol::of(&exp).weights;
            format!("{kind} weights of run {run_id} at step {step}")
        }
        Weights::File { path, .. } => format!("weights file {}", path.display()),
    };
    let protocol = Protocol {
        crops: exp.data.augment.eval_crops.name(),
        weights,
    };
    let mut prepared = create_run(exp, &origin, None, state_dir)?;
    prepared.resume_from = resume_from;
    prepared.evaluation = Some(protocol);
    Ok(prepared)
}
