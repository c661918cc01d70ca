//! The evaluation crops of the Inception papers' protocols: which boxes of an image become
//! model inputs.
//!
//! - 1 crop: the central `eval_crop` fraction of each side (TF-slim's evaluation);
//! - 10 crops: four corners and the centre, squares of `eval_crop` × the shorter side, each
//!   also mirrored (AlexNet's protocol, cut from the image as it is);
//! - 144 crops: GoogLeNet's protocol, scaled to the model's input side: the shorter side
//!   resized to 256, 288, 320 and 352 / 224 × that side; the left, centre and right (or top,
//!   centre, bottom) squares; from each its four corner crops and centre crop of the input side,
//!   and the square itself resized; each also mirrored.

use super::augment::central_box;
use super::image::{CropBox, Rgb8, crop_resize_into};
use crate::config::Crops;

/// One model input of an image: a box of it, mirrored or not, cut from the image itself or from
/// the image resized first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct View {
    /// The shorter side the image is resized to before the box is cut; `None`: the image as is.
    pub shorter_side: Option<usize>,
    /// The box, in the coordinates of the (resized) image.
    pub crop: CropBox,
    /// Mirrored left to right.
    pub flip: bool,
}

/// GoogLeNet's shorter sides for its 224-pixel input: 4 scales.
const GOOGLENET_SCALES: [f64; 4] = [256.0, 288.0, 320.0, 352.0];
/// GoogLeNet's input side, the unit of [`GOOGLENET_SCALES`].
const GOOGLENET_INPUT: f64 = 224.0;

/// The views of a `width`×`height` image under `crops`, for a model input of `side` pixels.
pub fn views(crops: Crops, width: usize, height: usize, side: usize, eval_crop: f64) -> Vec<View> {
    let unscaled = |crop| View {
        shorter_side: None,
        crop,
        flip: false,
    };
    match crops {
        Crops::One => vec![unscaled(central_box(width, height, eval_crop))],
        Crops::Ten => {
            let full = CropBox {
                x: 0,
                y: 0,
                width,
                height,
            };
            let crop_side = ((width.min(height) as f64 * eval_crop).round() as usize).max(1);
            mirrored(five_crops(full, crop_side).map(unscaled).to_vec())
        }
        Crops::GoogLeNet144 => {
            let mut views = Vec::with_capacity(72);
            for scale in GOOGLENET_SCALES {
                let shorter = (side as f64 * scale / GOOGLENET_INPUT).round() as usize;
                let (w, h) = scaled(width, height, shorter);
                for square in three_squares(w, h) {
                    let crops = five_crops(square, side).into_iter().chain([square]);
                    views.extend(crops.map(|crop| View {
                        shorter_side: Some(shorter),
                        crop,
                        flip: false,
                    }));
                }
            }
            mirrored(views)
        }
    }
}

/// Writes every view of `image` into `out`, one `3 × side²` CHW input after another.
pub fn render(image: &Rgb8, views: &[View], side: usize, out: &mut [f32]) {
    let size = 3 * side * side;
    assert_eq!(out.len(), views.len() * size, "output buffer size");
    // Views come grouped by scale: each resized image is made once.
    let mut resized: Option<(usize, Rgb8)> = None;
    for (view, out) in views.iter().zip(out.chunks_exact_mut(size)) {
        let source = match view.shorter_side {
            None => image,
            Some(shorter) => {
                if resized.as_ref().is_none_or(|(at, _)| *at != shorter) {
                    let (w, h) = scaled(image.width, image.height, shorter);
                    resized = Some((shorter, image.resized(w, h)));
                }
                &resized.as_ref().expect("set just above").1
            }
        };
        crop_resize_into(source, view.crop, side, view.flip, out);
    }
}

/// The size of `width`×`height` resized so that its shorter side is `shorter`.
fn scaled(width: usize, height: usize, shorter: usize) -> (usize, usize) {
    let factor = shorter as f64 / width.min(height) as f64;
    let longer = |n: usize| ((n as f64 * factor).round() as usize).max(shorter);
    if width <= height {
        (shorter, longer(height))
    } else {
        (longer(width), shorter)
    }
}

/// The first, middle and last squares along the longer side of a `width`×`height` image.
fn three_squares(width: usize, height: usize) -> [CropBox; 3] {
    let side = width.min(height);
    let room = width.max(height) - side;
    [0, room / 2, room].map(|offset| {
        let (x, y) = if width >= height {
            (offset, 0)
        } else {
            (0, offset)
        };
        CropBox {
            x,
            y,
            width: side,
            height: side,
        }
    })
}

