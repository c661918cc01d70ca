//! What the test suites share across crates.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Says that `test` did not run and why, on the terminal itself: libtest captures what a
/// passing test prints with `eprintln!`, and a skip must not pass silently.
pub fn skip(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// Writes `text` as `exp.toml` in `dir` and returns its path, for tests that load experiments.
pub fn experiment_file(dir: impl AsRef<Path>, text: &str) -> PathBuf {
    let path = dir.as_ref().join("exp.toml");
    std::fs::write(&path, text).expect("the temporary directory is writable");
    path
}
