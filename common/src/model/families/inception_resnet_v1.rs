//! Inception-ResNet-v1 (Szegedy et al., arXiv 1602.07261): the narrower residual sibling of
//! Inception-v3, with the paper's widths (35×35×256 → 17×17×896 → 8×8×1792) and, as in every
//! released residual Inception, a final unscaled Inception-ResNet-C block without ReLU.
//!
//! There is no timm model; the only public PyTorch checkpoints are facenet-pytorch's (David
//! Sandberg's facenet, 5 scaled + 1 final C blocks), so module paths follow it (`conv2d_4b`,
//! `repeat_1.0.branch2.2`, `repeat_3.4.conv2d`, `block8`, …) and its backbone imports by name.
//! Its head is a 512-d embedding, not a classifier: ours, `classif`, is named apart so a by-path
//! import leaves it freshly initialised.
//!
//! The blocks are Inception-ResNet-v2's types ([`ResidualBlock`], [`Mixed6a`], [`Mixed7a`]) with
//! other channel plans, so the residual and reduction arithmetic exists once.

use crate::model::Kernels;
use burn::config::Config;
use burn::module::Module;
use burn::nn::pool::MaxPool2d;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::{Tensor, backend::Backend};

use super::inception_resnet_v2::{Mixed6a, Mixed7a, ResidualBlock};
use crate::config::{BlockPreset, ModelSection};
use crate::model::family::Family;
use crate::model::layers::{
    Conv, ConvBn, ConvFactory, chain_out_channels, check_side, max_pool_3x3_s2, min_input_side,
    pool_and_classify,
};

/// Input side the reference network was trained at.
pub const NATIVE_IMAGE_SIZE: usize = 299;

/// The reference network's scaled blocks per stage (the final unscaled block is `model.final_block`).
pub const REFERENCE_BLOCKS: [usize; 3] = [5, 10, 4];

/// Hyper-parameters of [`InceptionResNetV1`]; the defaults are the paper's (figure 14/15
/// layout, 5 / 10 / 5 blocks).
#[derive(Config, Debug)]
pub struct InceptionResNetV1Config {
    /// Classifier outputs (1000 for ImageNet, 1001 with TF-slim's background class).
    pub num_classes: usize,
    /// Channel multiplier: every channel count `c` becomes `max(1, round(c · width))`, so that
    /// small networks for tests and experiments keep the exact topology.
    #[config(default = 1.0)]
    pub width: f64,
    /// Number of Inception-ResNet-A / -B / -C blocks. The C count INCLUDES the final block when
    /// `final_block` is set: the paper's layout is `[5, 10, 5]` (4 scaled + 1 final), facenet's
    /// (and facenet-pytorch's checkpoints) `[5, 10, 6]` (5 scaled + 1 final).
    #[config(default = "[5, 10, 5]")]
    pub blocks: [usize; 3],
    /// Residual scale of the A blocks: scaling stops wide residual nets from "dying" (v4 paper
    /// §3.3).
    #[config(default = 0.17)]
    pub scale_a: f64,
    /// Residual scale of the B blocks.
    #[config(default = 0.10)]
    pub scale_b: f64,
    /// Residual scale of the scaled C blocks.
    #[config(default = 0.20)]
    pub scale_c: f64,
    /// Make the last C block unscaled (scale 1.0) and without ReLU, as the released residual
    /// Inceptions do; without it every C block is scaled and ends in a ReLU.
    #[config(default = true)]
    pub final_block: bool,
    /// Dropout before the classifier (TF-slim keep probability 0.8).
    #[config(default = 0.2)]
    pub dropout: f64,
    /// PyTorch-style batch-norm momentum (TF decay 0.9997).
    #[config(default = 0.0003)]
    pub bn_momentum: f64,
}

/// `(kernel, stride)` of the valid-padded layers on the main path, input to output: the only
/// layers that can shrink a map below one pixel (same-padded ones keep the size).
const VALID_REDUCTIONS: [(usize, usize); 7] = [
    (3, 2), // conv2d_1a
    (3, 1), // conv2d_2a
    (3, 2), // maxpool_3a
    (3, 1), // conv2d_4a
    (3, 2), // conv2d_4b
    (3, 2), // mixed_6a
    (3, 2), // mixed_7a
];

