//! `coordinator predict`: the most likely classes of JPEG images or of `.npy` arrays of model
//! inputs under a weights file, and optionally the raw logits as `.npy` (for parity checks
//! against other implementations).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use burn::backend::Flex;
use burn::prelude::*;
use incept_common::config::{Arch, Experiment, ModelSection};
use incept_common::data::Split;
use incept_common::data::augment::Preprocess;
use incept_common::data::source::RawImage;
use incept_common::model::import;
use incept_common::model::registry::{self, Network};
use incept_common::npy;
use incept_common::resolve;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// `.npy` images run through the network this many at a time.
const NPY_BATCH: usize = 8;

/// The flags of `coordinator predict`.
#[derive(clap::Args, Debug)]
pub struct PredictArgs {
    /// Weights written by `coordinator models import` (incept module paths).
    #[arg(long)]
    pub weights: PathBuf,
    /// The weights' architecture.
    #[arg(long)]
    pub arch: Arch,
    /// Override a key: the weights' model knobs (model.num_classes=10, model.width=0.5, …) or
    /// the JPEG crop (data.augment.eval_crop=0.875; repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Class names, one per line in class-index order.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Write the raw logits of every input, in order, as a float32 `.npy` array [N, classes].
    #[arg(long, value_name = "FILE.npy")]
    pub logits_out: Option<PathBuf>,
    /// Classes printed per input.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// JPEG files (centre-cropped as in evaluation), or `.npy` float32 arrays [N, 3, H, W]
    /// already in the model's input range ([-1, 1], H = W = model.image_size).
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
}

/// Classifies every input, printing its `top` classes with their probabilities.
pub fn run(args: &PredictArgs) -> anyhow::Result<()> {
    ensure!(args.top >= 1, "--top must be at least 1");
    let exp = experiment(args.arch, &args.overrides)?;
    let model = &exp.model;
    let labels = args
        .labels
        .as_deref()
        .map(|path| read_labels(path, model.num_classes))
        .transpose()?;
    let device = Default::default();
    let network = import::load_incept(registry::build::<Flex>(model, &device), &args.weights)
        .with_context(|| {
            format!(
                "loading {} as {} (model knobs from --set model.*)",
                args.weights.display(),
                model.arch
            )
        })?;
    let preprocess = Preprocess {
        image_size: model.image_size,
        augment: exp.data.augment.clone(),
    };
    let mut all_logits = Vec::new();
    for path in &args.inputs {
        let named = if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("npy"))
        {
            npy_logits(&network, path, model.image_size)?
        } else {
            vec![(
                path.display().to_string(),
                jpeg_logits(&network, path, &preprocess)?,
            )]
        };
        for (name, logits) in named {
            println!("{name}");
            for (class, probability) in most_likely(&logits, args.top) {
                let label = labels.as_ref().map_or("", |l| l[class].as_str());
                println!("  {:>7.3}%  {class:>5} {label}", 100.0 * probability);
            }
            all_logits.extend(logits);
        }
    }
    if let Some(out) = &args.logits_out {
        let classes = model.num_classes;
        let array = npy::Array {
            shape: vec![all_logits.len() / classes, classes],
            values: all_logits,
        };
        npy::write(out, &array)?;
        eprintln!("wrote {} ({:?})", out.display(), array.shape);
    }
    Ok(())
}

/// The experiment whose `[model]` describes the weights: the architecture at its native size,
/// then the overrides, checked.
fn experiment(arch: Arch, overrides: &[String]) -> anyhow::Result<Experiment> {
    let base = Experiment {
        model: ModelSection {
            arch,
            image_size: registry::native_image_size(arch),
            ..ModelSection::default()
        },
        ..Experiment::default()
    };
    let origin = format!("--arch {arch}");
    Ok(resolve::load_over(
        &base.to_toml(),
        Path::new(&origin),
        overrides,
    )?)
}

