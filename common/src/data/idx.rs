//! Fashion-MNIST (and MNIST) in IDX files: `train-*` for training, `t10k-*` for validation.
//!
//! The four files (gzipped, as Debian's `dataset-fashion-mnist` ships them, or plain) are read
//! into memory once: 60 000 + 10 000 grayscale 28×28 images, labels 0–9.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use super::Split;
use super::plan::ShardLayout;
use super::source::{RawImage, Sample, SampleError, Source};

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;
const CLASSES: usize = 10;

/// One split: images and their labels.
struct IdxSplit {
    images: PathBuf,
    rows: usize,
    cols: usize,
    pixels: Vec<u8>,
    labels: Vec<u8>,
}

/// Fashion-MNIST read from a folder of IDX files.
pub struct FashionMnist {
    train: IdxSplit,
    validation: IdxSplit,
}

impl FashionMnist {
    /// Reads both splits' image and label files from `dir` into memory.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        if !dir.is_dir() {
            anyhow::bail!(
                "{} is not a folder of IDX files (data.path; Debian: apt-get install dataset-fashion-mnist)",
                dir.display()
            );
        }
        Ok(Self {
            train: IdxSplit::open(dir, "train")?,
            validation: IdxSplit::open(dir, "t10k")?,
        })
    }

    fn split(&self, split: Split) -> &IdxSplit {
        match split {
            Split::Train => &self.train,
            Split::Validation => &self.validation,
        }
    }
}

impl IdxSplit {
    fn open(dir: &Path, prefix: &str) -> anyhow::Result<Self> {
        let images = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
        let labels_path = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
        let (dims, pixels) = parse(&images, IMAGES_MAGIC)?;
        let (label_dims, labels) = parse(&labels_path, LABELS_MAGIC)?;
        let [count, rows, cols] = dims[..] else {
            anyhow::bail!(
                "{}: expected 3 dimensions, found {dims:?}",
                images.display()
            );
        };
        anyhow::ensure!(
            label_dims == [count],
            "{} holds {label_dims:?} labels for {count} images in {}",
            labels_path.display(),
            images.display()
        );
        if let Some(bad) = labels.iter().position(|&l| l as usize >= CLASSES) {
            anyhow::bail!(
                "{}: label {} of item {bad} is not a class 0–9",
                labels_path.display(),
                labels[bad]
            );
        }
        Ok(Self {
            images,
            rows,
            cols,
            pixels,
            labels,
        })
    }
}

/// `name.gz`, else `name`, in `dir`.
fn find(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    [format!("{name}.gz"), name.to_string()]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow::anyhow!("{} has no {name}(.gz)", dir.display()))
}

/// The dimensions and payload of an IDX file of unsigned bytes.
fn parse(path: &Path, magic: u32) -> anyhow::Result<(Vec<usize>, Vec<u8>)> {
    let file = File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    let read = if path.extension().is_some_and(|e| e == "gz") {
        GzDecoder::new(file).read_to_end(&mut bytes)
    } else {
        { file }.read_to_end(&mut bytes)
    };
    read.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let word = |i: usize| -> anyhow::Result<usize> {
        let b = bytes
            .get(4 * i..4 * i + 4)
            .ok_or_else(|| anyhow::anyhow!("{}: truncated header", path.display()))?;
        Ok(u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize)
    };
    let found = word(0)? as u32;
    anyhow::ensure!(
        found == magic,
        "{}: magic number {found:#010x}, expected {magic:#010x} (unsigned-byte IDX)",
        path.display()
    );
    let ndim = (magic & 0xFF) as usize;
    let dims = (1..=ndim).map(word).collect::<anyhow::Result<Vec<_>>>()?;
    let header = 4 * (ndim + 1);
    let expected: usize = dims.iter().product();
    anyhow::ensure!(
        bytes.len() - header == expected,
        "{}: {} payload bytes, the header promises {expected}",
        path.display(),
        bytes.len() - header
    );
    bytes.drain(..header);
    Ok((dims, bytes))
}

impl Source for FashionMnist {
    fn len(&self, split: Split) -> u64 {
        self.split(split).labels.len() as u64
    }

    fn train_layout(&self) -> ShardLayout {
        ShardLayout::uniform(self.len(Split::Train))
    }

