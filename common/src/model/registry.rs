//! Architecture names → constructors, so configs and the CLI can name a network, and
//! [`Network`], the one module type every architecture trains as.

use burn::prelude::*;

use super::bn_inception::{self, BnInception, BnInceptionConfig};
use super::inception_resnet_v1::{self, InceptionResNetV1, InceptionResNetV1Config};
use super::inception_resnet_v2::{self, InceptionResNetV2, InceptionResNetV2Config};
use super::inception_v3::{self, InceptionV3, InceptionV3Config};
use super::inception_v4::{self, InceptionV4, InceptionV4Config};
use super::probe;
use crate::config::{BlockPreset, ModelSection};

/// Architectures this build can construct, in the order `coordinator models` lists them.
pub const ARCHS: &[&str] = &[
    "bn_inception",
    "inception_v3",
    "inception_v4",
    "inception_resnet_v1",
    "inception_resnet_v2",
];

/// Whether `arch` names a known architecture.
pub fn is_known(arch: &str) -> bool {
    ARCHS.contains(&arch)
}

/// The input side an architecture was trained at (BN-Inception 224, the others 299).
pub fn native_image_size(arch: &str) -> usize {
    match arch {
        "bn_inception" => bn_inception::NATIVE_IMAGE_SIZE,
        "inception_v3" => inception_v3::NATIVE_IMAGE_SIZE,
        "inception_v4" => inception_v4::NATIVE_IMAGE_SIZE,
        "inception_resnet_v1" => inception_resnet_v1::NATIVE_IMAGE_SIZE,
        _ => inception_resnet_v2::NATIVE_IMAGE_SIZE,
    }
}

/// Any network of the family, as one burn module (module paths are the variant's own).
#[derive(Module, Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "one network per process; burn implements Module for no Box to shrink it"
)]
pub enum Network<B: Backend> {
    BnInception(BnInception<B>),
    InceptionV3(InceptionV3<B>),
    InceptionV4(InceptionV4<B>),
    InceptionResNetV1(InceptionResNetV1<B>),
    InceptionResNetV2(InceptionResNetV2<B>),
}

/// Runs the same expression on whichever architecture `$network` holds.
macro_rules! on_each {
    ($network:expr, $net:ident => $body:expr) => {
        match $network {
            Network::BnInception($net) => $body,
            Network::InceptionV3($net) => $body,
            Network::InceptionV4($net) => $body,
            Network::InceptionResNetV1($net) => $body,
            Network::InceptionResNetV2($net) => $body,
        }
    };
}

/// What the dead-unit probe saw on one batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// Fraction of exactly-zero activations in the final feature map.
    pub dead_fraction: f64,
    /// Per residual stage, mean ‖scale · residual‖ / ‖shortcut‖ (empty without residuals).
    pub residual_ratios: Vec<f64>,
}

impl<B: Backend> Network<B> {
    /// Images `[N, 3, S, S]` in `[-1, 1]` → logits `[N, classes]`.
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        on_each!(self, net => net.forward(images))
    }

    /// Logits and, when the network has an aux head, the auxiliary logits.
    pub fn forward_with_aux(&self, images: Tensor<B, 4>) -> (Tensor<B, 2>, Option<Tensor<B, 2>>) {
        on_each!(self, net => net.forward_with_aux(images))
    }

    /// Stage outputs; the last is the final feature map before the average pool.
    pub fn forward_features(&self, images: Tensor<B, 4>) -> Vec<Tensor<B, 4>> {
        on_each!(self, net => net.forward_features(images).into())
    }

    /// Residual blocks per stage, in forward order (empty for non-residual networks).
    fn residual_stages(&self) -> Vec<usize> {
        match self {
            Network::InceptionResNetV1(net) => vec![
                net.repeat_1.len(),
                net.repeat_2.len(),
                net.repeat_3.len() + usize::from(net.block8.is_some()),
            ],
            Network::InceptionResNetV2(net) => vec![
                net.repeat.len(),
                net.repeat_1.len(),
                net.repeat_2.len() + usize::from(net.block8.is_some()),
            ],
            _ => Vec::new(),
        }
    }

    /// Runs the dead-unit probe on `images` (use an inference copy: `valid()`).
    pub fn probe(&self, images: Tensor<B, 4>) -> Probe {
        let (features, ratios) = probe::observe(|| self.forward_features(images));
        let last = features
            .last()
            .expect("every network has a final feature map");
        Probe {
            dead_fraction: probe::zero_fraction(last),
            residual_ratios: probe::stage_means(&ratios, &self.residual_stages()),
        }
    }
}

