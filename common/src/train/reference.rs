//! The flat host implementation of the update that the device-resident step replaced, kept as
//! its reference: tests check that the tensor optimizer, weight average and clipping give the
//! same parameters (`tests/device_step.rs`). Not used in training.

use std::ops::Range;

use burn::module::{ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use super::optim::{UpdateRule, update_in_place};
use crate::model::params::{is_trainable, track_path};

/// Adds the gradients of the trainable parameters, in module order, into `acc` (a parameter
/// that received no gradient contributes zeros).
pub fn accumulate_grads<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    grads: &B::Gradients,
    acc: &mut [f32],
) {
    let mut visitor = GradAccumulator {
        path: Vec::new(),
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

struct GradAccumulator<'a, B: AutodiffBackend> {
    path: Vec<String>,
    grads: &'a B::Gradients,
    acc: &'a mut [f32],
    offset: usize,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradAccumulator<'_, B> {
    track_path!();

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !is_trainable(&self.path.join(".")) {
            return;
        }
        let tensor = param.val();
        let range = self.offset..self.offset + tensor.shape().num_elements();
        self.offset = range.end;
        if let Some(grad) = tensor.grad(self.grads) {
            let grad = grad.into_data().into_vec::<f32>().expect("f32 gradients");
            for (a, g) in self.acc[range].iter_mut().zip(grad) {
                *a += g;
            }
        }
    }
}

/// An optimizer with its state, for one flat parameter vector.
#[derive(Debug, Clone, PartialEq)]
pub struct HostOptimizer {
    rule: UpdateRule,
    weight_decay: f32,
    /// Ranges of the flat vector weight decay applies to (convolution and FC weights).
    decayed: Vec<Range<usize>>,
    /// RMSProp mean-square accumulator (empty for SGD).
    mean_square: Vec<f32>,
    velocity: Vec<f32>,
}

impl HostOptimizer {
    /// Fresh state for `len` parameters, decaying the `decayed` ranges by `weight_decay`.
    pub fn new(
        rule: UpdateRule,
        weight_decay: f64,
        decayed: Vec<Range<usize>>,
        len: usize,
    ) -> Self {
        let mean_square = match rule {
            UpdateRule::RmsPropTf { .. } => vec![1.0; len],
            UpdateRule::Sgd { .. } => Vec::new(),
        };
        Self {
            rule,
            weight_decay: weight_decay as f32,
            decayed,
            mean_square,
            velocity: vec![0.0; len],
        }
    }

    /// Adds the gradient of the L2 penalty `wd/2·‖w‖²` (TF-slim's `l2_regularizer`) on the
    /// decayed ranges.
    pub fn add_weight_decay(&self, params: &[f32], grads: &mut [f32]) {
        if self.weight_decay == 0.0 {
            return;
        }
        for range in &self.decayed {
            for (g, p) in grads[range.clone()].iter_mut().zip(&params[range.clone()]) {
                *g += self.weight_decay * p;
            }
        }
    }

    /// Applies one update with learning rate `lr` (the fused loop flex trains with).
    pub fn step(&mut self, lr: f64, params: &mut [f32], grads: &[f32]) {
        let mean_square = match self.rule {
            UpdateRule::RmsPropTf { .. } => Some(&mut self.mean_square[..]),
            UpdateRule::Sgd { .. } => None,
        };
        update_in_place(
            self.rule,
            lr as f32,
            params,
            grads,
            mean_square,
            &mut self.velocity,
        );
    }
}

/// The moving average and its update count.
#[derive(Debug, Clone, PartialEq)]
pub struct HostAverage {
    decay: f64,
    updates: u64,
    values: Vec<f32>,
}

impl HostAverage {
    /// Starts the average at `params`.
    pub fn new(decay: f64, params: &[f32]) -> Self {
        Self {
            decay,
            updates: 0,
            values: params.to_vec(),
        }
    }

    /// Folds in the parameters after an optimizer step. As TF's `ExponentialMovingAverage` with
    /// `num_updates`, the decay is min(decay, (1 + n) / (10 + n)), so early averages are not
    /// dominated by the initial weights.
    pub fn update(&mut self, params: &[f32]) {
        let n = self.updates as f64;
        let decay = self.decay.min((1.0 + n) / (10.0 + n)) as f32;
        for (avg, &p) in self.values.iter_mut().zip(params) {
            *avg = decay * *avg + (1.0 - decay) * p;
        }
        self.updates += 1;
    }

    /// The weights after the steps taken so far.
    pub fn values(&self) -> &[f32] {
        &self.values
    }
}

/// Euclidean norm of `values`, accumulated in f64.
pub fn global_norm(values: &[f32]) -> f64 {
    values
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        .sqrt()
}

/// Scales `grads` so their global norm is at most `max_norm` (0 = off); returns the norm
/// before clipping, which is reported as a metric.
pub fn clip_global_norm(grads: &mut [f32], max_norm: f64) -> f64 {
    let norm = global_norm(grads);
    if max_norm > 0.0 && norm > max_norm && norm.is_finite() {
        let scale = (max_norm / norm) as f32;
        grads.iter_mut().for_each(|g| *g *= scale);
    }
    norm
}
