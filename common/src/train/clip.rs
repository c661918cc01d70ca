//! Global-norm gradient clipping on the flat, averaged gradient (the paper clips at 2.0), on the
//! worker's device: only the norm, a scalar, reaches the host. In host memory (flex) the norm is
//! summed in f64 and the scaling done in place.

use burn::prelude::*;

use crate::collective::{HostBuffer, TrainDevice};

/// Values a block of the blocked sum adds up.
const SUM_BLOCK: usize = 32;

/// Euclidean norm of `values`, summed on the device in f32 blocks (see [`blocked_sum`]).
pub fn global_norm<B: Backend>(values: &Tensor<B, 1>) -> f64 {
    let sum_of_squares: f32 = blocked_sum(values.clone().mul(values.clone()))
        .into_scalar()
        .elem();
    f64::from(sum_of_squares).sqrt()
}

/// The sum of `values` as a one-element tensor, added in blocks of [`SUM_BLOCK`] and then over
/// the block sums (recursively): a flat f32 sum over tens of millions of gradients loses
/// digits as its total grows (about 1e-5 relative here); blocks keep it near f64's result.
fn blocked_sum<B: Backend>(values: Tensor<B, 1>) -> Tensor<B, 1> {
    let [len] = values.dims();
    let whole = len / SUM_BLOCK * SUM_BLOCK;
    if whole == 0 {
        return values.sum();
    }
    let blocks = values
        .clone()
        .slice(0..whole)
        .reshape([whole / SUM_BLOCK, SUM_BLOCK])
        .sum_dim(1)
        .reshape([whole / SUM_BLOCK]);
    let blocks = blocked_sum(blocks);
    if whole == len {
        blocks
    } else {
        blocks.add(values.slice(whole..len).sum())
    }
}

/// Scales `grads` so their global norm is at most `max_norm` (0 = off); returns them with the
/// norm before clipping, which is reported as a metric.
pub fn clip_global_norm<B: TrainDevice>(grads: Tensor<B, 1>, max_norm: f64) -> (Tensor<B, 1>, f64) {
    let device = grads.device();
    if B::host_memory(&device) {
        let mut buffer = HostBuffer::take(grads);
        let values = buffer.values();
        let norm = values
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt();
        if max_norm > 0.0 && norm > max_norm && norm.is_finite() {
            let scale = (max_norm / norm) as f32;
            values.iter_mut().for_each(|g| *g *= scale);
        }
        return (buffer.into_tensor(&device), norm);
    }
    let norm = global_norm(&grads);
    if max_norm > 0.0 && norm > max_norm && norm.is_finite() {
        let scale = (max_norm / norm) as f32;
        return (grads.mul_scalar(scale), norm);
    }
    (grads, norm)
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;

    use super::*;
    use crate::train::optim::to_host;

    fn tensor(values: [f32; 2]) -> Tensor<Flex, 1> {
        Tensor::from_floats(values, &Default::default())
    }

    #[test]
    fn clips_only_above_the_limit() {
        let (grads, norm) = clip_global_norm(tensor([3.0, 4.0]), 10.0);
        assert_eq!(norm, 5.0);
        assert_eq!(to_host(grads.clone()), [3.0, 4.0]);
        let (grads, norm) = clip_global_norm(grads, 2.0);
        assert_eq!(norm, 5.0);
        assert!((global_norm(&grads) - 2.0).abs() < 1e-6);
        let grads = to_host(grads);
        assert!((grads[0] / grads[1] - 0.75).abs() < 1e-6);
    }

    #[test]
    fn blocked_sum_stays_close_to_an_f64_sum() {
        // 3 million values: more than one level of blocks, and a ragged tail.
        let values: Vec<f32> = (0..3_000_017)
            .map(|i| (i as f32 * 0.37).sin() * 1e-3)
            .collect();
        let exact = values
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt();
        let tensor = Tensor::<Flex, 1>::from_floats(values.as_slice(), &Default::default());
        let norm = global_norm(&tensor);
        assert!((norm - exact).abs() <= 1e-7 * exact, "{norm} vs {exact}");
    }

    #[test]
    fn zero_limit_disables_clipping() {
        let (grads, norm) = clip_global_norm(tensor([30.0, 40.0]), 0.0);
        assert_eq!(norm, 50.0);
        assert_eq!(to_host(grads), [30.0, 40.0]);
    }
}
