//! Flat views of a module's trainable parameters and of their gradients.
//!
//! Collectives move flat `f32` buffers. burn's `ParamId`s are random per process, so the order
//! is the module-tree walk (the same module path order on every rank), never the ids. BatchNorm
//! running statistics are visited too but do not require gradients; they are skipped.

use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::backend::AutodiffBackend;

/// Number of trainable scalars.
pub fn trainable_len<B: Backend, M: Module<B>>(module: &M) -> usize {
    let mut count = Counter(0);
    module.visit(&mut count);
    count.0
}

/// Trainable parameters, concatenated in module order.
pub fn flatten_params<B: Backend, M: Module<B>>(module: &M) -> Vec<f32> {
    let mut gather = Gather(Vec::new());
    module.visit(&mut gather);
    gather.0
}

/// Replaces the trainable parameters with `flat` (as produced by [`flatten_params`]).
pub fn load_params<B: Backend, M: Module<B>>(module: M, flat: &[f32]) -> M {
    let mut scatter = Scatter { flat, offset: 0 };
    let module = module.map(&mut scatter);
    assert_eq!(
        scatter.offset,
        flat.len(),
        "flat parameter vector has the wrong length"
    );
    module
}

/// Adds the gradients of the trainable parameters, in module order, into `acc`
/// (a parameter that received no gradient contributes zeros).
pub fn accumulate_grads<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    grads: &B::Gradients,
    acc: &mut [f32],
) {
    let mut visitor = GradAccumulator {
        grads,
        acc,
        offset: 0,
    };
    module.visit(&mut visitor);
    assert_eq!(
        visitor.offset,
        visitor.acc.len(),
        "gradient buffer has the wrong length"
    );
}

/// Turns a flat gradient vector back into burn's per-parameter gradients.
pub fn to_gradients<B: AutodiffBackend, M: Module<B>>(module: &M, flat: &[f32]) -> GradientsParams {
    let mut visitor = GradRegister::<B> {
        flat,
        offset: 0,
        out: GradientsParams::new(),
        _backend: std::marker::PhantomData,
    };
    module.visit(&mut visitor);
    visitor.out
}

fn trainable<B: Backend, const D: usize>(param: &Param<Tensor<B, D>>) -> Option<Tensor<B, D>> {
    let tensor = param.val();
    tensor.is_require_grad().then_some(tensor)
}

fn to_vec<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .into_vec()
        .expect("float tensors convert to f32")
}

struct Counter(usize);

impl<B: Backend> ModuleVisitor<B> for Counter {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(t) = trainable(param) {
            self.0 += t.shape().num_elements();
        }
    }
}

struct Gather(Vec<f32>);

impl<B: Backend> ModuleVisitor<B> for Gather {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(t) = trainable(param) {
            self.0.extend(to_vec(t));
        }
    }
}

struct Scatter<'a> {
    flat: &'a [f32],
    offset: usize,
}

impl<B: Backend> ModuleMapper<B> for Scatter<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if trainable(&param).is_none() {
            return param;
        }
        let (id, tensor, mapper) = param.consume();
        let shape = tensor.shape();
        let end = self.offset + shape.num_elements();
        let data = TensorData::new(self.flat[self.offset..end].to_vec(), shape);
        self.offset = end;
        let value = Tensor::from_data(data, &tensor.device()).require_grad();
        Param::from_mapped_value(id, value, mapper)
    }
}

struct GradAccumulator<'a, B: AutodiffBackend> {
    grads: &'a B::Gradients,
    acc: &'a mut [f32],
    offset: usize,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradAccumulator<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some(tensor) = trainable(param) else {
            return;
        };
        let len = tensor.shape().num_elements();
        let slot = &mut self.acc[self.offset..self.offset + len];
        if let Some(grad) = tensor.grad(self.grads) {
            for (a, g) in slot.iter_mut().zip(to_vec(grad)) {
                *a += g;
            }
        }
        self.offset += len;
    }
}

struct GradRegister<'a, B> {
    flat: &'a [f32],
    offset: usize,
    out: GradientsParams,
    _backend: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradRegister<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some(tensor) = trainable(param) else {
            return;
        };
        let shape = tensor.shape();
        let end = self.offset + shape.num_elements();
        let data = TensorData::new(self.flat[self.offset..end].to_vec(), shape);
        self.offset = end;
        let grad = Tensor::<B::InnerBackend, D>::from_data(data, &tensor.device());
        self.out.register(param.id, grad);
    }
}
