//! Tiny image sets of real JPEG files in the ILSVRC layout, for tests (feature `testing`).
//!
//! Each class has its own dominant colour, so a test can check a label from the pixels; sizes
//! alternate between landscape and portrait, and the second image of each class is grayscale.

use std::fs;
use std::path::Path;

use image::ExtendedColorType;
use image::codecs::jpeg::JpegEncoder;

/// Class folder names, in label order.
pub const WNIDS: [&str; 3] = ["n01440764", "n01443537", "n01484850"];
/// Each class's dominant colour.
pub const COLOURS: [[u8; 3]; 3] = [[200, 40, 40], [40, 200, 40], [40, 40, 200]];

/// A quality-90 JPEG of class `label`: its colour under a diagonal gradient, gray when asked.
pub fn jpeg(label: usize, variant: usize, width: u32, height: u32, gray: bool) -> Vec<u8> {
    let mut pixels = Vec::new();
    for y in 0..height {
        for x in 0..width {
            let shade = ((x + y + variant as u32 * 7) % 40) as u8;
            let rgb = COLOURS[label].map(|c| c.saturating_add(shade));
            if gray {
                pixels.push(rgb[label]);
            } else {
                pixels.extend(rgb);
            }
        }
    }
    let colour = if gray {
        ExtendedColorType::L8
    } else {
        ExtendedColorType::Rgb8
    };
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, 90)
        .encode(&pixels, width, height, colour)
        .expect("encoding a JPEG in memory");
    out
}

/// Writes `train/<wnid>/` with `per_class` images per class and `val/<wnid>/` with 2.
pub fn write_imagenet(root: &Path, per_class: usize) -> std::io::Result<()> {
    for (label, wnid) in WNIDS.iter().enumerate() {
        for (split, count) in [("train", per_class), ("val", 2)] {
            let dir = root.join(split).join(wnid);
            fs::create_dir_all(&dir)?;
            for k in 0..count {
                let (w, h) = if k % 2 == 0 { (50, 38) } else { (38, 50) };
                fs::write(
                    dir.join(format!("{wnid}_{k}.JPEG")),
                    jpeg(label, k, w, h, k == 1),
                )?;
            }
        }
    }
    Ok(())
}
