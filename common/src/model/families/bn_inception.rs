//! BN-Inception (Ioffe & Szegedy, arXiv 1502.03167; "Inception-v2" in the seeds): GoogLeNet
//! with batch norm after every convolution and each 5×5 replaced by two 3×3s, at 224 px.
//!
//! The layer table is the paper's (appendix, figure 5) as laid out by the widely used Caffe
//! port (Cadene's `pretrainedmodels.bninception`), whose parameter count (11,295,240) and MACs
//! (2,032,600,064) REFERENCES.md gives: every convolution keeps its Caffe bias and is followed
//! by a batch norm. Geometry follows that port, numerical conventions follow the family:
//! - stem: 7×7/2 conv padded 3, ceil-mode 3×3/2 max pools, 3×3 convs padded 1
//!   (224 → 112 → 56 → 28);
//! - reductions 3c and 4e: 3×3/2 convs padded 1 beside a 3×3/2 max pool with TF SAME padding.
//!   On an even map (28 and 14 at 224) SAME pools exactly the Caffe port's ceil-mode windows;
//!   on an odd map the Caffe port's pool comes out one pixel short of its convs and the concat
//!   fails, where SAME still matches them, so every input side from the minimum up works;
//! - batch-norm epsilon 1e-3 (TF-slim, as the whole family; Caffe uses 1e-5) and in-block
//!   average pools that exclude padding (TF-slim; the Caffe port includes it). Neither changes
//!   a shape, a parameter or a MAC;
//! - the head is a global average pool (the port's 7×7 pool at 224, valid at any size),
//!   dropout (absent from the port) and `last_linear`.
//!
//! Module paths map one-to-one onto the port's flat names: `conv1_7x7_s2.conv.*` is
//! `conv1_7x7_s2.*` and `conv1_7x7_s2.bn.{gamma, beta, running_*}` is
//! `conv1_7x7_s2_bn.{weight, bias, running_*}`; inside `inception_3a`, `conv_1x1` is
//! `inception_3a_1x1`, `conv_3x3.{0, 1}` are `…_3x3_reduce, …_3x3`, `double_3x3.{0, 1, 2}` are
//! `…_double_3x3_reduce, …_double_3x3_1, …_double_3x3_2` and `pool_proj` is `…_pool_proj`.

use crate::model::Kernels;
use burn::config::Config;
use burn::module::Module;
use burn::nn::pool::{AvgPool2d, MaxPool2d, MaxPool2dConfig};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::{Tensor, backend::Backend};

use crate::config::ModelSection;
use crate::model::family::Family;
use crate::model::layers::{
    Conv, ConvBn, ConvFactory, avg_pool_3x3_same, chain_out_channels, check_side,
    pool_and_classify, run_chain,
};

/// Input side the reference network was trained at.
pub const NATIVE_IMAGE_SIZE: usize = 224;

/// Hyper-parameters of [`BnInception`]; the layer widths are the paper's.
#[derive(Config, Debug)]
pub struct BnInceptionConfig {
    /// Classifier outputs (the Caffe port: 1000).
    pub num_classes: usize,
    /// Channel multiplier: every channel count `c` becomes `max(1, round(c · width))`, so that
    /// small networks for tests and experiments keep the exact topology.
    #[config(default = 1.0)]
    pub width: f64,
    /// Dropout before the classifier (the family's keep probability 0.8).
    #[config(default = 0.2)]
    pub dropout: f64,
    /// PyTorch-style batch-norm momentum (TF decay 0.9997).
    #[config(default = 0.0003)]
    pub bn_momentum: f64,
}

/// Side of the stem's max pools. Unpadded, they need at least one whole window: below it
/// burn's output-size formula (ceil mode or not) underflows.
const POOL: usize = 3;

impl BnInceptionConfig {
    /// What the registry needs to know of this family.
    pub const FAMILY: Family = Family {
        native_image_size: NATIVE_IMAGE_SIZE,
        reference_blocks: None,
        presets: &[],
        aux_head: false,
        avg_pool_count_pad: false,
    };

