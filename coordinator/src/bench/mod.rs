//! Benchmarks: each measures incept and, in the same run, the baseline it is compared with,
//! and prints both side by side.
//!
//! - [`step`]: a training step against PyTorch + timm;
//! - [`data`]: the input pipeline against PIL + torchvision;
//! - [`allreduce`]: ring all-reduce across rank processes against torch.distributed's Gloo and
//!   iperf3's loopback TCP ([`allreduce_rank`] is one rank process);
//! - [`control_plane`]: a thousand simulated workers against one coordinator, and the time a
//!   run takes to recover from a killed worker (absolute figures: no other tool runs here);
//! - [`dashboard`]: opening a long run in the dashboard against loading its full-resolution
//!   curve;
//! - [`nccl_inplace`]: not a race but a check for GPU machines: NCCL reducing training's
//!   gradient buckets in their own device memory.

pub mod allreduce;
pub mod allreduce_rank;
pub mod control_plane;
pub mod dashboard;
pub mod data;
pub mod nccl_inplace;
pub mod step;

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use serde::de::DeserializeOwned;

/// Parses a count flag that must be at least 1 (steps, passes, workers): a clear error at the
/// flag instead of an empty measurement later.
pub fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(count) => Ok(count),
        Err(e) => Err(e.to_string()),
    }
}

pub use incept_common::train::backend::cpu_threads as threads;

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// This process's peak resident set (`VmHWM`), in MiB.
pub fn peak_rss_mib() -> anyhow::Result<f64> {
    status_mib("self", "VmHWM")
}

/// Starts this process's peak resident set anew at its current size (Linux 4.0+: "5" to
/// `/proc/self/clear_refs`), so that the next [`peak_rss_mib`] covers what ran since.
pub fn reset_peak_rss() -> anyhow::Result<()> {
    std::fs::write("/proc/self/clear_refs", "5").context("resetting the peak RSS")
}

/// A memory figure (`VmRSS`, `VmHWM`, …) of process `pid` ("self": this one), in MiB, from
/// `/proc/PID/status`.
pub fn status_mib(pid: &str, field: &str) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in {path}"))?;
    Ok(kib / 1024.0)
}

/// Runs `measure` in a scratch folder of its own (`incept-bench-NAME-PID` in the temp
/// directory), removed afterwards whatever the result.
pub fn in_scratch_dir(
    name: &str,
    measure: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("incept-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = measure(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Runs a baseline script with `python3` and parses the JSON line it prints last.
pub fn run_json_script<T: DeserializeOwned>(
    script: &Path,
    args: &[(&str, &str)],
) -> anyhow::Result<T> {
    let output = Command::new("python3")
        .arg(script)
        .args(args.iter().flat_map(|(k, v)| [k, v]))
        .output()
        .with_context(|| format!("running python3 {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed ({}): {}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("{} printed no JSON result: {stdout}", script.display()))?;
    serde_json::from_str(line)
        .with_context(|| format!("{} printed an unexpected result: {line}", script.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_figures_of_this_process_and_a_missing_one() {
        let (rss, peak) = (
            status_mib("self", "VmRSS").unwrap(),
            peak_rss_mib().unwrap(),
        );
        assert!(rss > 0.0 && peak >= rss, "{rss} {peak}");
        assert!(status_mib("self", "VmNothing").is_err());
        assert!(status_mib("999999999", "VmRSS").is_err());
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 3.0);
    }
}
