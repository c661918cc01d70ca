//! Helpers shared by the model families' unit tests.

use burn::tensor::{Distribution, ElementConversion, Tensor, backend::Backend};

/// A batch of random images in `[-1, 1]`, `[batch, 3, size, size]`.
pub fn images<B: Backend>(batch: usize, size: usize) -> Tensor<B, 4> {
    Tensor::random(
        [batch, 3, size, size],
        Distribution::Uniform(-1.0, 1.0),
        &Default::default(),
    )
}

/// Checks an image-size rule: `native` and `min` pass, and `min - 1` fails naming the minimum.
pub fn assert_image_size_limit(
    check: impl Fn(usize) -> Result<(), String>,
    min: usize,
    native: usize,
) {
    assert!(check(native).is_ok(), "the native size {native} must pass");
    assert!(check(min).is_ok(), "the minimum {min} must pass");
    let err = check(min - 1).unwrap_err();
    assert!(err.contains(&format!("minimum is {min}")), "{err}");
}

/// Checks that each gradient reached its layer: its sum of magnitudes (`grad.abs().sum()`) is
/// finite and not zero.
pub fn assert_gradients_flow<B: Backend>(magnitudes: impl IntoIterator<Item = Tensor<B, 1>>) {
    for magnitude in magnitudes {
        let value: f32 = magnitude.into_scalar().elem();
        assert!(value.is_finite() && value > 0.0, "gradient sum {value}");
    }
}
