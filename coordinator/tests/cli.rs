//! Bad command-line input ends with a clear error naming the flag or key, never a panic, and
//! printing commands end quietly when their reader goes away.

use std::process::{Command, Output, Stdio};

const COORDINATOR: &str = env!("CARGO_BIN_EXE_coordinator");

fn coordinator(args: &[&str]) -> Output {
    Command::new(COORDINATOR)
        .args(args)
        .output()
        .expect("the coordinator binary runs")
}

/// Fails without a panic, and stderr says `expected`.
fn assert_clear_error(output: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "succeeded: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains(expected),
        "expected {expected:?} in: {stderr}"
    );
}

#[test]
fn models_import_rejects_a_bad_width_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    for width in ["0", "-1", "NaN"] {
        let output = coordinator(&[
            "models",
            "import",
            "--arch",
            "inception_v3",
            "--from",
            "/nonexistent.safetensors",
            "--out",
            out.to_str().unwrap(),
            &format!("--width={width}"),
        ]);
        assert_clear_error(&output, "model.width");
    }
    assert!(!out.exists());
}

#[test]
fn bench_counts_must_be_positive() {
    let output = coordinator(&["bench", "step", "--steps", "0"]);
    assert_clear_error(&output, "--steps");
    let output = coordinator(&["bench", "data", "--path", "/nonexistent", "--passes", "0"]);
    assert_clear_error(&output, "--passes");
}

#[test]
fn an_unknown_arch_lists_the_known_ones() {
    let output = coordinator(&["models", "--arch", "resnet50"]);
    assert_clear_error(&output, "known: bn_inception, inception_v3");
}

#[test]
fn printing_into_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let experiment = incept_common::testing::experiment_file(&dir, "[run]\nname = \"pipe\"\n");
    // The reader is gone before the coordinator starts.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = Command::new(COORDINATOR)
        .args(["config", experiment.to_str().unwrap()])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(output.status.code(), Some(101), "{stderr}");
}

#[test]
fn bench_control_plane_measures_a_small_control_plane_and_a_recovery() {
    let output = coordinator(&[
        "bench",
        "control-plane",
        "--workers",
        "20",
        "--seconds",
        "2",
        "--recovery-trials",
        "1",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // 20 workers × 2 beats, every one answered and timed.
    assert!(stdout.contains("1 Hz × 20 workers, 40 beats"), "{stdout}");
    let total = stdout
        .lines()
        .find(|line| line.contains("kill to the next generation's first step"))
        .expect("the recovery row");
    let seconds: f64 = total
        .split('|')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(seconds > 0.0, "{total}");
}