    fn read(&self, split: Split, index: u64) -> Result<Sample, SampleError> {
        let s = self.split(split);
        let i = index as usize;
        let label = *s.labels.get(i).ok_or_else(|| {
            SampleError::Fatal(format!("{}: no item {index}", s.images.display()))
        })?;
        let size = s.rows * s.cols;
        Ok(Sample {
            label: i64::from(label),
            image: RawImage::Pixels {
                width: s.cols,
                height: s.rows,
                channels: 1,
                data: s.pixels[i * size..(i + 1) * size].to_vec(),
            },
        })
    }

    fn locate(&self, split: Split, index: u64) -> String {
        format!("{} item {index}", self.split(split).images.display())
    }

    fn classes(&self) -> usize {
        CLASSES
    }
}

#[cfg(test)]
pub(crate) mod fixture {
    //! Small IDX datasets written for tests.

    use std::fs::File;
    use std::io::Write;
    use std::path::Path;

    use flate2::Compression;
    use flate2::write::GzEncoder;

    use super::{IMAGES_MAGIC, LABELS_MAGIC};

    fn idx(magic: u32, dims: &[u32], payload: &[u8]) -> Vec<u8> {
        let mut out = magic.to_be_bytes().to_vec();
        dims.iter().for_each(|d| out.extend(d.to_be_bytes()));
        out.extend(payload);
        out
    }

    fn write(dir: &Path, name: &str, bytes: &[u8], gzip: bool) {
        if gzip {
            let mut enc = GzEncoder::new(
                File::create(dir.join(format!("{name}.gz"))).unwrap(),
                Compression::fast(),
            );
            enc.write_all(bytes).unwrap();
            enc.finish().unwrap();
        } else {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }

    /// A dataset of 2×2 images with `labels`, the same for the training and test splits
    /// (training files gzipped, test files plain).
    pub(crate) fn dataset(dir: &Path, labels: &[u8]) {
        let n = labels.len() as u32;
        let pixels: Vec<u8> = (0..n * 4).map(|i| i as u8).collect();
        for (prefix, gzip) in [("train", true), ("t10k", false)] {
            write(
                dir,
                &format!("{prefix}-images-idx3-ubyte"),
                &idx(IMAGES_MAGIC, &[n, 2, 2], &pixels),
                gzip,
            );
            write(
                dir,
                &format!("{prefix}-labels-idx1-ubyte"),
                &idx(LABELS_MAGIC, &[n], labels),
                gzip,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::dataset;
    use super::*;

    #[test]
    fn reads_gzipped_and_plain_files() {
        let dir = tempfile::tempdir().unwrap();
        dataset(dir.path(), &[3, 9, 0]);
        let data = FashionMnist::open(dir.path()).unwrap();
        assert_eq!(
            (data.len(Split::Train), data.len(Split::Validation)),
            (3, 3)
        );
        let sample = data.read(Split::Train, 1).unwrap();
        assert_eq!(sample.label, 9);
        assert_eq!(
            sample.image,
            RawImage::Pixels {
                width: 2,
                height: 2,
                channels: 1,
                data: vec![4, 5, 6, 7]
            }
        );
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        dataset(dir.path(), &[3, 12]);
        let err = FashionMnist::open(dir.path()).err().unwrap().to_string();
        assert!(
            err.contains("train-labels-idx1-ubyte.gz") && err.contains("label 12"),
            "{err}"
        );

        let empty = tempfile::tempdir().unwrap();
        let err = FashionMnist::open(empty.path()).err().unwrap().to_string();
        assert!(err.contains("train-images-idx3-ubyte"), "{err}");
    }

    #[test]
    fn the_debian_package_when_installed() {
        let dir = Path::new(crate::config::FASHION_MNIST_DIR);
        if !dir.is_dir() {
            crate::testing::skip(
                "the_debian_package_when_installed",
                &format!(
                    "{} is missing: `apt-get install dataset-fashion-mnist` (done by .ci/run)",
                    dir.display()
                ),
            );
            return;
        }
        let data = FashionMnist::open(dir).unwrap();
        assert_eq!(
            (data.len(Split::Train), data.len(Split::Validation)),
            (60_000, 10_000)
        );
        let mut counts = [0; CLASSES];
        (0..60_000).for_each(|i| counts[data.read(Split::Train, i).unwrap().label as usize] += 1);
        assert_eq!(counts, [6000; CLASSES]);
    }
}
