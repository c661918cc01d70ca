//! Inception-ResNet-v2 (Szegedy et al., arXiv 1602.07261) as released in TF-slim, which trained
//! the published checkpoints (timm and Keras are identical): 10 / 20 / 9 + 1 residual blocks
//! rather than the paper figure's 5 / 10 / 5, and a final unscaled Block8 without ReLU.
//!
//! Module paths follow timm (`conv2d_1a`, `mixed_5b.branch3.1`, `repeat.0.conv2d`, `classif`, …)
//! so timm checkpoints import by name.

use crate::model::Kernels;
use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::pool::{AvgPool2d, AvgPool2dConfig, MaxPool2d};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Tensor, backend::Backend};

use crate::config::{BlockPreset, ModelSection};
use crate::model::family::Family;
use crate::model::layers::{
    Conv, ConvBn, ConvFactory, avg_pool_3x3_same, chain_out_channels, check_side, conv2d, linear,
    max_pool_3x3_s2, min_input_side, pool_and_classify, run_chain, up_projection,
};
use crate::model::probe;

/// Input side the reference network was trained at.
pub const NATIVE_IMAGE_SIZE: usize = 299;

/// The reference network's scaled blocks per stage (the final unscaled block is `model.final_block`).
pub const REFERENCE_BLOCKS: [usize; 3] = [10, 20, 9];

/// Hyper-parameters of [`InceptionResNetV2`]; the defaults are TF-slim's.
#[derive(Config, Debug)]
pub struct InceptionResNetV2Config {
    /// Classifier outputs (TF-slim checkpoints: 1001, index 0 = background; timm: 1000).
    pub num_classes: usize,
    /// Channel multiplier: every channel count `c` becomes `max(1, round(c · width))`, so that
    /// small networks for tests and experiments keep the exact topology.
    #[config(default = 1.0)]
    pub width: f64,
    /// Number of Block35 / Block17 / scaled Block8 blocks (released code 10 / 20 / 9; paper 5 / 10 / 5).
    #[config(default = "REFERENCE_BLOCKS")]
    pub blocks: [usize; 3],
    /// Residual scale of Block35: scaling stops very wide residual nets from "dying" (v4 paper §3.3).
    #[config(default = 0.17)]
    pub scale_a: f64,
    /// Residual scale of Block17.
    #[config(default = 0.10)]
    pub scale_b: f64,
    /// Residual scale of the scaled Block8s.
    #[config(default = 0.20)]
    pub scale_c: f64,
    /// Append the final Block8 with scale 1.0 and no ReLU (TF-slim, timm and Keras all have it).
    #[config(default = true)]
    pub final_block: bool,
    /// Dropout before the classifier (TF-slim keep probability 0.8).
    #[config(default = 0.2)]
    pub dropout: f64,
    /// PyTorch-style batch-norm momentum (TF decay 0.9997).
    #[config(default = 0.0003)]
    pub bn_momentum: f64,
    /// Adds TF-slim's auxiliary classifier on the 17×17 map, its last convolution sized for
    /// input side `Some(size)` (timm and Keras have no aux head: `None`).
    #[config(default = "None")]
    pub aux_head: Option<usize>,
}

/// `(kernel, stride)` of the valid-padded layers on the main path, input to output: the only
/// layers that can shrink a map below one pixel (same-padded ones keep the size).
const VALID_REDUCTIONS: [(usize, usize); 7] = [
    (3, 2), // conv2d_1a
    (3, 1), // conv2d_2a
    (3, 2), // maxpool_3a
    (3, 1), // conv2d_4a
    (3, 2), // maxpool_5a
    (3, 2), // mixed_6a
    (3, 2), // mixed_7a
];

