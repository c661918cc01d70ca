//! Inception-v3 (Szegedy et al., arXiv 1512.00567) as released in TF-slim, which trained the
//! published checkpoints; torchvision and timm port the same network.
//!
//! Module paths are torchvision's (`Conv2d_1a_3x3`, `Mixed_5b.branch5x5_1`, `AuxLogits.conv0`,
//! `fc`, …), which timm keeps, so their checkpoints import by name. Rust would spell the
//! top-level fields in snake case, but burn derives module paths from field names, so the
//! fields keep torchvision's exact spelling. The lint is allowed for the whole file because
//! burn's derive generates code (records, visitors) from those field names.
#![allow(non_snake_case)]

use crate::model::Kernels;
use burn::config::Config;
use burn::module::Module;
use burn::nn::pool::{AvgPool2d, AvgPool2dConfig, MaxPool2d};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::{Tensor, backend::Backend};

use crate::config::ModelSection;
use crate::model::family::Family;
use crate::model::layers::{
    Conv, ConvBn, ConvFactory, avg_pool_3x3_same, check_side, global_avg_pool, linear,
    max_pool_3x3_s2, min_input_side, pool_and_classify, run_chain,
};

/// Input side the reference network was trained at.
pub const NATIVE_IMAGE_SIZE: usize = 299;

/// Hyper-parameters of [`InceptionV3`]; the defaults are TF-slim's.
#[derive(Config, Debug)]
pub struct InceptionV3Config {
    /// Classifier outputs (TF-slim checkpoints: 1001, index 0 = background; torchvision and
    /// timm: 1000).
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
    /// Adds the auxiliary classifier on Mixed_6e's 17×17 map (`AuxLogits`, trained with loss
    /// weight 0.4). Its fixed 5×5 convolution needs that map to be at least 17 wide, so with
    /// it the minimum input side is the native 299.
    #[config(default = false)]
    pub aux_head: bool,
    /// Whether the in-block 3×3 average pools count the zero padding in the mean. TF-slim,
    /// which trained the published checkpoints, excludes it (`false`, the default); torchvision
    /// and timm's v3 call `F.avg_pool2d(x, 3, 1, 1)`, which includes it, so set `true` to
    /// reproduce their weights exactly. Only border pixels differ; the interior is the same.
    #[config(default = false)]
    pub count_include_pad: bool,
}

/// `(kernel, stride)` of the valid-padded layers on the main path, input to output: the only
/// layers that can shrink a map below one pixel (same-padded ones keep the size).
const VALID_REDUCTIONS: [(usize, usize); 7] = [
    (3, 2), // Conv2d_1a_3x3
    (3, 1), // Conv2d_2a_3x3
    (3, 2), // maxpool1
    (3, 1), // Conv2d_4a_3x3
    (3, 2), // maxpool2
    (3, 2), // Mixed_6a
    (3, 2), // Mixed_7a
];

/// How many of [`VALID_REDUCTIONS`] come before Mixed_6e, where the aux head branches off.
const REDUCTIONS_BEFORE_AUX: usize = 6;

/// Side and stride of the aux head's valid average pool.
const AUX_POOL: (usize, usize) = (5, 3);

/// Side of the aux head's valid `conv1`: it covers the whole pooled map at 299.
const AUX_CONV: usize = 5;

/// `(kernel, stride)` of the aux head's valid layers.
const AUX_REDUCTIONS: [(usize, usize); 2] = [AUX_POOL, (AUX_CONV, 1)];

impl InceptionV3Config {
    /// What the registry needs to know of this family.
    pub const FAMILY: Family = Family {
        native_image_size: NATIVE_IMAGE_SIZE,
        reference_blocks: None,
        presets: &[],
        aux_head: true,
        avg_pool_count_pad: true,
    };

    /// The network `[model]` describes (knobs checked by [`Family::check_knobs`]).
    pub fn from_section(model: &ModelSection) -> Self {
        InceptionV3Config::new(model.num_classes)
            .with_width(model.width)
            .with_dropout(model.dropout)
            .with_bn_momentum(model.bn_momentum)
            .with_aux_head(model.aux_head)
            .with_count_include_pad(model.avg_pool_count_pad)
    }

