//! Building blocks shared by the Inception family, with TF-slim semantics.
//!
//! Parameters live in burn's own modules (`Conv2d`, `BatchNorm`), so module paths and records
//! are burn's and map one-to-one onto timm checkpoints (`<path>.conv.weight`, `<path>.bn.*`).
//! Only the forward passes are our own: burn 0.21's flex backend runs per-channel broadcasts
//! and the generic 1×1 convolution backward far slower than row-wise ops and matmuls
//! (shared/DESIGN.md, "Dependencies"), and these two ops dominate an Inception training step.

use std::cell::Cell;

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AvgPool2d, AvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Dropout, Linear, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Tensor, backend::Backend};

use super::Kernels;

/// Configuration of a [`ConvBn`]: TF-slim's `conv2d` with its default batch norm and ReLU.
#[derive(Config, Debug)]
pub struct ConvBnConfig {
    /// `[in, out]` channels.
    pub channels: [usize; 2],
    /// `[kh, kw]`; Inception uses odd kernels only (1, 3, 5, 7 and the 1×n / n×1 factorisations).
    pub kernel_size: [usize; 2],
    /// Stride along both axes (1, or 2 for the valid-padded reductions).
    #[config(default = 1)]
    pub stride: usize,
    /// `Valid` or `Same`. burn's `Same` is TF's SAME (extra padding at the end); at stride 1
    /// with odd kernels, the only case Inception uses, it is symmetric `(k - 1) / 2` per axis.
    #[config(default = "PaddingConfig2d::Valid")]
    pub padding: PaddingConfig2d,
    /// PyTorch-style momentum of the running statistics (TF decay 0.9997 = 0.0003).
    #[config(default = 0.0003)]
    pub bn_momentum: f64,
    /// TF-slim's batch-norm epsilon (not PyTorch's 1e-5).
    #[config(default = 1e-3)]
    pub bn_epsilon: f64,
    /// A bias on the convolution too (the Caffe-port BN-Inception layout; TF-slim has none).
    #[config(default = false)]
    pub conv_bias: bool,
}

impl ConvBnConfig {
    /// Builds the block: a `Conv2d` (bias-free unless `conv_bias`: batch norm's beta is the
    /// bias) and a `BatchNorm`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ConvBn<B> {
        let conv = Conv2dConfig::new(self.channels, self.kernel_size)
            .with_stride([self.stride; 2])
            .with_padding(self.padding.clone())
            .with_bias(self.conv_bias)
            .init(device);
        let bn = BatchNormConfig::new(self.channels[1])
            .with_epsilon(self.bn_epsilon)
            .with_momentum(self.bn_momentum)
            .init(device);
        ConvBn { conv, bn }
    }
}

/// Conv2d without bias → BatchNorm → ReLU, the unit every Inception network is built from.
///
/// Field names follow timm's `BasicConv2d` (`conv`, `bn`) so checkpoints import by path.
#[derive(Module, Debug)]
pub struct ConvBn<B: Backend> {
    /// The convolution; 1×1 stride-1 ones run as a matmul (see [`conv2d`]).
    pub conv: Conv2d<B>,
    /// burn's batch norm, used for its parameters and running statistics only (see [`ConvBn::forward`]).
    pub bn: BatchNorm<B>,
}

impl<B: Backend> ConvBn<B> {
    /// Output channels (after the batch norm).
    pub fn out_channels(&self) -> usize {
        self.conv.weight.dims()[0]
    }
}