impl InceptionResNetV2Config {
    /// What the registry needs to know of this family.
    pub const FAMILY: Family = Family {
        native_image_size: NATIVE_IMAGE_SIZE,
        reference_blocks: Some(REFERENCE_BLOCKS),
        presets: &[
            (BlockPreset::Tfslim, REFERENCE_BLOCKS),
            (BlockPreset::Paper, [5, 10, 4]),
        ],
        aux_head: true,
        avg_pool_count_pad: false,
    };

    /// The network `[model]` describes (knobs checked by [`Family::check_knobs`]).
    pub fn from_section(model: &ModelSection) -> Self {
        let [scale_a, scale_b, scale_c] = model.residual_scales();
        InceptionResNetV2Config::new(model.num_classes)
            .with_width(model.width)
            .with_blocks(Self::FAMILY.block_counts(model))
            .with_scale_a(scale_a)
            .with_scale_b(scale_b)
            .with_scale_c(scale_c)
            .with_final_block(model.final_block)
            .with_dropout(model.dropout)
            .with_bn_momentum(model.bn_momentum)
            .with_aux_head(model.aux_head.then_some(model.image_size))
    }

    /// Builds the network with burn's default (Kaiming-uniform) initialisation.
    ///
    /// # Panics
    /// If `width` is not a positive finite number.
    pub fn init<B: Kernels>(&self, device: &B::Device) -> InceptionResNetV2<B> {
        let b = Builder::<B> {
            f: ConvFactory::new(self.width, self.bn_momentum, device),
        };
        let [n35, n17, n8] = self.blocks;

        let conv2d_1a = b.f.conv(3, Conv::reduce(32));
        let conv2d_2a = b.f.conv(conv2d_1a.out_channels(), Conv::valid(32, [3, 3]));
        let conv2d_2b = b.f.conv(conv2d_2a.out_channels(), Conv::same(64, [3, 3]));
        let conv2d_3b = b.f.conv(conv2d_2b.out_channels(), Conv::pointwise(80));
        let conv2d_4a = b.f.conv(conv2d_3b.out_channels(), Conv::valid(192, [3, 3]));
        let mixed_5b = b.mixed_5b(conv2d_4a.out_channels());
        let c35 = mixed_5b.out_channels();
        let repeat = (0..n35).map(|_| b.block35(c35, self.scale_a)).collect();
        let mixed_6a = Mixed6a::reduction_a(&b.f, c35, [256, 256, 384, 384]);
        let c17 = mixed_6a.out_channels(c35);
        let repeat_1 = (0..n17).map(|_| b.block17(c17, self.scale_b)).collect();
        let mixed_7a = Mixed7a::reduction_b(&b.f, c17, [384, 288, 288, 320]);
        let c8 = mixed_7a.out_channels(c17);
        let repeat_2 = (0..n8).map(|_| b.block8(c8, self.scale_c, true)).collect();
        let block8 = self.final_block.then(|| b.block8(c8, 1.0, false));
        let conv2d_7b = b.f.conv(c8, Conv::pointwise(1536));
        let classif = LinearConfig::new(conv2d_7b.out_channels(), self.num_classes).init(device);
        let aux_logits = self
            .aux_head
            .map(|size| b.aux_head(c17, aux_pool_side(size), self.num_classes));

        InceptionResNetV2 {
            conv2d_1a,
            conv2d_2a,
            conv2d_2b,
            maxpool_3a: max_pool_3x3_s2(),
            conv2d_3b,
            conv2d_4a,
            maxpool_5a: max_pool_3x3_s2(),
            mixed_5b,
            repeat,
            mixed_6a,
            repeat_1,
            mixed_7a,
            repeat_2,
            block8,
            conv2d_7b,
            dropout: DropoutConfig::new(self.dropout).init(),
            classif,
            aux_logits,
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
            "Inception-ResNet-v2",
            size,
            self.min_image_size(),
            NATIVE_IMAGE_SIZE,
        )?;
        if let Some(aux_size) = self.aux_head {
            if aux_size != size {
                return Err(format!(
                    "the aux head is sized for {aux_size} px, the input is {size} px"
                ));
            }
            let side = grid_17(size);
            if side < AUX_POOL {
                return Err(format!(
                    "image size {size} leaves a {side}×{side} map for the aux head's \
                     {AUX_POOL}×{AUX_POOL} pool: use at least {} px or no aux head",
                    min_size_for_grid_17(AUX_POOL)
                ));
            }
        }
        Ok(())
    }
}