/// Checks the image size (and the knobs that depend on it) for the configured architecture.
pub fn check_image_size(model: &ModelSection) -> Result<(), String> {
    let size = model.image_size;
    match model.arch.as_str() {
        "bn_inception" => bn_inception_config(model).check_image_size(size),
        "inception_v3" => inception_v3_config(model).check_image_size(size),
        "inception_v4" => inception_v4_config(model).check_image_size(size),
        "inception_resnet_v1" => irv1_config(model).check_image_size(size),
        "inception_resnet_v2" => irv2_config(model).check_image_size(size),
        _ => Ok(()),
    }
}

/// Checks that `blocks`, `block_preset` and `aux_head` apply to the configured architecture.
pub fn check_knobs(model: &ModelSection) -> Result<(), String> {
    let arch = model.arch.as_str();
    let has_blocks = matches!(
        arch,
        "inception_v4" | "inception_resnet_v1" | "inception_resnet_v2"
    );
    if !has_blocks && (model.blocks.is_some() || model.block_preset.is_some()) {
        return Err(format!("{arch} has no configurable block counts"));
    }
    if model.blocks.is_none()
        && let Some(preset) = model.block_preset
        && preset_blocks(arch, preset).is_none()
    {
        return Err(format!("block_preset {preset:?} does not apply to {arch}"));
    }
    if model.aux_head && !matches!(arch, "inception_v3" | "inception_resnet_v2") {
        return Err(format!("{arch} has no auxiliary head"));
    }
    Ok(())
}

/// Builds the configured network with freshly initialised weights.
pub fn build<B: Backend>(model: &ModelSection, device: &B::Device) -> Network<B> {
    match model.arch.as_str() {
        "bn_inception" => Network::BnInception(bn_inception_config(model).init(device)),
        "inception_v3" => Network::InceptionV3(inception_v3_config(model).init(device)),
        "inception_v4" => Network::InceptionV4(inception_v4_config(model).init(device)),
        "inception_resnet_v1" => Network::InceptionResNetV1(irv1_config(model).init(device)),
        _ => Network::InceptionResNetV2(irv2_config(model).init(device)),
    }
}

/// Scaled blocks per stage a preset means for an architecture (the final unscaled
/// Inception-ResNet block is separate: `model.final_block`).
fn preset_blocks(arch: &str, preset: BlockPreset) -> Option<[usize; 3]> {
    match (arch, preset) {
        ("inception_resnet_v2", BlockPreset::Tfslim) => Some([10, 20, 9]),
        ("inception_resnet_v1" | "inception_resnet_v2", BlockPreset::Paper) => Some([5, 10, 4]),
        ("inception_resnet_v1", BlockPreset::Facenet) => Some([5, 10, 5]),
        _ => None,
    }
}

/// Block counts: explicit `blocks`, else the preset, else the architecture's reference.
fn block_counts(model: &ModelSection) -> [usize; 3] {
    let arch = model.arch.as_str();
    let reference = match arch {
        "inception_v4" => [4, 7, 3],
        "inception_resnet_v1" => [5, 10, 4],
        _ => [10, 20, 9],
    };
    model
        .blocks
        .or_else(|| model.block_preset.and_then(|p| preset_blocks(arch, p)))
        .unwrap_or(reference)
}

fn bn_inception_config(model: &ModelSection) -> BnInceptionConfig {
    BnInceptionConfig::new(model.num_classes)
        .with_width(model.width)
        .with_dropout(model.dropout)
        .with_bn_momentum(model.bn_momentum)
}

fn inception_v3_config(model: &ModelSection) -> InceptionV3Config {
    InceptionV3Config::new(model.num_classes)
        .with_width(model.width)
        .with_dropout(model.dropout)
        .with_bn_momentum(model.bn_momentum)
        .with_aux_head(model.aux_head)
}

fn inception_v4_config(model: &ModelSection) -> InceptionV4Config {
    InceptionV4Config::new(model.num_classes)
        .with_width(model.width)
        .with_blocks(block_counts(model))
        .with_dropout(model.dropout)
        .with_bn_momentum(model.bn_momentum)
}

