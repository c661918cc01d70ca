//! Ops of the Inception blocks that a backend may run as its own fused kernels, in the manner of
//! burn's backend extensions: every backend the model trains on implements [`Kernels`], an
//! autodiff backend forwards to its inner backend's tracked version, and the layers fall back to
//! their burn composition wherever a backend has none (`None`).
//!
//! LibTorch has them (see `libtorch`): a ConvBn unit becomes one op whose forward and backward
//! are libtorch's own (oneDNN's convolution and its backward, the native batch norm forward and
//! backward), where burn would compose about fifteen primitive ops. flex keeps the composition:
//! the layers' row-wise batch norm and 1×1-as-matmul are its fast paths.

use burn::backend::Autodiff;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// A training-mode ConvBn's result: the activations and the batch statistics the running ones
/// are updated from.
pub struct ConvBnTrained<B: Backend> {
    /// `relu(batch_norm(conv(x)))`, `[N, out, H', W']`.
    pub output: Tensor<B, 4>,
    /// Per-channel batch mean of the convolution's output, `[out]` (not differentiated).
    pub mean: Tensor<B, 1>,
    /// Per-channel biased batch variance, `[out]` (not differentiated).
    pub var: Tensor<B, 1>,
}

/// The fused ops a backend offers the model; each defaults to `None` (use the composition).
pub trait Kernels: Backend {
    /// Conv → batch norm with the batch's statistics → ReLU, as one op.
    fn conv_bn_relu_train(
        _x: Tensor<Self, 4>,
        _conv: &Conv2d<Self>,
        _gamma: Tensor<Self, 1>,
        _beta: Tensor<Self, 1>,
        _epsilon: f64,
    ) -> Option<ConvBnTrained<Self>> {
        None
    }

    /// A convolution with the backend's own kernel (forward and backward).
    fn native_conv2d(_x: Tensor<Self, 4>, _conv: &Conv2d<Self>) -> Option<Tensor<Self, 4>> {
        None
    }

    /// [`Kernels::conv_bn_relu_train`] recorded on `Autodiff<Self>`'s graph.
    fn conv_bn_relu_tracked(
        _x: Tensor<Autodiff<Self>, 4>,
        _conv: &Conv2d<Autodiff<Self>>,
        _gamma: Tensor<Autodiff<Self>, 1>,
        _beta: Tensor<Autodiff<Self>, 1>,
        _epsilon: f64,
    ) -> Option<ConvBnTrained<Autodiff<Self>>> {
        None
    }

    /// [`Kernels::native_conv2d`] recorded on `Autodiff<Self>`'s graph.
    fn native_conv2d_tracked(
        _x: Tensor<Autodiff<Self>, 4>,
        _conv: &Conv2d<Autodiff<Self>>,
    ) -> Option<Tensor<Autodiff<Self>, 4>> {
        None
    }
}

impl<B: Kernels> Kernels for Autodiff<B> {
    fn conv_bn_relu_train(
        x: Tensor<Self, 4>,
        conv: &Conv2d<Self>,
        gamma: Tensor<Self, 1>,
        beta: Tensor<Self, 1>,
        epsilon: f64,
    ) -> Option<ConvBnTrained<Self>> {
        B::conv_bn_relu_tracked(x, conv, gamma, beta, epsilon)
    }

    fn native_conv2d(x: Tensor<Self, 4>, conv: &Conv2d<Self>) -> Option<Tensor<Self, 4>> {
        B::native_conv2d_tracked(x, conv)
    }
}

impl Kernels for burn::backend::Flex {}

#[cfg(feature = "wgpu")]
impl Kernels for burn::backend::Wgpu {}

#[cfg(feature = "cuda")]
impl Kernels for burn::backend::Cuda {}
