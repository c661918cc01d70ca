//! Helpers shared by the model families' unit tests.

use burn::tensor::{Distribution, Tensor, backend::Backend};

/// A batch of random images in `[-1, 1]`, `[batch, 3, size, size]`.
pub fn images<B: Backend>(batch: usize, size: usize) -> Tensor<B, 4> {
    Tensor::random(
        [batch, 3, size, size],
        Distribution::Uniform(-1.0, 1.0),
        &Default::default(),
    )
}