/// Inception-ResNet-v2: stem → Mixed_5b → Block35 × n → Mixed_6a → Block17 × n → Mixed_7a →
/// Block8 × n (+ final Block8) → 1×1 conv 1536 → global average pool → dropout → classifier.
#[derive(Module, Debug)]
pub struct InceptionResNetV2<B: Backend> {
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
    /// Stem: max pool 3×3/2 valid (→ 35).
    pub maxpool_5a: MaxPool2d,
    /// 35×35 → 320 channels.
    pub mixed_5b: Mixed5b<B>,
    /// Block35 stack (Inception-ResNet-A).
    pub repeat: Vec<Block35<B>>,
    /// Reduction to 17×17×1088.
    pub mixed_6a: Mixed6a<B>,
    /// Block17 stack (Inception-ResNet-B).
    pub repeat_1: Vec<Block17<B>>,
    /// Reduction to 8×8×2080.
    pub mixed_7a: Mixed7a<B>,
    /// Scaled Block8 stack (Inception-ResNet-C).
    pub repeat_2: Vec<Block8<B>>,
    /// Final Block8: scale 1.0, no ReLU.
    pub block8: Option<Block8<B>>,
    /// 1536 1×1 before the pool.
    pub conv2d_7b: ConvBn<B>,
    /// Active only with autodiff (training).
    pub dropout: Dropout,
    /// Classifier.
    pub classif: Linear<B>,
    /// TF-slim's optional auxiliary classifier on the 17×17 map.
    pub aux_logits: Option<AuxHead<B>>,
}

/// Side of the aux head's average pool (5×5, stride 3, valid).
const AUX_POOL: usize = 5;

/// Side of the 17×17-grid map (after Mixed_6a) for an input side.
fn grid_17(size: usize) -> usize {
    VALID_REDUCTIONS[..6]
        .iter()
        .fold(size, |side, &(kernel, stride)| {
            side.saturating_sub(kernel) / stride + 1
        })
}

/// Smallest input side whose 17×17-grid map is at least `side`.
fn min_size_for_grid_17(side: usize) -> usize {
    min_input_side(&VALID_REDUCTIONS[..6], side)
}

/// Side of the aux head's map after its pool, for an input side (5 at 299).
fn aux_pool_side(size: usize) -> usize {
    grid_17(size).saturating_sub(AUX_POOL) / 3 + 1
}

/// TF-slim's `AuxLogits`: average pool 5×5/3 valid → 128 1×1 → 768 conv covering the whole
/// remaining map (5×5 at 299) → fully connected.
#[derive(Module, Debug)]
pub struct AuxHead<B: Backend> {
    /// Average pool 5×5/3 valid (17 → 5 at 299).
    pub pool: AvgPool2d,
    /// 128 1×1.
    pub conv2d_1b: ConvBn<B>,
    /// 768 valid, as large as the pooled map (→ 1×1).
    pub conv2d_2a: ConvBn<B>,
    /// Fully connected to the auxiliary logits.
    pub logits: Linear<B>,
}

impl<B: Kernels> AuxHead<B> {
    /// The 17×17-grid features → auxiliary logits.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let x = self
            .conv2d_2a
            .forward(self.conv2d_1b.forward(self.pool.forward(x)));
        let [n, c, h, w] = x.dims();
        linear(&self.logits, x.reshape([n, c * h * w]))
    }
}

