//! `coordinator bench dashboard`: how long the dashboard takes to open a long run (the runs
//! table and the loss curve downsampled to a chart's width) over real HTTP, beside fetching the
//! same curve at full resolution (what a chart without server-side downsampling would load),
//! measured in the same run on a synthetic run database.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use incept_common::proto::StepMetrics;

use super::{at_least_one, in_scratch_dir};
use crate::dashboard;
use crate::run::DATABASE;
use crate::store::Store;

/// What to measure (`coordinator bench dashboard`'s flags).
#[derive(clap::Args, Debug)]
pub struct DashboardBench {
    /// Steps of the synthetic run (metrics of 2 ranks each).
    #[arg(long, default_value_t = 200_000, value_parser = at_least_one)]
    pub steps: usize,
    /// The chart's width in points.
    #[arg(long, default_value_t = 1000, value_parser = at_least_one)]
    pub points: usize,
    /// Timed repetitions of each request, after one untimed (the median is shown).
    #[arg(long, default_value_t = 5, value_parser = at_least_one)]
    pub repeat: usize,
}

pub fn run(bench: &DashboardBench) -> anyhow::Result<()> {
    in_scratch_dir("dashboard", |dir| measure(bench, dir))
}

fn measure(bench: &DashboardBench, dir: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let run_id = "bench-dashboard";
    fill(&dir.join(DATABASE), run_id, bench.steps)?;
    println!(
        "synthetic run: {} steps x 2 ranks written in {:.1} s",
        bench.steps,
        started.elapsed().as_secs_f64()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let url = runtime.block_on(dashboard::start(dir, "127.0.0.1:0"))?;
    let addr = url.trim_start_matches("http://").trim_end_matches('/');
    let requests = [
        ("runs table", "/api/runs".to_string()),
        (
            "loss at chart width",
            format!(
                "/api/runs/{run_id}/series?metric=loss&points={}",
                bench.points
            ),
        ),
        (
            "loss at full resolution (CSV)",
            format!("/api/runs/{run_id}/series?metric=loss&format=csv"),
        ),
    ];
    println!("| request | bytes | median ms |");
    println!("|---|---:|---:|");
    let mut medians = Vec::new();
    for (label, path) in &requests {
        let mut times = Vec::new();
        let mut bytes = 0;
        for attempt in 0..=bench.repeat {
            let start = Instant::now();
            bytes = get(addr, path).with_context(|| format!("GET {path}"))?;
            if attempt > 0 {
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        medians.push(median);
        println!("| {label} | {bytes} | {median:.1} |");
    }
    println!(
        "opening the run (runs table + loss chart): {:.1} ms; the full-resolution curve alone: \
         {:.1} ms ({:.1}x)",
        medians[0] + medians[1],
        medians[2],
        medians[2] / medians[1]
    );
    Ok(())
}

/// A run database holding one run of `steps` steps, each with 2 ranks' metrics.
fn fill(database: &Path, run_id: &str, steps: usize) -> anyhow::Result<()> {
    let mut store = Store::open(database)?;
    store.create_run(
        run_id,
        "bench",
        "[run]\nname = \"bench\"\n",
        2,
        steps as u64,
    )?;
    let metrics = |step: usize| StepMetrics {
        step: step as u64,
        loss: 7.0 / (1.0 + step as f64 / 1000.0) + 0.1 * ((step * 7919) % 97) as f64 / 97.0,
        learning_rate: 0.045,
        images_per_sec: 100.0,
        grad_norm: 1.0,
        ..Default::default()
    };
    for chunk in (1..=steps).collect::<Vec<_>>().chunks(10_000) {
        let batch: Vec<StepMetrics> = chunk.iter().map(|&step| metrics(step)).collect();
        for rank in 0..2 {
            store.insert_metrics(run_id, rank, &batch)?;
        }
    }
    Ok(())
}

/// GET `path` from `addr` over HTTP/1.1; the size of the whole response.
fn get(addr: &str, path: &str) -> anyhow::Result<usize> {
    let mut stream = TcpStream::connect(addr)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    anyhow::ensure!(
        response.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&response[..response.len().min(200)])
    );
    Ok(response.len())
}