    /// The network `[model]` describes (knobs checked by [`Family::check_knobs`]).
    pub fn from_section(model: &ModelSection) -> Self {
        BnInceptionConfig::new(model.num_classes)
            .with_width(model.width)
            .with_dropout(model.dropout)
            .with_bn_momentum(model.bn_momentum)
    }

    /// Builds the network with burn's default (Kaiming-uniform) initialisation.
    ///
    /// # Panics
    /// If `width` is not a positive finite number.
    pub fn init<B: Kernels>(&self, device: &B::Device) -> BnInception<B> {
        let b = Builder::<B> {
            f: ConvFactory {
                conv_bias: true,
                ..ConvFactory::new(self.width, self.bn_momentum, device)
            },
        };

        let conv1_7x7_s2 = b.f.conv(
            3,
            Conv {
                out: 64,
                kernel: [7, 7],
                stride: 2,
                padding: PaddingConfig2d::Explicit(3, 3, 3, 3),
            },
        );
        let conv2_3x3_reduce = b.f.conv(conv1_7x7_s2.out_channels(), Conv::pointwise(64));
        let conv2_3x3 = b.f.conv(conv2_3x3_reduce.out_channels(), caffe_3x3(192, 1));
        let mut channels = conv2_3x3.out_channels();
        let [
            inception_3a,
            inception_3b,
            inception_3c,
            inception_4a,
            inception_4b,
            inception_4c,
            inception_4d,
            inception_4e,
            inception_5a,
            inception_5b,
        ] = BLOCKS.each_ref().map(|plan| {
            let block = b.block(channels, plan);
            channels = block.out_channels(channels);
            block
        });

        BnInception {
            conv1_7x7_s2,
            pool1_3x3_s2: stem_pool(),
            conv2_3x3_reduce,
            conv2_3x3,
            pool2_3x3_s2: stem_pool(),
            inception_3a,
            inception_3b,
            inception_3c,
            inception_4a,
            inception_4b,
            inception_4c,
            inception_4d,
            inception_4e,
            inception_5a,
            inception_5b,
            dropout: DropoutConfig::new(self.dropout).init(),
            last_linear: LinearConfig::new(channels, self.num_classes).init(device),
        }
    }

    /// Smallest input side the network accepts (11: the final map is then 1×1).
    ///
    /// Only the stem's ceil-mode max pools can fail, as they need a whole 3×3 window: pool 2
    /// needs 3 px, pool 1 halves (rounding down) so needs 6, conv1 halves (rounding up) so
    /// needs 11. Every later layer is padded and keeps at least one pixel.
    pub fn min_image_size(&self) -> usize {
        let pool1_input = 2 * POOL;
        2 * pool1_input - 1
    }

    /// Rejects input sides the network cannot process, before any tensor work fails obscurely.
    pub fn check_image_size(&self, size: usize) -> Result<(), String> {
        check_side(
            "BN-Inception",
            size,
            self.min_image_size(),
            NATIVE_IMAGE_SIZE,
        )?;
        Ok(())
    }
}

/// BN-Inception: stem (7×7/2 → pool → 1×1 → 3×3 → pool) → inception 3a–3c → 4a–4e → 5a–5b →
/// global average pool → dropout → classifier.
#[derive(Module, Debug)]
pub struct BnInception<B: Backend> {
    /// Stem: 64 7×7/2, padding 3 (224 → 112).
    pub conv1_7x7_s2: ConvBn<B>,
    /// Stem: max pool 3×3/2, ceil mode (→ 56).
    pub pool1_3x3_s2: MaxPool2d,
    /// Stem: 64 1×1.
    pub conv2_3x3_reduce: ConvBn<B>,
    /// Stem: 192 3×3, padding 1.
    pub conv2_3x3: ConvBn<B>,
    /// Stem: max pool 3×3/2, ceil mode (→ 28).
    pub pool2_3x3_s2: MaxPool2d,
    /// 28×28 → 256 channels.
    pub inception_3a: InceptionBlock<B>,
    /// 28×28 → 320.
    pub inception_3b: InceptionBlock<B>,
    /// Reduction to 14×14×576.
    pub inception_3c: InceptionBlock<B>,
    /// 14×14 → 576.
    pub inception_4a: InceptionBlock<B>,
    /// 14×14 → 576.
    pub inception_4b: InceptionBlock<B>,
    /// 14×14 → 608.
    pub inception_4c: InceptionBlock<B>,
    /// 14×14 → 608.
    pub inception_4d: InceptionBlock<B>,
    /// Reduction to 7×7×1056.
    pub inception_4e: InceptionBlock<B>,
    /// 7×7 → 1024.
    pub inception_5a: InceptionBlock<B>,
    /// 7×7 → 1024 (max rather than average pool branch).
    pub inception_5b: InceptionBlock<B>,
    /// Active only with autodiff (training).
    pub dropout: Dropout,
    /// Classifier (the port's name).
    pub last_linear: Linear<B>,
}

