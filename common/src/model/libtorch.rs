//! LibTorch's [`Kernels`]: a ConvBn unit (convolution → batch norm → ReLU) and a plain
//! convolution each run as one op whose forward and backward are libtorch's own.
//!
//! In training, the op is a small torch-autograd graph inside one burn autodiff node: the
//! forward runs libtorch's `convolution`, `native_batch_norm` and `relu` on tensors that
//! require grad, and the node's backward asks torch's autograd for the vector-Jacobian product
//! (`run_backward` on `sum(output · upstream)`, upstream detached), which runs oneDNN's
//! convolution backward and the native batch-norm backward (cuDNN's on a GPU). burn sees one
//! op where it would otherwise compose a dozen, and no conv backward of its own.
//!
//! The running statistics keep burn's semantics (momentum, biased variance): the op returns the
//! batch mean and variance and the layer blends them in as before.

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::libtorch::{LibTorch, TchTensor};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};
use tch::Kind;

use super::kernels::{ConvBnTrained, Kernels};

/// burn's LibTorch backend in f32, the one incept trains on.
pub type Torch = LibTorch<f32>;

type Tracked = Autodiff<Torch>;

impl Kernels for Torch {
    fn native_conv2d(x: Tensor<Self, 4>, conv: &Conv2d<Self>) -> Option<Tensor<Self, 4>> {
        let geometry = Geometry::of(conv)?;
        let bias = conv.bias.as_ref().map(|b| raw(b.val()));
        let _no_grad = tch::no_grad_guard();
        Some(wrap(geometry.conv(
            &raw(x),
            &raw(conv.weight.val()),
            bias.as_ref(),
        )))
    }

    fn conv_bn_relu_tracked(
        x: Tensor<Tracked, 4>,
        conv: &Conv2d<Tracked>,
        gamma: Tensor<Tracked, 1>,
        beta: Tensor<Tracked, 1>,
        epsilon: f64,
    ) -> Option<ConvBnTrained<Tracked>> {
        let geometry = Geometry::of(conv)?;
        let mut stats = None;
        let mut run = |x: &tch::Tensor,
                       weight: &tch::Tensor,
                       bias: Option<&tch::Tensor>,
                       gamma: &tch::Tensor,
                       beta: &tch::Tensor| {
            let (output, mean, var) = geometry.conv_bn_relu(x, weight, bias, gamma, beta, epsilon);
            stats = Some((mean, var));
            output
        };
        let (x, weight, gamma, beta) = (
            tracked(x),
            tracked(conv.weight.val()),
            tracked(gamma),
            tracked(beta),
        );
        let output = match &conv.bias {
            Some(bias) => island(
                [x, weight, tracked(bias.val()), gamma, beta],
                |[x, weight, bias, gamma, beta]| run(x, weight, Some(bias), gamma, beta),
            ),
            None => island([x, weight, gamma, beta], |[x, weight, gamma, beta]| {
                run(x, weight, None, gamma, beta)
            }),
        };
        let (mean, var) = stats.expect("the island ran its forward");
        let device = output.device();
        Some(ConvBnTrained {
            output,
            mean: Tensor::from_inner(wrap(mean)).to_device(&device),
            var: Tensor::from_inner(wrap(var)).to_device(&device),
        })
    }

    fn native_conv2d_tracked(
        x: Tensor<Tracked, 4>,
        conv: &Conv2d<Tracked>,
    ) -> Option<Tensor<Tracked, 4>> {
        let geometry = Geometry::of(conv)?;
        Some(match &conv.bias {
            Some(bias) => island(
                [tracked(x), tracked(conv.weight.val()), tracked(bias.val())],
                |[x, weight, bias]| geometry.conv(x, weight, Some(bias)),
            ),
            None => island([tracked(x), tracked(conv.weight.val())], |[x, weight]| {
                geometry.conv(x, weight, None)
            }),
        })
    }
}

/// A convolution's stride and symmetric padding, as libtorch takes them.
#[derive(Clone, Copy)]
struct Geometry {
    stride: [i64; 2],
    padding: [i64; 2],
    dilation: [i64; 2],
    groups: i64,
}

