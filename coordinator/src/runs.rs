//! `coordinator runs`: the runs of a state directory, one line each.

use std::path::Path;

use crate::run;
use crate::store::{self, Lease};

/// Prints every run of the state directory's database: id, status, world size, steps, top-1.
/// A run marked running whose coordinator is gone (its lease is stale) shows as `stale`:
/// `launch --resume` continues it.
pub fn list(state_dir: &Path) -> anyhow::Result<()> {
    let db = state_dir.join(run::DATABASE);
    if !db.is_file() {
        anyhow::bail!("no run database at {}", db.display());
    }
    let runs = store::Store::open(&db)?.runs()?;
    println!(
        "{:<44} {:<12} {:>5} {:>13} {:>8}  compute",
        "run", "status", "world", "steps", "top-1"
    );
    for r in runs {
        let top1 = r
            .val_top1
            .map_or("-".into(), |v| format!("{:.2}%", 100.0 * v));
        let steps = format!("{}/{}", r.steps_done.unwrap_or(0), r.total_steps);
        // A run left "running" by a coordinator that died says so.
        let orphaned = r.status == "running" && !r.lease.as_ref().is_some_and(Lease::is_live);
        let status = if orphaned { "stale" } else { r.status.as_str() };
        println!(
            "{:<44} {:<12} {:>5} {:>13} {:>8}  {}",
            r.id,
            status,
            r.world_size,
            steps,
            top1,
            r.compute.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}
