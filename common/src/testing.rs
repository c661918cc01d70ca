//! What the test suites share across crates.

use std::io::Write;

/// Says that `test` did not run and why, on the terminal itself: libtest captures what a
/// passing test prints with `eprintln!`, and a skip must not pass silently.
pub fn skip(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}