impl InceptionResNetV1Config {
    /// What the registry needs to know of this family.
    pub const FAMILY: Family = Family {
        native_image_size: NATIVE_IMAGE_SIZE,
        reference_blocks: Some(REFERENCE_BLOCKS),
        presets: &[
            (BlockPreset::Paper, [5, 10, 4]),
            (BlockPreset::Facenet, [5, 10, 5]),
        ],
        aux_head: false,
        avg_pool_count_pad: false,
    };

    /// The network `[model]` describes (knobs checked by [`Family::check_knobs`]).
    pub fn from_section(model: &ModelSection) -> Self {
        let [a, b, c] = Self::FAMILY.block_counts(model);
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

    /// Builds the network with burn's default (Kaiming-uniform) initialisation.
    ///
    /// # Panics
    /// If `width` is not a positive finite number.
    pub fn init<B: Kernels>(&self, device: &B::Device) -> InceptionResNetV1<B> {
        let b = Builder::<B> {
            f: ConvFactory::new(self.width, self.bn_momentum, device),
        };
        let [n35, n17, n8] = self.blocks;
        let final_block = self.final_block && n8 > 0;
        let n8_scaled = n8 - usize::from(final_block);

        let conv2d_1a = b.f.conv(3, Conv::reduce(32));
        let conv2d_2a = b.f.conv(conv2d_1a.out_channels(), Conv::valid(32, [3, 3]));
        let conv2d_2b = b.f.conv(conv2d_2a.out_channels(), Conv::same(64, [3, 3]));
        let conv2d_3b = b.f.conv(conv2d_2b.out_channels(), Conv::pointwise(80));
        let conv2d_4a = b.f.conv(conv2d_3b.out_channels(), Conv::valid(192, [3, 3]));
        let conv2d_4b = b.f.conv(conv2d_4a.out_channels(), Conv::reduce(256));
        let c35 = conv2d_4b.out_channels();
        let repeat_1 = (0..n35).map(|_| b.block35(c35, self.scale_a)).collect();
        let mixed_6a = Mixed6a::reduction_a(&b.f, c35, [192, 192, 256, 384]);
        let c17 = c35 + mixed_6a.branch0.out_channels() + chain_out_channels(&mixed_6a.branch1);
        let repeat_2 = (0..n17).map(|_| b.block17(c17, self.scale_b)).collect();
        let mixed_7a = Mixed7a::reduction_b(&b.f, c17, [384, 256, 256, 256]);
        let c8 = c17
            + chain_out_channels(&mixed_7a.branch0)
            + chain_out_channels(&mixed_7a.branch1)
            + chain_out_channels(&mixed_7a.branch2);
        let repeat_3 = (0..n8_scaled)
            .map(|_| b.block8(c8, self.scale_c, true))
            .collect();
        let block8 = final_block.then(|| b.block8(c8, 1.0, false));

        InceptionResNetV1 {
            conv2d_1a,
            conv2d_2a,
            conv2d_2b,
            maxpool_3a: max_pool_3x3_s2(),
            conv2d_3b,
            conv2d_4a,
            conv2d_4b,
            repeat_1,
            mixed_6a,
            repeat_2,
            mixed_7a,
            repeat_3,
            block8,
            dropout: DropoutConfig::new(self.dropout).init(),
            classif: LinearConfig::new(c8, self.num_classes).init(device),
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
            "Inception-ResNet-v1",
            size,
            self.min_image_size(),
            NATIVE_IMAGE_SIZE,
        )?;
        Ok(())
    }
}

/// Inception-ResNet-v1: stem → A blocks → Reduction-A → B blocks → Reduction-B → C blocks
/// (+ final C block) → global average pool → dropout → classifier on the 1792 features (no
/// 1×1 conv before the pool, unlike v2).
#[derive(Module, Debug)]
pub struct InceptionResNetV1<B: Backend> {
    /// Stem: 32 3×3/2 valid (299 → 149).
    pub conv2d_1a: ConvBn<B>,
    /// Stem: 32 3×3 valid (→ 147).
    pub conv2d_2a: ConvBn<B>,
    /// Stem: 64 3×3 same.
    pub conv2d_2b: ConvBn<B>,
    /// Stem: max pool 3×3/2 valid (→ 73).
    pub maxpool_3a: MaxPool2d,
    /// Stem: 80 1×1.
    pub conv2d_3b: ConvBn<B>,
    /// Stem: 192 3×3 valid (→ 71).
    pub conv2d_4a: ConvBn<B>,
    /// Stem: 256 3×3/2 valid (→ 35); v1 reduces with a conv where v2 max-pools.
    pub conv2d_4b: ConvBn<B>,
    /// Inception-ResNet-A stack (Block35) on 35×35×256.
    pub repeat_1: Vec<ResidualBlock<B>>,
    /// Reduction-A, (k, l, m, n) = (192, 192, 256, 384): 35×35×256 → 17×17×896.
    pub mixed_6a: Mixed6a<B>,
    /// Inception-ResNet-B stack (Block17) on 17×17×896.
    pub repeat_2: Vec<ResidualBlock<B>>,
    /// Reduction-B: 17×17×896 → 8×8×1792.
    pub mixed_7a: Mixed7a<B>,
    /// Scaled Inception-ResNet-C stack (Block8) on 8×8×1792.
    pub repeat_3: Vec<ResidualBlock<B>>,
    /// Final C block: scale 1.0, no ReLU.
    pub block8: Option<ResidualBlock<B>>,
    /// Active only with autodiff (training).
    pub dropout: Dropout,
    /// Classifier.
    pub classif: Linear<B>,
}

impl<B: Kernels> InceptionResNetV1<B> {
    /// Images `[N, 3, S, S]` in `[-1, 1]` → logits `[N, num_classes]`.
    ///
    /// `S` must be at least [`InceptionResNetV1Config::min_image_size`] (check it with
    /// [`InceptionResNetV1Config::check_image_size`]); 299 is the native resolution.
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        let [.., features] = self.forward_features(images);
        pool_and_classify(features, &self.dropout, &self.classif)
    }