impl<B: Kernels> BnInception<B> {
    /// Images `[N, 3, S, S]` → logits `[N, num_classes]`.
    ///
    /// `S` must be at least [`BnInceptionConfig::min_image_size`] (check it with
    /// [`BnInceptionConfig::check_image_size`]); 224 is the native resolution.
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        let [.., features] = self.forward_features(images);
        pool_and_classify(features, &self.dropout, &self.last_linear)
    }

    /// The three stage outputs, for feature extraction and shape checks: at 224 they are
    /// 28×28×320 (3b), 14×14×608 (4d, the input of the 4e reduction) and 7×7×1024 (5b, the
    /// final map), channels scaled by the width.
    pub fn forward_features(&self, images: Tensor<B, 4>) -> [Tensor<B, 4>; 3] {
        let x = self.pool1_3x3_s2.forward(self.conv1_7x7_s2.forward(images));
        let x = self.conv2_3x3.forward(self.conv2_3x3_reduce.forward(x));
        let x = self.pool2_3x3_s2.forward(x);
        let grid_28 = run_blocks(&[&self.inception_3a, &self.inception_3b], x);
        let grid_14 = run_blocks(
            &[
                &self.inception_3c,
                &self.inception_4a,
                &self.inception_4b,
                &self.inception_4c,
                &self.inception_4d,
            ],
            grid_28.clone(),
        );
        let grid_7 = run_blocks(
            &[&self.inception_4e, &self.inception_5a, &self.inception_5b],
            grid_14.clone(),
        );
        [grid_28, grid_14, grid_7]
    }
}

/// The pooling of an Inception block's pool branch.
#[derive(Module, Debug, Clone)]
pub enum Pool {
    /// 3×3/1 average pool, same padding (excluded from the mean).
    Avg(AvgPool2d),
    /// 3×3/1 max pool (5b) or the 3×3/2 reduction pool (3c, 4e).
    Max(MaxPool2d),
}

impl Pool {
    fn forward<B: Kernels>(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            Self::Avg(pool) => pool.forward(x),
            Self::Max(pool) => pool.forward(x),
        }
    }
}

/// One Inception block of the paper's table: 1×1 | 1×1 → 3×3 | 1×1 → 3×3 → 3×3 | pool → 1×1,
/// concatenated. The reduction blocks (3c, 4e) have no 1×1 branch, run their last 3×3s at
/// stride 2 and pass the pooled input through without a projection.
#[derive(Module, Debug)]
pub struct InceptionBlock<B: Backend> {
    /// `#1×1` (port: `_1x1`); absent in the reduction blocks.
    pub conv_1x1: Option<ConvBn<B>>,
    /// `#3×3 reduce` → `#3×3` (port: `_3x3_reduce`, `_3x3`).
    pub conv_3x3: Vec<ConvBn<B>>,
    /// `double #3×3 reduce` → `double #3×3` twice: the factorised 5×5 (port: `_double_3x3_*`).
    pub double_3x3: Vec<ConvBn<B>>,
    /// The pool branch's pooling.
    pub pool: Pool,
    /// `pool proj` (port: `_pool_proj`); absent in the reduction blocks.
    pub pool_proj: Option<ConvBn<B>>,
}

