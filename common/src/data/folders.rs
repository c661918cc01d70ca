//! The ILSVRC-2012 folder layout: `train/<wnid>/*.JPEG`, and `val/` either as the same per-class
//! folders or flat (`ILSVRC2012_val_*.JPEG`) with a ground-truth file in file-name order: one
//! wnid per line (TensorFlow's `imagenet_2012_validation_synset_labels.txt`), or the devkit's
//! `ILSVRC2012_validation_ground_truth.txt` of numeric ILSVRC2012_IDs, read through the
//! `meta.mat` beside it.
//!
//! Classes are the training folders in sorted order, so label `k` is the `k`-th wnid.

use std::fs;
use std::path::{Path, PathBuf};

use super::Split;
use super::plan::ShardLayout;
use super::source::{RawImage, Sample, SampleError, Source};

/// Names of ground-truth files looked for in `val/` when `data.val_labels` is unset.
pub const VAL_LABEL_FILES: [&str; 2] = ["imagenet_2012_validation_synset_labels.txt", "LABELS.txt"];

/// A labelled image file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledFile {
    /// Path of the JPEG file.
    pub path: PathBuf,
    /// Class index: the position of the image's wnid in [`ImagenetFolders::synsets`].
    pub label: usize,
}

/// An ImageNet-style dataset read straight from its folders.
#[derive(Debug)]
pub struct ImagenetFolders {
    synsets: Vec<String>,
    train: Vec<LabelledFile>,
    validation: Vec<LabelledFile>,
}

impl ImagenetFolders {
    /// Lists `root/train` and `root/val`. `val_labels` (relative to `root` unless absolute)
    /// names the ground truth of a flat `val/`.
    pub fn open(root: &Path, val_labels: Option<&Path>) -> anyhow::Result<Self> {
        let train_dir = root.join("train");
        let synsets = class_folders(&train_dir)?;
        anyhow::ensure!(
            !synsets.is_empty(),
            "{} has no class folders (expected train/<wnid>/*.JPEG)",
            train_dir.display()
        );
        let mut train = Vec::new();
        for (label, wnid) in synsets.iter().enumerate() {
            for path in images_in(&train_dir.join(wnid))? {
                train.push(LabelledFile { path, label });
            }
        }
        let val_dir = root.join("val");
        let validation = if class_folders(&val_dir)?.is_empty() {
            flat_validation(&val_dir, root, val_labels, &synsets)?
        } else {
            per_class_validation(&val_dir, &synsets)?
        };
        Ok(Self {
            synsets,
            train,
            validation,
        })
    }

    /// Class wnids in label order.
    pub fn synsets(&self) -> &[String] {
        &self.synsets
    }

    /// The files of `split`; a sample's index is its position here.
    pub fn files(&self, split: Split) -> &[LabelledFile] {
        match split {
            Split::Train => &self.train,
            Split::Validation => &self.validation,
        }
    }
}

/// Sorted names of the subfolders of `dir`.
fn class_folders(dir: &Path) -> anyhow::Result<Vec<String>> {
    let entries = fs::read_dir(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        if entry.file_type()?.is_dir() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Sorted JPEG files in `dir`.
fn images_in(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let entries = fs::read_dir(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?
            .path();
        let is_jpeg = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| ["jpeg", "jpg"].contains(&e.to_ascii_lowercase().as_str()));
        if is_jpeg && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn per_class_validation(val_dir: &Path, synsets: &[String]) -> anyhow::Result<Vec<LabelledFile>> {
    let mut files = Vec::new();
    for wnid in class_folders(val_dir)? {
        let Ok(label) = synsets.binary_search(&wnid) else {
            anyhow::bail!(
                "{} is not a class of train/ ({} classes)",
                val_dir.join(&wnid).display(),
                synsets.len()
            );
        };
        for path in images_in(&val_dir.join(&wnid))? {
            files.push(LabelledFile { path, label });
        }
    }
    Ok(files)
}

fn flat_validation(
    val_dir: &Path,
    root: &Path,
    val_labels: Option<&Path>,
    synsets: &[String],
) -> anyhow::Result<Vec<LabelledFile>> {
    let images = images_in(val_dir)?;
    let labels_path = match val_labels {
        Some(path) => root.join(path),
        None => VAL_LABEL_FILES
            .iter()
            .map(|name| val_dir.join(name))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{} is flat (no class folders) and has no ground-truth file: set data.val_labels \
                     to a file of one wnid per image, in file-name order",
                    val_dir.display()
                )
            })?,
    };
    let text = fs::read_to_string(&labels_path)
        .map_err(|e| anyhow::anyhow!("{} (data.val_labels): {e}", labels_path.display()))?;
    let mut lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if lines.iter().all(|l| l.parse::<u32>().is_ok()) {
        lines = devkit_wnids(&labels_path, &lines)?;
    }
    anyhow::ensure!(
        lines.len() == images.len(),
        "{} has {} labels for the {} images of {}",
        labels_path.display(),
        lines.len(),
        images.len(),
        val_dir.display()
    );
    images
        .into_iter()
        .zip(lines)
        .enumerate()
        .map(|(i, (path, wnid))| {
            let label = synsets.binary_search(&wnid).map_err(|_| {
                anyhow::anyhow!(
                    "{} line {}: {wnid:?} is not a class folder of train/",
                    labels_path.display(),
                    i + 1
                )
            })?;
            Ok(LabelledFile { path, label })
        })
        .collect()
}

/// The devkit's numeric ground truth as wnids, through the `meta.mat` beside it.
fn devkit_wnids(labels_path: &Path, ids: &[String]) -> anyhow::Result<Vec<String>> {
    let meta = labels_path.with_file_name("meta.mat");
    anyhow::ensure!(
        meta.is_file(),
        "{} holds numeric ILSVRC2012_IDs: the devkit's {} is needed beside it to map them to wnids",
        labels_path.display(),
        meta.display()
    );
    let by_id = super::devkit::synsets_by_id(&meta)?;
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            let id: u32 = id.parse().expect("checked numeric");
            by_id.get(&id).cloned().ok_or_else(|| {
                anyhow::anyhow!(
                    "{} line {}: ILSVRC2012_ID {id} is not in {}",
                    labels_path.display(),
                    i + 1,
                    meta.display()
                )
            })
        })
        .collect()
}

impl Source for ImagenetFolders {
    fn len(&self, split: Split) -> u64 {
        self.files(split).len() as u64
    }

    fn train_layout(&self) -> ShardLayout {
        ShardLayout::uniform(self.train.len() as u64)
    }

    fn read(&self, split: Split, index: u64) -> Result<Sample, SampleError> {
        let file = &self.files(split)[index as usize];
        let bytes = fs::read(&file.path)
            .map_err(|e| SampleError::Fatal(format!("{}: {e}", file.path.display())))?;
        Ok(Sample {
            label: file.label as i64,
            image: RawImage::Encoded(bytes),
        })
    }

    fn locate(&self, split: Split, index: u64) -> String {
        self.files(split)[index as usize].path.display().to_string()
    }

    fn classes(&self) -> usize {
        self.synsets.len()
    }
}
