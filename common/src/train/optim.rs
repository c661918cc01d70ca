//! Optimizers over the flat trainable-parameter tensor, with the semantics of the Inception
//! papers' TensorFlow code.
//!
//! burn's RMSProp differs from TensorFlow's (ε outside the root, accumulator starting at 0,
//! learning rate outside the momentum buffer), so the update rules are written here. They run
//! as element-wise tensor operations on the worker's device, over the same flat gradient the
//! collective all-reduces: every replica applies bit-identical updates, and the whole optimizer
//! state is two flat tensors.

use std::ops::Range;

use burn::prelude::*;
use burn::tensor::TensorData;

use crate::collective::{HostBuffer, TrainDevice};

use crate::config::{OptimizerKind, OptimizerSection};

/// The update rule and its hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UpdateRule {
    /// TF RMSProp: `ms ← ρ·ms + (1−ρ)·g²` (ms starts at 1), `mom ← μ·mom + lr·g/√(ms+ε)`, `p ← p − mom`.
    RmsPropTf {
        /// ρ: weight of the old mean square.
        decay: f32,
        /// μ: weight of the old momentum.
        momentum: f32,
        /// ε, added inside the square root.
        epsilon: f32,
    },
    /// SGD with momentum, dampening 0: `mom ← μ·mom + g`, `p ← p − lr·mom`; with Nesterov
    /// (PyTorch's form) `p ← p − lr·(g + μ·mom)`.
    Sgd {
        /// μ: weight of the old momentum.
        momentum: f32,
        /// Whether to take the Nesterov step.
        nesterov: bool,
    },
}

impl From<&OptimizerSection> for UpdateRule {
    fn from(o: &OptimizerSection) -> Self {
        match o.kind {
            OptimizerKind::Rmsprop => UpdateRule::RmsPropTf {
                decay: o.decay as f32,
                momentum: o.momentum as f32,
                epsilon: o.epsilon as f32,
            },
            OptimizerKind::Sgd => UpdateRule::Sgd {
                momentum: o.momentum as f32,
                nesterov: o.nesterov,
            },
        }
    }
}

/// An optimizer with its state, for one flat parameter tensor.
#[derive(Debug, Clone)]
pub struct Optimizer<B: Backend> {
    rule: UpdateRule,
    weight_decay: f32,
    /// Where weight decay applies (convolution and FC weights); empty when there is none.
    decayed: Vec<Range<usize>>,
    /// 1 in `decayed`, 0 elsewhere, for devices (`None` in host memory or without decay).
    decay_mask: Option<Tensor<B, 1>>,
    /// RMSProp mean-square accumulator (`None` for SGD).
    mean_square: Option<Tensor<B, 1>>,
    /// Always present between steps; taken during one so the update can reuse its memory.
    velocity: Option<Tensor<B, 1>>,
    len: usize,
}

impl<B: TrainDevice> Optimizer<B> {
    /// An optimizer for `len` parameters on `device`; weight decay applies to `decayed`.
    pub fn new(
        rule: UpdateRule,
        weight_decay: f64,
        decayed: &[Range<usize>],
        len: usize,
        device: &B::Device,
    ) -> Self {
        let decayed = if weight_decay == 0.0 {
            Vec::new()
        } else {
            decayed.to_vec()
        };
        let decay_mask = (!decayed.is_empty() && !B::host_memory(device)).then(|| {
            let mut mask = vec![0f32; len];
            for range in &decayed {
                mask[range.clone()].fill(1.0);
            }
            Tensor::from_data(TensorData::new(mask, [len]), device)
        });
        Self {
            rule,
            weight_decay: weight_decay as f32,
            decayed,
            decay_mask,
            mean_square: matches!(rule, UpdateRule::RmsPropTf { .. })
                .then(|| Tensor::ones([len], device)),
            velocity: Some(Tensor::zeros([len], device)),
            len,
        }
    }

