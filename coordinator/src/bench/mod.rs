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

/// Compute threads: `RAYON_NUM_THREADS` if set, else every core.
/// Parses a count flag that must be at least 1 (steps, passes, workers): a clear error at the
/// flag instead of an empty measurement later.
pub fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(count) => Ok(count),
        Err(e) => Err(e.to_string()),
    }
}

pub fn threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// This process's peak resident set (`VmHWM`), in MiB.
pub fn peak_rss_mib() -> anyhow::Result<f64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/self/status")?;
    Ok(kib / 1024.0)
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
    fn median_of_odd_and_even() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 3.0);
    }
}