    /// Builds the network with burn's default (Kaiming-uniform) initialisation.
    ///
    /// # Panics
    /// If `width` is not a positive finite number.
    pub fn init<B: Kernels>(&self, device: &B::Device) -> InceptionV3<B> {
        let b = Builder::<B> {
            f: ConvFactory::new(self.width, self.bn_momentum, device),
            count_include_pad: self.count_include_pad,
        };

        let [Conv2d_1a_3x3, Conv2d_2a_3x3, Conv2d_2b_3x3] = b.chain(
            3,
            [
                Conv::reduce(32),
                Conv::valid(32, [3, 3]),
                Conv::same(64, [3, 3]),
            ],
        );
        let [Conv2d_3b_1x1, Conv2d_4a_3x3] = b.chain(
            Conv2d_2b_3x3.out_channels(),
            [Conv::pointwise(80), Conv::valid(192, [3, 3])],
        );
        let Mixed_5b = b.inception_a(Conv2d_4a_3x3.out_channels(), 32);
        let Mixed_5c = b.inception_a(Mixed_5b.out_channels(), 64);
        let Mixed_5d = b.inception_a(Mixed_5c.out_channels(), 64);
        let c35 = Mixed_5d.out_channels();
        let Mixed_6a = b.inception_b(c35);
        let c17 = Mixed_6a.out_channels(c35);
        let [Mixed_6b, Mixed_6c, Mixed_6d, Mixed_6e] =
            [128, 160, 160, 192].map(|c7| b.inception_c(c17, c7));
        let AuxLogits = self
            .aux_head
            .then(|| b.inception_aux(c17, self.num_classes));
        let Mixed_7a = b.inception_d(c17);
        let c8 = Mixed_7a.out_channels(c17);
        let Mixed_7b = b.inception_e(c8);
        let Mixed_7c = b.inception_e(Mixed_7b.out_channels());
        let fc = LinearConfig::new(Mixed_7c.out_channels(), self.num_classes).init(device);

        InceptionV3 {
            Conv2d_1a_3x3,
            Conv2d_2a_3x3,
            Conv2d_2b_3x3,
            maxpool1: max_pool_3x3_s2(),
            Conv2d_3b_1x1,
            Conv2d_4a_3x3,
            maxpool2: max_pool_3x3_s2(),
            Mixed_5b,
            Mixed_5c,
            Mixed_5d,
            Mixed_6a,
            Mixed_6b,
            Mixed_6c,
            Mixed_6d,
            Mixed_6e,
            AuxLogits,
            Mixed_7a,
            Mixed_7b,
            Mixed_7c,
            dropout: DropoutConfig::new(self.dropout).init(),
            fc,
        }
    }

    /// Smallest input side that survives every valid-padded reduction of the network: 75
    /// (the final map is then 1×1), or 299 with the aux head (its 5×5 conv then sees a 5×5
    /// map, which is why 299 is the native size).
    pub fn min_image_size(&self) -> usize {
        let main = min_input_side(&VALID_REDUCTIONS, 1);
        if !self.aux_head {
            return main;
        }
        let to_aux: Vec<(usize, usize)> = VALID_REDUCTIONS[..REDUCTIONS_BEFORE_AUX]
            .iter()
            .chain(&AUX_REDUCTIONS)
            .copied()
            .collect();
        main.max(min_input_side(&to_aux, 1))
    }

    /// Rejects input sides the network cannot process, before any tensor work fails obscurely.
    pub fn check_image_size(&self, size: usize) -> Result<(), String> {
        let network = if self.aux_head {
            "Inception-v3 with the aux head"
        } else {
            "Inception-v3"
        };
        check_side(network, size, self.min_image_size(), NATIVE_IMAGE_SIZE)
    }
}

/// Inception-v3: stem → Mixed_5b–5d (35×35) → Mixed_6a → Mixed_6b–6e (17×17, aux head) →
/// Mixed_7a → Mixed_7b–7c (8×8) → global average pool → dropout → classifier.
#[derive(Module, Debug)]
pub struct InceptionV3<B: Backend> {
    /// Stem: 32 3×3/2 valid (299 → 149).
    pub Conv2d_1a_3x3: ConvBn<B>,
    /// Stem: 32 3×3 valid (→ 147).
    pub Conv2d_2a_3x3: ConvBn<B>,
    /// Stem: 64 3×3 same.
    pub Conv2d_2b_3x3: ConvBn<B>,
    /// Stem: max pool 3×3/2 valid (→ 73).
    pub maxpool1: MaxPool2d,
    /// Stem: 80 1×1.
    pub Conv2d_3b_1x1: ConvBn<B>,
    /// Stem: 192 3×3 valid (→ 71).
    pub Conv2d_4a_3x3: ConvBn<B>,
    /// Stem: max pool 3×3/2 valid (→ 35).
    pub maxpool2: MaxPool2d,
    /// 35×35, 192 → 256 channels (pool branch 32).
    pub Mixed_5b: InceptionA<B>,
    /// 35×35, 256 → 288 (pool branch 64).
    pub Mixed_5c: InceptionA<B>,
    /// 35×35, 288 → 288.
    pub Mixed_5d: InceptionA<B>,
    /// Reduction to 17×17×768.
    pub Mixed_6a: InceptionB<B>,
    /// 17×17×768, 7×7 factorisations 128 wide.
    pub Mixed_6b: InceptionC<B>,
    /// 17×17×768, 160 wide.
    pub Mixed_6c: InceptionC<B>,
    /// 17×17×768, 160 wide.
    pub Mixed_6d: InceptionC<B>,
    /// 17×17×768, 192 wide; feeds the aux head.
    pub Mixed_6e: InceptionC<B>,
    /// Optional auxiliary classifier on Mixed_6e's output.
    pub AuxLogits: Option<InceptionAux<B>>,
    /// Reduction to 8×8×1280.
    pub Mixed_7a: InceptionD<B>,
    /// 8×8, 1280 → 2048.
    pub Mixed_7b: InceptionE<B>,
    /// 8×8, 2048 → 2048.
    pub Mixed_7c: InceptionE<B>,
    /// Active only with autodiff (training).
    pub dropout: Dropout,
    /// Classifier.
    pub fc: Linear<B>,
}

