//! Turning an experiment file (a new run) or a run id (a resumed one) into a run ready to
//! start: its id, folder, resolved experiment, dataset layout and starting checkpoint.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use incept_common::config::{Experiment, Launcher};
use incept_common::data::{DataPosition, ShardLayout};
use incept_common::fsutil::write_atomic;
use incept_common::proto::DataPlan;
use incept_common::resolve;
use incept_common::train::checkpoint;

use crate::launcher::{self};
use crate::store::{Protocol, RunStatus, Store};

use super::{CHECKPOINTS, DATABASE};

/// Where a resumed run continues.
pub(super) struct Resume {
    pub(super) step: u64,
    pub(super) path: PathBuf,
    pub(super) position: DataPosition,
}

/// A run ready to start: its experiment, identity and starting point.
pub(super) struct Prepared {
    pub(super) store: Store,
    pub(super) exp: Experiment,
    pub(super) run_id: String,
    pub(super) run_dir: PathBuf,
    pub(super) resolved: String,
    /// Checkpoint to continue from, if resuming.
    pub(super) resume_from: Option<Resume>,
    /// How the training split is sharded, for the epoch plan.
    pub(super) layout: ShardLayout,
    /// For an evaluation run (`coordinator eval`): what it evaluates and how, recorded with
    /// its result.
    pub(super) evaluation: Option<Protocol>,
}

/// Validates a new experiment and creates its run: folder, resolved config, database row.
pub(super) fn prepare_new(
    experiment: &Path,
    overrides: &[String],
    run_id: Option<&str>,
    state_dir: &Path,
) -> anyhow::Result<Prepared> {
    let exp = resolve::load(experiment, overrides)?;
    create_run(exp, &experiment.display().to_string(), run_id, state_dir)
}

/// Whether the state directory's run database holds `run_id`.
pub(super) fn run_exists(state_dir: &Path, run_id: &str) -> anyhow::Result<bool> {
    let database = state_dir.join(DATABASE);
    if !database.is_file() {
        return Ok(false);
    }
    let store = Store::open(&database)?;
    Ok(store.run_config(run_id)?.is_some())
}

/// `launch --run-id` of a run the state directory holds: continued from its newest checkpoint
/// (from the start when it stopped before its first); `None` when it already succeeded.
pub(super) fn prepare_continue(run_id: &str, state_dir: &Path) -> anyhow::Result<Option<Prepared>> {
    let store = Store::open(&state_dir.join(DATABASE))?;
    if let Some((_, RunStatus::Succeeded)) = store.run_config(run_id)? {
        println!("run {run_id} already succeeded; nothing to do");
        return Ok(None);
    }
    drop(store);
    println!(
        "run {run_id} exists in {}: continuing it with its own configuration (the experiment \
         file and --set are not read again)",
        state_dir.display()
    );
    let prepared = prepare_resume(run_id, state_dir, Checkpoint::Optional)?;
    if prepared.resume_from.is_none() {
        println!("it stopped before its first checkpoint: starting it over");
    }
    Ok(Some(prepared))
}

/// Whether a resumed run must have a checkpoint to continue from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Checkpoint {
    /// `launch --resume`: a run without one is an error.
    Required,
    /// `launch --run-id`: a run without one starts over.
    Optional,
}

/// Creates the run of a checked experiment (from `origin`): folder, resolved config, database
/// row and lease, after its devices and data are found.
pub(super) fn create_run(
    mut exp: Experiment,
    origin: &str,
    run_id: Option<&str>,
    state_dir: &Path,
) -> anyhow::Result<Prepared> {
    if let Some(run_id) = run_id {
        check_run_id(run_id)?;
    }
    if exp.cluster.launcher == Launcher::Local {
        launcher::check_local_devices(&exp.cluster)?;
    }
    check_data_paths(&exp, origin)?;
    let layout = open_dataset(&mut exp, origin)?;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating the state directory {}", state_dir.display()))?;
    let mut store = Store::open(&state_dir.join(DATABASE))?;
    let run_id = run_id.map_or_else(|| new_run_id(&exp.run.name), str::to_string);
    let run_dir = run_dir(state_dir, &run_id)?;
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("creating the run directory {}", run_dir.display()))?;
    let resolved = exp.to_toml();
    write_atomic(&run_dir.join("config.toml"), resolved.as_bytes(), 0o644)?;
    store.create_run(
        &run_id,
        &exp.run.name,
        &resolved,
        exp.cluster.world_size,
        exp.total_steps(),
    )?;
    store.take_lease(&run_id)?;
    Ok(Prepared {
        store,
        exp,
        run_id,
        run_dir,
        resolved,
        resume_from: None,
        layout,
        evaluation: None,
    })
}

