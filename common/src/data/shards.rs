//! TFRecord shards of `tf.train.Example`s with their index (`index.json`).
//!
//! The index lists every shard of a split with its sample count, size in bytes and class
//! histogram; `coordinator dataset pack` writes it with the shards, `coordinator dataset index`
//! writes it for shards made elsewhere (e.g. by Inception's `build_imagenet_data.py`). Opening
//! checks every shard's size against it, so a missing or truncated shard is named at launch.
//! Record offsets are found by walking a shard's headers the first time it is read.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use super::Split;
use super::plan::ShardLayout;
use super::source::{RawImage, Sample, SampleError, Source};
use super::tfrecord::{ImageRecord, RecordSpan, read_record, scan};
use crate::fsutil::write_atomic;

/// File name of the index inside a shard folder.
pub const INDEX_FILE: &str = "index.json";
const FORMAT: u32 = 1;

/// What `index.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetIndex {
    /// Version of the index layout; reading refuses any other than this build's.
    pub format: u32,
    /// Class wnids by stored label − 1 (stored labels are 1-based, as build_imagenet_data.py's).
    pub synsets: Vec<String>,
    /// Training shards, in sample-index order.
    pub train: Vec<ShardEntry>,
    /// Validation shards, in sample-index order.
    pub validation: Vec<ShardEntry>,
}

/// One shard file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    /// File name, relative to the index's folder.
    pub file: String,
    /// Records (images) in the shard.
    pub samples: u64,
    /// File size in bytes, checked on open to catch truncated or replaced shards.
    pub bytes: u64,
    /// Samples per stored label (label → count).
    pub classes: BTreeMap<i64, u64>,
}

impl DatasetIndex {
    /// An index of the current format with the given classes and no shards yet.
    pub fn new(synsets: Vec<String>) -> Self {
        Self {
            format: FORMAT,
            synsets,
            train: Vec::new(),
            validation: Vec::new(),
        }
    }

    /// The shards of `split`.
    pub fn split(&self, split: Split) -> &[ShardEntry] {
        match split {
            Split::Train => &self.train,
            Split::Validation => &self.validation,
        }
    }

    /// Reads and checks the `index.json` in `dir`.
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(INDEX_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            anyhow::anyhow!(
                "{}: {e} (index a folder of shards with `coordinator dataset index {}`)",
                path.display(),
                dir.display()
            )
        })?;
        let index: Self = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: invalid index: {e}", path.display()))?;
        anyhow::ensure!(
            index.format == FORMAT,
            "{}: index format {} (this build reads {FORMAT})",
            path.display(),
            index.format
        );
        Ok(index)
    }

    /// Writes `index.json` into `dir` atomically.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        let path = dir.join(INDEX_FILE);
        let json = serde_json::to_string_pretty(self)?;
        write_atomic(&path, json.as_bytes(), 0o644)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Scans shard files named like build_imagenet_data.py's (`train-00000-of-01024`,
    /// `validation-00000-of-00128`) in `dir`, verifying every record, and indexes them.
    pub fn build(dir: &Path, mut progress: impl FnMut(&str)) -> anyhow::Result<Self> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| shard_split(n).is_some())
            .collect();
        names.sort();
        anyhow::ensure!(
            !names.is_empty(),
            "{} has no train-*-of-* or validation-*-of-* shards",
            dir.display()
        );
        let mut index = Self::new(Vec::new());
        let mut synsets = BTreeMap::new();
        for name in names {
            let path = dir.join(&name);
            let file = File::open(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let mut entry = ShardEntry {
                file: name.clone(),
                samples: 0,
                bytes: file.metadata()?.len(),
                classes: BTreeMap::new(),
            };
            for span in scan(&path)? {
                let record =
                    ImageRecord::from_example(&read_record(&file, &path, span)?).map_err(|e| {
                        anyhow::anyhow!("{} at byte offset {}: {e}", path.display(), span.offset)
                    })?;
                entry.samples += 1;
                *entry.classes.entry(record.label).or_default() += 1;
                if !record.synset.is_empty() {
                    synsets.insert(record.label, record.synset);
                }
            }
            progress(&format!("{name}: {} records", entry.samples));
            match shard_split(&name) {
                Some(Split::Train) => index.train.push(entry),
                _ => index.validation.push(entry),
            }
        }
        // Synsets by label 1..=max, when every label has one.
        let max = synsets.keys().copied().max().unwrap_or(0);
        if (1..=max).all(|l| synsets.contains_key(&l)) {
            index.synsets = synsets.into_values().collect();
        }
        Ok(index)
    }
}

/// The split a shard file name belongs to.
fn shard_split(name: &str) -> Option<Split> {
    let (prefix, rest) = name.split_once('-')?;
    let (_, total) = rest.split_once("-of-")?;
    total.chars().all(|c| c.is_ascii_digit()).then_some(())?;
    match prefix {
        "train" => Some(Split::Train),
        "validation" => Some(Split::Validation),
        _ => None,
    }
}

/// The name of shard `k` of `total` of a split, as build_imagenet_data.py names them.
pub fn shard_name(split: Split, k: usize, total: usize) -> String {
    let prefix = match split {
        Split::Train => "train",
        Split::Validation => "validation",
    };
    format!("{prefix}-{k:05}-of-{total:05}")
}

/// One shard: where it is and, once first read, its open file and record spans.
struct Shard {
    path: PathBuf,
    samples: u64,
    /// First global index of the shard within its split.
    start: u64,
    opened: OnceLock<Result<OpenShard, String>>,
}