impl<B: Kernels> InceptionBlock<B> {
    /// `[N, C, H, W]` → `[N, C', H', W']`, halving `H` and `W` (rounding up) in the reduction
    /// blocks.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut branches = Vec::with_capacity(4);
        if let Some(conv) = &self.conv_1x1 {
            branches.push(conv.forward(x.clone()));
        }
        branches.push(run_chain(&self.conv_3x3, x.clone()));
        branches.push(run_chain(&self.double_3x3, x.clone()));
        let pooled = self.pool.forward(x);
        branches.push(match &self.pool_proj {
            Some(proj) => proj.forward(pooled),
            None => pooled,
        });
        Tensor::cat(branches, 1)
    }

    /// Sum of the branch widths; the pass-through pool branch carries `in_channels`.
    fn out_channels(&self, in_channels: usize) -> usize {
        self.conv_1x1.as_ref().map_or(0, ConvBn::out_channels)
            + chain_out_channels(&self.conv_3x3)
            + chain_out_channels(&self.double_3x3)
            + self
                .pool_proj
                .as_ref()
                .map_or(in_channels, ConvBn::out_channels)
    }
}

/// Applies Inception blocks in order.
fn run_blocks<B: Kernels>(blocks: &[&InceptionBlock<B>], x: Tensor<B, 4>) -> Tensor<B, 4> {
    blocks.iter().fold(x, |x, block| block.forward(x))
}

/// The Caffe port's stem pool: 3×3/2 in ceil mode (112 → 56 → 28 at 224; rounds down on
/// odd sides, where the window at the edge is still whole).
fn stem_pool() -> MaxPool2d {
    MaxPool2dConfig::new([POOL, POOL])
        .with_strides([2, 2])
        .with_ceil_mode(true)
        .init()
}

/// The pool branch of a block's plan, with the unscaled projection width.
enum PoolPlan {
    /// Average pool → 1×1 projection.
    Avg(usize),
    /// Max pool → 1×1 projection (5b only).
    Max(usize),
    /// Stride-2 max pool passed through: a reduction block.
    Reduce,
}

/// One row of the paper's table (appendix, figure 5), unscaled widths.
struct BlockPlan {
    /// `#1×1`; `None` in the reduction blocks.
    conv_1x1: Option<usize>,
    /// `#3×3 reduce`, `#3×3`.
    conv_3x3: [usize; 2],
    /// `double #3×3 reduce`, `double #3×3` (both 3×3s).
    double_3x3: [usize; 2],
    pool: PoolPlan,
}

/// Inception 3a, 3b, 3c, 4a–4e, 5a, 5b.
const BLOCKS: [BlockPlan; 10] = [
    block(Some(64), [64, 64], [64, 96], PoolPlan::Avg(32)),
    block(Some(64), [64, 96], [64, 96], PoolPlan::Avg(64)),
    block(None, [128, 160], [64, 96], PoolPlan::Reduce),
    block(Some(224), [64, 96], [96, 128], PoolPlan::Avg(128)),
    block(Some(192), [96, 128], [96, 128], PoolPlan::Avg(128)),
    block(Some(160), [128, 160], [128, 160], PoolPlan::Avg(128)),
    block(Some(96), [128, 192], [160, 192], PoolPlan::Avg(128)),
    block(None, [128, 192], [192, 256], PoolPlan::Reduce),
    block(Some(352), [192, 320], [160, 224], PoolPlan::Avg(128)),
    block(Some(352), [192, 320], [192, 224], PoolPlan::Max(128)),
];

/// A table row, positionally as the paper lists it.
const fn block(
    conv_1x1: Option<usize>,
    conv_3x3: [usize; 2],
    double_3x3: [usize; 2],
    pool: PoolPlan,
) -> BlockPlan {
    BlockPlan {
        conv_1x1,
        conv_3x3,
        double_3x3,
        pool,
    }
}

/// Turns the BN-Inception channel plan into modules.
struct Builder<'a, B: Backend> {
    f: ConvFactory<'a, B>,
}

