//! `coordinator status [RUN_ID]`: one screen about a live or finished run (its workers, step,
//! rate, ETA, last evaluation and events), read from the state directory in another terminal.

use std::path::Path;

use anyhow::bail;

use crate::progress::human;
use crate::run;
use crate::store::{self, Lease, Store};

/// Events shown, newest last.
const RECENT_EVENTS: usize = 5;

/// Prints the status of `run_id`, or of the newest run.
pub fn show(state_dir: &Path, run_id: Option<&str>) -> anyhow::Result<()> {
    let db = state_dir.join(run::DATABASE);
    if !db.is_file() {
        bail!("no run database at {}", db.display());
    }
    let store = Store::open(&db)?;
    let run_id = match run_id {
        Some(id) => id.to_string(),
        None => match store.newest_run()? {
            Some(id) => id,
            None => bail!("{} holds no run yet", db.display()),
        },
    };
    let Some(run) = store.detail(&run_id, RECENT_EVENTS)? else {
        bail!("no run {run_id:?} in {}", db.display());
    };
    let now = store::now();
    let summary = &run.summary;
    let running = summary.status == "running";
    let live = summary.lease.as_ref().is_some_and(Lease::is_live);

    println!("run {} ({})", summary.id, run.name);
    let status = match (running, live) {
        (true, false) => "stale: its coordinator is gone (launch --resume continues it)".into(),
        _ => summary.status.clone(),
    };
    match &run.error {
        Some(error) => println!("  status      {status}: {}", first_line(error)),
        None => println!("  status      {status}"),
    }
    match run.finished_at {
        Some(end) => println!(
            "  ran         {} (finished {} ago)",
            human(end - run.created_at),
            human(now - end)
        ),
        None => println!("  running for {}", human(now - run.created_at)),
    }
    let restarts = match run.restarts {
        0 => String::new(),
        n => format!(", generation {n} (restarted after {n} failure(s))"),
    };
    println!(
        "  workers     {} of {} joined{restarts}",
        run.workers.len(),
        summary.world_size
    );
    for (rank, host, pid, compute) in &run.workers {
        let compute = compute
            .as_deref()
            .map(|c| format!(", {c}"))
            .unwrap_or_default();
        println!("    rank {rank}: {host}, pid {pid}{compute}");
    }
    let total = summary.total_steps;
    match run.last_step {
        Some((step, loss, images_per_sec, seconds)) => {
            let eta = if running && live {
                format!(", ETA {}", human((total - step) as f64 * seconds))
            } else {
                String::new()
            };
            println!(
                "  step        {step}/{total} ({:.0}%), loss {loss:.4}, {images_per_sec:.1} \
                 img/s/worker{eta}",
                100.0 * step as f64 / total.max(1) as f64
            );
        }
        None => println!("  step        0/{total}"),
    }
    if let Some((step, top1, top5, loss, protocol)) = &run.last_evaluation {
        println!(
            "  evaluation  step {step}: top-1 {:.2}%, top-5 {:.2}%, loss {loss:.4} ({protocol})",
            100.0 * top1,
            100.0 * top5
        );
    }
    if !run.events.is_empty() {
        println!("  events");
        for (at, level, message) in &run.events {
            println!(
                "    {:>6} ago  {level:<5} {}",
                human(now - at),
                first_line(message)
            );
        }
    }
    Ok(())
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}