impl Geometry {
    /// `None` for padding libtorch's symmetric convolution cannot express (burn then computes
    /// the layer); Inception's `Same` convolutions are stride 1 with odd kernels.
    fn of<B: burn::tensor::backend::Backend>(conv: &Conv2d<B>) -> Option<Self> {
        let [kh, kw] = conv.kernel_size;
        let padding = match conv.padding {
            PaddingConfig2d::Valid => [0, 0],
            PaddingConfig2d::Same
                if conv.stride == [1, 1]
                    && kh % 2 == 1
                    && kw % 2 == 1
                    && conv.dilation == [1, 1] =>
            {
                [(kh - 1) / 2, (kw - 1) / 2]
            }
            PaddingConfig2d::Explicit(top, left, bottom, right)
                if top == bottom && left == right =>
            {
                [top, left]
            }
            _ => return None,
        };
        let int = |[a, b]: [usize; 2]| [a as i64, b as i64];
        Some(Self {
            stride: int(conv.stride),
            padding: int(padding),
            dilation: int(conv.dilation),
            groups: conv.groups as i64,
        })
    }

    fn conv(
        &self,
        x: &tch::Tensor,
        weight: &tch::Tensor,
        bias: Option<&tch::Tensor>,
    ) -> tch::Tensor {
        x.convolution(
            weight,
            bias,
            self.stride,
            self.padding,
            self.dilation,
            false,
            [0, 0],
            self.groups,
        )
    }

    /// Conv → batch norm with the batch's statistics → ReLU: (output, batch mean, biased batch
    /// variance).
    fn conv_bn_relu(
        &self,
        x: &tch::Tensor,
        weight: &tch::Tensor,
        bias: Option<&tch::Tensor>,
        gamma: &tch::Tensor,
        beta: &tch::Tensor,
        epsilon: f64,
    ) -> (tch::Tensor, tch::Tensor, tch::Tensor) {
        let y = self.conv(x, weight, bias);
        let (normalised, mean, inv_std) = y.native_batch_norm(
            Some(gamma),
            Some(beta),
            None::<&tch::Tensor>,
            None::<&tch::Tensor>,
            true,
            0.0,
            epsilon,
        );
        // native_batch_norm saves 1 / sqrt(var + ε) with the biased variance.
        let var = (inv_std.detach().square().reciprocal() - epsilon).clamp_min(0.0);
        // A copy: torch's graph saved the mean, and burn may update its own tensor in place.
        (normalised.relu(), mean.detach().copy(), var)
    }
}

/// One burn autodiff node whose forward is `compute` on torch leaves and whose backward is
/// torch autograd's through the graph `compute` recorded.
fn island<const N: usize>(
    inputs: [FloatTensor<Tracked>; N],
    compute: impl FnOnce(&[tch::Tensor; N]) -> tch::Tensor,
) -> Tensor<Tracked, 4> {
    let nodes = inputs.each_ref().map(|input| input.node.clone());
    let primitive = match TorchAutograd
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            // Leaves share the inputs' storage; only those burn differentiates require grad.
            let leaves = inputs.each_ref().map(|input| {
                let leaf = input.primitive.tensor.detach();
                if input.node.requirement.is_none() {
                    leaf
                } else {
                    leaf.set_requires_grad(true)
                }
            });
            let output = compute(&leaves);
            let handed = TchTensor::new(output.detach());
            // The state holds every storage the torch graph saved, so burn, which counts a
            // storage's owners before it computes in place, never overwrites one of them.
            let state = Island {
                output: TchTensor::from_existing(output, handed.storage.clone()),
                leaves: std::array::from_fn::<_, N, _>(|i| {
                    TchTensor::from_existing(
                        leaves[i].shallow_clone(),
                        inputs[i].primitive.storage.clone(),
                    )
                })
                .into(),
            };
            prep.finish(state, handed)
        }
        OpsKind::UnTracked(prep) => {
            let _no_grad = tch::no_grad_guard();
            let leaves = inputs
                .each_ref()
                .map(|input| input.primitive.tensor.shallow_clone());
            prep.finish(TchTensor::new(compute(&leaves)))
        }
    };
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}

/// The backward of an [`island`]: torch autograd's.
#[derive(Debug)]
struct TorchAutograd;

/// What an island's backward needs: its output, carrying torch's graph, and the leaves.
#[derive(Debug)]
struct Island {
    output: TchTensor,
    leaves: Vec<TchTensor>,
}

