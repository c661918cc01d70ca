//! The Inception family of image classifiers.
//!
//! One file per family member (its config, blocks and network), all built from the shared
//! TF-slim building blocks in [`layers`], and a [`registry`] that maps architecture names to
//! constructors. Module paths follow timm, so its checkpoints import by name; shapes and
//! parameter counts follow TF-slim (see shared/REFERENCES.md).

pub mod inception_resnet_v2;
pub mod layers;
pub mod registry;

pub use inception_resnet_v2::{InceptionResNetV2, InceptionResNetV2Config};

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Tensor, backend::Backend};

/// Number of trainable scalars in `module`: weights, biases and batch-norm gamma/beta, but not
/// the batch-norm running statistics.
///
/// burn's `Module::num_params` also counts `RunningState` tensors (it visits them as floats),
/// which would overstate e.g. Inception-ResNet-v2 by 2 × 30,272. Running statistics are told
/// apart by their field names in burn's `BatchNorm`.
pub fn num_trainable_params<B: Backend, M: Module<B>>(module: &M) -> usize {
    tensor_paths(module)
        .into_iter()
        .filter(|(path, _)| !path.ends_with(".running_mean") && !path.ends_with(".running_var"))
        .map(|(_, elements)| elements)
        .sum()
}

/// Every float tensor of `module`, parameters and running statistics, as (dotted module path,
/// element count) in visit order; the paths are the checkpoint keys (`repeat.0.conv2d.weight`).
pub fn tensor_paths<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, usize)> {
    let mut collector = PathCollector::default();
    module.visit(&mut collector);
    collector.tensors
}

/// Visitor behind [`tensor_paths`]: tracks the field path while burn walks the module tree.
#[derive(Default)]
struct PathCollector {
    path: Vec<String>,
    tensors: Vec<(String, usize)>,
}

impl<B: Backend> ModuleVisitor<B> for PathCollector {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_owned());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.tensors
            .push((self.path.join("."), param.shape().num_elements()));
    }
}