    /// The three stage outputs, for feature extraction and shape checks: at 299 they are
    /// 35×35×256 (after the A blocks), 17×17×896 (B blocks) and 8×8×1792 (C blocks, the final
    /// map before the pool), channels scaled by the width.
    pub fn forward_features(&self, images: Tensor<B, 4>) -> [Tensor<B, 4>; 3] {
        let x = self.conv2d_1a.forward(images);
        let x = self.conv2d_2b.forward(self.conv2d_2a.forward(x));
        let x = self.conv2d_3b.forward(self.maxpool_3a.forward(x));
        let x = self.conv2d_4b.forward(self.conv2d_4a.forward(x));
        let a = run_blocks(&self.repeat_1, x);
        let b = run_blocks(&self.repeat_2, self.mixed_6a.forward(a.clone()));
        let c = run_blocks(&self.repeat_3, self.mixed_7a.forward(b.clone()));
        let c = run_blocks(self.block8.as_slice(), c);
        [a, b, c]
    }
}

/// Applies residual blocks in order.
fn run_blocks<B: Kernels>(blocks: &[ResidualBlock<B>], x: Tensor<B, 4>) -> Tensor<B, 4> {
    blocks.iter().fold(x, |x, block| block.forward(x))
}

/// Turns the paper's channel plan of Inception-ResNet-v1 into modules.
struct Builder<'a, B: Backend> {
    f: ConvFactory<'a, B>,
}