impl<B: Kernels> ConvBn<B> {
    /// `[N, in, H, W]` → `[N, out, H', W']`.
    ///
    /// Batch norm is computed on a `[C, N·H·W]` view so that statistics, normalisation and
    /// their gradients are row-wise (DESIGN.md: ~25× faster on flex than burn's `[1, C, 1, 1]`
    /// broadcasts).
    /// With autodiff enabled it normalises with the batch statistics and updates the running
    /// ones exactly as burn's `BatchNorm` does; without, it uses the running statistics. A
    /// backend with its own fused kernels ([`Kernels`]) runs the training unit as one op.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        if B::ad_enabled(&x.device()) {
            let fused = B::conv_bn_relu_train(
                x.clone(),
                &self.conv,
                self.bn.gamma.val(),
                self.bn.beta.val(),
                self.bn.epsilon,
            );
            if let Some(trained) = fused {
                count_conv_macs(&self.conv, &trained.output);
                self.update_running_stats(trained.mean, trained.var);
                return trained.output;
            }
        }
        let y = conv2d(&self.conv, x);
        let [n, c, h, w] = y.dims();
        let rows = y.swap_dims(0, 1).reshape([c, n * h * w]);
        let gamma = self.bn.gamma.val().reshape([c, 1]);
        let beta = self.bn.beta.val().reshape([c, 1]);
        let normalised = if B::ad_enabled(&rows.device()) {
            let mean = rows.clone().mean_dim(1);
            let centered = rows - mean.clone();
            let var = centered.clone().square().mean_dim(1);
            self.update_running_stats(mean, var.clone());
            let scale = gamma / var.add_scalar(self.bn.epsilon).sqrt();
            centered * scale + beta
        } else {
            let mean = self.bn.running_mean.value().reshape([c, 1]);
            let var = self.bn.running_var.value().reshape([c, 1]);
            let scale = gamma / var.add_scalar(self.bn.epsilon).sqrt();
            let shift = beta - mean * scale.clone();
            rows * scale + shift
        };
        relu(normalised).reshape([c, n, h, w]).swap_dims(0, 1)
    }

    /// burn's update: `running = (1 - m) · running + m · batch`, with the biased batch variance.
    fn update_running_stats<const D: usize>(&self, mean: Tensor<B, D>, var: Tensor<B, D>) {
        let momentum = self.bn.momentum;
        let blend = |running: Tensor<B, 1>, batch: Tensor<B, D>| {
            let batch = batch.detach().reshape([running.dims()[0]]);
            let device = batch.device();
            running
                .to_device(&device)
                .mul_scalar(1.0 - momentum)
                .add(batch.mul_scalar(momentum))
                .detach()
        };
        let mean = blend(self.bn.running_mean.value_sync(), mean);
        let var = blend(self.bn.running_var.value_sync(), var);
        self.bn.running_mean.update(mean);
        self.bn.running_var.update(var);
    }
}

/// Applies `conv`, running 1×1 stride-1 convolutions as one batched matmul
/// (`[1, out, in] × [N, in, H·W]`): flex's generic conv backward is several times slower for
/// them (ConvBn 64→32 on `[8, 64, 35, 35]`, forward + backward: 65 ms stock, 18 ms here).
///
/// Takes burn's `Conv2d` so the parameters (and the checkpoint layout) stay burn's. A backend
/// with its own convolution ([`Kernels::native_conv2d`]) runs that instead.
pub fn conv2d<B: Kernels>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let y = match B::native_conv2d(x.clone(), conv) {
        Some(y) => y,
        None => conv2d_uncounted(conv, x),
    };
    count_conv_macs(conv, &y);
    y
}

/// Adds `conv`'s multiply-accumulates for output `y` to the running [`count_macs`].
fn count_conv_macs<B: Backend>(conv: &Conv2d<B>, y: &Tensor<B, 4>) {
    if MACS.get().is_some() {
        let [n, c_out, h, w] = y.dims();
        let [_, c_in_per_group, kh, kw] = conv.weight.dims();
        add_macs((n * c_out * h * w * c_in_per_group * kh * kw) as u64);
    }
}

/// A fully connected layer (counted by [`count_macs`]).
pub fn linear<B: Backend>(layer: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    let [n, _] = x.dims();
    let [inputs, outputs] = layer.weight.dims();
    add_macs((n * inputs * outputs) as u64);
    layer.forward(x)
}

/// The classifier every family ends with: global average pool, dropout, fully connected.
pub fn pool_and_classify<B: Kernels>(
    features: Tensor<B, 4>,
    dropout: &Dropout,
    classifier: &Linear<B>,
) -> Tensor<B, 2> {
    linear(classifier, dropout.forward(global_avg_pool(features)))
}

thread_local! {
    /// Multiply-accumulates of the [`count_macs`] call running on this thread, if any.
    static MACS: Cell<Option<u64>> = const { Cell::new(None) };
}

fn add_macs(macs: u64) {
    MACS.with(|m| {
        if let Some(total) = m.get() {
            m.set(Some(total + macs));
        }
    });
}

/// Runs `forward` and returns its result with the multiply-accumulates of every convolution
/// and fully connected layer it ran through [`conv2d`] and [`linear`] (pools, batch norm and
/// additions are not counted, as in the published conv+FC MAC figures).
pub fn count_macs<T>(forward: impl FnOnce() -> T) -> (T, u64) {
    MACS.set(Some(0));
    let out = forward();
    (out, MACS.take().unwrap_or(0))
}

