//! Named and flat views of a module's parameters.
//!
//! Collectives and the optimizer work on one flat `f32` vector of the trainable parameters.
//! burn's `ParamId`s are random per process, so the order is the module-tree walk (the same
//! module-path order on every rank), never the ids. BatchNorm running statistics are visited
//! by burn like parameters; they are told apart by their field names and are not trainable.

use std::ops::Range;

use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::backend::AutodiffBackend;

/// What a tensor is to training, told by its field name in burn's layers (the only name the
/// module walk gives): the one place that reads meaning into a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorRole {
    /// A convolution or fully connected kernel (`weight`): trained and weight-decayed.
    Weight,
    /// A bias, or a BatchNorm `gamma`/`beta`: trained, never decayed.
    Affine,
    /// A BatchNorm running mean or variance: updated by the forward pass, not trained.
    RunningStat,
}

impl TensorRole {
    /// The role of the tensor at dotted module `path`.
    pub fn of(path: &str) -> TensorRole {
        match path.rsplit('.').next() {
            Some("weight") => TensorRole::Weight,
            Some("running_mean" | "running_var") => TensorRole::RunningStat,
            _ => TensorRole::Affine,
        }
    }

    /// Whether the optimizer trains it (everything but the running statistics).
    pub fn is_trainable(self) -> bool {
        self != TensorRole::RunningStat
    }
}

/// A trainable tensor's place in the flat vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Dotted module path, e.g. `repeat.0.conv2d.weight` (the checkpoint key).
    pub path: String,
    /// Indices of the tensor's elements in the flat vector.
    pub range: Range<usize>,
    /// What the tensor is.
    pub role: TensorRole,
}

impl Segment {
    /// Convolution and fully connected weights: what weight decay applies to (not BatchNorm
    /// gamma/beta, not biases).
    pub fn is_weight(&self) -> bool {
        self.role == TensorRole::Weight
    }
}

/// Every float tensor of `module`, parameters and running statistics, as (dotted module path,
/// element count) in visit order.
pub fn tensor_paths<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, usize)> {
    let mut walk = PathCollector::default();
    module.visit(&mut walk);
    walk.tensors
}

/// The trainable tensors in flat-vector order.
pub fn trainable_segments<B: Backend, M: Module<B>>(module: &M) -> Vec<Segment> {
    let mut offset = 0;
    tensor_paths(module)
        .into_iter()
        .filter(|(path, _)| is_trainable(path))
        .map(|(path, len)| {
            let range = offset..offset + len;
            offset += len;
            let role = TensorRole::of(&path);
            Segment { path, range, role }
        })
        .collect()
}

/// Number of trainable scalars: weights, biases and BatchNorm gamma/beta, not running statistics
/// (burn's `Module::num_params` counts those too).
pub fn trainable_len<B: Backend, M: Module<B>>(module: &M) -> usize {
    trainable_segments(module).last().map_or(0, |s| s.range.end)
}

/// Which tensors a flat view holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Weights, biases, BatchNorm gamma/beta.
    Trainable,
    /// BatchNorm running statistics.
    Buffer,
}

impl Kind {
    fn of(path: &[String]) -> Self {
        if is_trainable(&path.join(".")) {
            Kind::Trainable
        } else {
            Kind::Buffer
        }
    }
}

/// Trainable parameters, concatenated in module order.
pub fn flatten_params<B: Backend, M: Module<B>>(module: &M) -> Vec<f32> {
    gather(module, Kind::Trainable)
}

/// Replaces the trainable parameters with `flat` (as produced by [`flatten_params`]).
pub fn load_params<B: Backend, M: Module<B>>(module: M, flat: &[f32]) -> M {
    scatter(module, flat, Kind::Trainable)
}

/// BatchNorm running statistics, concatenated in module order. Read them from a synchronised
/// module (`valid()`): burn's running state can lag one update behind otherwise.
pub fn flatten_buffers<B: Backend, M: Module<B>>(module: &M) -> Vec<f32> {
    gather(module, Kind::Buffer)
}

/// Replaces the BatchNorm running statistics with `flat` (from [`flatten_buffers`]).
pub fn load_buffers<B: Backend, M: Module<B>>(module: M, flat: &[f32]) -> M {
    scatter(module, flat, Kind::Buffer)
}

fn gather<B: Backend, M: Module<B>>(module: &M, kind: Kind) -> Vec<f32> {
    let mut gather = Gather {
        path: Vec::new(),
        kind,
        flat: Vec::new(),
    };
    module.visit(&mut gather);
    gather.flat
}

fn scatter<B: Backend, M: Module<B>>(module: M, flat: &[f32], kind: Kind) -> M {
    let mut scatter = Scatter {
        path: Vec::new(),
        kind,
        flat,
        offset: 0,
    };
    let module = module.map(&mut scatter);
    assert_eq!(
        scatter.offset,
        flat.len(),
        "flat {kind:?} vector has the wrong length"
    );
    module
}

