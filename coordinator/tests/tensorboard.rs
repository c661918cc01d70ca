//! TensorBoard reads a run's event files with its own reader (`pip install tensorboard`; `.ci/run`
//! installs it), and finds the run database's scalars in them.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

mod support;

use support::*;

/// Prints every scalar series of an event folder as JSON: {tag: [[step, value], …]}.
const READ_SCALARS: &str = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
events = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
events.Reload()
print(json.dumps({tag: [[e.step, e.value] for e in events.Scalars(tag)]
                  for tag in events.Tags()["scalars"]}))
"#;

fn tensorboard_importable() -> bool {
    Command::new("python3")
        .args(["-c", "import tensorboard"])
        .output()
        .is_ok_and(|out| out.status.success())
}

#[test]
fn tensorboard_reads_the_scalars_of_a_run() {
    if !tensorboard_importable() {
        incept_common::testing::skip(
            "tensorboard_reads_the_scalars_of_a_run",
            "python3 cannot import tensorboard (pip install tensorboard)",
        );
        return;
    }
    let fx = Fixture::new(TINY);
    let mut launch = fx.coordinator(&["launch"]);
    launch.arg(fx.experiment());
    let out = run_with_limit(launch, Duration::from_secs(300));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let db = fx.db();
    let run: String = db
        .query_row("SELECT id FROM runs", [], |r| r.get(0))
        .unwrap();
    let events = fx.state_dir().join(&run).join("tensorboard");

    let read = Command::new("python3")
        .args(["-c", READ_SCALARS])
        .arg(&events)
        .output()
        .unwrap();
    assert!(read.status.success(), "{}", text(&read.stderr));
    let scalars: BTreeMap<String, Vec<(i64, f64)>> = serde_json::from_slice(&read.stdout).unwrap();

    let series = |sql: &str| -> Vec<(i64, f64)> {
        let mut query = db.prepare(sql).unwrap();
        let rows = query.query_map([&run], |r| Ok((r.get(0)?, r.get(1)?)));
        rows.unwrap().map(Result::unwrap).collect()
    };
    let expected = [
        (
            "train/loss",
            series("SELECT step, loss FROM metrics WHERE run_id = ?1 AND rank = 0 ORDER BY step"),
        ),
        (
            "eval/top1",
            series("SELECT step, top1 FROM evaluations WHERE run_id = ?1 ORDER BY step"),
        ),
        (
            "probe/dead_fraction",
            series("SELECT step, dead_fraction FROM probes WHERE run_id = ?1 ORDER BY step"),
        ),
    ];
    for (tag, rows) in expected {
        let found = scalars
            .get(tag)
            .unwrap_or_else(|| panic!("no {tag} in {:?}", scalars.keys()));
        assert!(!rows.is_empty(), "the database has no {tag}");
        assert_eq!(found.len(), rows.len(), "{tag}");
        for ((step, value), (db_step, db_value)) in found.iter().zip(&rows) {
            assert_eq!(step, db_step, "{tag}");
            // Event files hold f32 scalars.
            assert_eq!(*value as f32, *db_value as f32, "{tag} at step {step}");
        }
    }
}
