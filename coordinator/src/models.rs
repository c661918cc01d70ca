//! `coordinator models`: the architectures this build knows, measured, and the timm importer.

use std::time::Instant;

use std::path::Path;

use anyhow::Context;
use burn::backend::Flex;
use burn::prelude::*;
use incept_common::config::{Arch, Experiment, ModelSection};
use incept_common::model::layers::count_macs;
use incept_common::model::params::trainable_len;
use incept_common::model::{import, registry};
use incept_common::resolve;

/// One row of the table, measured on a freshly built network at its native resolution.
struct Row {
    arch: Arch,
    params: usize,
    macs: u64,
    image_size: usize,
    stages: Vec<[usize; 3]>,
}

/// Prints name, parameters, multiply-accumulates, native input size and stage output shapes
/// for every architecture (or one), each measured by running the network once.
pub fn list(only: Option<Arch>, num_classes: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        num_classes >= 2,
        "--num-classes must be at least 2, got {num_classes}"
    );
    let archs = only.map_or(Arch::ALL.to_vec(), |arch| vec![arch]);
    println!(
        "{:<20} {:>12} {:>16} {:>6}  stage outputs (H×W×C)",
        "name", "parameters", "MACs", "input"
    );
    for arch in archs {
        let started = Instant::now();
        let row = measure(arch, num_classes);
        let stages: Vec<String> = row
            .stages
            .iter()
            .map(|[h, w, c]| format!("{h}×{w}×{c}"))
            .collect();
        println!(
            "{:<20} {:>12} {:>16} {:>6}  {}",
            row.arch.name(),
            thousands(row.params as u64),
            thousands(row.macs),
            row.image_size,
            stages.join(", ")
        );
        tracing::info!(%arch, seconds = started.elapsed().as_secs_f64(), "measured");
    }
    println!(
        "(parameters: weights, biases and BatchNorm γ/β, not running statistics; MACs: conv + FC, batch 1)"
    );
    Ok(())
}

fn measure(arch: Arch, num_classes: usize) -> Row {
    let image_size = registry::native_image_size(arch);
    let section = ModelSection {
        arch,
        num_classes,
        image_size,
        ..ModelSection::default()
    };
    let device = Default::default();
    let network = registry::build::<Flex>(&section, &device);
    let images = Tensor::<Flex, 4>::zeros([1, 3, image_size, image_size], &device);
    let (_, macs) = count_macs(|| network.forward(images.clone()));
    let stages = network
        .forward_features(images)
        .iter()
        .map(|f| {
            let [_, c, h, w] = f.dims();
            [h, w, c]
        })
        .collect();
    Row {
        arch,
        params: trainable_len(&network),
        macs,
        image_size,
        stages,
    }
}

/// `1234567` → `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

/// The network `coordinator models import` converts into: an architecture at its native
/// resolution, with the checkpoint's class count, width and block counts.
pub fn import_target(
    arch: Arch,
    num_classes: usize,
    width: f64,
    blocks: Option<[usize; 3]>,
) -> anyhow::Result<ModelSection> {
    let section = ModelSection {
        arch,
        num_classes,
        image_size: registry::native_image_size(arch),
        width,
        blocks,
        ..ModelSection::default()
    };
    let exp = Experiment {
        model: section,
        ..Experiment::default()
    };
    resolve::check(&exp).context("the checkpoint's --num-classes, --width or --blocks")?;
    Ok(exp.model)
}

/// Converts a timm checkpoint (safetensors) into incept weights at `out`.
pub fn import(section: &ModelSection, from: &Path, out: &Path) -> anyhow::Result<()> {
    let network = registry::build::<Flex>(section, &Default::default());
    let network = import::load_timm(network, from)
        .with_context(|| format!("importing {} as {}", from.display(), section.arch))?;
    import::save_incept(&network, out)?;
    println!(
        "wrote {} ({} parameters)",
        out.display(),
        thousands(trainable_len(&network) as u64)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(55_843_464), "55,843,464");
    }
}
