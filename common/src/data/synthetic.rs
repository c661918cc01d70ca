//! Deterministic synthetic images with learnable class structure.
//!
//! Each class is a sinusoidal grating with its own orientation and period; every sample draws
//! its own phase, contrast and colour tint, and Gaussian pixel noise is added on top. A sample
//! is a pure function of (seed, split, index), so any rank can produce any sample and runs are
//! reproducible without storing a dataset.

use std::f32::consts::PI;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Batch, Split};

/// Orientations a class can take; classes beyond this count also vary the period.
const ORIENTATIONS: usize = 5;
/// Grating periods, as fractions of the image side.
const PERIODS: [f32; 4] = [0.08, 0.16, 0.28, 0.45];

/// A generator of labelled images.
#[derive(Debug, Clone)]
pub struct SyntheticImages {
    seed: u64,
    num_classes: usize,
    image_size: usize,
    noise: f32,
}

impl SyntheticImages {
    pub fn new(seed: u64, num_classes: usize, image_size: usize, noise: f64) -> Self {
        Self {
            seed,
            num_classes,
            image_size,
            noise: noise as f32,
        }
    }

    /// The label of a sample, without rendering it.
    pub fn label(&self, split: Split, index: u64) -> usize {
        (self.rng(split, index).random::<u64>() % self.num_classes as u64) as usize
    }

    /// Renders the samples at `indices` into one batch.
    pub fn batch(&self, split: Split, indices: &[u64]) -> Batch {
        let plane = self.image_size * self.image_size;
        let mut pixels = Vec::with_capacity(indices.len() * 3 * plane);
        let mut labels = Vec::with_capacity(indices.len());
        for &index in indices {
            labels.push(self.render(split, index, &mut pixels) as i64);
        }
        Batch {
            pixels,
            labels,
            image_size: self.image_size,
        }
    }

    /// Appends one CHW image to `out`; returns its label.
    fn render(&self, split: Split, index: u64, out: &mut Vec<f32>) -> usize {
        let mut rng = self.rng(split, index);
        let label = (rng.random::<u64>() % self.num_classes as u64) as usize;
        let angle = PI * (label % ORIENTATIONS) as f32 / ORIENTATIONS as f32;
        let period = PERIODS[(label / ORIENTATIONS) % PERIODS.len()] * self.image_size as f32;
        let phase = rng.random_range(0.0..2.0 * PI);
        let contrast = rng.random_range(0.6f32..1.0);
        let tint: [f32; 3] = std::array::from_fn(|_| rng.random_range(0.4f32..1.0));
        let (sin, cos) = angle.sin_cos();
        let side = self.image_size;
        let start = out.len();
        out.resize(start + 3 * side * side, 0.0);
        let image = &mut out[start..];
        for y in 0..side {
            for x in 0..side {
                let along = x as f32 * cos + y as f32 * sin;
                let wave = contrast * (2.0 * PI * along / period + phase).sin();
                for (c, weight) in tint.iter().enumerate() {
                    let noisy = wave * weight + self.noise * standard_normal(&mut rng);
                    image[(c * side + y) * side + x] = noisy.clamp(-1.0, 1.0);
                }
            }
        }
        label
    }

    fn rng(&self, split: Split, index: u64) -> ChaCha8Rng {
        let stream = match split {
            Split::Train => 0,
            Split::Validation => 1,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(stream);
        rng.set_word_pos(u128::from(index) << 12);
        rng
    }
}

/// A standard normal draw (Box–Muller).
fn standard_normal(rng: &mut impl Rng) -> f32 {
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> SyntheticImages {
        SyntheticImages::new(7, 10, 32, 0.5)
    }

    #[test]
    fn samples_are_deterministic_and_distinct() {
        let a = source().batch(Split::Train, &[3, 4]);
        let b = source().batch(Split::Train, &[3, 4]);
        assert_eq!(a, b);
        let plane = 3 * 32 * 32;
        assert_ne!(a.pixels[..plane], a.pixels[plane..]);
        let val = source().batch(Split::Validation, &[3]);
        assert_ne!(val.pixels[..], a.pixels[..plane]);
    }

    #[test]
    fn pixels_are_in_range_and_labels_match() {
        let batch = source().batch(Split::Train, &[0, 1, 2, 3]);
        assert_eq!(batch.pixels.len(), 4 * 3 * 32 * 32);
        assert!(batch.pixels.iter().all(|p| (-1.0..=1.0).contains(p)));
        for (i, &label) in batch.labels.iter().enumerate() {
            assert_eq!(label as usize, source().label(Split::Train, i as u64));
        }
    }

    #[test]
    fn classes_are_roughly_balanced() {
        let src = source();
        let mut counts = [0usize; 10];
        for i in 0..5000 {
            counts[src.label(Split::Train, i)] += 1;
        }
        assert!(
            counts.iter().all(|&c| (400..600).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn noiseless_class_zero_is_vertical_stripes() {
        // Class 0 has orientation 0: its wave runs along x, so without noise every row is equal.
        let src = SyntheticImages::new(1, 10, 24, 0.0);
        let index = (0..).find(|&i| src.label(Split::Train, i) == 0).unwrap();
        let image = src.batch(Split::Train, &[index]).pixels;
        let row = |c: usize, y: usize| &image[(c * 24 + y) * 24..(c * 24 + y + 1) * 24];
        for c in 0..3 {
            assert!((1..24).all(|y| row(c, y) == row(c, 0)));
        }
        assert!(row(0, 0).iter().any(|&p| p > 0.2) && row(0, 0).iter().any(|&p| p < -0.2));
    }
}