impl<B: Kernels> InceptionResNetV2<B> {
    /// Images `[N, 3, S, S]` in `[-1, 1]` → logits `[N, num_classes]`.
    ///
    /// `S` must be at least [`InceptionResNetV2Config::min_image_size`] (check it with
    /// [`InceptionResNetV2Config::check_image_size`]); 299 is the native resolution.
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        let [.., features] = self.forward_features(images);
        self.classify(features)
    }

    /// Logits and, when the network has the aux head, the auxiliary logits (for training).
    pub fn forward_with_aux(&self, images: Tensor<B, 4>) -> (Tensor<B, 2>, Option<Tensor<B, 2>>) {
        let [_, grid_17, _, features] = self.forward_features(images);
        let aux = self.aux_logits.as_ref().map(|head| head.forward(grid_17));
        (self.classify(features), aux)
    }

    fn classify(&self, features: Tensor<B, 4>) -> Tensor<B, 2> {
        pool_and_classify(features, &self.dropout, &self.classif)
    }

    /// The four stage outputs, for feature extraction and shape checks: at 299 they are
    /// 35×35×320 (after the Block35s), 17×17×1088 (Block17s), 8×8×2080 (Block8s) and
    /// 8×8×1536 (conv2d_7b), channels scaled by the width.
    pub fn forward_features(&self, images: Tensor<B, 4>) -> [Tensor<B, 4>; 4] {
        let x = self.conv2d_1a.forward(images);
        let x = self.conv2d_2b.forward(self.conv2d_2a.forward(x));
        let x = self.conv2d_3b.forward(self.maxpool_3a.forward(x));
        let x = self.maxpool_5a.forward(self.conv2d_4a.forward(x));
        let a = run_blocks(&self.repeat, self.mixed_5b.forward(x));
        let b = run_blocks(&self.repeat_1, self.mixed_6a.forward(a.clone()));
        let c = run_blocks(&self.repeat_2, self.mixed_7a.forward(b.clone()));
        let c = run_blocks(self.block8.as_slice(), c);
        let d = self.conv2d_7b.forward(c.clone());
        [a, b, c, d]
    }
}

/// Block35: residual Inception-ResNet-A block on the 35×35 grid.
pub type Block35<B> = ResidualBlock<B>;
/// Block17: residual Inception-ResNet-B block on the 17×17 grid (`branch2` empty).
pub type Block17<B> = ResidualBlock<B>;
/// Block8: residual Inception-ResNet-C block on the 8×8 grid (`branch2` empty).
pub type Block8<B> = ResidualBlock<B>;

/// Residual block: conv branches → concat → 1×1 up projection with bias (no BN, no
/// activation) → `x + scale · up` → ReLU unless it is the final Block8. No BN after the sum.
///
/// One type for all three grids so the residual arithmetic exists once; Block17 and Block8
/// have two branches, and their `branch2` is empty (no parameters, no checkpoint keys).
#[derive(Module, Debug)]
pub struct ResidualBlock<B: Backend> {
    /// 1×1 branch.
    pub branch0: ConvBn<B>,
    /// 1×1 → 3×3 (A), 1×1 → 1×7 → 7×1 (B) or 1×1 → 1×3 → 3×1 (C).
    pub branch1: Vec<ConvBn<B>>,
    /// 1×1 → 3×3 → 3×3 (A only).
    pub branch2: Vec<ConvBn<B>>,
    /// Up projection back to the block's input channels (timm's `conv2d`).
    pub conv2d: Conv2d<B>,
    /// Residual scale.
    pub scale: f64,
    /// Whether the sum goes through a ReLU (false only for the final Block8).
    pub relu: bool,
}

impl<B: Kernels> ResidualBlock<B> {
    /// Assembles a block from its branches, adding the up projection from their concatenated
    /// width back to the `channels` of the shortcut.
    pub fn new(
        channels: usize,
        branch0: ConvBn<B>,
        branch1: Vec<ConvBn<B>>,
        branch2: Vec<ConvBn<B>>,
        scale: f64,
        relu: bool,
        device: &B::Device,
    ) -> Self {
        let concat =
            branch0.out_channels() + chain_out_channels(&branch1) + chain_out_channels(&branch2);
        ResidualBlock {
            conv2d: up_projection([concat, channels], device),
            branch0,
            branch1,
            branch2,
            scale,
            relu,
        }
    }