    /// Adds the gradient of the L2 penalty `wd/2·‖w‖²` (TF-slim's `l2_regularizer`) on the
    /// decayed parameters. `params` is only read; it is borrowed mutably so that in host memory
    /// its buffer can be read where it lies.
    pub fn add_weight_decay(&self, params: &mut Tensor<B, 1>, grads: Tensor<B, 1>) -> Tensor<B, 1> {
        if self.decayed.is_empty() {
            return grads;
        }
        let Some(mask) = &self.decay_mask else {
            let device = grads.device();
            let mut grads = HostBuffer::take(grads);
            let g = grads.values();
            HostBuffer::read(params, |w| {
                for range in &self.decayed {
                    for (g, w) in g[range.clone()].iter_mut().zip(&w[range.clone()]) {
                        *g += w * self.weight_decay;
                    }
                }
            });
            return grads.into_tensor(&device);
        };
        grads.add(
            params
                .clone()
                .mul(mask.clone())
                .mul_scalar(self.weight_decay),
        )
    }

    /// The state to checkpoint, on the host: (mean square, empty for SGD; velocity).
    pub fn state(&self) -> (Vec<f32>, Vec<f32>) {
        let host = |t: &Tensor<B, 1>| to_host(t.clone());
        (
            self.mean_square.as_ref().map(host).unwrap_or_default(),
            host(self.velocity()),
        )
    }

    /// Restores a checkpointed state; the lengths must match this optimizer's.
    pub fn restore(
        &mut self,
        mean_square: Vec<f32>,
        velocity: Vec<f32>,
        device: &B::Device,
    ) -> Result<(), String> {
        let expected = (self.mean_square.as_ref().map_or(0, |_| self.len), self.len);
        if (mean_square.len(), velocity.len()) != expected {
            return Err(format!(
                "optimizer state has {} + {} values, this optimizer needs {} + {} \
                 (was the checkpoint made with another model or optimizer?)",
                mean_square.len(),
                velocity.len(),
                expected.0,
                expected.1
            ));
        }
        let upload =
            |values: Vec<f32>| Tensor::from_data(TensorData::new(values, [self.len]), device);
        if self.mean_square.is_some() {
            self.mean_square = Some(upload(mean_square));
        }
        self.velocity = Some(upload(velocity));
        Ok(())
    }

    /// Applies one update with learning rate `lr`; returns the new parameters. `grads` is only
    /// read (mutably borrowed so that in host memory its buffer is read where it lies, and can
    /// be reused). In host memory (flex) one fused pass updates the buffers in place; on a
    /// device, tensor operations.
    pub fn step(
        &mut self,
        lr: f64,
        params: Tensor<B, 1>,
        grads: &mut Tensor<B, 1>,
    ) -> Tensor<B, 1> {
        let device = params.device();
        if !B::host_memory(&device) {
            return self.step_with_tensor_ops(lr, params, grads.clone());
        }
        let mut params = HostBuffer::take(params);
        let mut velocity =
            HostBuffer::take(self.velocity.take().expect("the velocity is put back"));
        let mut mean_square = self.mean_square.take().map(HostBuffer::take::<B>);
        HostBuffer::read(grads, |grads| {
            update_in_place(
                self.rule,
                lr as f32,
                params.values(),
                grads,
                mean_square.as_mut().map(HostBuffer::values),
                velocity.values(),
            )
        });
        self.velocity = Some(velocity.into_tensor(&device));
        self.mean_square = mean_square.map(|buffer| buffer.into_tensor(&device));
        params.into_tensor(&device)
    }

    /// [`step`](Self::step) as element-wise tensor operations, evaluated in the order of
    /// [`update_in_place`] so that both agree to rounding.
    fn step_with_tensor_ops(
        &mut self,
        lr: f64,
        params: Tensor<B, 1>,
        grads: Tensor<B, 1>,
    ) -> Tensor<B, 1> {
        let lr = lr as f32;
        let velocity = self
            .velocity
            .take()
            .expect("the velocity is put back every step");
        match self.rule {
            UpdateRule::RmsPropTf {
                decay,
                momentum,
                epsilon,
            } => {
                let mean_square = self.mean_square.take().expect("RMSProp has a mean square");
                let mean_square = mean_square
                    .mul_scalar(decay)
                    .add(grads.clone().mul_scalar(1.0 - decay).mul(grads.clone()));
                let step = grads
                    .mul_scalar(lr)
                    .div(mean_square.clone().add_scalar(epsilon).sqrt());
                let velocity = velocity.mul_scalar(momentum).add(step);
                self.mean_square = Some(mean_square);
                self.velocity = Some(velocity.clone());
                params.sub(velocity)
            }
            UpdateRule::Sgd { momentum, nesterov } => {
                let velocity = velocity.mul_scalar(momentum).add(grads.clone());
                let direction = if nesterov {
                    grads.add(velocity.clone().mul_scalar(momentum))
                } else {
                    velocity.clone()
                };
                self.velocity = Some(velocity);
                params.sub(direction.mul_scalar(lr))
            }
        }
    }