impl Clone for Island {
    fn clone(&self) -> Self {
        let copy =
            |t: &TchTensor| TchTensor::from_existing(t.tensor.shallow_clone(), t.storage.clone());
        Self {
            output: copy(&self.output),
            leaves: self.leaves.iter().map(copy).collect(),
        }
    }
}

impl<const N: usize> Backward<Torch, N> for TorchAutograd {
    type State = Island;

    fn backward(self, ops: Ops<Island, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let upstream = grads.consume::<Torch>(&ops.node).tensor;
        let Island { output, leaves } = ops.state;
        let wanted: Vec<_> = ops
            .parents
            .iter()
            .zip(&leaves)
            .filter_map(|(parent, leaf)| parent.as_ref().map(|node| (node.id, leaf)))
            .filter(|(_, leaf)| leaf.tensor.requires_grad())
            .collect();
        if wanted.is_empty() {
            return;
        }
        // d/d(output) of sum(output · upstream) is upstream: the vector-Jacobian product.
        let seed = (&output.tensor * upstream.detach()).sum(Kind::Float);
        let inputs: Vec<&tch::Tensor> = wanted.iter().map(|(_, leaf)| &leaf.tensor).collect();
        let input_grads = tch::Tensor::run_backward(&[seed], &inputs, false, false);
        for ((id, _), grad) in wanted.iter().zip(input_grads) {
            grads.register::<Torch>(*id, TchTensor::new(grad));
        }
    }
}

fn raw<const D: usize>(tensor: Tensor<Torch, D>) -> tch::Tensor {
    tensor.into_primitive().tensor().tensor
}

fn tracked<const D: usize>(tensor: Tensor<Tracked, D>) -> FloatTensor<Tracked> {
    tensor.into_primitive().tensor()
}

