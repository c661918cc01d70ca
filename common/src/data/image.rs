//! Pixels: JPEG decoding to RGB and one fused crop + resize + flip + normalise pass.
//!
//! The resampler is separable with a triangle (bilinear) kernel widened by the scale factor
//! when shrinking, as PIL's antialiased bilinear: a horizontal pass over only the crop's rows
//! into a small f32 buffer, then a vertical pass that writes CHW floats in [-1, 1] directly.
//! Mirroring is folded into the horizontal coefficients, so a flip costs nothing.

use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

/// An 8-bit RGB image, rows of interleaved R, G, B.
#[derive(Debug, Clone, PartialEq)]
pub struct Rgb8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// Largest side accepted from a JPEG header: rejects absurd sizes before allocating.
const MAX_SIDE: usize = 1 << 14;

impl Rgb8 {
    /// Decodes a JPEG; grayscale, CMYK and YCCK files come out as RGB.
    pub fn decode_jpeg(bytes: &[u8]) -> Result<Self, String> {
        let options = DecoderOptions::default()
            .jpeg_set_out_colorspace(ColorSpace::RGB)
            .set_max_width(MAX_SIDE)
            .set_max_height(MAX_SIDE)
            .set_strict_mode(true);
        let mut decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
        let data = decoder
            .decode()
            .map_err(|e| format!("not a decodable JPEG: {e}"))?;
        let info = decoder.info().ok_or("JPEG without a frame header")?;
        let (width, height) = (usize::from(info.width), usize::from(info.height));
        if data.len() != width * height * 3 {
            return Err(format!(
                "JPEG decoded to {} bytes, expected {width}×{height}×3",
                data.len()
            ));
        }
        Ok(Self {
            width,
            height,
            data,
        })
    }

    /// Raw pixels with 1 (gray) or 3 (RGB) interleaved channels.
    pub fn from_pixels(
        width: usize,
        height: usize,
        channels: usize,
        data: &[u8],
    ) -> Result<Self, String> {
        if data.len() != width * height * channels {
            return Err(format!(
                "{} bytes for a {width}×{height}×{channels} image",
                data.len()
            ));
        }
        let data = match channels {
            3 => data.to_vec(),
            1 => data.iter().flat_map(|&v| [v, v, v]).collect(),
            _ => return Err(format!("{channels} channels (expected 1 or 3)")),
        };
        Ok(Self {
            width,
            height,
            data,
        })
    }
}

/// A rectangle of source pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropBox {
    pub x: usize,
    pub y: usize,
    pub width: usize,
    pub height: usize,
}

/// Per output pixel: the first source pixel of its window and the window's weights.
struct Taps {
    starts: Vec<usize>,
    /// `width` weights per output pixel (zero-padded).
    weights: Vec<f32>,
    width: usize,
}

impl Taps {
    /// Taps mapping `len` source pixels starting at `origin` onto `out` pixels.
    fn new(origin: usize, len: usize, out: usize, mirror: bool) -> Self {
        let scale = len as f64 / out as f64;
        let support = scale.max(1.0);
        let width = (2.0 * support).ceil() as usize + 1;
        let mut starts = Vec::with_capacity(out);
        let mut weights = vec![0.0f32; out * width];
        for i in 0..out {
            let source = if mirror { out - 1 - i } else { i };
            let center = (source as f64 + 0.5) * scale;
            let lo = ((center - support).floor().max(0.0) as usize).min(len - 1);
            let hi = ((center + support).ceil() as usize).min(len);
            let row = &mut weights[i * width..(i + 1) * width];
            let mut total = 0.0;
            for (k, j) in (lo..hi).take(width).enumerate() {
                let w = (1.0 - ((j as f64 + 0.5 - center) / support).abs()).max(0.0);
                row[k] = w as f32;
                total += w;
            }
            if total > 0.0 {
                row.iter_mut().for_each(|w| *w /= total as f32);
            } else {
                row[0] = 1.0;
            }
            starts.push(origin + lo);
        }
        Self {
            starts,
            weights,
            width,
        }
    }

    fn window(&self, i: usize) -> (usize, &[f32]) {
        (
            self.starts[i],
            &self.weights[i * self.width..(i + 1) * self.width],
        )
    }
}

