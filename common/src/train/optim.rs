//! Optimizers over the flat trainable-parameter vector, with the semantics of the Inception
//! papers' TensorFlow code.
//!
//! burn's RMSProp differs from TensorFlow's (ε outside the root, accumulator starting at 0,
//! learning rate outside the momentum buffer), so the update rules are written here. They work
//! on the same flat vector the ring all-reduces: every replica applies bit-identical updates,
//! and the whole optimizer state is two plain vectors.

use std::ops::Range;

use crate::config::{OptimizerKind, OptimizerSection};

/// The update rule and its hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UpdateRule {
    /// TF RMSProp: `ms ← ρ·ms + (1−ρ)·g²` (ms starts at 1), `mom ← μ·mom + lr·g/√(ms+ε)`, `p ← p − mom`.
    RmsPropTf {
        decay: f32,
        momentum: f32,
        epsilon: f32,
    },
    /// SGD with momentum, dampening 0: `mom ← μ·mom + g`, `p ← p − lr·mom`; with Nesterov
    /// (PyTorch's form) `p ← p − lr·(g + μ·mom)`.
    Sgd { momentum: f32, nesterov: bool },
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

/// An optimizer with its state, for one flat parameter vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Optimizer {
    rule: UpdateRule,
    weight_decay: f32,
    /// Ranges of the flat vector weight decay applies to (convolution and FC weights).
    decayed: Vec<Range<usize>>,
    /// RMSProp mean-square accumulator (empty for SGD).
    mean_square: Vec<f32>,
    velocity: Vec<f32>,
}

impl Optimizer {
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

    /// The state to checkpoint: (mean square, velocity).
    pub fn state(&self) -> (&[f32], &[f32]) {
        (&self.mean_square, &self.velocity)
    }

    /// Restores a checkpointed state; the lengths must match this optimizer's.
    pub fn restore(&mut self, mean_square: Vec<f32>, velocity: Vec<f32>) -> Result<(), String> {
        if mean_square.len() != self.mean_square.len() || velocity.len() != self.velocity.len() {
            return Err(format!(
                "optimizer state has {} + {} values, this optimizer needs {} + {} \
                 (was the checkpoint made with another model or optimizer?)",
                mean_square.len(),
                velocity.len(),
                self.mean_square.len(),
                self.velocity.len()
            ));
        }
        self.mean_square = mean_square;
        self.velocity = velocity;
        Ok(())
    }

    /// Applies one update with learning rate `lr`.
    pub fn step(&mut self, lr: f64, params: &mut [f32], grads: &[f32]) {
        let lr = lr as f32;
        match self.rule {
            UpdateRule::RmsPropTf {
                decay,
                momentum,
                epsilon,
            } => {
                let state = self.mean_square.iter_mut().zip(&mut self.velocity);
                for ((p, g), (ms, mom)) in params.iter_mut().zip(grads).zip(state) {
                    *ms = decay * *ms + (1.0 - decay) * g * g;
                    *mom = momentum * *mom + lr * g / (*ms + epsilon).sqrt();
                    *p -= *mom;
                }
            }
            UpdateRule::Sgd { momentum, nesterov } => {
                for ((p, g), mom) in params.iter_mut().zip(grads).zip(&mut self.velocity) {
                    *mom = momentum * *mom + g;
                    let direction = if nesterov { g + momentum * *mom } else { *mom };
                    *p -= lr * direction;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rule: UpdateRule, lr: f64, grads: &[[f32; 2]]) -> Vec<f32> {
        let mut params = vec![1.0, -2.0];
        let mut opt = Optimizer::new(rule, 0.0, Vec::new(), 2);
        for g in grads {
            opt.step(lr, &mut params, g);
        }
        params
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
    fn weight_decay_applies_only_to_decayed_ranges() {
        let rule = UpdateRule::Sgd {
            momentum: 0.0,
            nesterov: false,
        };
        let opt = Optimizer::new(rule, 0.5, vec![1..2, 2..3], 4);
        let params = [2.0, 2.0, -4.0, 2.0];
        let mut grads = [0.0; 4];
        opt.add_weight_decay(&params, &mut grads);
        assert_eq!(grads, [0.0, 1.0, -2.0, 0.0]);
    }
}