fn conv2d_uncounted<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let pointwise = conv.kernel_size == [1, 1]
        && conv.stride == [1, 1]
        && conv.dilation == [1, 1]
        && conv.groups == 1
        && matches!(
            conv.padding,
            PaddingConfig2d::Valid | PaddingConfig2d::Same | PaddingConfig2d::Explicit(0, 0, 0, 0)
        );
    if !pointwise {
        return conv.forward(x);
    }
    let [n, c_in, h, w] = x.dims();
    let c_out = conv.weight.dims()[0];
    let y = conv
        .weight
        .val()
        .reshape([1, c_out, c_in])
        .matmul(x.reshape([n, c_in, h * w]));
    let y = match &conv.bias {
        // Materialised to [N, out, 1] so the add is flex's fast per-row broadcast.
        Some(bias) => y + bias.val().reshape([1, c_out, 1]).repeat_dim(0, n),
        None => y,
    };
    y.reshape([n, c_out, h, w])
}

/// Inception-ResNet's residual "up" projection: a 1×1 `Conv2d` WITH bias, no batch norm and
/// no activation (TF-slim; timm's `conv2d`). Run it with [`conv2d`].
pub fn up_projection<B: Backend>(channels: [usize; 2], device: &B::Device) -> Conv2d<B> {
    Conv2dConfig::new(channels, [1, 1]).init(device)
}

/// TF-slim's reduction pool: max 3×3, stride 2, valid.
pub fn max_pool_3x3_s2() -> MaxPool2d {
    MaxPool2dConfig::new([3, 3]).with_strides([2, 2]).init()
}

/// TF-slim's in-block average pool: 3×3, stride 1, same padding, padding excluded from the
/// mean (TF semantics; timm `count_include_pad=False`).
pub fn avg_pool_3x3_same() -> AvgPool2d {
    AvgPool2dConfig::new([3, 3])
        .with_strides([1, 1])
        .with_padding(PaddingConfig2d::Same)
        .with_count_include_pad(false)
        .init()
}

/// Global average pool `[N, C, H, W]` → `[N, C]`, as a row-wise mean (fast on flex).
pub fn global_avg_pool<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 2> {
    let [n, c, h, w] = x.dims();
    x.reshape([n * c, h * w]).mean_dim(1).reshape([n, c])
}

/// Smallest input side whose map is still `output` pixels wide after the valid-padded
/// `(kernel, stride)` layers, listed input to output.
pub fn min_input_side(reductions: &[(usize, usize)], output: usize) -> usize {
    reductions
        .iter()
        .rev()
        .fold(output, |side, &(kernel, stride)| {
            (side - 1) * stride + kernel
        })
}

/// The image-size check every family runs; the error names the network, the minimum and the
/// native resolution.
pub fn check_side(network: &str, size: usize, min: usize, native: usize) -> Result<(), String> {
    if size < min {
        return Err(format!(
            "image size {size} is too small for {network}: the minimum is {min} \
             (native resolution {native})"
        ));
    }
    Ok(())
}

/// Applies a branch's convolutions in order.
pub fn run_chain<'a, B: Kernels>(
    chain: impl IntoIterator<Item = &'a ConvBn<B>>,
    x: Tensor<B, 4>,
) -> Tensor<B, 4> {
    chain.into_iter().fold(x, |x, conv| conv.forward(x))
}

/// Output channels of a chain of convolutions (0 for an empty one).
pub fn chain_out_channels<B: Backend>(chain: &[ConvBn<B>]) -> usize {
    chain.last().map_or(0, ConvBn::out_channels)
}

/// One convolution of the TF-slim definition, with its unscaled output channels.
pub struct Conv {
    /// Output channels before the width multiplier.
    pub out: usize,
    /// Kernel `[height, width]`.
    pub kernel: [usize; 2],
    /// Stride along both axes.
    pub stride: usize,
    /// Same or valid padding.
    pub padding: PaddingConfig2d,
}

impl Conv {
    /// Stride 1, same padding: every non-reducing conv inside the blocks.
    pub const fn same(out: usize, kernel: [usize; 2]) -> Self {
        Self {
            out,
            kernel,
            stride: 1,
            padding: PaddingConfig2d::Same,
        }
    }

