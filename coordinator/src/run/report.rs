//! How a run ended: recorded in the run database, summarised on the console, and turned into
//! the exit code.

use std::path::Path;
use std::process::ExitCode;

use incept_common::config::Experiment;

use crate::progress::human;
use crate::store::{Protocol, RunStatus, Store, rates};

use super::{DATABASE, Outcome};

/// What a run was and how long it took, for its report.
pub(super) struct Ended<'a> {
    pub(super) run_id: &'a str,
    pub(super) run_dir: &'a Path,
    pub(super) exp: &'a Experiment,
    /// For an evaluation run: what it evaluated and how.
    pub(super) evaluation: Option<&'a Protocol>,
    pub(super) final_loss: f64,
    pub(super) elapsed: f64,
}

/// Records the outcome, prints the summary, and picks the exit code.
pub(super) fn report(store: &Store, ended: &Ended, outcome: Outcome) -> anyhow::Result<ExitCode> {
    let Ended {
        run_id,
        run_dir,
        exp,
        evaluation,
        final_loss,
        elapsed,
    } = *ended;
    if let Outcome::Unrecorded(error) = &outcome {
        return Ok(unrecorded(store, run_id, run_dir, error));
    }
    store.release_lease(run_id)?;
    match outcome {
        Outcome::Succeeded(eval) => {
            let protocol = evaluation.cloned().unwrap_or_else(|| Protocol::of(exp));
            store.record_evaluation(run_id, &eval, &protocol)?;
            store.finish_run(run_id, RunStatus::Succeeded, Some(&eval), None)?;
            let [top1, top5] = rates(&eval);
            let result = format!(
                "top-1 {:.2}%, top-5 {:.2}% ({} images), loss {:.4}",
                100.0 * top1,
                100.0 * top5,
                eval.samples,
                eval.loss
            );
            if evaluation.is_some() {
                println!("evaluation {run_id} finished in {}", human(elapsed));
                let workers = exp.cluster.world_size;
                let plural = if workers == 1 { "" } else { "s" };
                println!("  {} ({workers} worker{plural})", protocol.weights);
                println!("  {}: {result}", protocol.crops);
                println!("  database {}", run_dir.with_file_name(DATABASE).display());
                return Ok(ExitCode::SUCCESS);
            }
            let images = exp.total_steps() as f64 * exp.global_batch() as f64;
            println!("run {run_id} succeeded in {}", human(elapsed));
            println!(
                "  steps {} ({} workers × batch {} × accumulate {})",
                exp.total_steps(),
                exp.cluster.world_size,
                exp.train.batch_size,
                exp.train.accumulate
            );
            println!("  final training loss {final_loss:.4}");
            println!("  validation {result}");
            println!(
                "  throughput {:.1} images/s (whole run, all workers)",
                images / elapsed
            );
            println!("  database {}", run_dir.with_file_name(DATABASE).display());
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Failed(error) => {
            store.finish_run(run_id, RunStatus::Failed, None, Some(&error))?;
            store.event(run_id, "error", &error)?;
            eprintln!("run {run_id} failed: {error}");
            Ok(ExitCode::FAILURE)
        }
        Outcome::Interrupted(signal) => {
            let why = format!("interrupted by {}", signal.name());
            store.finish_run(run_id, RunStatus::Interrupted, None, Some(&why))?;
            eprintln!("run {run_id} {why}; workers stopped");
            let state_dir = run_dir.parent().unwrap_or(Path::new("."));
            eprintln!(
                "continue it with: coordinator launch --resume {run_id} --state-dir {}",
                state_dir.display()
            );
            Ok(ExitCode::from(signal.exit_code()))
        }
        Outcome::Shrink(_) | Outcome::Unrecorded(_) => {
            unreachable!("a group that shrinks goes on; an unrecorded end is reported above")
        }
    }
}

/// A run whose database could not be written: its end is recorded if the database takes it,
/// and the user is told how to continue once the cause is fixed.
fn unrecorded(store: &Store, run_id: &str, run_dir: &Path, error: &str) -> ExitCode {
    let recorded = store
        .finish_run(run_id, RunStatus::Failed, None, Some(error))
        .and_then(|()| store.release_lease(run_id));
    eprintln!("run {run_id} failed: {error}");
    if recorded.is_err() {
        eprintln!(
            "its end could not be written to the run database either; `coordinator runs` shows \
             it stale once this coordinator has exited"
        );
    }
    let state_dir = run_dir.parent().unwrap_or(Path::new("."));
    eprintln!(
        "make room, then continue it from its newest whole checkpoint with: coordinator launch \
         --resume {run_id} --state-dir {}",
        state_dir.display()
    );
    ExitCode::FAILURE
}