/// The trainable parameters as one flat tensor on their own device, in module order: what the
/// device-resident step updates.
pub fn flat_params<B: AutodiffBackend, M: Module<B>>(module: &M) -> Tensor<B::InnerBackend, 1> {
    Tensor::cat(trainable_pieces(module, None), 0)
}

/// The gradients of the trainable parameters as one flat tensor on their device, in module
/// order (zeros for a parameter that received none). They are taken out of `grads`.
pub fn flat_grads<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    grads: &mut B::Gradients,
) -> Tensor<B::InnerBackend, 1> {
    Tensor::cat(trainable_pieces(module, Some(grads)), 0)
}

/// [`flat_grads`] written into `flat` instead of a new tensor: in host memory that saves
/// allocating, and the kernel zero-filling, a flat gradient at every step.
pub fn flat_grads_into<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    grads: &mut B::Gradients,
    flat: &mut [f32],
) {
    let mut offset = 0;
    for piece in trainable_pieces(module, Some(grads)) {
        let data = piece.into_data();
        let values = data.as_slice::<f32>().expect("gradients are f32");
        flat[offset..offset + values.len()].copy_from_slice(values);
        offset += values.len();
    }
    assert_eq!(
        offset,
        flat.len(),
        "the flat gradient has the parameters' length"
    );
}

/// Replaces the trainable parameters with views of `flat` (as produced by [`flat_params`]),
/// without leaving the device. With `own_buffers` each parameter gets a copy of its own
/// instead: flex's kernels copy a view that starts inside a buffer on every use, so one copy
/// per step is cheaper there.
pub fn load_flat_params<B: AutodiffBackend, M: Module<B>>(
    module: M,
    flat: &Tensor<B::InnerBackend, 1>,
    own_buffers: bool,
) -> M {
    let mut scatter = FlatScatter::<B> {
        path: Vec::new(),
        flat,
        own_buffers,
        offset: 0,
    };
    let module = module.map(&mut scatter);
    assert_eq!(
        scatter.offset,
        flat.dims()[0],
        "flat parameter tensor has the wrong length"
    );
    module
}

/// The trainable parameters, or with `grads` their gradients (taken out), flattened, in module
/// order.
fn trainable_pieces<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    grads: Option<&mut B::Gradients>,
) -> Vec<Tensor<B::InnerBackend, 1>> {
    let mut gather = FlatGather::<B> {
        path: Vec::new(),
        grads,
        pieces: Vec::new(),
    };
    module.visit(&mut gather);
    gather.pieces
}

/// Weights, biases and BatchNorm gamma/beta: everything but the running statistics.
pub(crate) fn is_trainable(path: &str) -> bool {
    TensorRole::of(path).is_trainable()
}

fn to_vec<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .into_vec()
        .expect("float tensors convert to f32")
}

/// The enter/exit bookkeeping every module walker shares (here and in `import`): the current
/// field path.
///
/// Enum variants (burn names them in the walk: `Network::InceptionV4`, `FeatureBlock::InceptionA`)
/// add no segment, so paths are the checkpoint keys: `features.6.branch0.conv.weight`.
macro_rules! track_path {
    () => {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            if !container_type.starts_with("Enum:") {
                self.path.push(name.to_owned());
            }
        }

        fn exit_module(&mut self, _name: &str, container_type: &str) {
            if !container_type.starts_with("Enum:") {
                self.path.pop();
            }
        }
    };
}
pub(crate) use track_path;

#[derive(Default)]
struct PathCollector {
    path: Vec<String>,
    tensors: Vec<(String, usize)>,
}

impl<B: Backend> ModuleVisitor<B> for PathCollector {
    track_path!();

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.tensors
            .push((self.path.join("."), param.shape().num_elements()));
    }
}

struct Gather {
    path: Vec<String>,
    kind: Kind,
    flat: Vec<f32>,
}

impl<B: Backend> ModuleVisitor<B> for Gather {
    track_path!();

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if Kind::of(&self.path) == self.kind {
            self.flat.extend(to_vec(param.val()));
        }
    }
}

struct Scatter<'a> {
    path: Vec<String>,
    kind: Kind,
    flat: &'a [f32],
    offset: usize,
}

impl<B: Backend> ModuleMapper<B> for Scatter<'_> {
    track_path!();

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if Kind::of(&self.path) != self.kind {
            return param;
        }
        let (id, tensor, mapper) = param.consume();
        let shape = tensor.shape();
        let end = self.offset + shape.num_elements();
        let data = TensorData::new(self.flat[self.offset..end].to_vec(), shape);
        self.offset = end;
        let value =
            Tensor::from_data(data, &tensor.device()).set_require_grad(tensor.is_require_grad());
        Param::from_mapped_value(id, value, mapper)
    }
}

