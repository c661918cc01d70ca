//! Deterministic synthetic images with learnable class structure.
//!
//! Each class is a sinusoidal grating with its own orientation and period; every sample draws
//! its own phase, contrast and colour tint, and Gaussian pixel noise is added on top. A sample
//! is a pure function of (seed, split, index), so any rank can produce any sample and runs are
//! reproducible without storing a dataset.

use std::f32::consts::PI;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::Split;
use super::plan::ShardLayout;
use super::source::{RawImage, Sample, SampleError, Source};

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
    train_samples: u64,
    val_samples: u64,
}

impl SyntheticImages {
    /// A generator of `num_classes` classes of `image_size`-square images, with Gaussian pixel
    /// noise of standard deviation `noise` and the given number of samples per split.
    pub fn new(
        seed: u64,
        num_classes: usize,
        image_size: usize,
        noise: f64,
        train_samples: u64,
        val_samples: u64,
    ) -> Self {
        Self {
            seed,
            num_classes,
            image_size,
            noise: noise as f32,
            train_samples,
            val_samples,
        }
    }

    /// The label of a sample, without rendering it.
    pub fn label(&self, split: Split, index: u64) -> usize {
        (self.rng(split, index).random::<u64>() % self.num_classes as u64) as usize
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

impl Source for SyntheticImages {
    fn len(&self, split: Split) -> u64 {
        match split {
            Split::Train => self.train_samples,
            Split::Validation => self.val_samples,
        }
    }

    fn train_layout(&self) -> ShardLayout {
        ShardLayout::uniform(self.train_samples)
    }

    fn read(&self, split: Split, index: u64) -> Result<Sample, SampleError> {
        let mut pixels = Vec::new();
        let label = self.render(split, index, &mut pixels);
        Ok(Sample {
            label: label as i64,
            image: RawImage::Ready(pixels),
        })
    }

    fn locate(&self, split: Split, index: u64) -> String {
        format!("synthetic {split:?} sample {index}")
    }

    fn classes(&self) -> usize {
        self.num_classes
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
        SyntheticImages::new(7, 10, 32, 0.5, 100, 10)
    }

    fn pixels(src: &SyntheticImages, split: Split, index: u64) -> Vec<f32> {
        match src.read(split, index).unwrap().image {
            RawImage::Ready(pixels) => pixels,
            other => panic!("synthetic images are rendered, got {other:?}"),
        }
    }

    #[test]
    fn samples_are_deterministic_and_distinct() {
        let src = source();
        assert_eq!(
            pixels(&src, Split::Train, 3),
            pixels(&source(), Split::Train, 3)
        );
        assert_ne!(pixels(&src, Split::Train, 3), pixels(&src, Split::Train, 4));
        assert_ne!(
            pixels(&src, Split::Validation, 3),
            pixels(&src, Split::Train, 3)
        );
    }

    #[test]
    fn pixels_are_in_range_and_labels_match() {
        let src = source();
        for index in 0..4 {
            let sample = src.read(Split::Train, index).unwrap();
            assert_eq!(sample.label as usize, src.label(Split::Train, index));
            let RawImage::Ready(pixels) = sample.image else {
                panic!("rendered")
            };
            assert_eq!(pixels.len(), 3 * 32 * 32);
            assert!(pixels.iter().all(|p| (-1.0..=1.0).contains(p)));
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
        let src = SyntheticImages::new(1, 10, 24, 0.0, 100, 10);
        let index = (0..).find(|&i| src.label(Split::Train, i) == 0).unwrap();
        let image = pixels(&src, Split::Train, index);
        let row = |c: usize, y: usize| &image[(c * 24 + y) * 24..(c * 24 + y + 1) * 24];
        for c in 0..3 {
            assert!((1..24).all(|y| row(c, y) == row(c, 0)));
        }
        assert!(row(0, 0).iter().any(|&p| p > 0.2) && row(0, 0).iter().any(|&p| p < -0.2));
    }
}