struct OpenShard {
    file: File,
    spans: Vec<RecordSpan>,
}

impl Shard {
    fn open(&self) -> Result<&OpenShard, SampleError> {
        let opened = self.opened.get_or_init(|| {
            let spans = scan(&self.path).map_err(|e| e.to_string())?;
            if spans.len() as u64 != self.samples {
                return Err(format!(
                    "{}: {} records, the index says {}",
                    self.path.display(),
                    spans.len(),
                    self.samples
                ));
            }
            let file =
                File::open(&self.path).map_err(|e| format!("{}: {e}", self.path.display()))?;
            Ok(OpenShard { file, spans })
        });
        opened.as_ref().map_err(|e| SampleError::Fatal(e.clone()))
    }
}

/// A folder of TFRecord shards and its index.
pub struct TfRecordShards {
    train: Vec<Shard>,
    validation: Vec<Shard>,
    shuffle_buffer: u64,
    classes: usize,
    /// Stored labels are kept as they are (label 0 = background) rather than shifted to 0-based.
    background_class: bool,
}

impl TfRecordShards {
    /// Opens the shards indexed in `dir`, checking each file's size against the index;
    /// `background_class` keeps stored labels as they are (label 0 = background).
    pub fn open(dir: &Path, shuffle_buffer: u64, background_class: bool) -> anyhow::Result<Self> {
        anyhow::ensure!(
            dir.is_dir(),
            "{} is not a folder (data.path)",
            dir.display()
        );
        let index = DatasetIndex::read(dir)?;
        let shards = |entries: &[ShardEntry]| -> anyhow::Result<Vec<Shard>> {
            let mut start = 0;
            entries
                .iter()
                .map(|e| {
                    let path = dir.join(&e.file);
                    let bytes = std::fs::metadata(&path)
                        .map_err(|err| {
                            anyhow::anyhow!("{} (listed in {INDEX_FILE}): {err}", path.display())
                        })?
                        .len();
                    anyhow::ensure!(
                        bytes == e.bytes,
                        "{}: {bytes} bytes, {INDEX_FILE} says {} (truncated or replaced shard)",
                        path.display(),
                        e.bytes
                    );
                    let shard = Shard {
                        path,
                        samples: e.samples,
                        start,
                        opened: OnceLock::new(),
                    };
                    start += e.samples;
                    Ok(shard)
                })
                .collect()
        };
        let max_label = index
            .train
            .iter()
            .chain(&index.validation)
            .flat_map(|e| e.classes.keys().copied())
            .max()
            .unwrap_or(0)
            .max(index.synsets.len() as i64);
        let classes = if background_class {
            max_label + 1
        } else {
            max_label
        } as usize;
        Ok(Self {
            train: shards(&index.train)?,
            validation: shards(&index.validation)?,
            shuffle_buffer,
            classes,
            background_class,
        })
    }

    fn shards(&self, split: Split) -> &[Shard] {
        match split {
            Split::Train => &self.train,
            Split::Validation => &self.validation,
        }
    }

    /// The shard holding `index`, and the record's position in it.
    fn find(&self, split: Split, index: u64) -> (&Shard, usize) {
        let shards = self.shards(split);
        let k = shards.partition_point(|s| s.start + s.samples <= index);
        let shard = &shards[k];
        (shard, (index - shard.start) as usize)
    }
}

impl Source for TfRecordShards {
    fn len(&self, split: Split) -> u64 {
        self.shards(split).iter().map(|s| s.samples).sum()
    }

    fn train_layout(&self) -> ShardLayout {
        ShardLayout {
            sizes: self.train.iter().map(|s| s.samples).collect(),
            shuffle_buffer: self.shuffle_buffer,
        }
    }

    fn read(&self, split: Split, index: u64) -> Result<Sample, SampleError> {
        let (shard, position) = self.find(split, index);
        let open = shard.open()?;
        let span = open.spans[position];
        let payload = read_record(&open.file, &shard.path, span)
            .map_err(|e| SampleError::Fatal(e.to_string()))?;
        let bad = |m: String| {
            SampleError::Bad(format!(
                "{} at byte offset {}: {m}",
                shard.path.display(),
                span.offset
            ))
        };
        let record = ImageRecord::from_example(&payload).map_err(bad)?;
        let label = if self.background_class {
            record.label
        } else {
            record.label - 1
        };
        if label < 0 || label as usize >= self.classes {
            return Err(bad(format!("label {} out of range", record.label)));
        }
        Ok(Sample {
            label,
            image: RawImage::Encoded(record.encoded),
        })
    }

    fn locate(&self, split: Split, index: u64) -> String {
        let (shard, position) = self.find(split, index);
        match shard.open() {
            Ok(open) => format!(
                "{} record {position} at byte offset {}",
                shard.path.display(),
                open.spans[position].offset
            ),
            Err(_) => format!("{} record {position}", shard.path.display()),
        }
    }

    fn classes(&self) -> usize {
        self.classes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_follow_build_imagenet_data() {
        assert_eq!(shard_name(Split::Train, 3, 1024), "train-00003-of-01024");
        assert_eq!(
            shard_name(Split::Validation, 0, 128),
            "validation-00000-of-00128"
        );
        assert_eq!(shard_split("train-00003-of-01024"), Some(Split::Train));
        assert_eq!(
            shard_split("validation-00000-of-00128"),
            Some(Split::Validation)
        );
        assert_eq!(shard_split("index.json"), None);
        assert_eq!(shard_split("train-00003-of-01024.tmp"), None);
    }
}
