//! Optimizers with the semantics of the Inception papers' TensorFlow code.
//!
//! burn's RMSProp differs from TensorFlow's (ε outside the root, accumulator starting at 0,
//! learning rate outside the momentum buffer), so both update rules are written here as one
//! burn `SimpleOptimizer`, which also keeps their state in burn records for checkpoints.

use burn::module::AutodiffModule;
use burn::optim::SimpleOptimizer;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::prelude::*;
use burn::record::Record;
use burn::tensor::backend::AutodiffBackend;

use crate::config::{OptimizerKind, OptimizerSection};

/// The update rule and its hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UpdateRule {
    /// TF RMSProp: `ms ← ρ·ms + (1−ρ)·g²` (ms starts at 1), `mom ← μ·mom + lr·g/√(ms+ε)`, `p ← p − mom`.
    RmsPropTf {
        decay: f64,
        momentum: f64,
        epsilon: f64,
    },
    /// SGD with momentum, dampening 0: `mom ← μ·mom + g`, `p ← p − lr·mom`.
    Sgd { momentum: f64 },
}

impl From<&OptimizerSection> for UpdateRule {
    fn from(o: &OptimizerSection) -> Self {
        match o.kind {
            OptimizerKind::Rmsprop => UpdateRule::RmsPropTf {
                decay: o.decay,
                momentum: o.momentum,
                epsilon: o.epsilon,
            },
            OptimizerKind::Sgd => UpdateRule::Sgd {
                momentum: o.momentum,
            },
        }
    }
}

/// Per-parameter optimizer state.
#[derive(Record, Clone)]
pub struct UpdateState<B: Backend, const D: usize> {
    /// RMSProp mean-square accumulator (absent for SGD).
    pub mean_square: Option<Tensor<B, D>>,
    pub momentum: Tensor<B, D>,
}

impl<B: Backend> SimpleOptimizer<B> for UpdateRule {
    type State<const D: usize> = UpdateState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: f64,
        param: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let (update, state) = match *self {
            UpdateRule::RmsPropTf {
                decay,
                momentum,
                epsilon,
            } => {
                let (mean_square, velocity) = match state {
                    Some(s) => (
                        s.mean_square.expect("RMSProp state has a mean square"),
                        s.momentum,
                    ),
                    None => (grad.ones_like(), grad.zeros_like()),
                };
                let mean_square = mean_square
                    .mul_scalar(decay)
                    .add(grad.clone().square().mul_scalar(1.0 - decay));
                let scaled = grad.div(mean_square.clone().add_scalar(epsilon).sqrt());
                let velocity = velocity.mul_scalar(momentum).add(scaled.mul_scalar(lr));
                let state = UpdateState {
                    mean_square: Some(mean_square),
                    momentum: velocity.clone(),
                };
                (velocity, state)
            }
            UpdateRule::Sgd { momentum } => {
                let velocity = match state {
                    Some(s) => s.momentum.mul_scalar(momentum).add(grad),
                    None => grad,
                };
                let state = UpdateState {
                    mean_square: None,
                    momentum: velocity.clone(),
                };
                (velocity.mul_scalar(lr), state)
            }
        };
        (param.sub(update), Some(state))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        UpdateState {
            mean_square: state.mean_square.map(|t| t.to_device(device)),
            momentum: state.momentum.to_device(device),
        }
    }
}

/// The optimizer a replica steps its module with.
pub type Optimizer<M, B> = OptimizerAdaptor<UpdateRule, M, B>;

/// Builds the configured optimizer for module type `M`.
pub fn optimizer<B: AutodiffBackend, M: AutodiffModule<B>>(
    section: &OptimizerSection,
) -> Optimizer<M, B> {
    OptimizerAdaptor::from(UpdateRule::from(section))
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;

    use super::*;

    type B = Flex;

    fn run(rule: UpdateRule, lr: f64, grads: &[[f32; 2]]) -> Vec<f32> {
        let device = Default::default();
        let mut param = Tensor::<B, 1>::from_floats([1.0, -2.0], &device);
        let mut state = None;
        for g in grads {
            let grad = Tensor::<B, 1>::from_floats(*g, &device);
            let (p, s) = SimpleOptimizer::<B>::step(&rule, lr, param, grad, state);
            param = p;
            state = s;
        }
        param.into_data().to_vec().unwrap()
    }

    #[test]
    fn rmsprop_matches_tensorflow_by_hand() {
        let rule = UpdateRule::RmsPropTf {
            decay: 0.9,
            momentum: 0.5,
            epsilon: 1.0,
        };
        // Hand computation for p = 1.0 with g = 2 then g = -1, lr 0.1:
        // ms1 = 0.9·1 + 0.1·4 = 1.3;    mom1 = 0.1·2/√2.3           = 0.131876
        // ms2 = 0.9·1.3 + 0.1·1 = 1.27; mom2 = 0.5·mom1 + 0.1·(−1)/√2.27 = −0.000434
        let mom1 = 0.1 * 2.0 / 2.3f64.sqrt();
        let mom2 = 0.5 * mom1 - 0.1 / 2.27f64.sqrt();
        let expected = 1.0 - mom1 - mom2;
        let got = run(rule, 0.1, &[[2.0, 0.0], [-1.0, 0.0]]);
        assert!(
            (got[0] as f64 - expected).abs() < 1e-6,
            "{got:?} vs {expected}"
        );
        // A zero gradient leaves the parameter alone.
        assert_eq!(got[1], -2.0);
    }

    #[test]
    fn sgd_momentum_matches_by_hand() {
        let rule = UpdateRule::Sgd { momentum: 0.9 };
        // mom1 = 1, p = 1 − 0.1 = 0.9; mom2 = 0.9 + 1 = 1.9, p = 0.9 − 0.19 = 0.71
        let got = run(rule, 0.1, &[[1.0, 0.0], [1.0, 0.0]]);
        assert!((got[0] - 0.71).abs() < 1e-6, "{got:?}");
    }
}
