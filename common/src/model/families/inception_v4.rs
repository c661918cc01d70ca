//! Inception-v4 (Szegedy et al., arXiv 1602.07261) as released in TF-slim, which trained the
//! published checkpoints; timm's port is identical.
//!
//! timm keeps the whole trunk in one `nn.Sequential`, `features.{0-21}`, and names the
//! classifier `last_linear`. Here `features` is a `Vec` of [`FeatureBlock`], an enum over the
//! block kinds, so every block sits at its timm index. burn's module walk names the enum variant
//! too; our path walkers ([`params::tensor_paths`](crate::model::params::tensor_paths), the importer)
//! leave it out, so paths are timm's keys (`features.6.branch0.conv.weight`).
//!
//! The four-branch Inception-A/-B block and Reduction-A are Inception-ResNet-v2's
//! [`Mixed5b`] and [`Mixed6a`] types with other channel plans (the paper shares Reduction-A
//! across v4 and both residual networks), so their arithmetic exists once.

use crate::model::Kernels;
use std::iter::{once, repeat_n};

use burn::config::Config;
use burn::module::Module;
use burn::nn::pool::{AvgPool2d, MaxPool2d};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::{Tensor, backend::Backend};

use super::inception_resnet_v2::{Mixed5b, Mixed6a};
use crate::config::ModelSection;
use crate::model::family::Family;
use crate::model::layers::{
    Conv, ConvBn, ConvFactory, avg_pool_3x3_same, chain_out_channels, check_side, max_pool_3x3_s2,
    min_input_side, pool_and_classify, run_chain,
};

/// Input side the reference network was trained at.
pub const NATIVE_IMAGE_SIZE: usize = 299;

/// The reference network's Inception-A, -B and -C blocks.
pub const REFERENCE_BLOCKS: [usize; 3] = [4, 7, 3];

/// Hyper-parameters of [`InceptionV4`]; the defaults are TF-slim's.
#[derive(Config, Debug)]
pub struct InceptionV4Config {
    /// Classifier outputs (TF-slim checkpoints: 1001, index 0 = background; timm: 1000).
    pub num_classes: usize,
    /// Channel multiplier: every channel count `c` becomes `max(1, round(c · width))`, so that
    /// small networks for tests and experiments keep the exact topology.
    #[config(default = 1.0)]
    pub width: f64,
    /// Dropout before the classifier (TF-slim keep probability 0.8).
    #[config(default = 0.2)]
    pub dropout: f64,
    /// PyTorch-style batch-norm momentum (TF decay 0.9997).
    #[config(default = 0.0003)]
    pub bn_momentum: f64,
    /// Number of Inception-A / -B / -C blocks (paper and released code: 4 / 7 / 3).
    #[config(default = "REFERENCE_BLOCKS")]
    pub blocks: [usize; 3],
}

/// `(kernel, stride)` of the valid-padded layers on the main path, input to output: the only
/// layers that can shrink a map below one pixel (same-padded ones keep the size).
const VALID_REDUCTIONS: [(usize, usize); 7] = [
    (3, 2), // features.0
    (3, 1), // features.1
    (3, 2), // Mixed_3a
    (3, 1), // Mixed_4a (both branches end in a 3×3 valid)
    (3, 2), // Mixed_5a
    (3, 2), // Reduction-A
    (3, 2), // Reduction-B
];

/// A block constructor of the [`Builder`], for the block plan in [`InceptionV4Config::init`].
type MakeBlock<'a, B> = fn(&Builder<'a, B>, usize) -> FeatureBlock<B>;

impl InceptionV4Config {
    /// What the registry needs to know of this family.
    pub const FAMILY: Family = Family {
        native_image_size: NATIVE_IMAGE_SIZE,
        reference_blocks: Some(REFERENCE_BLOCKS),
        presets: &[],
        aux_head: false,
        avg_pool_count_pad: false,
    };

    /// The network `[model]` describes (knobs checked by [`Family::check_knobs`]).
    pub fn from_section(model: &ModelSection) -> Self {
        InceptionV4Config::new(model.num_classes)
            .with_width(model.width)
            .with_blocks(Self::FAMILY.block_counts(model))
            .with_dropout(model.dropout)
            .with_bn_momentum(model.bn_momentum)
    }

