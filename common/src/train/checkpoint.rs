//! Checkpoints: everything a replica needs to continue bit-identically, stored so that a partial
//! or corrupt checkpoint is never taken for a good one.
//!
//! A checkpoint is a folder `step-N/` holding flat little-endian `f32` files (parameters,
//! BatchNorm buffers, optimizer state, weight average), the resolved experiment, and
//! `manifest.toml` with each file's size and CRC-32C. It is written as `.step-N.tmp/`, every
//! file fsynced, then renamed into place and the parent fsynced: a crash leaves either the old
//! set of checkpoints or the new one. Readers verify the manifest before trusting any byte.
//! The manifest also records the data position (epoch, samples of its stream consumed), which a
//! resumed run's plan continues from.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::CRC32C;
use crate::data::DataPosition;

/// Folder-name prefix of a committed checkpoint.
const PREFIX: &str = "step-";
const MANIFEST: &str = "manifest.toml";
const FORMAT: u32 = 1;

/// The state of a replica after `step` optimizer steps.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingState {
    /// Optimizer steps taken so far.
    pub step: u64,
    /// Trainable parameters in flat-vector order.
    pub params: Vec<f32>,
    /// BatchNorm running statistics in module order.
    pub buffers: Vec<f32>,
    /// RMSProp mean square (empty for SGD).
    pub mean_square: Vec<f32>,
    /// Momentum accumulator of the update rule, one value per parameter.
    pub velocity: Vec<f32>,
    /// The weight average and its update count, when enabled.
    pub average: Option<(u64, Vec<f32>)>,
    /// Consecutive non-finite steps just before this one.
    pub nonfinite_streak: u32,
    /// The next training sample to read.
    pub data: DataPosition,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    step: u64,
    average_updates: Option<u64>,
    nonfinite_streak: u32,
    data_epoch: u64,
    data_offset: u64,
    files: Vec<FileEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct FileEntry {
    name: String,
    bytes: u64,
    crc32c: u32,
}

/// Why a checkpoint cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading, writing or removing a checkpoint file or folder failed.
    #[error("{path}: {error}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The OS error (part of the message, so not a separate cause).
        error: std::io::Error,
    },
    /// `manifest.toml` does not parse, or has a format this build does not read.
    #[error("{path}: invalid manifest: {message}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A file's size or CRC-32C differs from what the manifest records.
    #[error("{path}: {message}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Which check failed, with both values.
        message: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |error| CheckpointError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// The folder of the checkpoint taken after `step` steps under `root`.
pub fn step_dir(root: &Path, step: u64) -> PathBuf {
    root.join(format!("{PREFIX}{step:09}"))
}

/// Writes `state` (and the resolved experiment) durably under `root`; returns its folder.
pub fn write(
    root: &Path,
    state: &TrainingState,
    config_toml: &str,
) -> Result<PathBuf, CheckpointError> {
    fs::create_dir_all(root).map_err(io_error(root))?;
    let final_dir = step_dir(root, state.step);
    let tmp = root.join(format!(".{PREFIX}{:09}.tmp", state.step));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io_error(&tmp))?;
    }
    fs::create_dir(&tmp).map_err(io_error(&tmp))?;

    let mut blobs: Vec<(&str, Vec<u8>)> = vec![
        ("params.f32", floats(&state.params)),
        ("buffers.f32", floats(&state.buffers)),
        ("mean_square.f32", floats(&state.mean_square)),
        ("velocity.f32", floats(&state.velocity)),
        ("config.toml", config_toml.as_bytes().to_vec()),
    ];
    if let Some((_, average)) = &state.average {
        blobs.push(("average.f32", floats(average)));
    }
    let mut files = Vec::with_capacity(blobs.len());
    for (name, bytes) in &blobs {
        write_synced(&tmp.join(name), bytes)?;
        files.push(FileEntry {
            name: name.to_string(),
            bytes: bytes.len() as u64,
            crc32c: CRC32C.checksum(bytes),
        });
    }
    let manifest = Manifest {
        format: FORMAT,
        step: state.step,
        average_updates: state.average.as_ref().map(|(n, _)| *n),
        nonfinite_streak: state.nonfinite_streak,
        data_epoch: state.data.epoch,
        data_offset: state.data.offset,
        files,
    };
    let text = toml::to_string(&manifest).expect("a manifest serialises to TOML");
    write_synced(&tmp.join(MANIFEST), text.as_bytes())?;
    sync_dir(&tmp)?;
    if final_dir.exists() {
        fs::remove_dir_all(&final_dir).map_err(io_error(&final_dir))?;
    }
    fs::rename(&tmp, &final_dir).map_err(io_error(&final_dir))?;
    sync_dir(root)?;
    Ok(final_dir)
}

/// Reads and verifies the checkpoint in `dir`.
pub fn read(dir: &Path) -> Result<TrainingState, CheckpointError> {
    let manifest = verify(dir)?;
    let load = |name: &str| -> Result<Vec<f32>, CheckpointError> {
        let path = dir.join(name);
        let bytes = fs::read(&path).map_err(io_error(&path))?;
        Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    };
    let average = match manifest.average_updates {
        Some(updates) => Some((updates, load("average.f32")?)),
        None => None,
    };
    Ok(TrainingState {
        step: manifest.step,
        params: load("params.f32")?,
        buffers: load("buffers.f32")?,
        mean_square: load("mean_square.f32")?,
        velocity: load("velocity.f32")?,
        average,
        nonfinite_streak: manifest.nonfinite_streak,
        data: position_of(&manifest),
    })
}

