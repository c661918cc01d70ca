//! `coordinator dataset pack`: ILSVRC folders → TFRecord shards + `index.json`.
//!
//! As Inception's `build_imagenet_data.py`: each split's files are shuffled (here with a seed, so
//! the output is byte-for-byte deterministic), cut into contiguous ranges of near-equal size, and
//! each range written as one shard of `tf.train.Example`s holding the original JPEG bytes and
//! the 1-based label. Every shard is written to a temp file, fsynced and renamed; the index is
//! written last, so a folder with an index is complete.

use std::fs::{self, File};
use std::io::BufWriter;
use std::path::Path;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use zune_core::bytestream::ZCursor;
use zune_jpeg::JpegDecoder;

use super::Split;
use super::folders::{ImagenetFolders, LabelledFile};
use super::shards::{DatasetIndex, ShardEntry, shard_name};
use super::tfrecord::{ImageRecord, RecordWriter};

/// What to pack and how.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// Number of shards the training split is cut into (at least one).
    pub train_shards: usize,
    /// Number of shards the validation split is cut into (at least one).
    pub validation_shards: usize,
    /// Seeds the shuffle of each split's files before they are cut into shards.
    pub seed: u64,
}

/// Packs the dataset at `from` into `out`; `progress` receives a line per shard.
pub fn pack(
    from: &ImagenetFolders,
    out: &Path,
    options: &PackOptions,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<DatasetIndex> {
    fs::create_dir_all(out).map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    let mut index = DatasetIndex::new(from.synsets().to_vec());
    for (split, shards) in [
        (Split::Train, options.train_shards),
        (Split::Validation, options.validation_shards),
    ] {
        let mut files = from.files(split).to_vec();
        anyhow::ensure!(shards >= 1, "{split:?} needs at least one shard");
        let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
        rng.set_stream(split as u64);
        files.shuffle(&mut rng);
        for k in 0..shards {
            let range = k * files.len() / shards..(k + 1) * files.len() / shards;
            let name = shard_name(split, k, shards);
            let entry = write_shard(&out.join(&name), &files[range], from.synsets())?;
            progress(&format!(
                "{name}: {} images, {:.1} MiB ({}/{shards})",
                entry.samples,
                entry.bytes as f64 / (1 << 20) as f64,
                k + 1
            ));
            match split {
                Split::Train => index.train.push(entry),
                Split::Validation => index.validation.push(entry),
            }
        }
    }
    index.write(out)?;
    Ok(index)
}

fn write_shard(
    path: &Path,
    files: &[LabelledFile],
    synsets: &[String],
) -> anyhow::Result<ShardEntry> {
    let name = path
        .file_name()
        .expect("shard names are file names")
        .to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let fail = |e: std::io::Error| anyhow::anyhow!("{}: {e}", tmp.display());
    let mut writer = RecordWriter::new(BufWriter::new(File::create(&tmp).map_err(fail)?));
    let mut entry = ShardEntry {
        file: name.to_string(),
        samples: 0,
        bytes: 0,
        classes: Default::default(),
    };
    for file in files {
        let encoded =
            fs::read(&file.path).map_err(|e| anyhow::anyhow!("{}: {e}", file.path.display()))?;
        let (width, height) = jpeg_size(&encoded).unwrap_or_else(|| {
            tracing::warn!(path = %file.path.display(), "unreadable JPEG header; packed as is");
            (0, 0)
        });
        let label = file.label as i64 + 1;
        let record = ImageRecord {
            encoded,
            label,
            synset: synsets[file.label].clone(),
            filename: file
                .path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            width,
            height,
        };
        writer.write(&record.to_example()).map_err(fail)?;
        entry.samples += 1;
        *entry.classes.entry(label).or_default() += 1;
    }
    entry.bytes = writer.written();
    let file = writer
        .into_inner()
        .into_inner()
        .map_err(|e| fail(e.into_error()))?;
    file.sync_all().map_err(fail)?;
    fs::rename(&tmp, path).map_err(fail)?;
    Ok(entry)
}

/// Width and height from a JPEG's frame header.
fn jpeg_size(bytes: &[u8]) -> Option<(i64, i64)> {
    let mut decoder = JpegDecoder::new(ZCursor::new(bytes));
    decoder.decode_headers().ok()?;
    let info = decoder.info()?;
    Some((i64::from(info.width), i64::from(info.height)))
}

/// The index as a table: per split, shard count, samples, bytes and class balance.
pub fn describe(index: &DatasetIndex) -> String {
    let mut out = String::new();
    let classes = index.synsets.len();
    out.push_str(&format!("classes: {classes}\n"));
    for split in [Split::Train, Split::Validation] {
        let shards = index.split(split);
        let samples: u64 = shards.iter().map(|s| s.samples).sum();
        let bytes: u64 = shards.iter().map(|s| s.bytes).sum();
        let mut per_class = std::collections::BTreeMap::<i64, u64>::new();
        for shard in shards {
            for (label, n) in &shard.classes {
                *per_class.entry(*label).or_default() += n;
            }
        }
        let (min, max) = (per_class.values().min(), per_class.values().max());
        out.push_str(&format!(
            "{:<10} {:>5} shards {:>9} images {:>10.1} MiB  labels {}  per class {}–{}\n",
            format!("{split:?}").to_lowercase(),
            shards.len(),
            samples,
            bytes as f64 / (1 << 20) as f64,
            per_class.len(),
            min.copied().unwrap_or(0),
            max.copied().unwrap_or(0),
        ));
        for shard in shards {
            out.push_str(&format!(
                "  {:<28} {:>7} images {:>10} bytes  {} labels\n",
                shard.file,
                shard.samples,
                shard.bytes,
                shard.classes.len()
            ));
        }
    }
    out
}