    /// `[N, C, H, W]` → `[N, C, H, W]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut branches = vec![
            self.branch0.forward(x.clone()),
            run_chain(&self.branch1, x.clone()),
        ];
        if !self.branch2.is_empty() {
            branches.push(run_chain(&self.branch2, x.clone()));
        }
        let residual = conv2d(&self.conv2d, Tensor::cat(branches, 1)).mul_scalar(self.scale);
        probe::record_residual(&residual, &x);
        let sum = x + residual;
        if self.relu { relu(sum) } else { sum }
    }
}

/// Mixed_5b: the 35×35 Inception-A-style block that widens the stem's 192 channels to 320.
#[derive(Module, Debug)]
pub struct Mixed5b<B: Backend> {
    /// 96 1×1.
    pub branch0: ConvBn<B>,
    /// 48 1×1 → 64 5×5.
    pub branch1: Vec<ConvBn<B>>,
    /// 64 1×1 → 96 3×3 → 96 3×3.
    pub branch2: Vec<ConvBn<B>>,
    /// Average pool → 64 1×1; a pair so the conv's path is timm's `branch3.1`.
    pub branch3: (AvgPool2d, ConvBn<B>),
}

impl<B: Kernels> Mixed5b<B> {
    /// `[N, 192, H, W]` → `[N, 320, H, W]` (channels at width 1).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let (pool, pool_conv) = &self.branch3;
        let branches = vec![
            self.branch0.forward(x.clone()),
            run_chain(&self.branch1, x.clone()),
            run_chain(&self.branch2, x.clone()),
            pool_conv.forward(pool.forward(x)),
        ];
        Tensor::cat(branches, 1)
    }

    /// Sum of the branch widths.
    fn out_channels(&self) -> usize {
        self.branch0.out_channels()
            + chain_out_channels(&self.branch1)
            + chain_out_channels(&self.branch2)
            + self.branch3.1.out_channels()
    }
}

/// Mixed_6a (Reduction-A): 35×35 → 17×17, 320 → 1088 channels.
#[derive(Module, Debug)]
pub struct Mixed6a<B: Backend> {
    /// 384 3×3/2 valid.
    pub branch0: ConvBn<B>,
    /// 256 1×1 → 256 3×3 → 384 3×3/2 valid.
    pub branch1: Vec<ConvBn<B>>,
    /// Max pool 3×3/2 valid (passes the input channels through).
    pub branch2: MaxPool2d,
}

impl<B: Kernels> Mixed6a<B> {
    /// The v4 paper's Reduction-A with its filter counts `[k, l, m, n]`: [n 3×3/2] |
    /// [k 1×1 → l 3×3 → m 3×3/2] | [max pool]. Inception-v4 uses (192, 224, 256, 384),
    /// Inception-ResNet-v1 (192, 192, 256, 384), Inception-ResNet-v2 (256, 256, 384, 384).
    pub fn reduction_a(f: &ConvFactory<'_, B>, c: usize, [k, l, m, n]: [usize; 4]) -> Self {
        Mixed6a {
            branch0: f.conv(c, Conv::reduce(n)),
            branch1: f.chain(
                c,
                [Conv::pointwise(k), Conv::same(l, [3, 3]), Conv::reduce(m)],
            ),
            branch2: max_pool_3x3_s2(),
        }
    }

    /// `[N, C, H, W]` → `[N, 384 + 384 + C, H', W']` (channels at width 1).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let branches = vec![
            self.branch0.forward(x.clone()),
            run_chain(&self.branch1, x.clone()),
            self.branch2.forward(x),
        ];
        Tensor::cat(branches, 1)
    }

    /// Conv branch widths plus the pooled input's.
    fn out_channels(&self, in_channels: usize) -> usize {
        self.branch0.out_channels() + chain_out_channels(&self.branch1) + in_channels
    }
}