fn position_of(manifest: &Manifest) -> DataPosition {
    DataPosition {
        epoch: manifest.data_epoch,
        offset: manifest.data_offset,
    }
}

/// Checks every file of the checkpoint in `dir` against its manifest; returns its step and
/// data position.
pub fn verify_position(dir: &Path) -> Result<(u64, DataPosition), CheckpointError> {
    verify(dir).map(|m| (m.step, position_of(&m)))
}

fn verify(dir: &Path) -> Result<Manifest, CheckpointError> {
    let path = dir.join(MANIFEST);
    let text = fs::read_to_string(&path).map_err(io_error(&path))?;
    let manifest: Manifest = toml::from_str(&text).map_err(|e| CheckpointError::Manifest {
        path: path.clone(),
        message: e.to_string(),
    })?;
    if manifest.format != FORMAT {
        return Err(CheckpointError::Manifest {
            path,
            message: format!("format {} (this build reads {FORMAT})", manifest.format),
        });
    }
    for entry in &manifest.files {
        let file = dir.join(&entry.name);
        let bytes = fs::read(&file).map_err(io_error(&file))?;
        let corrupt = |message: String| CheckpointError::Corrupt {
            path: file.clone(),
            message,
        };
        if bytes.len() as u64 != entry.bytes {
            return Err(corrupt(format!(
                "{} bytes, manifest says {}",
                bytes.len(),
                entry.bytes
            )));
        }
        let crc = CRC32C.checksum(&bytes);
        if crc != entry.crc32c {
            return Err(corrupt(format!(
                "CRC-32C {crc:08x}, manifest says {:08x}",
                entry.crc32c
            )));
        }
    }
    Ok(manifest)
}

/// Committed checkpoint folders under `root`, newest first.
pub fn list(root: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = fs::read_dir(root) else {
        return Vec::new();
    };
    let mut found: Vec<(u64, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let step = name.strip_prefix(PREFIX)?.parse().ok()?;
            Some((step, e.path()))
        })
        .collect();
    found.sort_by_key(|(step, _)| std::cmp::Reverse(*step));
    found
}

/// Deletes all but the newest `keep` checkpoints under `root`; returns the steps removed.
pub fn prune(root: &Path, keep: usize) -> Result<Vec<u64>, CheckpointError> {
    let mut removed = Vec::new();
    for (step, dir) in list(root).into_iter().skip(keep) {
        fs::remove_dir_all(&dir).map_err(io_error(&dir))?;
        removed.push(step);
    }
    Ok(removed)
}

fn floats(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let mut file = File::create(path).map_err(io_error(path))?;
    file.write_all(bytes).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(step: u64) -> TrainingState {
        TrainingState {
            step,
            params: vec![1.0, -2.5, f32::MIN_POSITIVE],
            buffers: vec![0.5; 4],
            mean_square: vec![1.0; 3],
            velocity: vec![0.25; 3],
            average: Some((step, vec![0.75; 3])),
            nonfinite_streak: 1,
            data: DataPosition {
                epoch: 2,
                offset: 40 + step,
            },
        }
    }

    #[test]
    fn round_trips_exactly() {
        let root = tempfile::tempdir().unwrap();
        let dir = write(root.path(), &state(12), "x = 1").unwrap();
        assert_eq!(dir, step_dir(root.path(), 12));
        assert_eq!(read(&dir).unwrap(), state(12));
        assert_eq!(
            fs::read_to_string(dir.join("config.toml")).unwrap(),
            "x = 1"
        );
        // No temp folder is left behind.
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 1);
    }

    #[test]
    fn corruption_and_truncation_are_detected_and_named() {
        let root = tempfile::tempdir().unwrap();
        let dir = write(root.path(), &state(3), "").unwrap();
        let params = dir.join("params.f32");
        let mut bytes = fs::read(&params).unwrap();
        bytes[0] ^= 1;
        fs::write(&params, &bytes).unwrap();
        let err = read(&dir).unwrap_err().to_string();
        assert!(
            err.contains("params.f32") && err.contains("CRC-32C"),
            "{err}"
        );

        bytes.truncate(4);
        fs::write(&params, &bytes).unwrap();
        let err = verify_position(&dir).unwrap_err().to_string();
        assert!(err.contains("4 bytes, manifest says 12"), "{err}");

        fs::remove_file(dir.join(MANIFEST)).unwrap();
        assert!(verify_position(&dir).is_err());
    }

    #[test]
    fn lists_newest_first_ignores_temp_folders_and_prunes() {
        let root = tempfile::tempdir().unwrap();
        for step in [5, 20, 10] {
            write(root.path(), &state(step), "").unwrap();
        }
        fs::create_dir(root.path().join(".step-000000030.tmp")).unwrap();
        let steps: Vec<u64> = list(root.path()).into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, [20, 10, 5]);
        assert_eq!(prune(root.path(), 2).unwrap(), [5]);
        let steps: Vec<u64> = list(root.path()).into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, [20, 10]);
    }
}