struct FlatGather<'a, B: AutodiffBackend> {
    path: Vec<String>,
    /// Take these gradients out instead of gathering the values.
    grads: Option<&'a mut B::Gradients>,
    pieces: Vec<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for FlatGather<'_, B> {
    track_path!();

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !is_trainable(&self.path.join(".")) {
            return;
        }
        let tensor = param.val();
        let len = tensor.shape().num_elements();
        let piece = match &mut self.grads {
            None => tensor.inner(),
            Some(grads) => match tensor.grad_remove(grads) {
                Some(grad) => grad,
                None => Tensor::zeros(tensor.shape(), &tensor.device()),
            },
        };
        self.pieces.push(piece.reshape([len]));
    }
}

struct FlatScatter<'a, B: AutodiffBackend> {
    path: Vec<String>,
    flat: &'a Tensor<B::InnerBackend, 1>,
    own_buffers: bool,
    offset: usize,
}

impl<B: AutodiffBackend> ModuleMapper<B> for FlatScatter<'_, B> {
    track_path!();

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if !is_trainable(&self.path.join(".")) {
            return param;
        }
        let (id, tensor, mapper) = param.consume();
        let shape = tensor.shape();
        let end = self.offset + shape.num_elements();
        let mut view = self.flat.clone().slice(self.offset..end).reshape(shape);
        if self.own_buffers {
            view = Tensor::from_data(view.into_data(), &tensor.device());
        }
        self.offset = end;
        let value = Tensor::from_inner(view).set_require_grad(tensor.is_require_grad());
        Param::from_mapped_value(id, value, mapper)
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;

    use super::*;
    use crate::model::families::inception_resnet_v2::InceptionResNetV2Config;

    #[test]
    fn flat_views_round_trip_and_skip_running_stats() {
        let model = InceptionResNetV2Config::new(5)
            .with_width(0.0625)
            .with_blocks([1, 1, 1])
            .init::<Flex>(&Default::default());
        let flat = flatten_params(&model);
        let segments = trainable_segments(&model);
        assert_eq!(flat.len(), trainable_len(&model));
        assert!(segments.iter().all(|s| !s.path.contains("running")));
        assert!(
            segments
                .iter()
                .any(|s| s.path.ends_with("bn.gamma") && !s.is_weight())
        );
        assert!(
            segments
                .iter()
                .any(|s| s.path == "classif.weight" && s.is_weight())
        );
        assert!(
            segments
                .iter()
                .any(|s| s.path == "classif.bias" && !s.is_weight())
        );

        let shifted: Vec<f32> = flat.iter().map(|v| v + 1.0).collect();
        let model = load_params(model, &shifted);
        assert_eq!(flatten_params(&model), shifted);

        // Buffers are the running statistics: a mean and a variance per BatchNorm channel.
        let buffers = flatten_buffers(&model);
        let gammas: usize = segments
            .iter()
            .filter(|s| s.path.ends_with("bn.gamma"))
            .map(|s| s.range.len())
            .sum();
        assert_eq!(buffers.len(), 2 * gammas);
        let halves: Vec<f32> = buffers.iter().map(|v| v * 0.5 + 0.25).collect();
        let model = load_buffers(model, &halves);
        assert_eq!(flatten_buffers(&model), halves);
        assert_eq!(flatten_params(&model), shifted);
    }

    #[test]
    fn flat_tensors_match_the_host_views() {
        type B = burn::backend::Autodiff<Flex>;
        let model = InceptionResNetV2Config::new(5)
            .with_width(0.0625)
            .with_blocks([1, 1, 1])
            .with_dropout(0.0) // two backward passes below must agree
            .init::<B>(&Default::default());
        let host = flatten_params(&model);
        let flat = flat_params(&model);
        assert_eq!(flat.clone().into_data().into_vec::<f32>().unwrap(), host);

        let shifted = flat.add_scalar(1.0);
        let model = load_flat_params(model, &shifted, false);
        let expected: Vec<f32> = host.iter().map(|v| v + 1.0).collect();
        assert_eq!(flatten_params(&model), expected);

        // Gradients in the same module order as the host reference gathers them, into a new
        // tensor or into a buffer.
        let images = crate::model::test_support::images(2, 75);
        let backward = || model.forward(images.clone()).sum().backward();
        let mut grads = backward();
        let mut reference = vec![0.0; host.len()];
        crate::train::reference::accumulate_grads(&model, &grads, &mut reference);
        let flat = flat_grads(&model, &mut grads)
            .into_data()
            .into_vec::<f32>()
            .unwrap();
        assert_eq!(flat, reference);
        let mut into = vec![f32::NAN; host.len()];
        flat_grads_into(&model, &mut backward(), &mut into);
        assert_eq!(into, reference);
        assert!(
            flat.iter().any(|&g| g != 0.0),
            "no gradient reached the flat tensor"
        );
    }
}
