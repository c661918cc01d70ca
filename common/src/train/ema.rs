//! Exponential moving average of the weights, evaluated instead of the raw weights (as the
//! Inception training code does). Kept on the flat vector, so it is identical on every replica.

/// The moving average and its update count.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightAverage {
    decay: f64,
    updates: u64,
    values: Vec<f32>,
}

impl WeightAverage {
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

    pub fn values(&self) -> &[f32] {
        &self.values
    }

    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// Restores a checkpointed average.
    pub fn restore(&mut self, updates: u64, values: Vec<f32>) {
        self.updates = updates;
        self.values = values;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_tf_num_updates_schedule() {
        let mut avg = WeightAverage::new(0.9999, &[0.0]);
        avg.update(&[1.0]); // decay min(0.9999, 1/10) = 0.1
        assert!((avg.values()[0] - 0.9).abs() < 1e-6);
        avg.update(&[1.0]); // decay 2/11
        let expected = 2.0 / 11.0 * 0.9 + 9.0 / 11.0;
        assert!((avg.values()[0] - expected).abs() < 1e-6);
    }

    #[test]
    fn long_runs_use_the_configured_decay() {
        let mut avg = WeightAverage::new(0.5, &[0.0]);
        for _ in 0..100 {
            avg.update(&[0.0]);
        }
        avg.update(&[1.0]);
        assert!((avg.values()[0] - 0.5).abs() < 1e-6);
    }
}