impl<B: Kernels> Builder<'_, B> {
    fn block(&self, c: usize, plan: &BlockPlan) -> InceptionBlock<B> {
        let (stride, pool, proj) = match plan.pool {
            PoolPlan::Avg(proj) => (1, Pool::Avg(avg_pool_3x3_same()), Some(proj)),
            PoolPlan::Max(proj) => (1, Pool::Max(max_pool_3x3(1)), Some(proj)),
            PoolPlan::Reduce => (2, Pool::Max(max_pool_3x3(2)), None),
        };
        let [reduce, out] = plan.conv_3x3;
        let [double_reduce, double_out] = plan.double_3x3;
        InceptionBlock {
            conv_1x1: plan
                .conv_1x1
                .map(|out| self.f.conv(c, Conv::pointwise(out))),
            conv_3x3: self
                .f
                .chain(c, [Conv::pointwise(reduce), caffe_3x3(out, stride)]),
            double_3x3: self.f.chain(
                c,
                [
                    Conv::pointwise(double_reduce),
                    caffe_3x3(double_out, 1),
                    caffe_3x3(double_out, stride),
                ],
            ),
            pool,
            pool_proj: proj.map(|out| self.f.conv(c, Conv::pointwise(out))),
        }
    }
}

/// A 3×3 convolution padded by 1 on every side, as Caffe pads them all: size-preserving at
/// stride 1, `ceil(side / 2)` at stride 2 (the reductions).
fn caffe_3x3(out: usize, stride: usize) -> Conv {
    Conv {
        out,
        kernel: [3, 3],
        stride,
        padding: PaddingConfig2d::Explicit(1, 1, 1, 1),
    }
}