    fn velocity(&self) -> &Tensor<B, 1> {
        self.velocity
            .as_ref()
            .expect("the velocity is put back every step")
    }
}

/// One update of `params` by `rule` in place: the mean square (RMSProp only) and the velocity
/// too.
pub(crate) fn update_in_place(
    rule: UpdateRule,
    lr: f32,
    params: &mut [f32],
    grads: &[f32],
    mean_square: Option<&mut [f32]>,
    velocity: &mut [f32],
) {
    // Element-wise, so splitting it over the compute threads changes no value.
    let chunk = params
        .len()
        .div_ceil(super::backend::cpu_threads())
        .max(MIN_CHUNK);
    let mut mean_square = mean_square.map(|ms| ms.chunks_mut(chunk));
    std::thread::scope(|scope| {
        let chunks = params
            .chunks_mut(chunk)
            .zip(grads.chunks(chunk))
            .zip(velocity.chunks_mut(chunk));
        for ((params, grads), velocity) in chunks {
            let mean_square = mean_square.as_mut().and_then(Iterator::next);
            scope.spawn(move || update_chunk(rule, lr, params, grads, mean_square, velocity));
        }
    });
}

/// The fewest parameters worth a thread of their own.
const MIN_CHUNK: usize = 1 << 16;

fn update_chunk(
    rule: UpdateRule,
    lr: f32,
    params: &mut [f32],
    grads: &[f32],
    mean_square: Option<&mut [f32]>,
    velocity: &mut [f32],
) {
    match (rule, mean_square) {
        (
            UpdateRule::RmsPropTf {
                decay,
                momentum,
                epsilon,
            },
            Some(mean_square),
        ) => {
            let state = mean_square.iter_mut().zip(velocity);
            for ((p, g), (ms, mom)) in params.iter_mut().zip(grads).zip(state) {
                *ms = decay * *ms + (1.0 - decay) * g * g;
                *mom = momentum * *mom + lr * g / (*ms + epsilon).sqrt();
                *p -= *mom;
            }
        }
        (UpdateRule::Sgd { momentum, nesterov }, _) => {
            for ((p, g), mom) in params.iter_mut().zip(grads).zip(velocity) {
                *mom = momentum * *mom + g;
                let direction = if nesterov { g + momentum * *mom } else { *mom };
                *p -= lr * direction;
            }
        }
        (UpdateRule::RmsPropTf { .. }, None) => unreachable!("RMSProp keeps a mean square"),
    }
}

