//! Inception preprocessing (REFERENCES.md; TF-slim's `inception_preprocessing.py`).
//!
//! Training: a distorted bounding box (area and aspect ratio drawn uniformly from their ranges,
//! up to `max_attempts` tries, then a central crop), resized to the input side, a random
//! horizontal flip and optional colour distortion. Evaluation: the crops of the configured
//! protocol ([`super::crops`]; by default the central `eval_crop` fraction of each side), resized. Both end in [-1, 1]. Every random draw comes from the caller's RNG, so
//! a sample's augmentation is a pure function of how that RNG was seeded.

use rand::Rng;

use super::Split;
use super::crops;
use super::image::{CropBox, Rgb8, crop_resize_into};
use super::source::RawImage;
use crate::config::AugmentSection;

/// How samples become model inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    /// Side of the square model input, in pixels.
    pub image_size: usize,
    /// Crop, flip and colour settings (training) and the central crop fraction (evaluation).
    pub augment: AugmentSection,
}

impl Preprocess {
    /// Model inputs made of each sample of `split`: one for training, the evaluation protocol's
    /// crops for validation.
    pub fn views(&self, split: Split) -> usize {
        match split {
            Split::Train => 1,
            Split::Validation => self.augment.eval_crops.count(),
        }
    }

    /// Writes the model inputs for `raw` into `out` ([`Preprocess::views`] CHW inputs of
    /// `3 × image_size²`).
    pub fn apply(
        &self,
        raw: &RawImage,
        split: Split,
        rng: &mut impl Rng,
        out: &mut [f32],
    ) -> Result<(), String> {
        let image = match raw {
            RawImage::Ready(pixels) => {
                if pixels.len() != out.len() {
                    return Err(format!("{} values, expected {}", pixels.len(), out.len()));
                }
                out.copy_from_slice(pixels);
                return Ok(());
            }
            RawImage::Encoded(bytes) => Rgb8::decode_jpeg(bytes)?,
            RawImage::Pixels {
                width,
                height,
                channels,
                data,
            } => Rgb8::from_pixels(*width, *height, *channels, data)?,
        };
        if image.width == 0 || image.height == 0 {
            return Err("empty image".into());
        }
        let a = &self.augment;
        match split {
            Split::Train => {
                let crop = distorted_box(image.width, image.height, a, rng);
                let flip = a.flip && rng.random_bool(0.5);
                crop_resize_into(&image, crop, self.image_size, flip, out);
                if a.color {
                    distort_color(out, self.image_size * self.image_size, rng);
                }
            }
            Split::Validation => {
                let side = self.image_size;
                let views =
                    crops::views(a.eval_crops, image.width, image.height, side, a.eval_crop);
                crops::render(&image, &views, side, out);
            }
        }
        Ok(())
    }
}

/// TF's `sample_distorted_bounding_box` over the whole image: uniform aspect ratio and area
/// fraction, kept when it fits and covers at least `min_object_covered`; a central crop of the
/// largest box within the aspect range otherwise.
pub fn distorted_box(
    width: usize,
    height: usize,
    a: &AugmentSection,
    rng: &mut impl Rng,
) -> CropBox {
    let area = (width * height) as f64;
    for _ in 0..a.max_attempts {
        let aspect = rng.random_range(a.aspect_range[0]..=a.aspect_range[1]);
        let target = area * rng.random_range(a.area_range[0]..=a.area_range[1]);
        let w = (target * aspect).sqrt().round() as usize;
        let h = (target / aspect).sqrt().round() as usize;
        if w == 0 || h == 0 || w > width || h > height {
            continue;
        }
        if ((w * h) as f64) < a.min_object_covered * area {
            continue;
        }
        return CropBox {
            x: rng.random_range(0..=width - w),
            y: rng.random_range(0..=height - h),
            width: w,
            height: h,
        };
    }
    fallback_box(width, height, a.aspect_range)
}

/// The whole image, trimmed at the centre to the nearest aspect ratio in range.
fn fallback_box(width: usize, height: usize, aspect_range: [f64; 2]) -> CropBox {
    let ratio = width as f64 / height as f64;
    let (w, h) = if ratio < aspect_range[0] {
        (
            width,
            ((width as f64 / aspect_range[0]).round() as usize).clamp(1, height),
        )
    } else if ratio > aspect_range[1] {
        (
            ((height as f64 * aspect_range[1]).round() as usize).clamp(1, width),
            height,
        )
    } else {
        (width, height)
    };
    CropBox {
        x: (width - w) / 2,
        y: (height - h) / 2,
        width: w,
        height: h,
    }
}

/// TF's `central_crop`: the middle `fraction` of each side.
pub fn central_box(width: usize, height: usize, fraction: f64) -> CropBox {
    let w = ((width as f64 * fraction).round() as usize).clamp(1, width);
    let h = ((height as f64 * fraction).round() as usize).clamp(1, height);
    CropBox {
        x: (width - w) / 2,
        y: (height - h) / 2,
        width: w,
        height: h,
    }
}