/// 3×3 max pool with TF SAME padding: size-preserving at stride 1 (5b), `ceil(side / 2)` at
/// stride 2 like the reductions' padded 3×3/2 convs, with the Caffe port's windows on even
/// sides.
fn max_pool_3x3(stride: usize) -> MaxPool2d {
    MaxPool2dConfig::new([3, 3])
        .with_strides([stride; 2])
        .with_padding(PaddingConfig2d::Same)
        .init()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layers::count_macs;
    use crate::model::params::{tensor_paths, trainable_len};
    use crate::model::test_support::{assert_image_size_limit, images};
    use burn::backend::{Autodiff, Flex};
    use burn::module::AutodiffModule;
    use burn::tensor::Distribution;

    type Ad = Autodiff<Flex>;

    #[test]
    fn parameter_counts_match_the_reference() {
        let device = Default::default();
        for (classes, expected) in [(1000, 11_295_240), (1001, 11_296_265)] {
            let model = BnInceptionConfig::new(classes).init::<Flex>(&device);
            let total = trainable_len(&model);
            assert_eq!(total, expected, "{classes} classes");
            assert_eq!(total - (1024 + 1) * classes, 10_270_240, "excl. classifier");
            // burn's own count includes the 2 × 10,016 batch-norm running statistics.
            assert_eq!(model.num_params(), expected + 2 * 10_016);
        }
    }

    #[test]
    fn macs_match_the_reference_at_native_resolution() {
        // REFERENCES.md: 2,032,600,064 conv+FC MACs at 224 (1000 classes), batch 1.
        let model = BnInceptionConfig::new(1000).init::<Flex>(&Default::default());
        let (logits, macs) = count_macs(|| model.forward(images(1, NATIVE_IMAGE_SIZE)));
        assert_eq!(logits.dims(), [1, 1000]);
        assert_eq!(macs, 2_032_600_064);
    }

    #[test]
    fn module_paths_map_onto_the_caffe_port() {
        let model = BnInceptionConfig::new(10)
            .with_width(0.125)
            .init::<Flex>(&Default::default());
        let paths: Vec<String> = tensor_paths(&model).into_iter().map(|(p, _)| p).collect();
        for expected in [
            "conv1_7x7_s2.conv.weight",
            "conv1_7x7_s2.conv.bias",
            "conv1_7x7_s2.bn.gamma",
            "conv2_3x3_reduce.bn.running_mean",
            "conv2_3x3.conv.bias",
            "inception_3a.conv_1x1.conv.weight",
            "inception_3a.conv_3x3.1.conv.bias",
            "inception_3a.double_3x3.2.bn.beta",
            "inception_3a.pool_proj.conv.weight",
            "inception_3c.conv_3x3.1.conv.weight",
            "inception_4e.double_3x3.2.bn.running_var",
            "inception_5b.pool_proj.conv.weight",
            "last_linear.weight",
            "last_linear.bias",
        ] {
            assert!(paths.iter().any(|p| p == expected), "missing {expected}");
        }
        for absent in ["inception_3c.conv_1x1", "inception_4e.pool_proj"] {
            assert!(!paths.iter().any(|p| p.starts_with(absent)), "{absent}");
        }
    }

    #[test]
    fn stage_shapes_at_native_resolution() {
        // Width 0.125 keeps the topology (and spatial sizes) at a fraction of the cost.
        let model = BnInceptionConfig::new(10)
            .with_width(0.125)
            .init::<Flex>(&Default::default());
        let shapes = model
            .forward_features(images(1, NATIVE_IMAGE_SIZE))
            .map(|t| t.dims());
        // 320 = 8 + 12 + 12 + 8 (3b); 608 = 12 + 24 + 24 + 16 (4d); 1024 = 44 + 40 + 28 + 16 (5b).
        assert_eq!(shapes, [[1, 40, 28, 28], [1, 76, 14, 14], [1, 128, 7, 7]]);
    }

    #[test]
    fn image_size_limit() {
        let config = BnInceptionConfig::new(10);
        assert_eq!(config.min_image_size(), 11);
        assert_image_size_limit(|size| config.check_image_size(size), 11, NATIVE_IMAGE_SIZE);
    }

    #[test]
    fn reduction_pool_matches_caffe_on_even_sides_and_its_convs_on_odd_ones() {
        let device = Default::default();
        let caffe = MaxPool2dConfig::new([3, 3])
            .with_strides([2, 2])
            .with_ceil_mode(true)
            .init();
        let x = Tensor::<Flex, 4>::random([2, 3, 14, 14], Distribution::Default, &device);
        max_pool_3x3(2)
            .forward(x.clone())
            .into_data()
            .assert_eq(&caffe.forward(x).into_data(), true);
        // An odd 3c input (a 230 px image gives 29): the pool keeps up with the stride-2 convs.
        let model = BnInceptionConfig::new(10)
            .with_width(0.0625)
            .init::<Flex>(&device);
        let odd = Tensor::<Flex, 4>::random([1, 20, 29, 29], Distribution::Default, &device);
        assert_eq!(
            model.inception_3c.forward(odd).dims(),
            [1, 20 + 10 + 6, 15, 15]
        );
    }

    #[test]
    fn small_network_trains_at_minimum_size() {
        let config = BnInceptionConfig::new(10).with_width(0.0625);
        let model = config.init::<Ad>(&Default::default());
        let size = config.min_image_size();
        let [.., features] = model.forward_features(images(2, size));
        assert_eq!(features.dims(), [2, 64, 1, 1]);
        let logits = model.forward(images(2, size));
        assert_eq!(logits.dims(), [2, 10]);
        let grads = logits.square().mean().backward();
        let grad_sum = |grad: Option<Tensor<Flex, 4>>| grad.unwrap().abs().sum().into_scalar();
        let stem = grad_sum(model.conv1_7x7_s2.conv.weight.grad(&grads));
        let reduction = grad_sum(model.inception_4e.double_3x3[2].conv.weight.grad(&grads));
        let classifier = model.last_linear.weight.grad(&grads).unwrap();
        let classifier = classifier.abs().sum().into_scalar();
        for value in [stem, reduction, classifier] {
            assert!(value.is_finite() && value > 0.0, "gradient sum {value}");
        }
        // Batch norm cancels the conv bias, so its gradient is (numerically) zero, but finite.
        let stem_bias = model.conv1_7x7_s2.conv.bias.as_ref().unwrap();
        let stem_bias = stem_bias.grad(&grads).unwrap().abs().sum().into_scalar();
        assert!(stem_bias.is_finite());
        // The inference copy (running statistics, no dropout) runs as well.
        let logits = model.valid().forward(images(2, size));
        assert_eq!(logits.dims(), [2, 10]);
    }
}