/// A flat tensor's values copied to the host.
pub(crate) fn to_host<B: Backend>(tensor: Tensor<B, 1>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .into_vec()
        .expect("float tensors convert to f32")
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;

    use super::*;

    fn tensor(values: &[f32]) -> Tensor<Flex, 1> {
        Tensor::from_floats(values, &Default::default())
    }

    fn run(rule: UpdateRule, lr: f64, grads: &[[f32; 2]]) -> Vec<f32> {
        let mut params = tensor(&[1.0, -2.0]);
        let mut opt = Optimizer::new(rule, 0.0, &[], 2, &Default::default());
        for g in grads {
            params = opt.step(lr, params, &mut tensor(g));
        }
        to_host(params)
    }

    #[test]
    fn rmsprop_matches_tensorflow_by_hand() {
        let rule = UpdateRule::RmsPropTf {
            decay: 0.9,
            momentum: 0.5,
            epsilon: 1.0,
        };
        // Hand computation for p = 1.0 with g = 2 then g = −1, lr 0.1:
        // ms1 = 0.9·1 + 0.1·4 = 1.3;    mom1 = 0.1·2/√2.3
        // ms2 = 0.9·1.3 + 0.1·1 = 1.27; mom2 = 0.5·mom1 − 0.1/√2.27
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
        // mom1 = 1, p = 1 − 0.1 = 0.9; mom2 = 0.9 + 1 = 1.9, p = 0.9 − 0.19 = 0.71
        let got = run(
            UpdateRule::Sgd {
                momentum: 0.9,
                nesterov: false,
            },
            0.1,
            &[[1.0, 0.0], [1.0, 0.0]],
        );
        assert!((got[0] - 0.71).abs() < 1e-6, "{got:?}");
    }

    #[test]
    fn nesterov_sgd_matches_by_hand() {
        // mom1 = 1, p = 1 − 0.1·(1 + 0.9·1) = 0.81;
        // mom2 = 1.9, p = 0.81 − 0.1·(1 + 0.9·1.9) = 0.539
        let rule = UpdateRule::Sgd {
            momentum: 0.9,
            nesterov: true,
        };
        let got = run(rule, 0.1, &[[1.0, 0.0], [1.0, 0.0]]);
        assert!((got[0] - 0.539).abs() < 1e-6, "{got:?}");
    }

    #[test]
    fn tensor_operations_agree_with_the_fused_loop() {
        let device = Default::default();
        let values = |k: f32| -> Vec<f32> { (0..1000).map(|i| (i as f32 * k).sin()).collect() };
        let rules = [
            UpdateRule::RmsPropTf {
                decay: 0.9,
                momentum: 0.9,
                epsilon: 1.0,
            },
            UpdateRule::Sgd {
                momentum: 0.9,
                nesterov: true,
            },
        ];
        for rule in rules {
            let mut fused = Optimizer::<Flex>::new(rule, 0.0, &[], 1000, &device);
            let mut ops = fused.clone();
            let (mut a, mut b) = (tensor(&values(0.1)), tensor(&values(0.1)));
            for step in 0..5 {
                let grads = values(0.37 + step as f32);
                a = fused.step(0.05, a, &mut tensor(&grads));
                b = ops.step_with_tensor_ops(0.05, b, tensor(&grads));
            }
            assert_eq!(to_host(a), to_host(b), "{rule:?}");
            assert_eq!(fused.state(), ops.state(), "{rule:?}");
        }
    }

    #[test]
    fn state_round_trips_through_the_host() {
        let rule = UpdateRule::RmsPropTf {
            decay: 0.9,
            momentum: 0.5,
            epsilon: 1.0,
        };
        let device = Default::default();
        let mut opt = Optimizer::<Flex>::new(rule, 0.0, &[], 2, &device);
        opt.step(0.1, tensor(&[1.0, 1.0]), &mut tensor(&[2.0, -1.0]));
        let (mean_square, velocity) = opt.state();
        let mut restored = Optimizer::<Flex>::new(rule, 0.0, &[], 2, &device);
        restored
            .restore(mean_square.clone(), velocity.clone(), &device)
            .unwrap();
        assert_eq!(restored.state(), (mean_square, velocity));
        let error = restored
            .restore(vec![1.0], vec![0.0; 2], &device)
            .unwrap_err();
        assert!(error.contains("1 + 2 values"), "{error}");
    }

    #[test]
    fn weight_decay_applies_only_to_decayed_ranges() {
        let rule = UpdateRule::Sgd {
            momentum: 0.0,
            nesterov: false,
        };
        let opt = Optimizer::new(rule, 0.5, &[1..2, 2..3], 4, &Default::default());
        let mut params = tensor(&[2.0, 2.0, -4.0, 2.0]);
        let grads = opt.add_weight_decay(&mut params, tensor(&[0.0; 4]));
        assert_eq!(to_host(grads), [0.0, 1.0, -2.0, 0.0]);
        assert_eq!(
            to_host(params),
            [2.0, 2.0, -4.0, 2.0],
            "the weights are only read"
        );
    }
}