impl<B: Kernels> InceptionV3<B> {
    /// Images `[N, 3, S, S]` in `[-1, 1]` → logits `[N, num_classes]`.
    ///
    /// `S` must be at least [`InceptionV3Config::min_image_size`] (check it with
    /// [`InceptionV3Config::check_image_size`]); 299 is the native resolution.
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        let [.., features] = self.forward_features(images);
        self.classify(features)
    }

    /// Logits and, when the network has the aux head, the auxiliary logits (for training).
    pub fn forward_with_aux(&self, images: Tensor<B, 4>) -> (Tensor<B, 2>, Option<Tensor<B, 2>>) {
        let [_, grid_17, features] = self.forward_features(images);
        let aux = self.AuxLogits.as_ref().map(|head| head.forward(grid_17));
        (self.classify(features), aux)
    }

    fn classify(&self, features: Tensor<B, 4>) -> Tensor<B, 2> {
        pool_and_classify(features, &self.dropout, &self.fc)
    }

    /// The three stage outputs, for feature extraction and shape checks: at 299 they are
    /// 35×35×288 (Mixed_5d), 17×17×768 (Mixed_6e) and 8×8×2048 (Mixed_7c, the final map),
    /// channels scaled by the width.
    pub fn forward_features(&self, images: Tensor<B, 4>) -> [Tensor<B, 4>; 3] {
        let x = run_chain(
            [
                &self.Conv2d_1a_3x3,
                &self.Conv2d_2a_3x3,
                &self.Conv2d_2b_3x3,
            ],
            images,
        );
        let x = run_chain(
            [&self.Conv2d_3b_1x1, &self.Conv2d_4a_3x3],
            self.maxpool1.forward(x),
        );
        let x = self.maxpool2.forward(x);
        let a = [&self.Mixed_5b, &self.Mixed_5c, &self.Mixed_5d]
            .iter()
            .fold(x, |x, block| block.forward(x));
        let b = [
            &self.Mixed_6b,
            &self.Mixed_6c,
            &self.Mixed_6d,
            &self.Mixed_6e,
        ]
        .iter()
        .fold(self.Mixed_6a.forward(a.clone()), |x, block| {
            block.forward(x)
        });
        let c = [&self.Mixed_7b, &self.Mixed_7c]
            .iter()
            .fold(self.Mixed_7a.forward(b.clone()), |x, block| {
                block.forward(x)
            });
        [a, b, c]
    }
}

/// InceptionA (Mixed_5b–5d, paper figure 5): 35×35 block whose 5×5 branch is kept (TF-slim)
/// next to the double 3×3 that factorises it.
#[derive(Module, Debug)]
pub struct InceptionA<B: Backend> {
    /// 64 1×1.
    pub branch1x1: ConvBn<B>,
    /// 48 1×1 →
    pub branch5x5_1: ConvBn<B>,
    /// → 64 5×5.
    pub branch5x5_2: ConvBn<B>,
    /// 64 1×1 →
    pub branch3x3dbl_1: ConvBn<B>,
    /// → 96 3×3 →
    pub branch3x3dbl_2: ConvBn<B>,
    /// → 96 3×3.
    pub branch3x3dbl_3: ConvBn<B>,
    /// 3×3 average pool →
    pub pool: AvgPool2d,
    /// → 32 or 64 1×1.
    pub branch_pool: ConvBn<B>,
}

impl<B: Kernels> InceptionA<B> {
    /// `[N, C, H, W]` → `[N, 64 + 64 + 96 + pool, H, W]` (channels at width 1).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let branches = vec![
            self.branch1x1.forward(x.clone()),
            run_chain([&self.branch5x5_1, &self.branch5x5_2], x.clone()),
            run_chain(
                [
                    &self.branch3x3dbl_1,
                    &self.branch3x3dbl_2,
                    &self.branch3x3dbl_3,
                ],
                x.clone(),
            ),
            self.branch_pool.forward(self.pool.forward(x)),
        ];
        Tensor::cat(branches, 1)
    }

    /// Sum of the branch widths.
    fn out_channels(&self) -> usize {
        self.branch1x1.out_channels()
            + self.branch5x5_2.out_channels()
            + self.branch3x3dbl_3.out_channels()
            + self.branch_pool.out_channels()
    }
}

/// InceptionB (Mixed_6a, figure 10): grid reduction 35×35 → 17×17 with parallel stride-2
/// branches, so the reduction neither bottlenecks the representation nor costs a full-size conv.
#[derive(Module, Debug)]
pub struct InceptionB<B: Backend> {
    /// 384 3×3/2 valid.
    pub branch3x3: ConvBn<B>,
    /// 64 1×1 →
    pub branch3x3dbl_1: ConvBn<B>,
    /// → 96 3×3 →
    pub branch3x3dbl_2: ConvBn<B>,
    /// → 96 3×3/2 valid.
    pub branch3x3dbl_3: ConvBn<B>,
    /// Max pool 3×3/2 valid (passes the input channels through).
    pub pool: MaxPool2d,
}