    /// 1×1 (padding is irrelevant).
    pub const fn pointwise(out: usize) -> Self {
        Self::same(out, [1, 1])
    }

    /// Stride 1, valid padding: the stem's shrinking 3×3s.
    pub const fn valid(out: usize, kernel: [usize; 2]) -> Self {
        Self {
            out,
            kernel,
            stride: 1,
            padding: PaddingConfig2d::Valid,
        }
    }

    /// 3×3 stride 2 valid: the grid reductions.
    pub const fn reduce(out: usize) -> Self {
        Self {
            out,
            kernel: [3, 3],
            stride: 2,
            padding: PaddingConfig2d::Valid,
        }
    }
}

/// Turns a TF-slim channel plan into [`ConvBn`] modules, applying the width multiplier once,
/// here, so every family shares one rounding rule.
pub struct ConvFactory<'a, B: Backend> {
    /// Channel multiplier: `c` becomes `max(1, round(c · width))`.
    pub width: f64,
    /// PyTorch-style momentum of every BatchNorm's running statistics.
    pub bn_momentum: f64,
    /// Convolutions with a bias (Caffe-port BN-Inception only).
    pub conv_bias: bool,
    /// Device the modules are initialised on.
    pub device: &'a B::Device,
}

impl<'a, B: Backend> ConvFactory<'a, B> {
    /// A factory for bias-free TF-slim convolutions.
    ///
    /// # Panics
    /// If `width` is not a positive finite number.
    pub fn new(width: f64, bn_momentum: f64, device: &'a B::Device) -> Self {
        assert!(
            width.is_finite() && width > 0.0,
            "width must be positive, got {width}"
        );
        Self {
            width,
            bn_momentum,
            conv_bias: false,
            device,
        }
    }

    /// A channel count after the width multiplier.
    pub fn channels(&self, c: usize) -> usize {
        ((c as f64 * self.width).round() as usize).max(1)
    }

    /// One conv-BN-ReLU reading `in_channels`.
    pub fn conv(&self, in_channels: usize, spec: Conv) -> ConvBn<B> {
        ConvBnConfig::new([in_channels, self.channels(spec.out)], spec.kernel)
            .with_stride(spec.stride)
            .with_padding(spec.padding)
            .with_bn_momentum(self.bn_momentum)
            .with_conv_bias(self.conv_bias)
            .init(self.device)
    }