/// Loads a stopped run and picks the newest committed checkpoint that verifies.
pub(super) fn prepare_resume(
    run_id: &str,
    state_dir: &Path,
    checkpoint: Checkpoint,
) -> anyhow::Result<Prepared> {
    let database = state_dir.join(DATABASE);
    if !database.is_file() {
        bail!("no run database at {}", database.display());
    }
    let mut store = Store::open(&database)?;
    let Some((resolved, status)) = store
        .run_config(run_id)
        .with_context(|| format!("reading {}", database.display()))?
    else {
        bail!(
            "no run {run_id:?} in {}",
            state_dir.join(DATABASE).display()
        );
    };
    if status == RunStatus::Succeeded {
        bail!("run {run_id} already succeeded; nothing to resume");
    }
    // Before anything is written: another coordinator may be driving the run.
    store.take_lease(run_id)?;
    let exp = Experiment::from_toml(&resolved)?;
    let origin = format!("run {run_id}");
    check_data_paths(&exp, &origin)?;
    let mut reopened = exp.clone();
    let layout = open_dataset(&mut reopened, &origin)?;
    if reopened.data != exp.data {
        bail!(
            "the dataset of {origin} changed since it started: {} training and {} validation \
             images now, {} and {} then",
            reopened.data.train_samples,
            reopened.data.val_samples,
            exp.data.train_samples,
            exp.data.val_samples
        );
    }
    let run_dir = run_dir(state_dir, run_id)?;
    let resume_from = newest_verified_checkpoint(&store, run_id, &run_dir)?;
    if resume_from.is_none() && checkpoint == Checkpoint::Required {
        bail!("run {run_id} has no valid checkpoint to resume from");
    }
    store.reopen_run(run_id)?;
    Ok(Prepared {
        store,
        exp,
        run_id: run_id.to_string(),
        run_dir,
        resolved,
        resume_from,
        layout,
        evaluation: None,
    })
}

/// The newest checkpoint of the run that verifies, committed or not (one rank 0 wrote while
/// the coordinator was down is committed now); `None` when none does. Unusable ones are named
/// on the console and in the run's events.
pub(super) fn newest_verified_checkpoint(
    store: &Store,
    run_id: &str,
    run_dir: &Path,
) -> anyhow::Result<Option<Resume>> {
    let committed = store.checkpoints(run_id)?;
    let mut resume_from = None;
    for (step, path) in candidates(&committed, run_dir) {
        match checkpoint::verify_position(&path) {
            Ok((found, position)) if found == step => {
                if !committed.iter().any(|(s, _)| *s == step) {
                    // Written but never committed (the coordinator was down, or the generation
                    // failed first): whole and verified, so it counts.
                    store.commit_checkpoint(run_id, step, &path)?;
                    let message = format!(
                        "checkpoint of step {step} was written but never committed; verified and \
                         committed now"
                    );
                    eprintln!("{message}");
                    store.event(run_id, "info", &message)?;
                }
                resume_from = Some(Resume {
                    step,
                    path,
                    position,
                });
                break;
            }
            Ok((found, _)) => tracing::warn!(
                step,
                found,
                "checkpoint manifest names another step; skipped"
            ),
            Err(err) => {
                let message = format!("checkpoint of step {step} is unusable: {err}");
                eprintln!("{message}");
                store.event(run_id, "warn", &message)?;
            }
        }
    }
    Ok(resume_from)
}

/// The checkpoints a resume may start from, newest first: the committed ones and those in the
/// run's folder that the coordinator never saw (it was down when rank 0 wrote them).
fn candidates(committed: &[(u64, PathBuf)], run_dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut all: Vec<(u64, PathBuf)> = committed.to_vec();
    for (step, path) in checkpoint::list(&run_dir.join(CHECKPOINTS)) {
        if !all.iter().any(|(s, _)| *s == step) {
            all.push((step, path));
        }
    }
    all.sort_by_key(|(step, _)| std::cmp::Reverse(*step));
    all
}

/// The run's folder, absolute: workers (possibly elsewhere) write checkpoints into it.
pub(super) fn run_dir(state_dir: &Path, run_id: &str) -> anyhow::Result<PathBuf> {
    std::path::absolute(state_dir.join(run_id))
        .with_context(|| format!("resolving the state directory {}", state_dir.display()))
}

/// Fails before any worker starts when a file or folder the run reads is missing.
fn check_data_paths(exp: &Experiment, origin: &str) -> anyhow::Result<()> {
    for (key, path) in resolve::required_paths(exp) {
        if !path.exists() {
            bail!("{} does not exist ({key} in {origin})", path.display());
        }
    }
    Ok(())
}

/// Opens the dataset before any worker starts, fixing the experiment's sample counts to it;
/// returns the training split's layout.
fn open_dataset(exp: &mut Experiment, origin: &str) -> anyhow::Result<ShardLayout> {
    let source =
        resolve::open_dataset(exp).with_context(|| format!("opening the dataset of {origin}"))?;
    Ok(source.train_layout())
}

/// The epoch plan every rank receives.
pub(super) fn data_plan(layout: &ShardLayout, resume: Option<&Resume>) -> DataPlan {
    let (start_step, position) =
        resume.map_or((0, DataPosition::default()), |r| (r.step, r.position));
    DataPlan {
        train_shards: layout.sizes.clone(),
        shuffle_buffer: layout.shuffle_buffer,
        start_step,
        start_epoch: position.epoch,
        start_offset: position.offset,
    }
}

/// A run id given on the command line names a folder of the state directory: letters, digits,
/// `-`, `_` and `.`, not starting with `.`, at most 128 characters.
fn check_run_id(run_id: &str) -> anyhow::Result<()> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if run_id.is_empty()
        || run_id.len() > 128
        || run_id.starts_with('.')
        || !run_id.chars().all(allowed)
    {
        bail!(
            "--run-id {run_id:?}: a run id is 1 to 128 letters, digits, '-', '_' or '.', not \
             starting with '.'"
        );
    }
    Ok(())
}

/// `<name>-<UTC time>-<4 hex>`: sortable, readable, unique enough for one state dir.
fn new_run_id(name: &str) -> String {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let compact: String = stamp.chars().filter(char::is_ascii_digit).collect();
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "{safe}-{}-{}-{:04x}",
        &compact[..8],
        &compact[8..14],
        rand::random::<u16>()
    )
}