impl<B: Kernels> InceptionB<B> {
    /// `[N, C, H, W]` → `[N, 384 + 96 + C, H', W']` (channels at width 1).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let branches = vec![
            self.branch3x3.forward(x.clone()),
            run_chain(
                [
                    &self.branch3x3dbl_1,
                    &self.branch3x3dbl_2,
                    &self.branch3x3dbl_3,
                ],
                x.clone(),
            ),
            self.pool.forward(x),
        ];
        Tensor::cat(branches, 1)
    }

    /// Conv branch widths plus the pooled input's.
    fn out_channels(&self, in_channels: usize) -> usize {
        self.branch3x3.out_channels() + self.branch3x3dbl_3.out_channels() + in_channels
    }
}

/// InceptionC (Mixed_6b–6e, figure 6): 17×17 block with 7×7 convolutions factorised into
/// 1×7 and 7×1, `c7` channels wide inside the factorised branches.
#[derive(Module, Debug)]
pub struct InceptionC<B: Backend> {
    /// 192 1×1.
    pub branch1x1: ConvBn<B>,
    /// c7 1×1 →
    pub branch7x7_1: ConvBn<B>,
    /// → c7 1×7 →
    pub branch7x7_2: ConvBn<B>,
    /// → 192 7×1.
    pub branch7x7_3: ConvBn<B>,
    /// c7 1×1 →
    pub branch7x7dbl_1: ConvBn<B>,
    /// → c7 7×1 →
    pub branch7x7dbl_2: ConvBn<B>,
    /// → c7 1×7 →
    pub branch7x7dbl_3: ConvBn<B>,
    /// → c7 7×1 →
    pub branch7x7dbl_4: ConvBn<B>,
    /// → 192 1×7.
    pub branch7x7dbl_5: ConvBn<B>,
    /// 3×3 average pool →
    pub pool: AvgPool2d,
    /// → 192 1×1.
    pub branch_pool: ConvBn<B>,
}

impl<B: Kernels> InceptionC<B> {
    /// `[N, C, H, W]` → `[N, 4 · 192, H, W]` (channels at width 1).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let branches = vec![
            self.branch1x1.forward(x.clone()),
            run_chain(
                [&self.branch7x7_1, &self.branch7x7_2, &self.branch7x7_3],
                x.clone(),
            ),
            run_chain(
                [
                    &self.branch7x7dbl_1,
                    &self.branch7x7dbl_2,
                    &self.branch7x7dbl_3,
                    &self.branch7x7dbl_4,
                    &self.branch7x7dbl_5,
                ],
                x.clone(),
            ),
            self.branch_pool.forward(self.pool.forward(x)),
        ];
        Tensor::cat(branches, 1)
    }
}

/// InceptionD (Mixed_7a): grid reduction 17×17 → 8×8.
#[derive(Module, Debug)]
pub struct InceptionD<B: Backend> {
    /// 192 1×1 →
    pub branch3x3_1: ConvBn<B>,
    /// → 320 3×3/2 valid.
    pub branch3x3_2: ConvBn<B>,
    /// 192 1×1 →
    pub branch7x7x3_1: ConvBn<B>,
    /// → 192 1×7 →
    pub branch7x7x3_2: ConvBn<B>,
    /// → 192 7×1 →
    pub branch7x7x3_3: ConvBn<B>,
    /// → 192 3×3/2 valid.
    pub branch7x7x3_4: ConvBn<B>,
    /// Max pool 3×3/2 valid (passes the input channels through).
    pub pool: MaxPool2d,
}

impl<B: Kernels> InceptionD<B> {
    /// `[N, C, H, W]` → `[N, 320 + 192 + C, H', W']` (channels at width 1).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let branches = vec![
            run_chain([&self.branch3x3_1, &self.branch3x3_2], x.clone()),
            run_chain(
                [
                    &self.branch7x7x3_1,
                    &self.branch7x7x3_2,
                    &self.branch7x7x3_3,
                    &self.branch7x7x3_4,
                ],
                x.clone(),
            ),
            self.pool.forward(x),
        ];
        Tensor::cat(branches, 1)
    }

    /// Conv branch widths plus the pooled input's.
    fn out_channels(&self, in_channels: usize) -> usize {
        self.branch3x3_2.out_channels() + self.branch7x7x3_4.out_channels() + in_channels
    }
}

/// InceptionE (Mixed_7b–7c, figure 7): 8×8 block whose 3×3s fan out into parallel 1×3 and
/// 3×1 convolutions, widening the coarsest grid's representation.
#[derive(Module, Debug)]
pub struct InceptionE<B: Backend> {
    /// 320 1×1.
    pub branch1x1: ConvBn<B>,
    /// 384 1×1 → (2a | 2b).
    pub branch3x3_1: ConvBn<B>,
    /// 384 1×3.
    pub branch3x3_2a: ConvBn<B>,
    /// 384 3×1.
    pub branch3x3_2b: ConvBn<B>,
    /// 448 1×1 →
    pub branch3x3dbl_1: ConvBn<B>,
    /// → 384 3×3 → (3a | 3b).
    pub branch3x3dbl_2: ConvBn<B>,
    /// 384 1×3.
    pub branch3x3dbl_3a: ConvBn<B>,
    /// 384 3×1.
    pub branch3x3dbl_3b: ConvBn<B>,
    /// 3×3 average pool →
    pub pool: AvgPool2d,
    /// → 192 1×1.
    pub branch_pool: ConvBn<B>,
}

