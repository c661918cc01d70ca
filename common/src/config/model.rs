//! `[model]`: which network of the family, at what size, with which knobs.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Declares [`Arch`] from one line per family: its doc, variant and name, so the variant, the
/// list of all and the names cannot drift apart.
macro_rules! architectures {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)*) => {
        /// An architecture of the family. An unknown name is a parse error listing the known
        /// ones; the model registry matches on this exhaustively, so a new family cannot be
        /// half-added.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "&'static str")]
        pub enum Arch {
            $($(#[$doc])* $variant,)*
        }

        impl Arch {
            /// Every architecture, in the order `coordinator models` lists them.
            pub const ALL: &'static [Arch] = &[$(Arch::$variant),*];

            /// The name configs and the command line use.
            pub fn name(self) -> &'static str {
                match self {
                    $(Arch::$variant => $name,)*
                }
            }
        }
    };
}

architectures! {
    /// BN-Inception (Inception-v2 of the Inception-v4 paper), 224 px.
    BnInception => "bn_inception",
    /// Inception-v3, 299 px.
    InceptionV3 => "inception_v3",
    /// Inception-v4, 299 px.
    InceptionV4 => "inception_v4",
    /// Inception-ResNet-v1, 299 px.
    InceptionResNetV1 => "inception_resnet_v1",
    /// Inception-ResNet-v2, 299 px: the paper's main network.
    InceptionResNetV2 => "inception_resnet_v2",
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        Arch::ALL
            .iter()
            .copied()
            .find(|arch| arch.name() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = Arch::ALL.iter().map(|arch| arch.name()).collect();
                format!("unknown architecture {name:?}; known: {}", known.join(", "))
            })
    }
}

impl TryFrom<String> for Arch {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        name.parse()
    }
}

impl From<Arch> for &'static str {
    fn from(arch: Arch) -> Self {
        arch.name()
    }
}

/// The network to train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// Which network of the family.
    pub arch: Arch,
    /// Classifier outputs (1000 for ILSVRC, 1001 with TF-slim's background class).
    pub num_classes: usize,
    /// Square input side in pixels.
    pub image_size: usize,
    /// Channel multiplier for small experiments (1.0 = the reference network).
    pub width: f64,
    /// Blocks per stage (Inception-v4: A, B, C; Inception-ResNet: scaled A, B, C, the final
    /// unscaled block apart). Unset: `block_preset`, else the architecture's reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocks: Option<[usize; 3]>,
    /// Named block counts for Inception-ResNet: `tfslim` (v2: 10/20/9 + final, the released
    /// code), `paper` (5/10/5 with the final block among the 5 C), `facenet` (v1: 5/10/5 + final).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_preset: Option<BlockPreset>,
    /// Sets the residual scale of every block type; `residual_scale_{a,b,c}` override it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub residual_scale: Option<f64>,
    /// Residual scale of the A blocks (35×35), over `residual_scale`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub residual_scale_a: Option<f64>,
    /// Residual scale of the B blocks (17×17), over `residual_scale`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub residual_scale_b: Option<f64>,
    /// Residual scale of the C blocks (8×8), over `residual_scale`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub residual_scale_c: Option<f64>,
    /// The released code's final Block8: scale 1.0, no ReLU.
    pub final_block: bool,
    /// Dropout before the classifier, as a drop probability.
    pub dropout: f64,
    /// PyTorch-style BatchNorm momentum; TF's decay 0.9997 is 0.0003.
    pub bn_momentum: f64,
    /// TF-slim's auxiliary classifier on the 17×17 map (needs image_size ≥ 107).
    pub aux_head: bool,
    /// Inception-v3: the in-block 3×3 average pools count the zero padding in the mean, as
    /// timm's (and torchvision's) v3 does; TF-slim, the reference, does not.
    pub avg_pool_count_pad: bool,
    /// Initial weights: a file written by `coordinator models import` (incept module paths).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            arch: Arch::InceptionResNetV2,
            num_classes: 1000,
            image_size: 299,
            width: 1.0,
            blocks: None,
            block_preset: None,
            residual_scale: None,
            residual_scale_a: None,
            residual_scale_b: None,
            residual_scale_c: None,
            final_block: true,
            dropout: 0.2,
            bn_momentum: 0.0003,
            aux_head: false,
            avg_pool_count_pad: false,
            init_from: None,
        }
    }
}

/// Named block counts (see [`ModelSection::block_preset`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockPreset {
    /// The released TF-slim Inception-ResNet-v2: 10/20/9 and the final block.
    Tfslim,
    /// The Inception-v4 paper's figures: 5/10/5, the final block among the C blocks.
    Paper,
    /// FaceNet's Inception-ResNet-v1: 5/10/5 and the final block.
    Facenet,
}

/// Reference residual scales of the released Inception-ResNet-v2 code (A, B, C).
pub const DEFAULT_RESIDUAL_SCALES: [f64; 3] = [0.17, 0.10, 0.20];

impl ModelSection {
    /// Effective residual scales (A, B, C): per-type override, else `residual_scale`, else the reference.
    pub fn residual_scales(&self) -> [f64; 3] {
        let per_type = [
            self.residual_scale_a,
            self.residual_scale_b,
            self.residual_scale_c,
        ];
        std::array::from_fn(|i| {
            per_type[i]
                .or(self.residual_scale)
                .unwrap_or(DEFAULT_RESIDUAL_SCALES[i])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_names_round_trip_and_unknown_names_list_the_known() {
        for &arch in Arch::ALL {
            assert_eq!(arch.name().parse::<Arch>(), Ok(arch));
        }
        let err = "resnet50".parse::<Arch>().unwrap_err();
        assert!(err.contains("\"resnet50\""), "{err}");
        assert!(
            err.contains("bn_inception") && err.contains("inception_resnet_v2"),
            "{err}"
        );
    }
}
