//! `coordinator bench data`: images/s of the input pipeline (JPEG decode, Inception crop, flip,
//! resize, normalise) on real JPEG files, optionally side by side with PIL + torchvision on the
//! same files in the same run.
//!
//! Like the baseline script, the files' bytes are read into memory first, so this measures CPU
//! work and not the disk; T threads each take every T-th file, run one untimed warm-up pass and
//! then `passes` timed passes, and the time is the wall time until the last thread is done.

use std::path::PathBuf;
use std::sync::Barrier;
use std::time::Instant;

use anyhow::Context;
use incept_common::config::AugmentSection;
use incept_common::data::Split;
use incept_common::data::augment::Preprocess;
use incept_common::data::folders::ImagenetFolders;
use incept_common::data::source::RawImage;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{at_least_one, run_json_script};

/// What to measure (`coordinator bench data`'s flags).
#[derive(clap::Args, Debug)]
pub struct DataBench {
    /// An ILSVRC-layout folder (its train/ JPEGs are used), e.g. one made by
    /// experiments/baselines/make_bench_images.py.
    #[arg(long)]
    pub path: PathBuf,
    /// Decoding threads.
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    pub threads: usize,
    /// Square output side in pixels.
    #[arg(long, default_value_t = 299)]
    pub image_size: usize,
    /// Timed passes over the files (after one warm-up pass).
    #[arg(long, default_value_t = 10, value_parser = at_least_one)]
    pub passes: usize,
    /// Also run this PIL + torchvision script on the same files (e.g.
    /// experiments/baselines/bench_data_torch.py) and print both rows.
    #[arg(long)]
    pub compare: Option<PathBuf>,
}

/// The JSON line the baseline script prints.
#[derive(serde::Deserialize)]
struct ScriptResult {
    pillow: String,
    torchvision: String,
    images: u64,
    seconds: f64,
}

struct Measurement {
    label: String,
    images: u64,
    seconds: f64,
}

impl Measurement {
    fn per_thread(&self, threads: usize) -> f64 {
        self.images as f64 / self.seconds / threads as f64
    }
}

/// Runs the benchmark and prints the table (and the ratio when comparing).
pub fn run(bench: &DataBench) -> anyhow::Result<()> {
    let folders = ImagenetFolders::open(&bench.path, None)?;
    let files = folders.files(Split::Train);
    let images: Vec<RawImage> = files
        .iter()
        .map(|f| {
            std::fs::read(&f.path)
                .map(RawImage::Encoded)
                .with_context(|| format!("reading {}", f.path.display()))
        })
        .collect::<anyhow::Result<_>>()?;
    let bytes: usize = images
        .iter()
        .map(|i| match i {
            RawImage::Encoded(b) => b.len(),
            _ => 0,
        })
        .sum();
    eprintln!(
        "{} JPEGs ({:.1} KiB mean) from {}: {} thread(s), {} px, 1 warm-up + {} timed passes…",
        images.len(),
        bytes as f64 / images.len().max(1) as f64 / 1024.0,
        bench.path.join("train").display(),
        bench.threads,
        bench.image_size,
        bench.passes
    );
    let mut rows = vec![measure_incept(bench, &images)?];
    if let Some(script) = &bench.compare {
        eprintln!(
            "measuring the PIL + torchvision baseline ({})…",
            script.display()
        );
        let (threads, size, passes) = (
            bench.threads.to_string(),
            bench.image_size.to_string(),
            bench.passes.to_string(),
        );
        let path = bench.path.display().to_string();
        let result: ScriptResult = run_json_script(
            script,
            &[
                ("--path", &path),
                ("--threads", &threads),
                ("--image-size", &size),
                ("--passes", &passes),
            ],
        )?;
        rows.push(Measurement {
            label: format!("PIL {} + torchvision {}", result.pillow, result.torchvision),
            images: result.images,
            seconds: result.seconds,
        });
    }
    println!(
        "{:<34} {:>8} {:>9} {:>12} {:>18}",
        "implementation", "threads", "images", "images/s", "images/s/thread"
    );
    for row in &rows {
        println!(
            "{:<34} {:>8} {:>9} {:>12.1} {:>18.1}",
            row.label,
            bench.threads,
            row.images,
            row.images as f64 / row.seconds,
            row.per_thread(bench.threads)
        );
    }
    if let [ours, theirs] = &rows[..] {
        println!(
            "ratio incept / PIL+torchvision: {:.2}× images/s per thread",
            ours.per_thread(bench.threads) / theirs.per_thread(bench.threads)
        );
    }
    Ok(())
}

fn measure_incept(bench: &DataBench, images: &[RawImage]) -> anyhow::Result<Measurement> {
    let preprocess = Preprocess {
        image_size: bench.image_size,
        augment: AugmentSection::default(),
    };
    let threads = bench.threads.max(1);
    let start = Barrier::new(threads + 1);
    let outcome = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (preprocess, start) = (&preprocess, &start);
                scope.spawn(move || -> Result<u64, String> {
                    let mine: Vec<(u64, &RawImage)> = images
                        .iter()
                        .enumerate()
                        .skip(t)
                        .step_by(threads)
                        .map(|(i, image)| (i as u64, image))
                        .collect();
                    let mut out = vec![0.0f32; 3 * preprocess.image_size * preprocess.image_size];
                    let mut pass = |epoch: u64| -> Result<(), String> {
                        for &(index, image) in &mine {
                            let mut rng = ChaCha8Rng::seed_from_u64(epoch << 32 | index);
                            preprocess.apply(image, Split::Train, &mut rng, &mut out)?;
                        }
                        Ok(())
                    };
                    let warm_up = pass(0);
                    start.wait();
                    warm_up?;
                    for epoch in 1..=bench.passes as u64 {
                        pass(epoch)?;
                    }
                    Ok((mine.len() * bench.passes) as u64)
                })
            })
            .collect();
        start.wait();
        let started = Instant::now();
        let done: Result<Vec<u64>, String> = workers
            .into_iter()
            .map(|w| w.join().expect("a benchmark thread panicked"))
            .collect();
        done.map(|counts| (counts.iter().sum::<u64>(), started.elapsed().as_secs_f64()))
    });
    let (count, seconds) = outcome.map_err(anyhow::Error::msg)?;
    Ok(Measurement {
        label: "incept (zune-jpeg + fast_image_resize)".into(),
        images: count,
        seconds,
    })
}