impl<B: Kernels> InceptionE<B> {
    /// `[N, C, H, W]` → `[N, 320 + 2 · 384 + 2 · 384 + 192, H, W]` (channels at width 1).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let branch3x3 = self.branch3x3_1.forward(x.clone());
        let branch3x3dbl = run_chain([&self.branch3x3dbl_1, &self.branch3x3dbl_2], x.clone());
        let branches = vec![
            self.branch1x1.forward(x.clone()),
            self.branch3x3_2a.forward(branch3x3.clone()),
            self.branch3x3_2b.forward(branch3x3),
            self.branch3x3dbl_3a.forward(branch3x3dbl.clone()),
            self.branch3x3dbl_3b.forward(branch3x3dbl),
            self.branch_pool.forward(self.pool.forward(x)),
        ];
        Tensor::cat(branches, 1)
    }

    /// Sum of the branch widths.
    fn out_channels(&self) -> usize {
        [
            &self.branch1x1,
            &self.branch3x3_2a,
            &self.branch3x3_2b,
            &self.branch3x3dbl_3a,
            &self.branch3x3dbl_3b,
            &self.branch_pool,
        ]
        .iter()
        .map(|conv| conv.out_channels())
        .sum()
    }
}

/// The auxiliary classifier (`AuxLogits`): average pool 5×5/3 valid (17 → 5) → 128 1×1 →
/// 768 5×5 valid (→ 1×1) → global average pool → fully connected, as torchvision and timm.
#[derive(Module, Debug)]
pub struct InceptionAux<B: Backend> {
    /// Average pool 5×5/3 valid (no padding, so `count_include_pad` is irrelevant here).
    pub pool: AvgPool2d,
    /// 128 1×1.
    pub conv0: ConvBn<B>,
    /// 768 5×5 valid.
    pub conv1: ConvBn<B>,
    /// 768 → classes.
    pub fc: Linear<B>,
}

impl<B: Kernels> InceptionAux<B> {
    /// Mixed_6e's output → auxiliary logits.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let x = run_chain([&self.conv0, &self.conv1], self.pool.forward(x));
        linear(&self.fc, global_avg_pool(x))
    }
}

/// Turns the TF-slim channel plan of Inception-v3 into modules.
struct Builder<'a, B: Backend> {
    f: ConvFactory<'a, B>,
    /// See [`InceptionV3Config::count_include_pad`].
    count_include_pad: bool,
}