/// Mixed_7a (Reduction-B): 17×17 → 8×8, 1088 → 2080 channels.
#[derive(Module, Debug)]
pub struct Mixed7a<B: Backend> {
    /// 256 1×1 → 384 3×3/2 valid.
    pub branch0: Vec<ConvBn<B>>,
    /// 256 1×1 → 288 3×3/2 valid.
    pub branch1: Vec<ConvBn<B>>,
    /// 256 1×1 → 288 3×3 → 320 3×3/2 valid.
    pub branch2: Vec<ConvBn<B>>,
    /// Max pool 3×3/2 valid (passes the input channels through).
    pub branch3: MaxPool2d,
}

impl<B: Kernels> Mixed7a<B> {
    /// The residual networks' Reduction-B with output widths `[a, b, c, d]`: [256 → a 3×3/2] |
    /// [256 → b 3×3/2] | [256 → c 3×3 → d 3×3/2] | [max pool]. Inception-ResNet-v1 uses
    /// (384, 256, 256, 256), Inception-ResNet-v2 (384, 288, 288, 320).
    pub fn reduction_b(f: &ConvFactory<'_, B>, c: usize, [a, b, c2, d]: [usize; 4]) -> Self {
        Mixed7a {
            branch0: f.chain(c, [Conv::pointwise(256), Conv::reduce(a)]),
            branch1: f.chain(c, [Conv::pointwise(256), Conv::reduce(b)]),
            branch2: f.chain(
                c,
                [
                    Conv::pointwise(256),
                    Conv::same(c2, [3, 3]),
                    Conv::reduce(d),
                ],
            ),
            branch3: max_pool_3x3_s2(),
        }
    }

    /// `[N, C, H, W]` → `[N, 384 + 288 + 320 + C, H', W']` (channels at width 1).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let branches = vec![
            run_chain(&self.branch0, x.clone()),
            run_chain(&self.branch1, x.clone()),
            run_chain(&self.branch2, x.clone()),
            self.branch3.forward(x),
        ];
        Tensor::cat(branches, 1)
    }

    /// Conv branch widths plus the pooled input's.
    fn out_channels(&self, in_channels: usize) -> usize {
        chain_out_channels(&self.branch0)
            + chain_out_channels(&self.branch1)
            + chain_out_channels(&self.branch2)
            + in_channels
    }
}

/// Applies residual blocks in order.
fn run_blocks<B: Kernels>(blocks: &[ResidualBlock<B>], x: Tensor<B, 4>) -> Tensor<B, 4> {
    blocks.iter().fold(x, |x, block| block.forward(x))
}

/// Turns the TF-slim channel plan of Inception-ResNet-v2 into modules.
struct Builder<'a, B: Backend> {
    f: ConvFactory<'a, B>,
}