fn wrap<const D: usize>(tensor: tch::Tensor) -> Tensor<Torch, D> {
    Tensor::from_primitive(TensorPrimitive::Float(TchTensor::new(tensor)))
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;
    use burn::backend::libtorch::LibTorchDevice;
    use burn::module::AutodiffModule;
    use burn::tensor::{Distribution, TensorData, Tolerance};

    use super::*;
    use crate::model::layers::{ConvBnConfig, conv2d, up_projection};
    use crate::model::params::{flatten_buffers, flatten_params, load_params};
    use burn::tensor::backend::{AutodiffBackend, Backend};

    type Flexible = Autodiff<Flex>;

    fn data(shape: [usize; 4], seed: u64) -> TensorData {
        Flex::seed(&Default::default(), seed);
        Tensor::<Flex, 4>::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
            .into_data()
    }

    fn close(ours: TensorData, reference: TensorData, what: &str) {
        eprintln!("comparing {what}");
        ours.assert_approx_eq::<f32>(&reference, Tolerance::rel_abs(1e-4, 1e-5));
    }

    /// Runs both forwards on input `x`, back-propagates one random upstream gradient (drawn
    /// with `seed`) through each, compares the outputs and the input gradients, and returns
    /// flex's and libtorch's gradients.
    fn forward_backward(
        x: TensorData,
        seed: u64,
        flex_forward: impl FnOnce(Tensor<Flexible, 4>) -> Tensor<Flexible, 4>,
        torch_forward: impl FnOnce(Tensor<Tracked, 4>) -> Tensor<Tracked, 4>,
    ) -> (
        <Flexible as AutodiffBackend>::Gradients,
        <Tracked as AutodiffBackend>::Gradients,
    ) {
        let x_flex =
            Tensor::<Flexible, 4>::from_data(x.clone(), &Default::default()).require_grad();
        let x_torch = Tensor::<Tracked, 4>::from_data(x, &LibTorchDevice::Cpu).require_grad();
        let y_flex = flex_forward(x_flex.clone());
        let y_torch = torch_forward(x_torch.clone());
        let upstream = data(y_flex.dims(), seed);
        let grads_flex = (y_flex.clone()
            * Tensor::from_data(upstream.clone(), &Default::default()))
        .sum()
        .backward();
        let grads_torch = (y_torch.clone() * Tensor::from_data(upstream, &LibTorchDevice::Cpu))
            .sum()
            .backward();
        close(y_torch.into_data(), y_flex.into_data(), "the output");
        close(
            x_torch.grad(&grads_torch).unwrap().into_data(),
            x_flex.grad(&grads_flex).unwrap().into_data(),
            "the input gradient",
        );
        (grads_flex, grads_torch)
    }

    /// One ConvBn on libtorch (one op) and on flex (the composition), from the same
    /// parameters, over two training steps: outputs, the input, weight, gamma and beta
    /// gradients, the running statistics, and inference with them.
    fn check_conv_bn(config: ConvBnConfig, input: [usize; 4]) {
        let flex = config.init::<Flexible>(&Default::default());
        let initial = flatten_params(&flex);
        let flex = load_params(flex, &initial);
        let torch = load_params(config.init::<Tracked>(&LibTorchDevice::Cpu), &initial);
        for step in 0..2 {
            let (grads_flex, grads_torch) = forward_backward(
                data(input, 2 * step),
                2 * step + 1,
                |x| flex.forward(x),
                |x| torch.forward(x),
            );
            close(
                torch.conv.weight.grad(&grads_torch).unwrap().into_data(),
                flex.conv.weight.grad(&grads_flex).unwrap().into_data(),
                "the weight gradient",
            );
            close(
                torch.bn.gamma.grad(&grads_torch).unwrap().into_data(),
                flex.bn.gamma.grad(&grads_flex).unwrap().into_data(),
                "the gamma gradient",
            );
            close(
                torch.bn.beta.grad(&grads_torch).unwrap().into_data(),
                flex.bn.beta.grad(&grads_flex).unwrap().into_data(),
                "the beta gradient",
            );
        }
        let buffers = |values: Vec<f32>| TensorData::new(values.clone(), [values.len()]);
        close(
            buffers(flatten_buffers(&torch)),
            buffers(flatten_buffers(&flex)),
            "the running statistics",
        );
        let x = data(input, 9);
        close(
            torch
                .valid()
                .forward(Tensor::from_data(x.clone(), &LibTorchDevice::Cpu))
                .into_data(),
            flex.valid()
                .forward(Tensor::from_data(x, &Default::default()))
                .into_data(),
            "inference with the running statistics",
        );
    }

    #[test]
    fn conv_bn_1x1_matches_flex() {
        check_conv_bn(
            ConvBnConfig::new([6, 5], [1, 1]).with_bn_momentum(0.1),
            [3, 6, 7, 5],
        );
    }

    #[test]
    fn conv_bn_3x3_same_and_factorised_match_flex() {
        let same = |kernel| {
            ConvBnConfig::new([4, 6], kernel)
                .with_padding(PaddingConfig2d::Same)
                .with_bn_momentum(0.1)
        };
        check_conv_bn(same([3, 3]), [2, 4, 9, 8]);
        check_conv_bn(same([1, 7]), [2, 4, 9, 9]);
    }

    #[test]
    fn conv_bn_strided_valid_matches_flex() {
        check_conv_bn(
            ConvBnConfig::new([3, 4], [3, 3])
                .with_stride(2)
                .with_bn_momentum(0.1),
            [2, 3, 11, 11],
        );
    }

    #[test]
    fn up_projection_with_bias_matches_flex() {
        let flex = up_projection::<Flexible>([6, 4], &Default::default());
        let initial = flatten_params(&flex);
        let flex = load_params(flex, &initial);
        let torch = load_params(
            up_projection::<Tracked>([6, 4], &LibTorchDevice::Cpu),
            &initial,
        );
        let (grads_flex, grads_torch) = forward_backward(
            data([3, 6, 5, 4], 0),
            1,
            |x| conv2d(&flex, x),
            |x| conv2d(&torch, x),
        );
        close(
            torch.weight.grad(&grads_torch).unwrap().into_data(),
            flex.weight.grad(&grads_flex).unwrap().into_data(),
            "the weight gradient",
        );
        let (bias, bias_flex) = (torch.bias.as_ref().unwrap(), flex.bias.as_ref().unwrap());
        close(
            bias.grad(&grads_torch).unwrap().into_data(),
            bias_flex.grad(&grads_flex).unwrap().into_data(),
            "the bias gradient",
        );
    }
}