    /// Builds the network with burn's default (Kaiming-uniform) initialisation.
    ///
    /// # Panics
    /// If `width` is not a positive finite number.
    pub fn init<B: Kernels>(&self, device: &B::Device) -> InceptionV4<B> {
        let b = Builder::<B> {
            f: ConvFactory::new(self.width, self.bn_momentum, device),
        };
        let [n_a, n_b, n_c] = self.blocks;

        // features.0-2: 32 3×3/2 valid → 32 3×3 valid → 64 3×3 same.
        let stem = b.f.chain(
            3,
            [
                Conv::reduce(32),
                Conv::valid(32, [3, 3]),
                Conv::same(64, [3, 3]),
            ],
        );
        let mut channels = chain_out_channels(&stem);
        let mut features: Vec<_> = stem.into_iter().map(FeatureBlock::Conv).collect();
        let stem_blocks: [MakeBlock<'_, B>; 3] =
            [Builder::mixed_3a, Builder::mixed_4a, Builder::mixed_5a];
        let plan = stem_blocks
            .into_iter()
            .chain(repeat_n(Builder::inception_a as MakeBlock<'_, B>, n_a))
            .chain(once(Builder::reduction_a as MakeBlock<'_, B>))
            .chain(repeat_n(Builder::inception_b as MakeBlock<'_, B>, n_b))
            .chain(once(Builder::reduction_b as MakeBlock<'_, B>))
            .chain(repeat_n(Builder::inception_c as MakeBlock<'_, B>, n_c));
        for make in plan {
            let block = make(&b, channels);
            channels = block.out_channels(channels);
            features.push(block);
        }

        InceptionV4 {
            features,
            dropout: DropoutConfig::new(self.dropout).init(),
            last_linear: LinearConfig::new(channels, self.num_classes).init(device),
        }
    }

    /// Smallest input side that survives every valid-padded reduction of the network (75: the
    /// final map is then 1×1).
    pub fn min_image_size(&self) -> usize {
        min_input_side(&VALID_REDUCTIONS, 1)
    }

    /// Rejects input sides the network cannot process, before any tensor work fails obscurely.
    pub fn check_image_size(&self, size: usize) -> Result<(), String> {
        check_side(
            "Inception-v4",
            size,
            self.min_image_size(),
            NATIVE_IMAGE_SIZE,
        )?;
        Ok(())
    }
}

/// Inception-v4: stem (3 convs, Mixed_3a/4a/5a) → Inception-A × n → Reduction-A →
/// Inception-B × n → Reduction-B → Inception-C × n → global average pool → dropout →
/// classifier on the 1536 features.
#[derive(Module, Debug)]
pub struct InceptionV4<B: Backend> {
    /// The trunk in timm's order and numbering (`features.{0-21}` at the default block counts).
    pub features: Vec<FeatureBlock<B>>,
    /// Active only with autodiff (training).
    pub dropout: Dropout,
    /// Classifier.
    pub last_linear: Linear<B>,
}

impl<B: Kernels> InceptionV4<B> {
    /// Images `[N, 3, S, S]` in `[-1, 1]` → logits `[N, num_classes]`.
    ///
    /// `S` must be at least [`InceptionV4Config::min_image_size`] (check it with
    /// [`InceptionV4Config::check_image_size`]); 299 is the native resolution.
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        let [.., features] = self.forward_features(images);
        pool_and_classify(features, &self.dropout, &self.last_linear)
    }

    /// The three stage outputs, for feature extraction and shape checks: at 299 they are
    /// 35×35×384 (after the Inception-A blocks), 17×17×1024 (Inception-B) and 8×8×1536
    /// (Inception-C, the final map before the pool), channels scaled by the width.
    pub fn forward_features(&self, images: Tensor<B, 4>) -> [Tensor<B, 4>; 3] {
        let mut stages = Vec::with_capacity(3);
        let last = self.features.iter().fold(images, |x, block| {
            // Each grid reduction closes the stage before it.
            if block.is_reduction() {
                stages.push(x.clone());
            }
            block.forward(x)
        });
        match <[_; 2]>::try_from(stages) {
            Ok([a, b]) => [a, b, last],
            Err(_) => unreachable!("the trunk has exactly one Reduction-A and one Reduction-B"),
        }
    }
}

/// One entry of timm's `features` sequence. The variant names are the timm class names and
/// appear in burn's module paths after the index (see the module docs).
///
/// Variants are stored inline: burn has no `Module` impl for `Box`, and the padding of a
/// 22-block trunk to the largest variant (Inception-C's module handles) is about 150 KB.
#[derive(Module, Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "burn modules cannot be boxed; the waste is a few KB per block"
)]
pub enum FeatureBlock<B: Backend> {
    /// A stem convolution (`features.0-2`).
    Conv(ConvBn<B>),
    /// `[max pool | 96 3×3/2]`: 147×147×64 → 73×73×160.
    Mixed3a(ConvPool<B>),
    /// `[64 1×1 → 96 3×3 V | 64 1×1 → 64 1×7 → 64 7×1 → 96 3×3 V]`: → 71×71×192.
    Mixed4a(ConvChains<B>),
    /// `[192 3×3/2 | max pool]`: → 35×35×384.
    Mixed5a(ConvPool<B>),
    /// 35×35×384 → 35×35×384.
    InceptionA(Mixed5b<B>),
    /// 35×35×384 → 17×17×1024.
    ReductionA(Mixed6a<B>),
    /// 17×17×1024 → 17×17×1024.
    InceptionB(Mixed5b<B>),
    /// 17×17×1024 → 8×8×1536.
    ReductionB(ConvChains<B>),
    /// 8×8×1536 → 8×8×1536.
    InceptionC(InceptionC<B>),
}

impl<B: Kernels> FeatureBlock<B> {
    /// `[N, C, H, W]` → the block's output.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            Self::Conv(conv) => conv.forward(x),
            Self::Mixed3a(block) | Self::Mixed5a(block) => block.forward(x),
            Self::Mixed4a(block) | Self::ReductionB(block) => block.forward(x),
            Self::InceptionA(block) | Self::InceptionB(block) => block.forward(x),
            Self::ReductionA(block) => block.forward(x),
            Self::InceptionC(block) => block.forward(x),
        }
    }

    /// Output channels for `in_channels` input channels (max-pool branches pass them through).
    fn out_channels(&self, in_channels: usize) -> usize {
        match self {
            Self::Conv(conv) => conv.out_channels(),
            Self::Mixed3a(block) | Self::Mixed5a(block) => block.conv.out_channels() + in_channels,
            Self::Mixed4a(block) | Self::ReductionB(block) => block.out_channels(in_channels),
            Self::InceptionA(block) | Self::InceptionB(block) => {
                block.branch0.out_channels()
                    + chain_out_channels(&block.branch1)
                    + chain_out_channels(&block.branch2)
                    + block.branch3.1.out_channels()
            }
            Self::ReductionA(block) => {
                block.branch0.out_channels() + chain_out_channels(&block.branch1) + in_channels
            }
            Self::InceptionC(block) => block.out_channels(),
        }
    }

    /// Whether the block reduces the grid between two stages (Reduction-A or -B).
    fn is_reduction(&self) -> bool {
        matches!(self, Self::ReductionA(_) | Self::ReductionB(_))
    }
}

/// Mixed_3a and Mixed_5a: a 3×3/2 valid conv beside a 3×3/2 valid max pool.
///
/// One type for both; only the concatenation order differs (TF-slim's branch order, which the
/// checkpoints' downstream channel order follows): Mixed_3a is `[pool, conv]`, Mixed_5a
/// `[conv, pool]`.
#[derive(Module, Debug)]
pub struct ConvPool<B: Backend> {
    /// 3×3/2 valid.
    pub conv: ConvBn<B>,
    /// Max pool 3×3/2 valid (passes the input channels through).
    pub maxpool: MaxPool2d,
    /// Whether the pooled channels come first.
    pub pool_first: bool,
}

impl<B: Kernels> ConvPool<B> {
    /// `[N, C, H, W]` → `[N, C + conv, H', W']`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let conv = self.conv.forward(x.clone());
        let pool = self.maxpool.forward(x);
        let branches = if self.pool_first {
            vec![pool, conv]
        } else {
            vec![conv, pool]
        };
        Tensor::cat(branches, 1)
    }
}

/// Mixed_4a (two conv chains) and Reduction-B (two conv chains and a max pool).
///
/// One type for both so the branch arithmetic exists once; Mixed_4a's `branch2` is `None`
/// (no parameters, no checkpoint keys either way).
#[derive(Module, Debug)]
pub struct ConvChains<B: Backend> {
    /// Mixed_4a: 64 1×1 → 96 3×3 valid; Reduction-B: 192 1×1 → 192 3×3/2 valid.
    pub branch0: Vec<ConvBn<B>>,
    /// Mixed_4a: 64 1×1 → 64 1×7 → 64 7×1 → 96 3×3 valid; Reduction-B: 256 1×1 → 256 1×7 →
    /// 320 7×1 → 320 3×3/2 valid.
    pub branch1: Vec<ConvBn<B>>,
    /// Reduction-B's max pool 3×3/2 valid (passes the input channels through).
    pub branch2: Option<MaxPool2d>,
}

impl<B: Kernels> ConvChains<B> {
    /// `[N, C, H, W]` → `[N, branch0 + branch1 (+ C), H', W']`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut branches = vec![
            run_chain(&self.branch0, x.clone()),
            run_chain(&self.branch1, x.clone()),
        ];
        if let Some(pool) = &self.branch2 {
            branches.push(pool.forward(x));
        }
        Tensor::cat(branches, 1)
    }

    /// Conv branch widths, plus the pooled input's when there is a pool branch.
    fn out_channels(&self, in_channels: usize) -> usize {
        let pooled = if self.branch2.is_some() {
            in_channels
        } else {
            0
        };
        chain_out_channels(&self.branch0) + chain_out_channels(&self.branch1) + pooled
    }
}

/// Inception-C: 1×1 convs whose outputs split into parallel 1×3 and 3×1 convs.
///
/// Flat fields, as timm names them (`branch1_1a`, `branch2_3b`, …): the two split branches are
/// not chains.
#[derive(Module, Debug)]
pub struct InceptionC<B: Backend> {
    /// 256 1×1.
    pub branch0: ConvBn<B>,
    /// 384 1×1, read by both `branch1_1a` and `branch1_1b`.
    pub branch1_0: ConvBn<B>,
    /// 256 1×3.
    pub branch1_1a: ConvBn<B>,
    /// 256 3×1.
    pub branch1_1b: ConvBn<B>,
    /// 384 1×1.
    pub branch2_0: ConvBn<B>,
    /// 448 3×1.
    pub branch2_1: ConvBn<B>,
    /// 512 1×3, read by both `branch2_3a` and `branch2_3b`.
    pub branch2_2: ConvBn<B>,
    /// 256 1×3.
    pub branch2_3a: ConvBn<B>,
    /// 256 3×1.
    pub branch2_3b: ConvBn<B>,
    /// Average pool → 256 1×1; a pair so the conv's path is timm's `branch3.1`.
    pub branch3: (AvgPool2d, ConvBn<B>),
}

impl<B: Kernels> InceptionC<B> {
    /// `[N, C, H, W]` → `[N, 256 · 6, H, W]` (channels at width 1).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let x1 = self.branch1_0.forward(x.clone());
        let x2 = self
            .branch2_2
            .forward(self.branch2_1.forward(self.branch2_0.forward(x.clone())));
        let (pool, pool_conv) = &self.branch3;
        let branches = vec![
            self.branch0.forward(x.clone()),
            self.branch1_1a.forward(x1.clone()),
            self.branch1_1b.forward(x1),
            self.branch2_3a.forward(x2.clone()),
            self.branch2_3b.forward(x2),
            pool_conv.forward(pool.forward(x)),
        ];
        Tensor::cat(branches, 1)
    }

    /// Sum of the concatenated widths.
    fn out_channels(&self) -> usize {
        [
            &self.branch0,
            &self.branch1_1a,
            &self.branch1_1b,
            &self.branch2_3a,
            &self.branch2_3b,
            &self.branch3.1,
        ]
        .iter()
        .map(|conv| conv.out_channels())
        .sum()
    }
}

/// Turns the TF-slim channel plan of Inception-v4 into modules, one [`FeatureBlock`] per
/// method, each reading `c` input channels.
struct Builder<'a, B: Backend> {
    f: ConvFactory<'a, B>,
}

impl<B: Kernels> Builder<'_, B> {
    fn mixed_3a(&self, c: usize) -> FeatureBlock<B> {
        FeatureBlock::Mixed3a(self.conv_pool(c, 96, true))
    }