impl<B: Kernels> Builder<'_, B> {
    /// Inception-ResNet-A: [32] | [32 → 32 3×3] | [32 → 32 3×3 → 32 3×3].
    fn block35(&self, c: usize, scale: f64) -> ResidualBlock<B> {
        self.residual(
            c,
            32,
            [Conv::pointwise(32), Conv::same(32, [3, 3])],
            [
                Conv::pointwise(32),
                Conv::same(32, [3, 3]),
                Conv::same(32, [3, 3]),
            ],
            scale,
            true,
        )
    }

    /// Inception-ResNet-B: [128] | [128 → 128 1×7 → 128 7×1].
    fn block17(&self, c: usize, scale: f64) -> ResidualBlock<B> {
        self.residual(
            c,
            128,
            [
                Conv::pointwise(128),
                Conv::same(128, [1, 7]),
                Conv::same(128, [7, 1]),
            ],
            [],
            scale,
            true,
        )
    }

    /// Inception-ResNet-C: [192] | [192 → 192 1×3 → 192 3×1].
    fn block8(&self, c: usize, scale: f64, relu: bool) -> ResidualBlock<B> {
        self.residual(
            c,
            192,
            [
                Conv::pointwise(192),
                Conv::same(192, [1, 3]),
                Conv::same(192, [3, 1]),
            ],
            [],
            scale,
            relu,
        )
    }

    /// A residual block on `c` channels: a `branch0`-wide 1×1 branch, the `branch1` and
    /// `branch2` chains (the latter empty for B and C), and the up projection from their
    /// concatenation back to `c`.
    fn residual<const N1: usize, const N2: usize>(
        &self,
        c: usize,
        branch0: usize,
        branch1: [Conv; N1],
        branch2: [Conv; N2],
        scale: f64,
        relu: bool,
    ) -> ResidualBlock<B> {
        let branch0 = self.f.conv(c, Conv::pointwise(branch0));
        let branch1 = self.f.chain(c, branch1);
        let branch2 = self.f.chain(c, branch2);
        ResidualBlock::new(c, branch0, branch1, branch2, scale, relu, self.f.device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layers::count_macs;
    use crate::model::params::{tensor_paths, trainable_len, trainable_segments};
    use crate::model::test_support::{assert_gradients_flow, assert_image_size_limit, images};
    use burn::backend::{Autodiff, Flex};
    use burn::module::AutodiffModule;

    type Ad = Autodiff<Flex>;

    /// The paper's layout (4 scaled + 1 final C block) and facenet's (5 scaled + 1 final).
    const PAPER: [usize; 3] = [5, 10, 5];
    const FACENET: [usize; 3] = [5, 10, 6];

    #[test]
    fn parameter_counts_match_the_reference() {
        let device = Default::default();
        for (blocks, classes, expected) in [
            (PAPER, 1000, 22_756_328),
            (PAPER, 1001, 22_758_121),
            (FACENET, 1000, 24_357_096),
            (FACENET, 1001, 24_358_889),
        ] {
            let model = InceptionResNetV1Config::new(classes)
                .with_blocks(blocks)
                .init::<Flex>(&device);
            assert_eq!(
                trainable_len(&model),
                expected,
                "{blocks:?}, {classes} classes"
            );
        }
        // REFERENCES.md, without the classifier: 20,963,328 (paper), 22,564,096 (facenet).
        for (blocks, expected) in [(PAPER, 20_963_328), (FACENET, 22_564_096)] {
            let model = InceptionResNetV1Config::new(1000)
                .with_blocks(blocks)
                .init::<Flex>(&device);
            let trunk: usize = trainable_segments(&model)
                .iter()
                .filter(|s| !s.path.starts_with("classif."))
                .map(|s| s.range.len())
                .sum();
            assert_eq!(trunk, expected, "{blocks:?}");
        }
    }

    #[test]
    fn macs_match_the_reference_at_native_resolution() {
        // REFERENCES.md: conv+FC MACs at 299, 1000 classes, batch 1.
        for (blocks, expected) in [(PAPER, 6_206_361_696), (FACENET, 6_308_597_856)] {
            let model = InceptionResNetV1Config::new(1000)
                .with_blocks(blocks)
                .init::<Flex>(&Default::default());
            let (logits, macs) = count_macs(|| model.forward(images(1, NATIVE_IMAGE_SIZE)));
            assert_eq!(logits.dims(), [1, 1000]);
            assert_eq!(macs, expected, "{blocks:?}");
        }
    }

    #[test]
    fn module_paths_match_facenet_pytorch() {
        let model = InceptionResNetV1Config::new(10)
            .with_width(0.125)
            .with_blocks(FACENET)
            .init::<Flex>(&Default::default());
        let paths: Vec<String> = tensor_paths(&model).into_iter().map(|(p, _)| p).collect();
        for expected in [
            "conv2d_1a.conv.weight",
            "conv2d_4b.bn.running_var",
            "repeat_1.4.branch2.2.conv.weight",
            "repeat_1.4.conv2d.bias",
            "mixed_6a.branch0.conv.weight",
            "mixed_6a.branch1.2.bn.beta",
            "repeat_2.9.branch1.2.conv.weight",
            "mixed_7a.branch2.2.conv.weight",
            "repeat_3.4.conv2d.weight",
            "block8.branch1.2.conv.weight",
            "classif.weight",
            "classif.bias",
        ] {
            assert!(paths.iter().any(|p| p == expected), "missing {expected}");
        }
        assert!(!paths.iter().any(|p| p.starts_with("repeat_3.5.")));
        assert!(
            !paths
                .iter()
                .any(|p| p.contains("branch2") && p.starts_with("repeat_2."))
        );
    }

    #[test]
    fn c_block_count_includes_the_final_block() {
        let config = InceptionResNetV1Config::new(10)
            .with_width(0.0625)
            .with_blocks([1, 1, 3]);
        let model = config.init::<Flex>(&Default::default());
        assert_eq!(model.repeat_3.len(), 2);
        assert!(model.repeat_3.iter().all(|b| b.relu && b.scale == 0.20));
        let last = model.block8.expect("final block");
        assert!(!last.relu && last.scale == 1.0);

        let model = config
            .with_final_block(false)
            .init::<Flex>(&Default::default());
        assert_eq!(model.repeat_3.len(), 3);
        assert!(model.block8.is_none());
    }

    #[test]
    fn stage_shapes_at_native_resolution() {
        // Width 0.125 keeps the topology (and spatial sizes) at a fraction of the cost.
        let model = InceptionResNetV1Config::new(10)
            .with_width(0.125)
            .with_blocks([1, 1, 2])
            .init::<Flex>(&Default::default());
        let shapes = model
            .forward_features(images(1, NATIVE_IMAGE_SIZE))
            .map(|t| t.dims());
        // 256 / 8; 896 / 8 = 48 + 32 + 32 (input); 1792 / 8 = 48 + 32 + 32 + 112 (input).
        assert_eq!(shapes, [[1, 32, 35, 35], [1, 112, 17, 17], [1, 224, 8, 8]]);
    }

    #[test]
    fn image_size_limit() {
        let config = InceptionResNetV1Config::new(10);
        assert_eq!(config.min_image_size(), 75);
        assert_image_size_limit(|size| config.check_image_size(size), 75, NATIVE_IMAGE_SIZE);
    }

    #[test]
    fn small_network_trains_at_minimum_size() {
        let config = InceptionResNetV1Config::new(10)
            .with_width(0.125)
            .with_blocks([1, 1, 2]);
        let model = config.init::<Ad>(&Default::default());
        let [.., features] = model.forward_features(images(2, 75));
        assert_eq!(features.dims(), [2, 224, 1, 1]);
        let logits = model.forward(images(2, 75));
        assert_eq!(logits.dims(), [2, 10]);
        let grads = logits.square().mean().backward();
        let stem = model.conv2d_1a.conv.weight.grad(&grads).unwrap();
        let up = model.repeat_1[0].conv2d.weight.grad(&grads).unwrap();
        let classifier = model.classif.weight.grad(&grads).unwrap();
        assert_gradients_flow([stem.abs().sum(), up.abs().sum(), classifier.abs().sum()]);
        // The inference copy (running statistics, no dropout) runs as well.
        let logits = model.valid().forward(images(2, 75));
        assert_eq!(logits.dims(), [2, 10]);
    }
}