fn irv1_config(model: &ModelSection) -> InceptionResNetV1Config {
    let [a, b, c] = block_counts(model);
    let [scale_a, scale_b, scale_c] = model.residual_scales();
    InceptionResNetV1Config::new(model.num_classes)
        .with_width(model.width)
        // This config counts the final unscaled block among the C blocks.
        .with_blocks([a, b, c + usize::from(model.final_block)])
        .with_scale_a(scale_a)
        .with_scale_b(scale_b)
        .with_scale_c(scale_c)
        .with_final_block(model.final_block)
        .with_dropout(model.dropout)
        .with_bn_momentum(model.bn_momentum)
}

fn irv2_config(model: &ModelSection) -> InceptionResNetV2Config {
    let [scale_a, scale_b, scale_c] = model.residual_scales();
    InceptionResNetV2Config::new(model.num_classes)
        .with_width(model.width)
        .with_blocks(block_counts(model))
        .with_scale_a(scale_a)
        .with_scale_b(scale_b)
        .with_scale_c(scale_c)
        .with_final_block(model.final_block)
        .with_dropout(model.dropout)
        .with_bn_momentum(model.bn_momentum)
        .with_aux_head(model.aux_head.then_some(model.image_size))
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;

    use super::*;

    fn section(arch: &str) -> ModelSection {
        ModelSection {
            arch: arch.into(),
            num_classes: 4,
            image_size: 75,
            width: 0.0625,
            ..ModelSection::default()
        }
    }

    #[test]
    fn presets_resolve_per_architecture() {
        let with = |arch: &str, preset| ModelSection {
            block_preset: Some(preset),
            ..section(arch)
        };
        assert_eq!(block_counts(&section("inception_resnet_v2")), [10, 20, 9]);
        assert_eq!(
            block_counts(&with("inception_resnet_v2", BlockPreset::Paper)),
            [5, 10, 4]
        );
        assert_eq!(
            block_counts(&with("inception_resnet_v1", BlockPreset::Facenet)),
            [5, 10, 5]
        );
        assert_eq!(block_counts(&section("inception_v4")), [4, 7, 3]);
        let explicit = ModelSection {
            blocks: Some([1, 2, 3]),
            ..with("inception_resnet_v2", BlockPreset::Paper)
        };
        assert_eq!(block_counts(&explicit), [1, 2, 3]);
    }

    #[test]
    fn knobs_that_do_not_apply_are_rejected() {
        let v3_blocks = ModelSection {
            blocks: Some([1, 1, 1]),
            ..section("inception_v3")
        };
        assert!(
            check_knobs(&v3_blocks)
                .unwrap_err()
                .contains("no configurable block counts")
        );
        let v4_aux = ModelSection {
            aux_head: true,
            ..section("inception_v4")
        };
        assert!(
            check_knobs(&v4_aux)
                .unwrap_err()
                .contains("no auxiliary head")
        );
        let v2_facenet = ModelSection {
            block_preset: Some(BlockPreset::Facenet),
            ..section("inception_resnet_v2")
        };
        assert!(check_knobs(&v2_facenet).is_err());
        assert!(check_knobs(&section("inception_resnet_v2")).is_ok());
    }

    #[test]
    fn every_architecture_builds_and_classifies() {
        for arch in ARCHS {
            let model = section(arch);
            check_image_size(&model).unwrap();
            let net = build::<Flex>(&model, &Default::default());
            let images = Tensor::zeros([2, 3, 75, 75], &Default::default());
            assert_eq!(net.forward(images).dims(), [2, 4], "{arch}");
        }
    }

    #[test]
    fn probe_reports_dead_units_and_residual_ratios() {
        let device = Default::default();
        let images = Tensor::<Flex, 4>::random(
            [2, 3, 75, 75],
            burn::tensor::Distribution::Uniform(-1.0, 1.0),
            &device,
        );
        let model = ModelSection {
            blocks: Some([2, 1, 1]),
            ..section("inception_resnet_v2")
        };
        let probe = build::<Flex>(&model, &device).probe(images.clone());
        assert!((0.0..=1.0).contains(&probe.dead_fraction));
        assert_eq!(probe.residual_ratios.len(), 3);
        assert!(
            probe
                .residual_ratios
                .iter()
                .all(|r| r.is_finite() && *r > 0.0)
        );

        let plain = build::<Flex>(&section("inception_v4"), &device).probe(images);
        assert!(plain.residual_ratios.is_empty());
    }
}