impl<B: Kernels> Builder<'_, B> {
    fn aux_head(&self, c: usize, side: usize, num_classes: usize) -> AuxHead<B> {
        let conv2d_1b = self.f.conv(c, Conv::pointwise(128));
        let conv2d_2a = self
            .f
            .conv(conv2d_1b.out_channels(), Conv::valid(768, [side, side]));
        let features = conv2d_2a.out_channels();
        AuxHead {
            pool: AvgPool2dConfig::new([AUX_POOL, AUX_POOL])
                .with_strides([3, 3])
                .init(),
            conv2d_1b,
            conv2d_2a,
            logits: LinearConfig::new(features, num_classes).init(self.f.device),
        }
    }

    fn mixed_5b(&self, c: usize) -> Mixed5b<B> {
        Mixed5b {
            branch0: self.f.conv(c, Conv::pointwise(96)),
            branch1: self
                .f
                .chain(c, [Conv::pointwise(48), Conv::same(64, [5, 5])]),
            branch2: self.f.chain(
                c,
                [
                    Conv::pointwise(64),
                    Conv::same(96, [3, 3]),
                    Conv::same(96, [3, 3]),
                ],
            ),
            branch3: (avg_pool_3x3_same(), self.f.conv(c, Conv::pointwise(64))),
        }
    }

    fn block35(&self, c: usize, scale: f64) -> Block35<B> {
        let branch0 = self.f.conv(c, Conv::pointwise(32));
        let branch1 = self
            .f
            .chain(c, [Conv::pointwise(32), Conv::same(32, [3, 3])]);
        let branch2 = self.f.chain(
            c,
            [
                Conv::pointwise(32),
                Conv::same(48, [3, 3]),
                Conv::same(64, [3, 3]),
            ],
        );
        ResidualBlock::new(c, branch0, branch1, branch2, scale, true, self.f.device)
    }

    fn block17(&self, c: usize, scale: f64) -> Block17<B> {
        let branch0 = self.f.conv(c, Conv::pointwise(192));
        let branch1 = self.f.chain(
            c,
            [
                Conv::pointwise(128),
                Conv::same(160, [1, 7]),
                Conv::same(192, [7, 1]),
            ],
        );
        ResidualBlock::new(c, branch0, branch1, Vec::new(), scale, true, self.f.device)
    }

    fn block8(&self, c: usize, scale: f64, relu: bool) -> Block8<B> {
        let branch0 = self.f.conv(c, Conv::pointwise(192));
        let branch1 = self.f.chain(
            c,
            [
                Conv::pointwise(192),
                Conv::same(224, [1, 3]),
                Conv::same(256, [3, 1]),
            ],
        );
        ResidualBlock::new(c, branch0, branch1, Vec::new(), scale, relu, self.f.device)
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

    #[test]
    fn parameter_counts_match_timm() {
        let device = Default::default();
        for (classes, expected) in [(1000, 55_843_464), (1001, 55_845_001)] {
            let model = InceptionResNetV2Config::new(classes).init::<Flex>(&device);
            assert_eq!(trainable_len(&model), expected, "{classes} classes");
            // burn's own count includes the 2 × 30,272 batch-norm running statistics.
            assert_eq!(model.num_params(), expected + 2 * 30_272);
            // REFERENCES.md: 54,306,464 without the classifier.
            let trunk: usize = trainable_segments(&model)
                .iter()
                .filter(|s| !s.path.starts_with("classif."))
                .map(|s| s.range.len())
                .sum();
            assert_eq!(trunk, 54_306_464);
        }
    }

    #[test]
    fn macs_match_the_reference_at_native_resolution() {
        // REFERENCES.md: 13,155,794,016 conv+FC MACs at 299 (1000 classes), batch 1.
        let model = InceptionResNetV2Config::new(1000).init::<Flex>(&Default::default());
        let (_, macs) = count_macs(|| model.forward(images(1, 299)));
        assert_eq!(macs, 13_155_794_016);
    }

    #[test]
    fn module_paths_match_timm() {
        let model = InceptionResNetV2Config::new(10)
            .with_width(0.125)
            .init::<Flex>(&Default::default());
        let paths: Vec<String> = tensor_paths(&model).into_iter().map(|(p, _)| p).collect();
        for expected in [
            "conv2d_1a.conv.weight",
            "conv2d_4a.bn.running_var",
            "mixed_5b.branch1.1.conv.weight",
            "mixed_5b.branch3.1.conv.weight",
            "repeat.9.branch2.2.bn.gamma",
            "repeat.9.conv2d.bias",
            "mixed_6a.branch0.conv.weight",
            "mixed_6a.branch1.2.bn.beta",
            "repeat_1.19.branch1.2.conv.weight",
            "mixed_7a.branch2.2.conv.weight",
            "repeat_2.8.conv2d.weight",
            "block8.branch1.2.conv.weight",
            "conv2d_7b.bn.running_mean",
            "classif.weight",
            "classif.bias",
        ] {
            assert!(paths.iter().any(|p| p == expected), "missing {expected}");
        }
        assert!(
            !paths
                .iter()
                .any(|p| p.contains("branch2") && p.starts_with("repeat_1."))
        );
    }

    #[test]
    fn stage_shapes_at_native_resolution() {
        // Width 0.125 keeps the topology (and spatial sizes) at a fraction of the cost.
        let config = InceptionResNetV2Config::new(10)
            .with_width(0.125)
            .with_blocks([1, 1, 1]);
        let model = config.init::<Flex>(&Default::default());
        let shapes = model.forward_features(images(1, 299)).map(|t| t.dims());
        // 320 = 12 + 8 + 12 + 8; 1088 = 48 + 48 + 40 (input); 2080 = 48 + 36 + 40 + 136 (input).
        assert_eq!(
            shapes,
            [
                [1, 40, 35, 35],
                [1, 136, 17, 17],
                [1, 260, 8, 8],
                [1, 192, 8, 8]
            ]
        );
    }

    #[test]
    fn image_size_limit() {
        let config = InceptionResNetV2Config::new(10);
        assert_eq!(config.min_image_size(), 75);
        assert_image_size_limit(|size| config.check_image_size(size), 75, NATIVE_IMAGE_SIZE);
    }

    #[test]
    fn aux_head_follows_tf_slim() {
        // Full width at 299: pool 17 → 5, then 1088→128 1×1, 128→768 5×5, 768→classes.
        let plain = InceptionResNetV2Config::new(1001).init::<Flex>(&Default::default());
        let with_aux = InceptionResNetV2Config::new(1001)
            .with_aux_head(Some(299))
            .init::<Flex>(&Default::default());
        let aux_params = (1088 * 128 + 2 * 128) + (128 * 768 * 25 + 2 * 768) + (768 * 1001 + 1001);
        assert_eq!(trainable_len(&with_aux), trainable_len(&plain) + aux_params);

        // The smallest input the aux head accepts is 107 (its pool needs a 5×5 map).
        let config = InceptionResNetV2Config::new(10)
            .with_width(0.0625)
            .with_blocks([1, 1, 1])
            .with_aux_head(Some(107));
        assert!(config.check_image_size(107).is_ok());
        let small = config.clone().with_aux_head(Some(106));
        let err = small.check_image_size(106).unwrap_err();
        assert!(err.contains("at least 107"), "{err}");
        assert!(
            config
                .check_image_size(299)
                .unwrap_err()
                .contains("sized for 107")
        );

        let model = config.init::<Ad>(&Default::default());
        let (logits, aux) = model.forward_with_aux(images(2, 107));
        assert_eq!(logits.dims(), [2, 10]);
        assert_eq!(aux.expect("aux logits").dims(), [2, 10]);
    }

    #[test]
    fn small_network_trains_at_minimum_size() {
        let config = InceptionResNetV2Config::new(10)
            .with_width(0.125)
            .with_blocks([1, 1, 1]);
        let model = config.init::<Ad>(&Default::default());
        let [.., features] = model.forward_features(images(2, 75));
        assert_eq!(features.dims(), [2, 192, 1, 1]);
        let logits = model.forward(images(2, 75));
        assert_eq!(logits.dims(), [2, 10]);
        let grads = logits.square().mean().backward();
        let stem = model.conv2d_1a.conv.weight.grad(&grads).unwrap();
        let up = model.repeat[0].conv2d.weight.grad(&grads).unwrap();
        let classifier = model.classif.weight.grad(&grads).unwrap();
        assert_gradients_flow([stem.abs().sum(), up.abs().sum(), classifier.abs().sum()]);
        // The inference copy (running statistics, no dropout) runs as well.
        let logits = model.valid().forward(images(2, 75));
        assert_eq!(logits.dims(), [2, 10]);
    }
}