/// The four corner squares of side `side` in `area` and its centre one.
fn five_crops(area: CropBox, side: usize) -> [CropBox; 5] {
    let side = side.min(area.width).min(area.height);
    let (right, bottom) = (area.x + area.width - side, area.y + area.height - side);
    let centre = (
        area.x + (area.width - side) / 2,
        area.y + (area.height - side) / 2,
    );
    [
        (area.x, area.y),
        (right, area.y),
        (area.x, bottom),
        (right, bottom),
        centre,
    ]
    .map(|(x, y)| CropBox {
        x,
        y,
        width: side,
        height: side,
    })
}

/// `views`, then each of them mirrored.
fn mirrored(views: Vec<View>) -> Vec<View> {
    let flipped: Vec<View> = views.iter().map(|v| View { flip: true, ..*v }).collect();
    views.into_iter().chain(flipped).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// A non-square image of deterministic noise: every crop of it looks different.
    fn noise(width: usize, height: usize) -> Rgb8 {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let data = (0..width * height * 3)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 56) as u8
            })
            .collect();
        Rgb8 {
            width,
            height,
            data,
        }
    }

    fn inside(view: &View, width: usize, height: usize) -> bool {
        let (w, h) = view
            .shorter_side
            .map_or((width, height), |s| scaled(width, height, s));
        view.crop.x + view.crop.width <= w && view.crop.y + view.crop.height <= h
    }

    /// Renders every view and checks that no two inputs are the same.
    fn assert_inputs_distinct(image: &Rgb8, views: &[View], side: usize) {
        let mut out = vec![0.0f32; views.len() * 3 * side * side];
        render(image, views, side, &mut out);
        let inputs: HashSet<Vec<u32>> = out
            .chunks_exact(3 * side * side)
            .map(|input| input.iter().map(|v| v.to_bits()).collect())
            .collect();
        assert_eq!(
            inputs.len(),
            views.len(),
            "some rendered inputs are identical"
        );
    }

    #[test]
    fn googlenet_protocol_gives_144_distinct_crops_of_the_right_sizes() {
        let (width, height, side) = (160, 120, 32);
        let views = views(Crops::GoogLeNet144, width, height, side, 0.875);
        assert_eq!(views.len(), 144);
        assert_eq!(views.iter().collect::<HashSet<_>>().len(), 144);
        let shorter: Vec<usize> = views.iter().map(|v| v.shorter_side.unwrap()).collect();
        // 32 × 256/224 … 352/224, rounded.
        let mut scales = shorter.clone();
        scales.dedup();
        assert_eq!(scales, [37, 41, 46, 50, 37, 41, 46, 50]);
        for view in &views {
            assert!(inside(view, width, height), "{view:?} leaves its image");
            let s = view.shorter_side.unwrap();
            // Five input-side crops per square, and the square itself.
            let expected = [side, s];
            assert!(
                view.crop.width == view.crop.height && expected.contains(&view.crop.width),
                "{view:?}"
            );
        }
        let squares = views.iter().filter(|v| v.crop.width != side).count();
        assert_eq!(squares, 4 * 3 * 2);
        assert_eq!(views.iter().filter(|v| v.flip).count(), 72);
        assert_inputs_distinct(&noise(width, height), &views, side);
    }

    #[test]
    fn ten_crops_are_the_corners_and_centre_each_mirrored() {
        let (width, height, side) = (90, 60, 24);
        let views = views(Crops::Ten, width, height, side, 0.875);
        assert_eq!(views.len(), 10);
        assert_eq!(views.iter().collect::<HashSet<_>>().len(), 10);
        for view in &views {
            assert_eq!(view.shorter_side, None);
            assert_eq!((view.crop.width, view.crop.height), (53, 53)); // 0.875 × 60
            assert!(inside(view, width, height));
        }
        let corners: Vec<(usize, usize)> =
            views[..5].iter().map(|v| (v.crop.x, v.crop.y)).collect();
        assert_eq!(corners, [(0, 0), (37, 0), (0, 7), (37, 7), (18, 3)]);
        assert_inputs_distinct(&noise(width, height), &views, side);
    }

    #[test]
    fn one_crop_is_the_central_fraction() {
        let views = views(Crops::One, 200, 100, 32, 0.5);
        assert_eq!(
            views,
            [View {
                shorter_side: None,
                crop: CropBox {
                    x: 50,
                    y: 25,
                    width: 100,
                    height: 50
                },
                flip: false
            }]
        );
    }

    #[test]
    fn portrait_images_take_their_squares_top_to_bottom() {
        assert_eq!(
            three_squares(10, 16).map(|b| (b.x, b.y, b.width)),
            [(0, 0, 10), (0, 3, 10), (0, 6, 10)]
        );
        assert_eq!(scaled(100, 50, 25), (50, 25));
        assert_eq!(scaled(50, 100, 25), (25, 50));
    }
}
