//! Exponential moving average of the weights, evaluated instead of the raw weights (as the
//! Inception training code does). Kept on the flat parameter tensor, on the worker's device, so
//! it is identical on every replica.

use burn::prelude::*;

use crate::collective::{HostBuffer, TrainDevice};

/// The moving average and its update count.
#[derive(Debug, Clone)]
pub struct WeightAverage<B: Backend> {
    decay: f64,
    updates: u64,
    values: Tensor<B, 1>,
}

impl<B: TrainDevice> WeightAverage<B> {
    /// Starts the average at `params`.
    pub fn new(decay: f64, params: &Tensor<B, 1>) -> Self {
        Self {
            decay,
            updates: 0,
            values: params.clone(),
        }
    }

    /// Folds in the parameters after an optimizer step. As TF's `ExponentialMovingAverage` with
    /// `num_updates`, the decay is min(decay, (1 + n) / (10 + n)), so early averages are not
    /// dominated by the initial weights. `params` is only read (mutably borrowed so that in host
    /// memory its buffer is read where it lies).
    pub fn update(&mut self, params: &mut Tensor<B, 1>) {
        let n = self.updates as f64;
        let decay = self.decay.min((1.0 + n) / (10.0 + n)) as f32;
        self.updates += 1;
        // Taken out, the average is its buffer's only owner: it is updated in place.
        let values = std::mem::replace(&mut self.values, Tensor::empty([0], &params.device()));
        let device = values.device();
        if B::host_memory(&device) {
            let mut average = HostBuffer::take(values);
            let a = average.values();
            HostBuffer::read(params, |p| {
                for (a, p) in a.iter_mut().zip(p) {
                    *a = *a * decay + *p * (1.0 - decay);
                }
            });
            self.values = average.into_tensor(&device);
        } else {
            self.values = values
                .mul_scalar(decay)
                .add(params.clone().mul_scalar(1.0 - decay));
        }
    }

    /// The averaged parameters, in flat-vector order.
    pub fn values(&self) -> &Tensor<B, 1> {
        &self.values
    }

    /// Updates folded in so far (the `n` of the decay warm-up), checkpointed with the values.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// Restores a checkpointed average.
    pub fn restore(&mut self, updates: u64, values: Tensor<B, 1>) {
        self.updates = updates;
        self.values = values;
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;

    use super::*;
    use crate::train::optim::to_host;

    fn value(v: f32) -> Tensor<Flex, 1> {
        Tensor::from_floats([v], &Default::default())
    }

    #[test]
    fn follows_tf_num_updates_schedule() {
        let mut avg = WeightAverage::new(0.9999, &value(0.0));
        avg.update(&mut value(1.0)); // decay min(0.9999, 1/10) = 0.1
        assert!((to_host(avg.values().clone())[0] - 0.9).abs() < 1e-6);
        avg.update(&mut value(1.0)); // decay 2/11
        let expected = 2.0 / 11.0 * 0.9 + 9.0 / 11.0;
        assert!((to_host(avg.values().clone())[0] - expected).abs() < 1e-6);
    }

    #[test]
    fn long_runs_use_the_configured_decay() {
        let mut avg = WeightAverage::new(0.5, &value(0.0));
        for _ in 0..100 {
            avg.update(&mut value(0.0));
        }
        avg.update(&mut value(1.0));
        assert!((to_host(avg.values().clone())[0] - 0.5).abs() < 1e-6);
    }
}