    fn mixed_4a(&self, c: usize) -> FeatureBlock<B> {
        FeatureBlock::Mixed4a(ConvChains {
            branch0: self
                .f
                .chain(c, [Conv::pointwise(64), Conv::valid(96, [3, 3])]),
            branch1: self.f.chain(
                c,
                [
                    Conv::pointwise(64),
                    Conv::same(64, [1, 7]),
                    Conv::same(64, [7, 1]),
                    Conv::valid(96, [3, 3]),
                ],
            ),
            branch2: None,
        })
    }

    fn mixed_5a(&self, c: usize) -> FeatureBlock<B> {
        FeatureBlock::Mixed5a(self.conv_pool(c, 192, false))
    }

    fn conv_pool(&self, c: usize, out: usize, pool_first: bool) -> ConvPool<B> {
        ConvPool {
            conv: self.f.conv(c, Conv::reduce(out)),
            maxpool: max_pool_3x3_s2(),
            pool_first,
        }
    }

    fn inception_a(&self, c: usize) -> FeatureBlock<B> {
        FeatureBlock::InceptionA(Mixed5b {
            branch0: self.f.conv(c, Conv::pointwise(96)),
            branch1: self
                .f
                .chain(c, [Conv::pointwise(64), Conv::same(96, [3, 3])]),
            branch2: self.f.chain(
                c,
                [
                    Conv::pointwise(64),
                    Conv::same(96, [3, 3]),
                    Conv::same(96, [3, 3]),
                ],
            ),
            branch3: (avg_pool_3x3_same(), self.f.conv(c, Conv::pointwise(96))),
        })
    }