/// Resizes `crop` of `image` to `side`×`side`, mirrored when `flip`, into `out` as CHW floats
/// scaled from [0, 255] to [-1, 1].
pub fn crop_resize_into(image: &Rgb8, crop: CropBox, side: usize, flip: bool, out: &mut [f32]) {
    assert_eq!(out.len(), 3 * side * side, "output buffer size");
    let columns = Taps::new(crop.x, crop.width, side, flip);
    let rows = Taps::new(crop.y, crop.height, side, false);
    let stride = image.width * 3;
    let clamp = |x: usize, max: usize| x.min(max - 1);

    // Horizontal pass over the crop's rows: source rows → `side` RGB columns.
    let first_row = rows.starts[0];
    let last_row = clamp(rows.starts[side - 1] + rows.width, image.height);
    let mut horizontal = vec![0.0f32; (last_row + 1 - first_row) * side * 3];
    for (r, y) in (first_row..=last_row).enumerate() {
        let src = &image.data[y * stride..(y + 1) * stride];
        let dst = &mut horizontal[r * side * 3..(r + 1) * side * 3];
        for x in 0..side {
            let (start, weights) = columns.window(x);
            let mut acc = [0.0f32; 3];
            for (k, &w) in weights.iter().enumerate() {
                let p = clamp(start + k, image.width) * 3;
                acc[0] += w * f32::from(src[p]);
                acc[1] += w * f32::from(src[p + 1]);
                acc[2] += w * f32::from(src[p + 2]);
            }
            dst[x * 3..x * 3 + 3].copy_from_slice(&acc);
        }
    }

    // Vertical pass, writing normalised planes.
    let plane = side * side;
    let mut line = vec![0.0f32; side * 3];
    for y in 0..side {
        let (start, weights) = rows.window(y);
        line.fill(0.0);
        for (k, &w) in weights.iter().enumerate() {
            if w == 0.0 {
                continue;
            }
            let r = clamp(start + k, image.height) - first_row;
            let src = &horizontal[r * side * 3..(r + 1) * side * 3];
            line.iter_mut().zip(src).for_each(|(acc, &v)| *acc += w * v);
        }
        for x in 0..side {
            for c in 0..3 {
                out[c * plane + y * side + x] = (line[x * 3 + c] / 127.5 - 1.0).clamp(-1.0, 1.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(width: usize, height: usize) -> Rgb8 {
        let mut data = Vec::with_capacity(width * height * 3);
        for y in 0..height {
            for x in 0..width {
                data.extend([
                    (x * 255 / (width - 1)) as u8,
                    (y * 255 / (height - 1)) as u8,
                    128,
                ]);
            }
        }
        Rgb8 {
            width,
            height,
            data,
        }
    }

    fn whole(image: &Rgb8) -> CropBox {
        CropBox {
            x: 0,
            y: 0,
            width: image.width,
            height: image.height,
        }
    }

    #[test]
    fn same_size_is_the_identity_up_to_scaling() {
        let image = gradient(9, 7);
        let mut out = vec![0.0; 3 * 9 * 9];
        let crop = CropBox {
            x: 0,
            y: 0,
            width: 9,
            height: 7,
        };
        crop_resize_into(&image, crop, 9, false, &mut out);
        // Red varies along x only and is reproduced exactly at 1:1 horizontally.
        for x in 0..9 {
            let expected = f32::from(image.data[x * 3]) / 127.5 - 1.0;
            assert!((out[4 * 9 + x] - expected).abs() < 1e-5, "x {x}");
        }
        assert!(out.iter().all(|v| (-1.0..=1.0).contains(v)));
    }

    #[test]
    fn a_constant_image_stays_constant_at_any_scale() {
        let image = Rgb8 {
            width: 37,
            height: 23,
            data: [200u8, 10, 90].repeat(37 * 23),
        };
        for side in [5, 23, 64] {
            let mut out = vec![0.0; 3 * side * side];
            crop_resize_into(&image, whole(&image), side, true, &mut out);
            for (c, value) in [200.0f32, 10.0, 90.0].into_iter().enumerate() {
                let plane = &out[c * side * side..(c + 1) * side * side];
                assert!(
                    plane
                        .iter()
                        .all(|&v| (v - (value / 127.5 - 1.0)).abs() < 1e-4)
                );
            }
        }
    }

    #[test]
    fn flipping_mirrors_columns() {
        let image = gradient(40, 30);
        let side = 16;
        let (mut plain, mut mirrored) = (vec![0.0; 3 * side * side], vec![0.0; 3 * side * side]);
        crop_resize_into(&image, whole(&image), side, false, &mut plain);
        crop_resize_into(&image, whole(&image), side, true, &mut mirrored);
        for y in 0..side {
            for x in 0..side {
                let a = plain[y * side + x];
                let b = mirrored[y * side + side - 1 - x];
                assert!((a - b).abs() < 1e-5);
            }
        }
        // Red rises left to right in the plain image.
        assert!(plain[side - 1] > plain[0]);
    }

    #[test]
    fn a_crop_reads_only_its_region() {
        // Left half black, right half white: a crop of the right half is all white.
        let (width, height) = (20, 10);
        let data = (0..width * height)
            .flat_map(|i| {
                if i % width >= 10 {
                    [255u8; 3]
                } else {
                    [0u8; 3]
                }
            })
            .collect();
        let image = Rgb8 {
            width,
            height,
            data,
        };
        let crop = CropBox {
            x: 10,
            y: 2,
            width: 10,
            height: 6,
        };
        let mut out = vec![0.0; 3 * 8 * 8];
        crop_resize_into(&image, crop, 8, false, &mut out);
        assert!(out.iter().all(|&v| (v - 1.0).abs() < 1e-5), "{out:?}");
    }

    #[test]
    fn gray_pixels_expand_to_rgb() {
        let image = Rgb8::from_pixels(2, 1, 1, &[7, 9]).unwrap();
        assert_eq!(image.data, [7, 7, 7, 9, 9, 9]);
        assert!(Rgb8::from_pixels(2, 2, 1, &[0; 3]).is_err());
    }

    #[test]
    fn garbage_is_not_a_jpeg() {
        let err = Rgb8::decode_jpeg(b"\xFF\xD8\xFF\xE0 not really").unwrap_err();
        assert!(err.contains("JPEG"), "{err}");
    }
}
