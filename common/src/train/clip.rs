//! Global-norm gradient clipping on the flat, averaged gradient (the paper clips at 2.0).

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clips_only_above_the_limit() {
        let mut grads = [3.0, 4.0];
        assert_eq!(clip_global_norm(&mut grads, 10.0), 5.0);
        assert_eq!(grads, [3.0, 4.0]);
        assert_eq!(clip_global_norm(&mut grads, 2.0), 5.0);
        assert!((global_norm(&grads) - 2.0).abs() < 1e-6);
        assert!((grads[0] / grads[1] - 0.75).abs() < 1e-6);
    }

    #[test]
    fn zero_limit_disables_clipping() {
        let mut grads = [30.0, 40.0];
        assert_eq!(clip_global_norm(&mut grads, 0.0), 50.0);
        assert_eq!(grads, [30.0, 40.0]);
    }
}