    /// A branch: each conv reads the previous one's output.
    pub fn chain<const N: usize>(&self, in_channels: usize, specs: [Conv; N]) -> Vec<ConvBn<B>> {
        let mut channels = in_channels;
        specs
            .into_iter()
            .map(|spec| {
                let conv = self.conv(channels, spec);
                channels = conv.out_channels();
                conv
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::module::AutodiffModule;
    use burn::tensor::{Distribution, TensorData, Tolerance};

    type Ad = Autodiff<Flex>;

    fn random<B: Backend, const D: usize>(shape: [usize; D]) -> Tensor<B, D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
    }

    fn assert_close<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) {
        a.into_data()
            .assert_approx_eq::<f32>(&b.into_data(), Tolerance::rel_abs(1e-4, 1e-5));
    }

    /// Our ConvBn against burn's stock `Conv2d` → `BatchNorm` → ReLU on the same parameters:
    /// outputs, input/weight/gamma gradients and running statistics, over two training steps.
    fn check_conv_bn_against_stock(config: ConvBnConfig, input: [usize; 4]) {
        let device = Default::default();
        // Same parameters, independent running-state storage. burn's parameters are lazy and
        // each clone of an uninitialised one draws its own values: load a record first.
        let init = || config.init::<Ad>(&device);
        let ours = init().load_record(init().into_record());
        let stock = init().load_record(ours.clone().into_record());
        for _ in 0..2 {
            let x = random::<Ad, 4>(input).require_grad();
            let x_ref = x.clone().detach().require_grad();
            let y = ours.forward(x.clone());
            let y_ref = relu(stock.bn.forward(stock.conv.forward(x_ref.clone())));
            // A non-uniform upstream gradient so every gradient path is exercised.
            let weights = random::<Ad, 4>(y.dims());
            let grads = (y.clone() * weights.clone()).sum().backward();
            let grads_ref = (y_ref.clone() * weights).sum().backward();
            assert_close(y, y_ref);
            assert_close(x.grad(&grads).unwrap(), x_ref.grad(&grads_ref).unwrap());
            assert_close(
                ours.conv.weight.grad(&grads).unwrap(),
                stock.conv.weight.grad(&grads_ref).unwrap(),
            );
            assert_close(
                ours.bn.gamma.grad(&grads).unwrap(),
                stock.bn.gamma.grad(&grads_ref).unwrap(),
            );
            assert_close(
                ours.bn.beta.grad(&grads).unwrap(),
                stock.bn.beta.grad(&grads_ref).unwrap(),
            );
        }
        assert_close(
            ours.bn.running_mean.value_sync(),
            stock.bn.running_mean.value_sync(),
        );
        assert_close(
            ours.bn.running_var.value_sync(),
            stock.bn.running_var.value_sync(),
        );
        // Inference (no autodiff) uses the running statistics, as burn does.
        let (ours, stock) = (ours.valid(), stock.valid());
        let x = random::<Flex, 4>(input);
        let y_ref = relu(stock.bn.forward(stock.conv.forward(x.clone())));
        assert_close(ours.forward(x), y_ref);
    }

    #[test]
    fn conv_bn_1x1_matches_stock() {
        // Momentum 0.1 so that the running-statistics check is sensitive.
        check_conv_bn_against_stock(
            ConvBnConfig::new([6, 5], [1, 1]).with_bn_momentum(0.1),
            [3, 6, 7, 5],
        );
    }

    #[test]
    fn conv_bn_3x3_same_matches_stock() {
        check_conv_bn_against_stock(
            ConvBnConfig::new([4, 6], [3, 3])
                .with_padding(PaddingConfig2d::Same)
                .with_bn_momentum(0.1),
            [2, 4, 9, 8],
        );
    }

    #[test]
    fn conv_bn_strided_valid_and_factorised_shapes() {
        let device = Default::default();
        let reduce = ConvBnConfig::new([2, 3], [3, 3])
            .with_stride(2)
            .init::<Flex>(&device);
        assert_eq!(
            reduce.forward(random([1, 2, 35, 35])).dims(),
            [1, 3, 17, 17]
        );
        let factorised = ConvBnConfig::new([2, 3], [1, 7])
            .with_padding(PaddingConfig2d::Same)
            .init::<Flex>(&device);
        assert_eq!(
            factorised.forward(random([1, 2, 9, 9])).dims(),
            [1, 3, 9, 9]
        );
    }

    #[test]
    fn up_projection_matches_stock_conv() {
        let device = Default::default();
        let conv = up_projection::<Ad>([6, 4], &device);
        let x = random::<Ad, 4>([3, 6, 5, 4]).require_grad();
        let x_ref = x.clone().detach().require_grad();
        let y = conv2d(&conv, x.clone());
        let y_ref = conv.forward(x_ref.clone());
        let weights = random::<Ad, 4>(y.dims());
        let grads = (y.clone() * weights.clone()).sum().backward();
        assert_close(y, y_ref.clone());
        let weight_grad = conv.weight.grad(&grads).unwrap();
        let bias_grad = conv.bias.as_ref().unwrap().grad(&grads).unwrap();
        let x_grad = x.grad(&grads).unwrap();
        let grads_ref = (y_ref * weights).sum().backward();
        assert_close(x_grad, x_ref.grad(&grads_ref).unwrap());
        assert_close(weight_grad, conv.weight.grad(&grads_ref).unwrap());
        assert_close(
            bias_grad,
            conv.bias.as_ref().unwrap().grad(&grads_ref).unwrap(),
        );
    }

    #[test]
    fn pools_follow_tf_semantics() {
        let device = Default::default();
        let ones = Tensor::<Flex, 4>::ones([1, 1, 5, 5], &device);
        // Padding excluded from the mean: corners and edges stay exactly 1.
        let avg = avg_pool_3x3_same().forward(ones.clone());
        avg.into_data()
            .assert_eq(&TensorData::ones::<f32, _>([1, 1, 5, 5]), true);
        assert_eq!(max_pool_3x3_s2().forward(ones).dims(), [1, 1, 2, 2]);
        let x = Tensor::<Flex, 4>::from_floats([[[[1.0, 2.0], [3.0, 6.0]]]], &device);
        global_avg_pool(x)
            .into_data()
            .assert_eq(&TensorData::from([[3.0f32]]), true);
    }
}
