//! Architectures → constructors, so configs and the CLI can name a network, and [`Network`],
//! the one module type every architecture trains as.
//!
//! Every match here is generated from one list of the families (`families!`) and is exhaustive
//! on [`Arch`]: a family added to the enum does not compile until it has its line, and no name
//! falls back to another network.

use crate::model::Kernels;
use burn::prelude::*;

use super::families;
use super::family::Family;
use super::probe;
use crate::config::{Arch, ModelSection};

/// The families, one line each: the [`Arch`] variant (also the network's type and its
/// [`Network`] variant), the file under [`families`], and the config type. Hands the list to
/// `$callback!`, followed by `;` and the caller's arguments, so that every match below is
/// generated from this one list.
macro_rules! families {
    ($callback:ident! $($args:tt)*) => {
        $callback! {
            [BnInception, bn_inception, BnInceptionConfig],
            [InceptionV3, inception_v3, InceptionV3Config],
            [InceptionV4, inception_v4, InceptionV4Config],
            [InceptionResNetV1, inception_resnet_v1, InceptionResNetV1Config],
            [InceptionResNetV2, inception_resnet_v2, InceptionResNetV2Config];
            $($args)*
        }
    };
}

/// Runs the same expression with `$Config` bound to the config type of `$arch`'s family.
macro_rules! with_family {
    ($arch:expr, $Config:ident => $body:expr) => {
        families!(match_arch! $arch, $Config => $body)
    };
}

/// [`with_family`]'s match, one arm per family.
macro_rules! match_arch {
    ($([$variant:ident, $file:ident, $FamilyConfig:ident]),*; $arch:expr, $Config:ident => $body:expr) => {
        match $arch {
            $(Arch::$variant => {
                type $Config = families::$file::$FamilyConfig;
                $body
            })*
        }
    };
}

/// What the registry knows of `arch`'s family.
pub fn family(arch: Arch) -> &'static Family {
    with_family!(arch, Config => &Config::FAMILY)
}

/// The input side an architecture was trained at (BN-Inception 224, the others 299).
pub fn native_image_size(arch: Arch) -> usize {
    family(arch).native_image_size
}

/// Any network of the family, as one burn module (module paths are the variant's own). Each
/// variant is named after its [`Arch`] and holds the network of the same name.
#[derive(Module, Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "one network per process; burn implements Module for no Box to shrink it"
)]
pub enum Network<B: Backend> {
    /// [`Arch::BnInception`].
    BnInception(families::bn_inception::BnInception<B>),
    /// [`Arch::InceptionV3`].
    InceptionV3(families::inception_v3::InceptionV3<B>),
    /// [`Arch::InceptionV4`].
    InceptionV4(families::inception_v4::InceptionV4<B>),
    /// [`Arch::InceptionResNetV1`].
    InceptionResNetV1(families::inception_resnet_v1::InceptionResNetV1<B>),
    /// [`Arch::InceptionResNetV2`].
    InceptionResNetV2(families::inception_resnet_v2::InceptionResNetV2<B>),
}

/// Each family's network goes into its [`Network`] variant.
macro_rules! into_network {
    ($([$variant:ident, $file:ident, $FamilyConfig:ident]),*;) => {
        $(
            impl<B: Kernels> From<families::$file::$variant<B>> for Network<B> {
                fn from(network: families::$file::$variant<B>) -> Self {
                    Network::$variant(network)
                }
            }
        )*
    };
}

families!(into_network!);

/// Runs the same expression on whichever architecture `$network` holds.
macro_rules! on_each {
    ($network:expr, $net:ident => $body:expr) => {
        families!(match_network! $network, $net => $body)
    };
}

/// [`on_each`]'s match, one arm per family.
macro_rules! match_network {
    ($([$variant:ident, $file:ident, $FamilyConfig:ident]),*; $network:expr, $net:ident => $body:expr) => {
        match $network {
            $(Network::$variant($net) => $body,)*
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

impl<B: Kernels> Network<B> {
    /// Images `[N, 3, S, S]` in `[-1, 1]` → logits `[N, classes]`.
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        on_each!(self, net => net.forward(images))
    }

    /// Logits and, when the network has an aux head, the auxiliary logits.
    pub fn forward_with_aux(&self, images: Tensor<B, 4>) -> (Tensor<B, 2>, Option<Tensor<B, 2>>) {
        match self {
            Network::InceptionV3(net) => net.forward_with_aux(images),
            Network::InceptionResNetV2(net) => net.forward_with_aux(images),
            _ => (self.forward(images), None),
        }
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
    with_family!(model.arch, Config => Config::from_section(model).check_image_size(model.image_size))
}

/// Checks that `blocks`, `block_preset` and `aux_head` apply to the configured architecture.
pub fn check_knobs(model: &ModelSection) -> Result<(), String> {
    family(model.arch).check_knobs(model)
}

/// Builds the configured network with freshly initialised weights.
pub fn build<B: Kernels>(model: &ModelSection, device: &B::Device) -> Network<B> {
    with_family!(model.arch, Config => Config::from_section(model).init(device).into())
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;

    use super::*;
    use crate::config::BlockPreset;

    fn section(arch: Arch) -> ModelSection {
        ModelSection {
            arch,
            num_classes: 4,
            image_size: 75,
            width: 0.0625,
            ..ModelSection::default()
        }
    }

    fn block_counts(model: &ModelSection) -> [usize; 3] {
        family(model.arch).block_counts(model)
    }

    #[test]
    fn presets_resolve_per_architecture() {
        let with = |arch, preset| ModelSection {
            block_preset: Some(preset),
            ..section(arch)
        };
        assert_eq!(block_counts(&section(Arch::InceptionResNetV2)), [10, 20, 9]);
        assert_eq!(
            block_counts(&with(Arch::InceptionResNetV2, BlockPreset::Paper)),
            [5, 10, 4]
        );
        assert_eq!(
            block_counts(&with(Arch::InceptionResNetV1, BlockPreset::Facenet)),
            [5, 10, 5]
        );
        assert_eq!(block_counts(&section(Arch::InceptionV4)), [4, 7, 3]);
        let explicit = ModelSection {
            blocks: Some([1, 2, 3]),
            ..with(Arch::InceptionResNetV2, BlockPreset::Paper)
        };
        assert_eq!(block_counts(&explicit), [1, 2, 3]);
    }

    #[test]
    fn knobs_that_do_not_apply_are_rejected() {
        let v3_blocks = ModelSection {
            blocks: Some([1, 1, 1]),
            ..section(Arch::InceptionV3)
        };
        assert!(
            check_knobs(&v3_blocks)
                .unwrap_err()
                .contains("no configurable block counts")
        );
        let v4_aux = ModelSection {
            aux_head: true,
            ..section(Arch::InceptionV4)
        };
        assert!(
            check_knobs(&v4_aux)
                .unwrap_err()
                .contains("no auxiliary head")
        );
        let v2_facenet = ModelSection {
            block_preset: Some(BlockPreset::Facenet),
            ..section(Arch::InceptionResNetV2)
        };
        assert!(check_knobs(&v2_facenet).is_err());
        assert!(check_knobs(&section(Arch::InceptionResNetV2)).is_ok());
    }

    #[test]
    fn every_architecture_builds_and_classifies() {
        for &arch in Arch::ALL {
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
            ..section(Arch::InceptionResNetV2)
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

        let plain = build::<Flex>(&section(Arch::InceptionV4), &device).probe(images);
        assert!(plain.residual_ratios.is_empty());
    }
}
