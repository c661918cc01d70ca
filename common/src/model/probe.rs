//! The dead-unit probe: the instability the Inception-v4 paper reports (§3.3), measured.
//!
//! Wide residual variants "died" early in training: the last layer before the average pool
//! output only zeros. Scaling the residuals by 0.1–0.3 prevented it. The probe measures both
//! sides of that story on a fixed batch: the fraction of exactly-zero activations in the final
//! feature map, and, per residual stage, the mean ratio ‖scale · residual‖ / ‖shortcut‖.
//! Residual blocks report their ratio through [`record_residual`] while a probe runs on the
//! thread; otherwise recording costs nothing.

use std::cell::RefCell;

use burn::prelude::*;

thread_local! {
    /// Per-block ratios of the probe running on this thread, in forward order.
    static RATIOS: RefCell<Option<Vec<f64>>> = const { RefCell::new(None) };
}

/// Called by residual blocks: records ‖residual‖ / ‖shortcut‖ when a probe is running.
pub fn record_residual<B: Backend>(residual: &Tensor<B, 4>, shortcut: &Tensor<B, 4>) {
    RATIOS.with(|ratios| {
        if let Some(ratios) = ratios.borrow_mut().as_mut() {
            ratios.push(l2_norm(residual) / l2_norm(shortcut).max(f64::MIN_POSITIVE));
        }
    });
}

/// Runs `forward`, collecting the residual ratios of every block it runs.
pub fn observe<T>(forward: impl FnOnce() -> T) -> (T, Vec<f64>) {
    RATIOS.with(|r| *r.borrow_mut() = Some(Vec::new()));
    let out = forward();
    let ratios = RATIOS.with(|r| r.borrow_mut().take()).unwrap_or_default();
    (out, ratios)
}

/// Fraction of exactly-zero activations.
pub fn zero_fraction<B: Backend>(features: &Tensor<B, 4>) -> f64 {
    let total = features.shape().num_elements();
    let zeros: i64 = features
        .clone()
        .equal_elem(0.0)
        .int()
        .sum()
        .into_scalar()
        .elem();
    zeros as f64 / total.max(1) as f64
}

/// Means of consecutive groups of `ratios`, one per stage of `stage_blocks` blocks.
pub fn stage_means(ratios: &[f64], stage_blocks: &[usize]) -> Vec<f64> {
    let mut rest = ratios;
    stage_blocks
        .iter()
        .map(|&n| {
            let (stage, tail) = rest.split_at(n.min(rest.len()));
            rest = tail;
            stage.iter().sum::<f64>() / stage.len().max(1) as f64
        })
        .collect()
}

fn l2_norm<B: Backend>(x: &Tensor<B, 4>) -> f64 {
    let sum: f32 = x.clone().square().sum().into_scalar().elem();
    f64::from(sum).sqrt()
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;

    use super::*;

    #[test]
    fn records_only_while_observing() {
        let device = Default::default();
        let x = Tensor::<Flex, 4>::ones([1, 1, 2, 2], &device);
        let half = x.clone().mul_scalar(0.5);
        record_residual(&half, &x); // not observing: dropped
        let ((), ratios) = observe(|| {
            record_residual(&half, &x);
            record_residual(&x, &x);
        });
        assert_eq!(ratios, [0.5, 1.0]);
        let ((), ratios) = observe(|| ());
        assert!(ratios.is_empty());
    }

    #[test]
    fn zero_fraction_and_stage_means() {
        let device = Default::default();
        let x = Tensor::<Flex, 4>::from_floats([[[[0.0, 1.0], [0.0, 0.0]]]], &device);
        assert_eq!(zero_fraction(&x), 0.75);
        assert_eq!(stage_means(&[1.0, 3.0, 5.0], &[2, 1, 0]), [2.0, 5.0, 0.0]);
    }
}
