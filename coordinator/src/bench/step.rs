//! `coordinator bench step`: training-step throughput and peak memory of one architecture on
//! this machine, optionally side by side with PyTorch running timm's model in the same run.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use incept_common::collective::Ring;
use incept_common::config::{Arch, DeviceKind, Experiment, KernelsKind};
use incept_common::device;
use incept_common::model::registry;
use incept_common::resolve;
use incept_common::train::{BackendJob, Replica, TrainBackend, backend};

use super::{at_least_one, median, peak_rss_mib, reset_peak_rss, run_json_script, threads};

/// What to measure (`coordinator bench step`'s flags).
#[derive(clap::Args, Debug)]
pub struct StepBench {
    /// The architecture.
    #[arg(long, default_value = "inception_resnet_v2")]
    pub arch: Arch,
    /// Images per step.
    #[arg(long, default_value_t = 8, value_parser = at_least_one)]
    pub batch: usize,
    /// Square input side in pixels.
    #[arg(long, default_value_t = 75)]
    pub image_size: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 10, value_parser = at_least_one)]
    pub steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// What incept computes on: cpu, cuda (GPU LOCAL_RANK) or auto (the baseline script is
    /// given the same device).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceKind,
    /// Whose kernels incept computes with: burn, libtorch, or several, comma-separated, each
    /// measured in its own row (default: every family this build has).
    #[arg(long, value_delimiter = ',')]
    pub kernels: Vec<KernelsKind>,
    /// Also run this PyTorch script with the same settings (e.g.
    /// experiments/baselines/bench_step_torch.py) and print both rows.
    #[arg(long)]
    pub compare: Option<PathBuf>,
}

/// The JSON line the baseline script prints.
#[derive(serde::Deserialize)]
struct ScriptResult {
    torch: String,
    median_step_ms: f64,
    images_per_sec: f64,
    peak_rss_mib: f64,
}

/// One measured configuration.
struct Measurement {
    label: String,
    median_step_ms: f64,
    images_per_sec: f64,
    peak_rss_mib: f64,
    /// incept's step phases (forward, backward, all-reduce, optimizer): median milliseconds.
    phases: Vec<(String, f64)>,
}

/// The phases of incept's step, as its timeline names them.
const PHASES: [&str; 4] = ["forward", "backward", "all-reduce", "optimizer"];

/// Runs the benchmark and prints the table (and the ratio when comparing).
pub fn run(bench: &StepBench) -> anyhow::Result<()> {
    eprintln!(
        "measuring {} × batch {} at {} px: {} warm-up + {} timed steps…",
        bench.arch, bench.batch, bench.image_size, bench.warmup, bench.steps
    );
    let mut rows = Vec::new();
    for kernels in kernel_families(bench) {
        rows.push(measure_incept(bench, kernels)?);
    }
    let ours = rows.len();
    if let Some(script) = &bench.compare {
        eprintln!("measuring the PyTorch baseline ({})…", script.display());
        rows.push(measure_script(script, bench)?);
    }
    println!(
        "{:<28} {:>14} {:>12} {:>14}",
        "implementation", "step (median)", "images/s", "peak RSS"
    );
    for row in &rows {
        println!(
            "{:<28} {:>11.1} ms {:>12.1} {:>10.0} MiB",
            row.label, row.median_step_ms, row.images_per_sec, row.peak_rss_mib
        );
    }
    println!("where incept's step goes (median ms):");
    for row in &rows[..ours] {
        let phases: Vec<String> = row
            .phases
            .iter()
            .map(|(name, ms)| format!("{name} {ms:.1}"))
            .collect();
        println!("  {:<36} {}", row.label, phases.join(", "));
    }
    if let Some(theirs) = rows.get(ours) {
        for row in &rows[..ours] {
            println!(
                "ratio {} / PyTorch: {:.2}× images/s, {:.2}× peak memory",
                row.label,
                row.images_per_sec / theirs.images_per_sec,
                row.peak_rss_mib / theirs.peak_rss_mib
            );
        }
    }
    Ok(())
}