    /// (k, l, m, n) = (192, 224, 256, 384) in the paper's table 1.
    fn reduction_a(&self, c: usize) -> FeatureBlock<B> {
        FeatureBlock::ReductionA(Mixed6a::reduction_a(&self.f, c, [192, 224, 256, 384]))
    }

    fn inception_b(&self, c: usize) -> FeatureBlock<B> {
        FeatureBlock::InceptionB(Mixed5b {
            branch0: self.f.conv(c, Conv::pointwise(384)),
            branch1: self.f.chain(
                c,
                [
                    Conv::pointwise(192),
                    Conv::same(224, [1, 7]),
                    Conv::same(256, [7, 1]),
                ],
            ),
            branch2: self.f.chain(
                c,
                [
                    Conv::pointwise(192),
                    Conv::same(192, [7, 1]),
                    Conv::same(224, [1, 7]),
                    Conv::same(224, [7, 1]),
                    Conv::same(256, [1, 7]),
                ],
            ),
            branch3: (avg_pool_3x3_same(), self.f.conv(c, Conv::pointwise(128))),
        })
    }

    fn reduction_b(&self, c: usize) -> FeatureBlock<B> {
        FeatureBlock::ReductionB(ConvChains {
            branch0: self.f.chain(c, [Conv::pointwise(192), Conv::reduce(192)]),
            branch1: self.f.chain(
                c,
                [
                    Conv::pointwise(256),
                    Conv::same(256, [1, 7]),
                    Conv::same(320, [7, 1]),
                    Conv::reduce(320),
                ],
            ),
            branch2: Some(max_pool_3x3_s2()),
        })
    }

