//! A run on LibTorch's kernels end to end (the `libtorch` feature): the real coordinator and 2
//! real workers train the tiny network with `cluster.kernels = "libtorch"`, the loss falls, the
//! replicas stay identical (checked every 8 steps by the run itself), and the run database,
//! `coordinator runs` and `coordinator status` say what each rank computed with.
#![cfg(feature = "libtorch")]

use std::time::Duration;

mod support;

use support::*;

#[test]
fn a_run_on_libtorch_kernels_trains_and_says_so() {
    let fx = Fixture::new(TINY);
    let mut cmd = fx.coordinator(&["launch"]);
    cmd.arg(fx.experiment())
        .args(["--set", "cluster.kernels=libtorch"]);
    let out = run_with_limit(cmd, Duration::from_secs(300));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("succeeded"), "{stdout}");

    let db = fx.db();
    let computes: Vec<String> = db
        .prepare("SELECT compute FROM workers ORDER BY rank")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(computes, ["libtorch on cpu", "libtorch on cpu"]);
    let losses: Vec<f64> = db
        .prepare("SELECT loss FROM metrics WHERE rank = 0 ORDER BY step")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(losses.len(), 48);
    let mean = |losses: &[f64]| losses.iter().sum::<f64>() / losses.len() as f64;
    let (first, last) = (mean(&losses[..8]), mean(&losses[40..]));
    assert!(
        last < first * 0.9,
        "the loss did not fall: {first:.4} -> {last:.4}"
    );

    let runs = text(&run_with_limit(fx.coordinator(&["runs"]), Duration::from_secs(30)).stdout);
    assert!(runs.contains("libtorch on cpu"), "{runs}");
    let status = text(&run_with_limit(fx.coordinator(&["status"]), Duration::from_secs(30)).stdout);
    assert!(status.contains("rank 1: "), "{status}");
    assert_eq!(status.matches(", libtorch on cpu").count(), 2, "{status}");
}