/// The kernel families to measure: those asked for, else each this build has.
fn kernel_families(bench: &StepBench) -> Vec<KernelsKind> {
    if !bench.kernels.is_empty() {
        return bench.kernels.clone();
    }
    let mut families = vec![KernelsKind::Burn];
    if device::KernelFamily::Libtorch.built() {
        families.push(KernelsKind::Libtorch);
    }
    families
}

fn measure_incept(bench: &StepBench, kernels: KernelsKind) -> anyhow::Result<Measurement> {
    let compute = device::resolve_compute(bench.device, kernels, device::local_rank()?)?;
    backend::set_cpu_threads(threads());
    // Each row's peak is its own, not the rows' before it.
    reset_peak_rss()?;
    let label = format!("incept ({compute}, {} thr)", threads());
    eprintln!("measuring {label}…");
    backend::run_on(compute, StepJob { bench, label })
}

/// One incept row of the table, run on the backend its kernels select.
struct StepJob<'a> {
    bench: &'a StepBench,
    label: String,
}

impl BackendJob for StepJob<'_> {
    type Output = Measurement;

    fn run<B: TrainBackend>(self, device: B::Device) -> anyhow::Result<Measurement> {
        measure_on::<B>(self.bench, device, self.label)
    }
}

fn measure_on<B: TrainBackend>(
    bench: &StepBench,
    device: B::Device,
    label: String,
) -> anyhow::Result<Measurement> {
    let mut exp = Experiment::default();
    exp.model.arch = bench.arch;
    exp.model.num_classes = 1000;
    exp.model.image_size = bench.image_size;
    exp.train.batch_size = bench.batch;
    exp.train.ema_decay = 0.0;
    exp.data.train_samples = bench.batch * (bench.steps + bench.warmup);
    // The timeline of every step, for the phases.
    exp.train.trace_steps = Some([1, (bench.steps + bench.warmup) as u64]);
    resolve::check(&exp).context("benchmark configuration")?;

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let peers = [listener.local_addr()?];
    let ring = Ring::connect(0, &peers, listener, Duration::from_secs(5))?;
    B::seed(&device, exp.run.seed);
    let model = registry::build::<B>(&exp.model, &device);
    let mut replica = Replica::new(&exp, Box::new(ring), model, device)?;
    let mut compute = Vec::with_capacity(bench.steps);
    let mut phases = vec![Vec::with_capacity(bench.steps); PHASES.len()];
    for step in 0..(bench.warmup + bench.steps) as u64 {
        let stats = replica.step(step)?;
        let spans = replica.timeline().take();
        if step as usize >= bench.warmup {
            // Forward, loss, backward and optimizer; the synthetic data is timed apart.
            compute.push((stats.compute + stats.allreduce).as_secs_f64());
            for (phase, times) in PHASES.iter().zip(&mut phases) {
                let us: u64 = spans
                    .iter()
                    .filter(|span| span.name == *phase)
                    .map(|span| span.duration_us)
                    .sum();
                times.push(us as f64 / 1e3);
            }
        }
    }
    let median_step = median(&mut compute);
    let phases = PHASES
        .iter()
        .zip(&mut phases)
        .map(|(phase, times)| (phase.to_string(), median(times)))
        .collect();
    Ok(Measurement {
        label,
        median_step_ms: median_step * 1e3,
        images_per_sec: bench.batch as f64 / median_step,
        peak_rss_mib: peak_rss_mib()?,
        phases,
    })
}

fn measure_script(script: &Path, bench: &StepBench) -> anyhow::Result<Measurement> {
    let threads = threads().to_string();
    let (batch, size) = (bench.batch.to_string(), bench.image_size.to_string());
    let (steps, warmup) = (bench.steps.to_string(), bench.warmup.to_string());
    let result: ScriptResult = run_json_script(
        script,
        &[
            ("--arch", bench.arch.name()),
            ("--batch", &batch),
            ("--image-size", &size),
            ("--steps", &steps),
            ("--warmup", &warmup),
            ("--threads", &threads),
            ("--device", &bench.device.to_string()),
        ],
    )?;
    Ok(Measurement {
        label: format!("PyTorch {} (timm, {threads} thr)", result.torch),
        median_step_ms: result.median_step_ms,
        images_per_sec: result.images_per_sec,
        peak_rss_mib: result.peak_rss_mib,
        phases: Vec::new(),
    })
}
