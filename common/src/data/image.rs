//! Pixels: JPEG decoding to RGB, then crop + resize + flip + normalise.
//!
//! Resizing is `fast_image_resize`'s SIMD convolution with a bilinear kernel widened when
//! shrinking (antialiased, as PIL's), on 8-bit RGB as PIL and torchvision do; the last pass
//! mirrors (for a flip) and writes CHW floats in [-1, 1] in one sweep.

use std::cell::RefCell;

use fast_image_resize::images::{CroppedImage, Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

/// An 8-bit RGB image, rows of interleaved R, G, B.
#[derive(Debug, Clone, PartialEq)]
pub struct Rgb8 {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width × height × 3` bytes, top row first.
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CropBox {
    /// Column of the left edge.
    pub x: usize,
    /// Row of the top edge.
    pub y: usize,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
}

thread_local! {
    /// Each loader thread keeps its resizer (it caches CPU-feature choices and buffers).
    static RESIZER: RefCell<Resizer> = RefCell::new(Resizer::new());
}

impl Rgb8 {
    /// The whole image as a crop box.
    pub fn bounds(&self) -> CropBox {
        CropBox {
            x: 0,
            y: 0,
            width: self.width,
            height: self.height,
        }
    }

    /// The image resized to `width`×`height` (antialiased bilinear, as [`crop_resize_into`]).
    pub fn resized(&self, width: usize, height: usize) -> Rgb8 {
        let mut resized = Image::new(width as u32, height as u32, PixelType::U8x3);
        RESIZER
            .with(|r| {
                r.borrow_mut()
                    .resize(&self.as_ref(), &mut resized, &resize_options())
            })
            .expect("resizing between two RGB8 images");
        Rgb8 {
            width,
            height,
            data: resized.into_vec(),
        }
    }

    fn as_ref(&self) -> ImageRef<'_> {
        ImageRef::new(
            self.width as u32,
            self.height as u32,
            &self.data,
            PixelType::U8x3,
        )
        .expect("an RGB8 image holds width × height × 3 bytes")
    }
}

/// Bilinear convolution, its kernel widened when shrinking (antialiased).
fn resize_options() -> ResizeOptions {
    ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
}

/// Resizes `crop` of `image` to `side`×`side` (antialiased bilinear), mirrored when `flip`, into
/// `out` as CHW floats scaled from [0, 255] to [-1, 1].
pub fn crop_resize_into(image: &Rgb8, crop: CropBox, side: usize, flip: bool, out: &mut [f32]) {
    assert_eq!(out.len(), 3 * side * side, "output buffer size");
    let src = image.as_ref();
    // A view of the crop alone: as crop-then-resize, no pixel outside it is sampled.
    let cropped = CroppedImage::new(
        &src,
        crop.x as u32,
        crop.y as u32,
        crop.width as u32,
        crop.height as u32,
    )
    .expect("crop boxes lie inside their image");
    let mut resized = Image::new(side as u32, side as u32, PixelType::U8x3);
    RESIZER
        .with(|r| {
            r.borrow_mut()
                .resize(&cropped, &mut resized, &resize_options())
        })
        .expect("resizing between two RGB8 images");

    let (pixels, plane) = (resized.buffer(), side * side);
    let (red, rest) = out.split_at_mut(plane);
    let (green, blue) = rest.split_at_mut(plane);
    for (y, row) in pixels.chunks_exact(side * 3).enumerate() {
        let line = y * side;
        for (x, rgb) in row.chunks_exact(3).enumerate() {
            let at = line + if flip { side - 1 - x } else { x };
            red[at] = f32::from(rgb[0]) / 127.5 - 1.0;
            green[at] = f32::from(rgb[1]) / 127.5 - 1.0;
            blue[at] = f32::from(rgb[2]) / 127.5 - 1.0;
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
            crop_resize_into(&image, image.bounds(), side, true, &mut out);
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
        crop_resize_into(&image, image.bounds(), side, false, &mut plain);
        crop_resize_into(&image, image.bounds(), side, true, &mut mirrored);
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