    fn inception_c(&self, c: usize) -> FeatureBlock<B> {
        let branch1_0 = self.f.conv(c, Conv::pointwise(384));
        let branch2_0 = self.f.conv(c, Conv::pointwise(384));
        let branch2_1 = self
            .f
            .conv(branch2_0.out_channels(), Conv::same(448, [3, 1]));
        let branch2_2 = self
            .f
            .conv(branch2_1.out_channels(), Conv::same(512, [1, 3]));
        let split =
            |input: &ConvBn<B>, kernel| self.f.conv(input.out_channels(), Conv::same(256, kernel));
        FeatureBlock::InceptionC(InceptionC {
            branch0: self.f.conv(c, Conv::pointwise(256)),
            branch1_1a: split(&branch1_0, [1, 3]),
            branch1_1b: split(&branch1_0, [3, 1]),
            branch2_3a: split(&branch2_2, [1, 3]),
            branch2_3b: split(&branch2_2, [3, 1]),
            branch1_0,
            branch2_0,
            branch2_1,
            branch2_2,
            branch3: (avg_pool_3x3_same(), self.f.conv(c, Conv::pointwise(256))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layers::count_macs;
    use crate::model::params::{tensor_paths, trainable_len};
    use crate::model::test_support::{assert_gradients_flow, assert_image_size_limit, images};
    use burn::backend::{Autodiff, Flex};
    use burn::module::AutodiffModule;

    type Ad = Autodiff<Flex>;

    /// Our module paths (enum variants leave no segment), to compare with timm's keys.
    fn timm_paths<B: Kernels>(model: &InceptionV4<B>) -> Vec<String> {
        tensor_paths(model)
            .into_iter()
            .map(|(path, _)| path)
            .collect()
    }

    #[test]
    fn parameter_counts_match_timm() {
        let device = Default::default();
        for (classes, expected) in [(1000, 42_679_816), (1001, 42_681_353)] {
            let model = InceptionV4Config::new(classes).init::<Flex>(&device);
            assert_eq!(trainable_len(&model), expected, "{classes} classes");
            // REFERENCES.md: 41,142,816 without the classifier.
            let classifier = 1536 * classes + classes;
            assert_eq!(expected - classifier, 41_142_816);
        }
    }

    #[test]
    fn macs_match_the_reference_at_native_resolution() {
        // REFERENCES.md: 12,253,974,624 conv+FC MACs at 299 (1000 classes), batch 1.
        let model = InceptionV4Config::new(1000).init::<Flex>(&Default::default());
        let (logits, macs) = count_macs(|| model.forward(images(1, NATIVE_IMAGE_SIZE)));
        assert_eq!(logits.dims(), [1, 1000]);
        assert_eq!(macs, 12_253_974_624);
    }

    #[test]
    fn module_paths_match_timm() {
        let model = InceptionV4Config::new(10)
            .with_width(0.125)
            .init::<Flex>(&Default::default());
        assert_eq!(model.features.len(), 22);
        let paths = timm_paths(&model);
        // The enum variant (`Conv`, `InceptionA`, …) leaves no segment.
        assert!(!paths.iter().any(|p| p.contains("Inception")));
        for expected in [
            "features.0.conv.weight",
            "features.2.bn.running_var",
            "features.3.conv.conv.weight",
            "features.4.branch0.1.conv.weight",
            "features.4.branch1.3.bn.beta",
            "features.5.conv.bn.gamma",
            "features.9.branch2.2.conv.weight",
            "features.9.branch3.1.conv.weight",
            "features.10.branch0.conv.weight",
            "features.10.branch1.2.conv.weight",
            "features.11.branch3.1.bn.running_mean",
            "features.17.branch2.4.conv.weight",
            "features.18.branch0.1.conv.weight",
            "features.18.branch1.3.conv.weight",
            "features.19.branch1_0.conv.weight",
            "features.21.branch1_1a.conv.weight",
            "features.21.branch2_3b.conv.weight",
            "features.21.branch3.1.bn.beta",
            "last_linear.weight",
            "last_linear.bias",
        ] {
            assert!(paths.iter().any(|p| p == expected), "missing {expected}");
        }
        assert!(!paths.iter().any(|p| p.starts_with("features.22.")));
        // timm's state dict without `num_batches_tracked`: 149 conv blocks × (conv weight,
        // bn weight, bias, running mean, running var) + the classifier's weight and bias.
        assert_eq!(paths.len(), 149 * 5 + 2);
    }

    #[test]
    fn pool_branch_order_follows_tf_slim() {
        // Mixed_3a concatenates [pool, conv], Mixed_5a [conv, pool]; checkpoints depend on it.
        let model = InceptionV4Config::new(10)
            .with_width(0.125)
            .init::<Flex>(&Default::default());
        let x = images::<Flex>(1, 75);
        let x = model.features[..3]
            .iter()
            .fold(x, |x, block| block.forward(x));
        let pool = max_pool_3x3_s2();
        let c = x.dims()[1];
        let y = model.features[3].forward(x.clone());
        y.clone()
            .narrow(1, 0, c)
            .into_data()
            .assert_eq(&pool.forward(x).into_data(), true);

        let x = model.features[4].forward(y);
        let c = x.dims()[1];
        let y = model.features[5].forward(x.clone());
        let conv_channels = y.dims()[1] - c;
        y.narrow(1, conv_channels, c)
            .into_data()
            .assert_eq(&pool.forward(x).into_data(), true);
    }

    #[test]
    fn block_counts_follow_the_config() {
        let model = InceptionV4Config::new(10)
            .with_width(0.0625)
            .with_blocks([1, 2, 1])
            .init::<Flex>(&Default::default());
        let kinds: Vec<&str> = model
            .features
            .iter()
            .map(|block| match block {
                FeatureBlock::Conv(_) => "conv",
                FeatureBlock::Mixed3a(_) => "3a",
                FeatureBlock::Mixed4a(_) => "4a",
                FeatureBlock::Mixed5a(_) => "5a",
                FeatureBlock::InceptionA(_) => "A",
                FeatureBlock::ReductionA(_) => "RA",
                FeatureBlock::InceptionB(_) => "B",
                FeatureBlock::ReductionB(_) => "RB",
                FeatureBlock::InceptionC(_) => "C",
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "conv", "conv", "conv", "3a", "4a", "5a", "A", "RA", "B", "B", "RB", "C"
            ]
        );
    }

    #[test]
    fn stage_shapes_at_native_resolution() {
        // Width 0.125 keeps the topology (and spatial sizes) at a fraction of the cost.
        let model = InceptionV4Config::new(10)
            .with_width(0.125)
            .with_blocks([1, 1, 1])
            .init::<Flex>(&Default::default());
        let shapes = model
            .forward_features(images(1, NATIVE_IMAGE_SIZE))
            .map(|t| t.dims());
        // 384 / 8 = 4 × 12; 1024 / 8 = 48 + 32 + 48 (input); 1536 / 8 = 6 × 32.
        assert_eq!(shapes, [[1, 48, 35, 35], [1, 128, 17, 17], [1, 192, 8, 8]]);
    }

    #[test]
    fn image_size_limit() {
        let config = InceptionV4Config::new(10);
        assert_eq!(config.min_image_size(), 75);
        assert_image_size_limit(|size| config.check_image_size(size), 75, NATIVE_IMAGE_SIZE);
    }

    #[test]
    fn small_network_trains_at_minimum_size() {
        let config = InceptionV4Config::new(10)
            .with_width(0.125)
            .with_blocks([1, 1, 1]);
        let model = config.init::<Ad>(&Default::default());
        let [.., features] = model.forward_features(images(2, 75));
        assert_eq!(features.dims(), [2, 192, 1, 1]);
        let logits = model.forward(images(2, 75));
        assert_eq!(logits.dims(), [2, 10]);
        let grads = logits.square().mean().backward();
        let FeatureBlock::Conv(stem) = &model.features[0] else {
            panic!("features.0 is a convolution");
        };
        let FeatureBlock::InceptionC(block_c) = &model.features[10] else {
            panic!("features.10 is the Inception-C block");
        };
        let stem = stem.conv.weight.grad(&grads).unwrap();
        let split = block_c.branch2_3b.conv.weight.grad(&grads).unwrap();
        let classifier = model.last_linear.weight.grad(&grads).unwrap();
        assert_gradients_flow([stem.abs().sum(), split.abs().sum(), classifier.abs().sum()]);
        // The inference copy (running statistics, no dropout) runs as well.
        let logits = model.valid().forward(images(2, 75));
        assert_eq!(logits.dims(), [2, 10]);
    }
}