/// One name per class, in class order; the count must be the model's.
fn read_labels(path: &Path, classes: usize) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the labels {}", path.display()))?;
    let labels: Vec<String> = text.lines().map(|l| l.trim_end().to_string()).collect();
    let labels = match labels.iter().rposition(|l| !l.is_empty()) {
        Some(last) => labels[..=last].to_vec(),
        None => Vec::new(),
    };
    if labels.len() != classes {
        bail!(
            "{} names {} classes, the model has {classes} (model.num_classes)",
            path.display(),
            labels.len()
        );
    }
    Ok(labels)
}

/// The logits of a JPEG, averaged over the evaluation crops (one, by default).
fn jpeg_logits(
    network: &Network<Flex>,
    path: &Path,
    preprocess: &Preprocess,
) -> anyhow::Result<Vec<f32>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let side = preprocess.image_size;
    let views = preprocess.views(Split::Validation);
    let mut pixels = vec![0.0f32; views * 3 * side * side];
    // Evaluation preprocessing draws nothing at random; the RNG is only the signature's.
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    preprocess
        .apply(
            &RawImage::Encoded(bytes),
            Split::Validation,
            &mut rng,
            &mut pixels,
        )
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let inputs = Tensor::<Flex, 4>::from_data(
        TensorData::new(pixels, [views, 3, side, side]),
        &Default::default(),
    );
    let logits = network.forward(inputs).mean_dim(0);
    Ok(logits.into_data().to_vec::<f32>().expect("f32 logits"))
}

/// The logits of each image of a `.npy` array [N, 3, side, side], named `FILE[i]`.
fn npy_logits(
    network: &Network<Flex>,
    path: &Path,
    side: usize,
) -> anyhow::Result<Vec<(String, Vec<f32>)>> {
    let array = npy::read(path)?;
    if !matches!(array.shape[..], [_, 3, h, w] if h == side && w == side) {
        bail!(
            "{}: holds an array of shape {:?}; the model takes [N, 3, {side}, {side}] \
             (model.image_size = {side})",
            path.display(),
            array.shape
        );
    }
    let size = 3 * side * side;
    let mut named = Vec::new();
    for (chunk_index, chunk) in array.values.chunks(NPY_BATCH * size).enumerate() {
        let n = chunk.len() / size;
        let inputs = Tensor::<Flex, 4>::from_data(
            TensorData::new(chunk.to_vec(), [n, 3, side, side]),
            &Default::default(),
        );
        let logits = network.forward(inputs).into_data().to_vec::<f32>();
        let logits = logits.expect("f32 logits");
        let classes = logits.len() / n;
        for (i, row) in logits.chunks(classes).enumerate() {
            let index = chunk_index * NPY_BATCH + i;
            named.push((format!("{}[{index}]", path.display()), row.to_vec()));
        }
    }
    Ok(named)
}

/// The `top` most likely classes with their softmax probabilities, most likely first.
fn most_likely(logits: &[f32], top: usize) -> Vec<(usize, f64)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = logits
        .iter()
        .map(|&l| (f64::from(l) - f64::from(max)).exp())
        .collect();
    let sum: f64 = exps.iter().sum();
    let mut ranked: Vec<(usize, f64)> = exps.into_iter().map(|e| e / sum).enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    ranked.truncate(top);
    ranked
}

#[cfg(test)]
mod tests {
    use super::most_likely;

    #[test]
    fn ranks_classes_by_softmax_probability() {
        let ranked = most_likely(&[0.0, 2.0, 1.0, -1.0], 3);
        let classes: Vec<usize> = ranked.iter().map(|(c, _)| *c).collect();
        assert_eq!(classes, [1, 2, 0]);
        let total: f64 = most_likely(&[0.0, 2.0, 1.0, -1.0], 4)
            .iter()
            .map(|r| r.1)
            .sum();
        assert!((total - 1.0).abs() < 1e-12);
        // e^2 / (1 + e^2 + e + e^-1)
        assert!((ranked[0].1 - 0.6439).abs() < 1e-4, "{ranked:?}");
    }
}