impl<B: Kernels> Builder<'_, B> {
    /// [`ConvFactory::chain`] as an array, so each conv can take its torchvision field name.
    fn chain<const N: usize>(&self, c: usize, specs: [Conv; N]) -> [ConvBn<B>; N] {
        self.f
            .chain(c, specs)
            .try_into()
            .expect("ConvFactory::chain returns one conv per spec")
    }

    /// The in-block 3×3 stride-1 same average pool, with the configured padding semantics.
    fn avg_pool(&self) -> AvgPool2d {
        AvgPool2d {
            count_include_pad: self.count_include_pad,
            ..avg_pool_3x3_same()
        }
    }

    /// InceptionE's fan-out: 1×3 and 3×1 convolutions reading the same `c` channels.
    fn fan_out(&self, c: usize, out: usize) -> [ConvBn<B>; 2] {
        [[1, 3], [3, 1]].map(|kernel| self.f.conv(c, Conv::same(out, kernel)))
    }

    fn inception_a(&self, c: usize, pool_features: usize) -> InceptionA<B> {
        let [branch5x5_1, branch5x5_2] =
            self.chain(c, [Conv::pointwise(48), Conv::same(64, [5, 5])]);
        let [branch3x3dbl_1, branch3x3dbl_2, branch3x3dbl_3] = self.chain(
            c,
            [
                Conv::pointwise(64),
                Conv::same(96, [3, 3]),
                Conv::same(96, [3, 3]),
            ],
        );
        InceptionA {
            branch1x1: self.f.conv(c, Conv::pointwise(64)),
            branch5x5_1,
            branch5x5_2,
            branch3x3dbl_1,
            branch3x3dbl_2,
            branch3x3dbl_3,
            pool: self.avg_pool(),
            branch_pool: self.f.conv(c, Conv::pointwise(pool_features)),
        }
    }

    fn inception_b(&self, c: usize) -> InceptionB<B> {
        let [branch3x3dbl_1, branch3x3dbl_2, branch3x3dbl_3] = self.chain(
            c,
            [
                Conv::pointwise(64),
                Conv::same(96, [3, 3]),
                Conv::reduce(96),
            ],
        );
        InceptionB {
            branch3x3: self.f.conv(c, Conv::reduce(384)),
            branch3x3dbl_1,
            branch3x3dbl_2,
            branch3x3dbl_3,
            pool: max_pool_3x3_s2(),
        }
    }

    fn inception_c(&self, c: usize, c7: usize) -> InceptionC<B> {
        let [branch7x7_1, branch7x7_2, branch7x7_3] = self.chain(
            c,
            [
                Conv::pointwise(c7),
                Conv::same(c7, [1, 7]),
                Conv::same(192, [7, 1]),
            ],
        );
        let [
            branch7x7dbl_1,
            branch7x7dbl_2,
            branch7x7dbl_3,
            branch7x7dbl_4,
            branch7x7dbl_5,
        ] = self.chain(
            c,
            [
                Conv::pointwise(c7),
                Conv::same(c7, [7, 1]),
                Conv::same(c7, [1, 7]),
                Conv::same(c7, [7, 1]),
                Conv::same(192, [1, 7]),
            ],
        );
        InceptionC {
            branch1x1: self.f.conv(c, Conv::pointwise(192)),
            branch7x7_1,
            branch7x7_2,
            branch7x7_3,
            branch7x7dbl_1,
            branch7x7dbl_2,
            branch7x7dbl_3,
            branch7x7dbl_4,
            branch7x7dbl_5,
            pool: self.avg_pool(),
            branch_pool: self.f.conv(c, Conv::pointwise(192)),
        }
    }

    fn inception_d(&self, c: usize) -> InceptionD<B> {
        let [branch3x3_1, branch3x3_2] = self.chain(c, [Conv::pointwise(192), Conv::reduce(320)]);
        let [branch7x7x3_1, branch7x7x3_2, branch7x7x3_3, branch7x7x3_4] = self.chain(
            c,
            [
                Conv::pointwise(192),
                Conv::same(192, [1, 7]),
                Conv::same(192, [7, 1]),
                Conv::reduce(192),
            ],
        );
        InceptionD {
            branch3x3_1,
            branch3x3_2,
            branch7x7x3_1,
            branch7x7x3_2,
            branch7x7x3_3,
            branch7x7x3_4,
            pool: max_pool_3x3_s2(),
        }
    }

    fn inception_e(&self, c: usize) -> InceptionE<B> {
        let branch3x3_1 = self.f.conv(c, Conv::pointwise(384));
        let [branch3x3_2a, branch3x3_2b] = self.fan_out(branch3x3_1.out_channels(), 384);
        let [branch3x3dbl_1, branch3x3dbl_2] =
            self.chain(c, [Conv::pointwise(448), Conv::same(384, [3, 3])]);
        let [branch3x3dbl_3a, branch3x3dbl_3b] = self.fan_out(branch3x3dbl_2.out_channels(), 384);
        InceptionE {
            branch1x1: self.f.conv(c, Conv::pointwise(320)),
            branch3x3_1,
            branch3x3_2a,
            branch3x3_2b,
            branch3x3dbl_1,
            branch3x3dbl_2,
            branch3x3dbl_3a,
            branch3x3dbl_3b,
            pool: self.avg_pool(),
            branch_pool: self.f.conv(c, Conv::pointwise(192)),
        }
    }

    fn inception_aux(&self, c: usize, num_classes: usize) -> InceptionAux<B> {
        let [conv0, conv1] = self.chain(c, [Conv::pointwise(128), Conv::valid(768, [AUX_CONV; 2])]);
        let (side, stride) = AUX_POOL;
        InceptionAux {
            pool: AvgPool2dConfig::new([side; 2])
                .with_strides([stride; 2])
                .init(),
            fc: LinearConfig::new(conv1.out_channels(), num_classes).init(self.f.device),
            conv0,
            conv1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layers::count_macs;
    use crate::model::params::{tensor_paths, trainable_len};
    use crate::model::test_support::{assert_image_size_limit, images};
    use burn::backend::{Autodiff, Flex};
    use burn::module::AutodiffModule;
    use burn::tensor::{Distribution, TensorData};

    type Ad = Autodiff<Flex>;

    /// A gradient that exists, is finite and is not all zeros.
    fn assert_live<const D: usize>(grad: Option<Tensor<Flex, D>>) {
        let value = grad.expect("gradient").abs().sum().into_scalar();
        assert!(value.is_finite() && value > 0.0, "gradient sum {value}");
    }

    #[test]
    fn parameter_counts_match_the_reference() {
        let device = Default::default();
        // (aux head, counts for 1000 and 1001 classes, count without `fc` at 1000 classes).
        for (aux, counts, features) in [
            (false, [23_834_568, 23_836_617], 21_785_568),
            (true, [27_161_264, 27_164_082], 25_112_264),
        ] {
            for (classes, expected) in [1000, 1001].into_iter().zip(counts) {
                let model = InceptionV3Config::new(classes)
                    .with_aux_head(aux)
                    .init::<Flex>(&device);
                assert_eq!(
                    trainable_len(&model),
                    expected,
                    "aux {aux}, {classes} classes"
                );
                if classes == 1000 {
                    // The "excl. classifier" column leaves out the main `fc` only (the aux
                    // head's own fc is in it).
                    let classifier: usize = tensor_paths(&model)
                        .into_iter()
                        .filter(|(path, _)| path.starts_with("fc."))
                        .map(|(_, len)| len)
                        .sum();
                    assert_eq!(expected - classifier, features, "aux {aux}");
                }
            }
        }
    }

    #[test]
    fn macs_match_the_reference_at_native_resolution() {
        // REFERENCES.md, 1000 classes, batch 1 at 299: 5,713,216,096 conv+FC MACs; the aux
        // head adds 5,683,200 (2,457,600 + 2,457,600 + 768,000) when it runs.
        let device = Default::default();
        let plain = InceptionV3Config::new(1000).init::<Flex>(&device);
        let (_, macs) = count_macs(|| plain.forward(images(1, NATIVE_IMAGE_SIZE)));
        assert_eq!(macs, 5_713_216_096);
        let with_aux = InceptionV3Config::new(1000)
            .with_aux_head(true)
            .init::<Flex>(&device);
        let ((_, aux), macs) =
            count_macs(|| with_aux.forward_with_aux(images(1, NATIVE_IMAGE_SIZE)));
        assert_eq!(aux.expect("aux logits").dims(), [1, 1000]);
        assert_eq!(macs, 5_718_899_296);
    }

    #[test]
    fn module_paths_match_torchvision() {
        let model = InceptionV3Config::new(10)
            .with_width(0.125)
            .with_aux_head(true)
            .init::<Flex>(&Default::default());
        let paths: Vec<String> = tensor_paths(&model).into_iter().map(|(p, _)| p).collect();
        for expected in [
            "Conv2d_1a_3x3.conv.weight",
            "Conv2d_2a_3x3.bn.gamma",
            "Conv2d_2b_3x3.bn.beta",
            "Conv2d_3b_1x1.bn.running_mean",
            "Conv2d_4a_3x3.bn.running_var",
            "Mixed_5b.branch1x1.conv.weight",
            "Mixed_5b.branch5x5_2.conv.weight",
            "Mixed_5d.branch3x3dbl_3.conv.weight",
            "Mixed_5c.branch_pool.conv.weight",
            "Mixed_6a.branch3x3.conv.weight",
            "Mixed_6a.branch3x3dbl_3.bn.gamma",
            "Mixed_6b.branch7x7_3.conv.weight",
            "Mixed_6e.branch7x7dbl_5.conv.weight",
            "AuxLogits.conv0.conv.weight",
            "AuxLogits.conv1.bn.running_var",
            "AuxLogits.fc.weight",
            "AuxLogits.fc.bias",
            "Mixed_7a.branch3x3_2.conv.weight",
            "Mixed_7a.branch7x7x3_4.conv.weight",
            "Mixed_7b.branch3x3_2a.conv.weight",
            "Mixed_7c.branch3x3dbl_3b.conv.weight",
            "Mixed_7c.branch_pool.bn.beta",
            "fc.weight",
            "fc.bias",
        ] {
            assert!(paths.iter().any(|p| p == expected), "missing {expected}");
        }
        // Kernel shapes of the factorised and aux convolutions ([out, in, kh, kw], full width).
        let model = InceptionV3Config::new(10)
            .with_aux_head(true)
            .init::<Flex>(&Default::default());
        assert_eq!(
            model.Mixed_6b.branch7x7_2.conv.weight.dims(),
            [128, 128, 1, 7]
        );
        assert_eq!(
            model.Mixed_7b.branch3x3_2b.conv.weight.dims(),
            [384, 384, 3, 1]
        );
        let aux = model.AuxLogits.as_ref().expect("aux head");
        assert_eq!(aux.conv1.conv.weight.dims(), [768, 128, 5, 5]);
        assert_eq!(aux.fc.weight.dims(), [768, 10]);
    }

    #[test]
    fn stage_shapes_at_native_resolution() {
        // Width 0.125 keeps the topology (and spatial sizes) at a fraction of the cost; the
        // full-width 288 / 768 / 2048 all divide by 8.
        let model = InceptionV3Config::new(10)
            .with_width(0.125)
            .init::<Flex>(&Default::default());
        let shapes = model
            .forward_features(images(1, NATIVE_IMAGE_SIZE))
            .map(|t| t.dims());
        assert_eq!(shapes, [[1, 36, 35, 35], [1, 96, 17, 17], [1, 256, 8, 8]]);
        // Mixed_5b is 256 wide, Mixed_7a 1280 (= 320 + 192 + 768).
        assert_eq!(model.Mixed_5b.out_channels(), 32);
        assert_eq!(model.Mixed_7a.out_channels(96), 160);
    }

    #[test]
    fn image_size_limit() {
        let config = InceptionV3Config::new(10);
        assert_eq!(config.min_image_size(), 75);
        assert_image_size_limit(|size| config.check_image_size(size), 75, NATIVE_IMAGE_SIZE);

        // The aux head's 5×5/3 pool and 5×5 conv need a 17×17 map: exactly the native size.
        let config = config.with_aux_head(true);
        assert_eq!(config.min_image_size(), NATIVE_IMAGE_SIZE);
        assert!(config.check_image_size(NATIVE_IMAGE_SIZE).is_ok());
        let err = config.check_image_size(298).unwrap_err();
        assert!(
            err.contains("aux head") && err.contains("minimum is 299"),
            "{err}"
        );
    }

    #[test]
    fn count_include_pad_changes_only_the_border() {
        let device = Default::default();
        let tf = InceptionV3Config::new(10).with_width(0.125);
        let timm = tf.clone().with_count_include_pad(true);
        let excluding = tf.init::<Flex>(&device);
        // Same weights, other pooling: records carry parameters, not the pool settings.
        let including = timm
            .init::<Flex>(&device)
            .load_record(excluding.clone().into_record());

        // The pool itself on ones: TF keeps 1 everywhere; timm averages in the zero padding
        // (corners 4/9, edges 6/9), and both agree in the interior.
        let ones = Tensor::<Flex, 4>::ones([1, 1, 4, 4], &device);
        excluding
            .Mixed_5b
            .pool
            .forward(ones.clone())
            .into_data()
            .assert_eq(&TensorData::ones::<f32, _>([1, 1, 4, 4]), true);
        let (c, e) = (4.0 / 9.0, 6.0 / 9.0);
        including
            .Mixed_5b
            .pool
            .forward(ones)
            .into_data()
            .assert_approx_eq::<f32>(
                &TensorData::from([[[
                    [c, e, e, c],
                    [e, 1.0, 1.0, e],
                    [e, 1.0, 1.0, e],
                    [c, e, e, c],
                ]]]),
                Default::default(),
            );

        // Through a whole block on a small input: the 1×1 / 5×5 / 3×3 branches are identical,
        // the pool branch (the last 4 channels at width 1/8) differs only on the border ring.
        // Mixed signs make some pre-ReLU border values positive, where the scaled means show.
        let x = Tensor::<Flex, 4>::random([1, 24, 6, 6], Distribution::Uniform(-1.0, 1.0), &device);
        let diff = (excluding.Mixed_5b.forward(x.clone()) - including.Mixed_5b.forward(x)).abs();
        let [_, channels, ..] = diff.dims();
        let pool = channels - excluding.Mixed_5b.branch_pool.out_channels();
        let max = |t: Tensor<Flex, 4>| t.max().into_scalar();
        assert_eq!(max(diff.clone().slice([0..1, 0..pool, 0..6, 0..6])), 0.0);
        assert_eq!(
            max(diff.clone().slice([0..1, pool..channels, 1..5, 1..5])),
            0.0
        );
        assert!(max(diff.slice([0..1, pool..channels, 0..6, 0..6])) > 0.0);

        // And so, end to end, different logits from the same weights.
        let x = images::<Flex>(1, 75);
        let logits_diff = (excluding.forward(x.clone()) - including.forward(x))
            .abs()
            .max();
        assert!(logits_diff.into_scalar() > 0.0);
    }

    #[test]
    fn small_network_trains_at_minimum_size() {
        let config = InceptionV3Config::new(10).with_width(0.125);
        let model = config.init::<Ad>(&Default::default());
        let size = config.min_image_size();
        let [.., features] = model.forward_features(images(2, size));
        assert_eq!(features.dims(), [2, 256, 1, 1]);
        let (logits, aux) = model.forward_with_aux(images(2, size));
        assert!(aux.is_none());
        assert_eq!(logits.dims(), [2, 10]);
        let grads = logits.square().mean().backward();
        for conv in [
            &model.Conv2d_1a_3x3,
            &model.Mixed_5b.branch_pool,
            &model.Mixed_7c.branch3x3dbl_3b,
        ] {
            assert_live(conv.conv.weight.grad(&grads));
        }
        assert_live(model.fc.weight.grad(&grads));
        // The inference copy (running statistics, no dropout) runs as well.
        let logits = model.valid().forward(images(2, size));
        assert_eq!(logits.dims(), [2, 10]);
    }

    #[test]
    fn aux_head_trains_at_native_resolution() {
        let config = InceptionV3Config::new(10)
            .with_width(0.0625)
            .with_aux_head(true);
        let model = config.init::<Ad>(&Default::default());
        let (logits, aux) = model.forward_with_aux(images(2, config.min_image_size()));
        let aux = aux.expect("aux logits");
        assert_eq!(logits.dims(), [2, 10]);
        assert_eq!(aux.dims(), [2, 10]);
        // TF-slim's loss weighting: the aux head counts 0.4.
        let grads = (logits.square().mean() + aux.square().mean().mul_scalar(0.4)).backward();
        let head = model.AuxLogits.as_ref().expect("aux head");
        for conv in [
            &model.Conv2d_1a_3x3,
            &model.Mixed_6e.branch7x7dbl_5,
            &head.conv0,
            &head.conv1,
        ] {
            assert_live(conv.conv.weight.grad(&grads));
        }
        assert_live(head.fc.weight.grad(&grads));
        assert_live(model.fc.weight.grad(&grads));
    }
}