/// TF-slim's `distort_color`: brightness (±32/255), saturation and contrast (×0.5–1.5) and hue
/// (±0.2 turns), in one of four orders, clipped; applied to CHW planes in [-1, 1].
fn distort_color(chw: &mut [f32], plane: usize, rng: &mut impl Rng) {
    let brightness = rng.random_range(-32.0f32 / 255.0..=32.0 / 255.0);
    let saturation = rng.random_range(0.5f32..=1.5);
    let hue = rng.random_range(-0.2f32..=0.2);
    let contrast = rng.random_range(0.5f32..=1.5);
    const ORDERS: [[u8; 4]; 4] = [[0, 1, 2, 3], [1, 0, 3, 2], [1, 3, 0, 2], [2, 1, 3, 0]];
    let order = ORDERS[rng.random_range(0..ORDERS.len())];
    // Work in [0, 1] as TF does.
    chw.iter_mut().for_each(|v| *v = (*v + 1.0) * 0.5);
    for op in order {
        match op {
            0 => chw.iter_mut().for_each(|v| *v += brightness),
            1 => for_each_pixel(chw, plane, |rgb| {
                let (h, s, v) = rgb_to_hsv(*rgb);
                *rgb = hsv_to_rgb(h, (s * saturation).clamp(0.0, 1.0), v);
            }),
            2 => for_each_pixel(chw, plane, |rgb| {
                let (h, s, v) = rgb_to_hsv(*rgb);
                *rgb = hsv_to_rgb((h + hue).rem_euclid(1.0), s, v);
            }),
            _ => {
                for channel in chw.chunks_exact_mut(plane) {
                    let mean = channel.iter().sum::<f32>() / plane as f32;
                    channel
                        .iter_mut()
                        .for_each(|v| *v = (*v - mean) * contrast + mean);
                }
            }
        }
        chw.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
    }
    chw.iter_mut().for_each(|v| *v = *v * 2.0 - 1.0);
}

fn for_each_pixel(chw: &mut [f32], plane: usize, mut f: impl FnMut(&mut [f32; 3])) {
    for i in 0..plane {
        let mut rgb = [chw[i], chw[plane + i], chw[2 * plane + i]];
        f(&mut rgb);
        [chw[i], chw[plane + i], chw[2 * plane + i]] = rgb;
    }
}

/// Hue in turns [0, 1), saturation and value in [0, 1].
fn rgb_to_hsv([r, g, b]: [f32; 3]) -> (f32, f32, f32) {
    let max = r.max(g).max(b);
    let delta = max - r.min(g).min(b);
    let s = if max > 0.0 { delta / max } else { 0.0 };
    let h = if delta == 0.0 {
        0.0
    } else if max == r {
        ((g - b) / delta).rem_euclid(6.0) / 6.0
    } else if max == g {
        ((b - r) / delta + 2.0) / 6.0
    } else {
        ((r - g) / delta + 4.0) / 6.0
    };
    (h, s, max)
}

fn hsv_to_rgb(h: f32, s: f32, v: f32) -> [f32; 3] {
    let sector = h * 6.0;
    let c = v * s;
    let x = c * (1.0 - (sector.rem_euclid(2.0) - 1.0).abs());
    let m = v - c;
    let (r, g, b) = match sector as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    [r + m, g + m, b + m]
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    #[test]
    fn distorted_boxes_respect_area_aspect_and_bounds() {
        let a = AugmentSection::default();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (width, height) = (500, 375);
        for _ in 0..2000 {
            let b = distorted_box(width, height, &a, &mut rng);
            assert!(b.x + b.width <= width && b.y + b.height <= height);
            let fraction = (b.width * b.height) as f64 / (width * height) as f64;
            assert!(fraction >= a.min_object_covered - 1e-9 && fraction <= 1.0 + 1e-9);
            let aspect = b.width as f64 / b.height as f64;
            // Rounding to whole pixels moves the aspect ratio by a little.
            assert!(
                aspect > a.aspect_range[0] * 0.9 && aspect < a.aspect_range[1] * 1.1,
                "{aspect}"
            );
        }
    }

    #[test]
    fn an_impossible_request_falls_back_to_a_central_crop() {
        // A 1000×10 strip cannot hold a box of aspect ≤ 4/3 with half its area.
        let a = AugmentSection {
            area_range: [0.5, 1.0],
            ..AugmentSection::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let b = distorted_box(1000, 10, &a, &mut rng);
        assert_eq!((b.height, b.width), (10, 13));
        assert_eq!(b.x, (1000 - 13) / 2);
    }

    #[test]
    fn central_crop_takes_the_middle() {
        let b = central_box(400, 200, 0.875);
        assert_eq!((b.x, b.y, b.width, b.height), (25, 12, 350, 175));
    }

    #[test]
    fn hsv_round_trips() {
        for rgb in [
            [0.2, 0.5, 0.9],
            [1.0, 0.0, 0.0],
            [0.3, 0.3, 0.3],
            [0.9, 0.8, 0.1],
        ] {
            let (h, s, v) = rgb_to_hsv(rgb);
            let back = hsv_to_rgb(h, s, v);
            for c in 0..3 {
                assert!((back[c] - rgb[c]).abs() < 1e-5, "{rgb:?} → {back:?}");
            }
        }
    }

    #[test]
    fn colour_distortion_stays_in_range_and_changes_pixels() {
        let plane = 16;
        let original: Vec<f32> = (0..3 * plane).map(|i| (i as f32 / 24.0) - 1.0).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut distorted = original.clone();
        distort_color(&mut distorted, plane, &mut rng);
        assert!(distorted.iter().all(|v| (-1.0..=1.0).contains(v)));
        assert_ne!(distorted, original);
    }
}
