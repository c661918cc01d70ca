//! Weights in and out as safetensors: timm checkpoints in, our own checkpoints in and out.
//!
//! Module paths follow timm (see [`super`]), so a timm state dict maps onto a module by name,
//! up to PyTorch's conventions: BatchNorm's affine parameters are `weight`/`bias` (burn:
//! `gamma`/`beta`), Linear weights are stored `[out, in]` (burn: `[in, out]`), and BatchNorm's
//! `num_batches_tracked` counter has no burn counterpart. Our own files are keyed by our module
//! paths in our layout. Both directions share one walker and one report: a load either replaces
//! every float tensor of the module (parameters and BatchNorm running statistics) or fails with
//! every problem listed, so a wrong checkpoint is diagnosed in one run.

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::{TensorData, bf16, f16};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensorError, SafeTensors};

use super::params::track_path;
use crate::fsutil::write_atomic;

/// Why weights could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Reading or writing the file failed.
    #[error("{}: {error}", path.display())]
    Io {
        /// The safetensors file.
        path: PathBuf,
        /// The OS error (part of the message, so not a separate cause).
        error: std::io::Error,
    },
    /// The file is not valid safetensors.
    #[error("{}: not a valid safetensors file ({error})", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What the safetensors parser reported.
        error: SafeTensorError,
    },
    /// The module's tensors could not be encoded as safetensors.
    #[error("{}: encoding safetensors: {error}", path.display())]
    Encode {
        /// The file being written.
        path: PathBuf,
        /// What the safetensors encoder reported.
        error: SafeTensorError,
    },
    /// The file's tensors do not fit the module (boxed: the lists make it large).
    #[error("{0}")]
    Mismatch(Box<Mismatch>),
}

/// Everything that kept a file from loading into a module, each list complete, so one failed
/// run shows the whole naming or shape problem (the message: the counts, the first few names of
/// each list, and a hint). Names are the file's keys.
#[derive(Debug, Default)]
pub struct Mismatch {
    /// The file that was read.
    pub file: PathBuf,
    /// Keys the module needs that the file lacks, in module order.
    pub missing: Vec<String>,
    /// Keys in the file (in the loaded scope) that no tensor of the module takes, sorted.
    pub unexpected: Vec<String>,
    /// Tensors present in both with different shapes, in module order.
    pub misshaped: Vec<Misshaped>,
    /// Tensors stored in a dtype that is not F32, F64, F16 or BF16, in module order.
    pub unsupported: Vec<(String, Dtype)>,
}

/// A tensor whose shape differs between the module and the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misshaped {
    /// The file's key.
    pub name: String,
    /// The module's shape, in the file's layout (a Linear weight as `[out, in]` for timm), so
    /// that the two shapes compare directly.
    pub ours: Vec<usize>,
    /// The file's shape.
    pub theirs: Vec<usize>,
}

impl Mismatch {
    fn is_empty(&self) -> bool {
        self.missing.is_empty()
            && self.unexpected.is_empty()
            && self.misshaped.is_empty()
            && self.unsupported.is_empty()
    }
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} does not fit the module: {} missing, {} unexpected, {} mis-shaped, {} of an \
             unsupported dtype",
            self.file.display(),
            self.missing.len(),
            self.unexpected.len(),
            self.misshaped.len(),
            self.unsupported.len()
        )?;
        list(f, "missing", &self.missing, |name| name.clone())?;
        list(f, "unexpected", &self.unexpected, |name| name.clone())?;
        list(f, "mis-shaped (module vs file)", &self.misshaped, |m| {
            format!("{} {:?} vs {:?}", m.name, m.ours, m.theirs)
        })?;
        list(
            f,
            "unsupported dtype",
            &self.unsupported,
            |(name, dtype)| format!("{name} ({dtype:?})"),
        )?;
        if !self.missing.is_empty() || !self.unexpected.is_empty() || !self.misshaped.is_empty() {
            write!(
                f,
                "\n  (right architecture? mis-shaped tensors usually mean another width or class \
                 count: --width / --num-classes, model.width / model.num_classes; missing or \
                 unexpected blocks another depth: --blocks, model.blocks)"
            )?;
        }
        Ok(())
    }
}

/// Names shown per list: enough to see the pattern, not a screenful.
const SHOWN_PER_LIST: usize = 5;

/// One line per non-empty list: `\n  label: a, b, c`.
fn list<T>(
    f: &mut fmt::Formatter<'_>,
    label: &str,
    items: &[T],
    show: impl Fn(&T) -> String,
) -> fmt::Result {
    if items.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = items.iter().take(SHOWN_PER_LIST).map(show).collect();
    write!(f, "\n  {label}: {}", shown.join(", "))?;
    if items.len() > SHOWN_PER_LIST {
        write!(f, " and {} more", items.len() - SHOWN_PER_LIST)?;
    }
    Ok(())
}

/// Loads a timm state dict saved as safetensors (e.g. `safetensors.torch.save_file(
/// model.state_dict(), path)`) into `module`, whose module paths must be timm's.
pub fn load_timm<B: Backend, M: Module<B>>(module: M, path: &Path) -> Result<M, ImportError> {
    load_timm_into(module, path, "")
}

/// Loads the subtree `prefix` of a timm checkpoint (a dotted module path such as `repeat.0`;
/// empty for the whole file) into `module`, a module built for that subtree. Keys outside the
/// subtree are ignored, so one block can be checked against timm without building the network.
pub fn load_timm_into<B: Backend, M: Module<B>>(
    module: M,
    path: &Path,
    prefix: &str,
) -> Result<M, ImportError> {
    load(module, path, Naming::new(Layout::Timm, prefix))
}

/// Loads a file written by [`save_incept`] into `module`.
pub fn load_incept<B: Backend, M: Module<B>>(module: M, path: &Path) -> Result<M, ImportError> {
    load(module, path, Naming::new(Layout::Incept, ""))
}

/// Writes every float tensor of `module` (parameters and BatchNorm running statistics) as F32
/// safetensors keyed by our module paths, atomically, so a crash never leaves a torn file.
/// Save a synchronised module (`valid()`): burn's running statistics can lag one update behind
/// in an autodiff module.
pub fn save_incept<B: Backend, M: Module<B>>(module: &M, path: &Path) -> Result<(), ImportError> {
    let mut saver = Saver::default();
    module.visit(&mut saver);
    let format = |error| ImportError::Encode {
        path: path.to_owned(),
        error,
    };
    let views = saver
        .tensors
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes).map(|view| (name, view))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(format)?;
    let bytes = safetensors::serialize(views, None).map_err(format)?;
    write_atomic(path, &bytes, 0o644).map_err(|error| ImportError::Io {
        path: path.to_owned(),
        error,
    })
}

/// Reads `path` and replaces every float tensor of `module` by the file's, or reports every
/// problem at once.
fn load<B: Backend, M: Module<B>>(
    module: M,
    path: &Path,
    naming: Naming<'_>,
) -> Result<M, ImportError> {
    let bytes = fs::read(path).map_err(|error| ImportError::Io {
        path: path.to_owned(),
        error,
    })?;
    let file = SafeTensors::deserialize(&bytes).map_err(|error| ImportError::Format {
        path: path.to_owned(),
        error,
    })?;
    let mut loader = Loader {
        path: Vec::new(),
        naming,
        file: &file,
        used: HashSet::new(),
        report: Mismatch {
            file: path.to_owned(),
            ..Mismatch::default()
        },
    };
    let module = module.map(&mut loader);
    let mut report = loader.report;
    report.unexpected = file
        .names()
        .into_iter()
        .filter(|key| naming.takes(key) && !loader.used.contains(*key))
        .map(str::to_owned)
        .collect();
    report.unexpected.sort();
    if report.is_empty() {
        Ok(module)
    } else {
        Err(ImportError::Mismatch(Box::new(report)))
    }
}

/// Whose conventions a file follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// PyTorch/timm: BatchNorm `weight`/`bias`, Linear `[out, in]`, `num_batches_tracked`.
    Timm,
    /// Ours: burn's field names and layouts.
    Incept,
}

/// How our tensors are named and laid out in one file: its layout and the subtree loaded.
#[derive(Debug, Clone, Copy)]
struct Naming<'a> {
    layout: Layout,
    /// Dotted module path of the subtree in the file; empty for the whole file.
    prefix: &'a str,
}

impl<'a> Naming<'a> {
    fn new(layout: Layout, prefix: &'a str) -> Self {
        Self { layout, prefix }
    }

    /// The file's key for our tensor at `path`.
    fn key(&self, path: &[String]) -> String {
        let mut parts: Vec<&str> = path.iter().map(String::as_str).collect();
        if self.layout == Layout::Timm
            && let Some(leaf) = parts.last_mut()
        {
            *leaf = match *leaf {
                "gamma" => "weight",
                "beta" => "bias",
                other => other,
            };
        }
        if !self.prefix.is_empty() {
            parts.insert(0, self.prefix);
        }
        parts.join(".")
    }

    /// Whether the file stores a tensor of this rank transposed: PyTorch's Linear weight
    /// `[out, in]` is the only rank-2 tensor of the Inception family.
    fn transposed(&self, rank: usize) -> bool {
        self.layout == Layout::Timm && rank == 2
    }

    /// Whether `key` is within the loaded subtree and stands for a tensor we could hold.
    fn takes(&self, key: &str) -> bool {
        let in_subtree = self.prefix.is_empty()
            || key
                .strip_prefix(self.prefix)
                .is_some_and(|rest| rest.starts_with('.'));
        let counter =
            self.layout == Layout::Timm && key.rsplit('.').next() == Some("num_batches_tracked");
        in_subtree && !counter
    }
}

/// Replaces each float tensor by the file's, recording every problem instead of stopping.
struct Loader<'a> {
    path: Vec<String>,
    naming: Naming<'a>,
    file: &'a SafeTensors<'a>,
    used: HashSet<String>,
    report: Mismatch,
}

impl<B: Backend> ModuleMapper<B> for Loader<'_> {
    track_path!();

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let key = self.naming.key(&self.path);
        match self.read(key, param.lazy_shape().as_slice()) {
            Some(data) => {
                let tensor = Tensor::from_data(data, &param.lazy_device());
                let id = param.id;
                // Keeps the device and the gradient requirement, without initialising a lazy
                // parameter only to overwrite it.
                param.transform_for_load(tensor, id)
            }
            None => param,
        }
    }
}

impl Loader<'_> {
    /// The file's tensor `key` in our layout with shape `ours`, or `None` after recording why not.
    fn read(&mut self, key: String, ours: &[usize]) -> Option<TensorData> {
        let Ok(view) = self.file.tensor(&key) else {
            self.report.missing.push(key);
            return None;
        };
        self.used.insert(key.clone());
        let transposed = self.naming.transposed(ours.len());
        let stored: Vec<usize> = if transposed {
            ours.iter().rev().copied().collect()
        } else {
            ours.to_vec()
        };
        if view.shape() != stored {
            self.report.misshaped.push(Misshaped {
                name: key,
                ours: stored,
                theirs: view.shape().to_vec(),
            });
            return None;
        }
        let Some(values) = to_f32(&view) else {
            self.report.unsupported.push((key, view.dtype()));
            return None;
        };
        let values = if transposed {
            transpose(&values, stored[0], stored[1])
        } else {
            values
        };
        Some(TensorData::new(values, ours.to_vec()))
    }
}

/// Decodes a floating-point tensor to `f32` (exact for F16/BF16; F64 rounds), or `None` for
/// other dtypes.
fn to_f32(view: &TensorView<'_>) -> Option<Vec<f32>> {
    let bytes = view.data();
    match view.dtype() {
        Dtype::F32 => Some(decode(bytes, f32::from_le_bytes)),
        Dtype::F64 => Some(decode(bytes, |b| f64::from_le_bytes(b) as f32)),
        Dtype::F16 => Some(decode(bytes, |b| f16::from_le_bytes(b).to_f32())),
        Dtype::BF16 => Some(decode(bytes, |b| bf16::from_le_bytes(b).to_f32())),
        _ => None,
    }
}

/// Little-endian elements of `N` bytes (safetensors data need not be aligned for `f32`).
fn decode<const N: usize>(bytes: &[u8], element: impl Fn([u8; N]) -> f32) -> Vec<f32> {
    bytes
        .as_chunks::<N>()
        .0
        .iter()
        .map(|b| element(*b))
        .collect()
}

/// Row-major `[rows, cols]` → `[cols, rows]`.
fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols)
        .flat_map(|c| (0..rows).map(move |r| values[r * cols + c]))
        .collect()
}

/// Collects (path, shape, little-endian F32 bytes) of every float tensor.
#[derive(Default)]
struct Saver {
    path: Vec<String>,
    tensors: Vec<(String, Vec<usize>, Vec<u8>)>,
}

impl<B: Backend> ModuleVisitor<B> for Saver {
    track_path!();

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let tensor = param.val();
        let shape = tensor.shape().to_vec();
        let bytes = tensor
            .into_data()
            .convert::<f32>()
            .iter::<f32>()
            .flat_map(f32::to_le_bytes)
            .collect();
        self.tensors.push((self.path.join("."), shape, bytes));
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;
    use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};

    use super::*;

    /// A Linear and a BatchNorm: every naming and layout rule in a few scalars.
    #[derive(Module, Debug)]
    struct Head<B: Backend> {
        fc: Linear<B>,
        bn: BatchNorm<B>,
    }

    fn head() -> Head<Flex> {
        let device = Default::default();
        Head {
            fc: LinearConfig::new(2, 3).init(&device),
            bn: BatchNormConfig::new(3).init(&device),
        }
    }

    /// (key, shape, values) in timm's layout; all values are exact in F16 and BF16.
    fn timm_head(prefix: &str) -> Vec<(String, Vec<usize>, Vec<f64>)> {
        let key = |name: &str| format!("{prefix}{name}");
        vec![
            // [out = 3, in = 2]: row o holds the weights of output o.
            (
                key("fc.weight"),
                vec![3, 2],
                vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            ),
            (key("fc.bias"), vec![3], vec![0.5, -0.5, 0.25]),
            (key("bn.weight"), vec![3], vec![1.5, 2.5, 3.5]),
            (key("bn.bias"), vec![3], vec![-1.0, -2.0, -3.0]),
            (key("bn.running_mean"), vec![3], vec![0.125, 0.25, 0.375]),
            (key("bn.running_var"), vec![3], vec![4.0, 8.0, 16.0]),
        ]
    }

    fn encode(dtype: Dtype, values: &[f64]) -> Vec<u8> {
        values
            .iter()
            .flat_map(|&v| match dtype {
                Dtype::F32 => (v as f32).to_le_bytes().to_vec(),
                Dtype::F64 => v.to_le_bytes().to_vec(),
                Dtype::F16 => f16::from_f64(v).to_le_bytes().to_vec(),
                Dtype::BF16 => bf16::from_f64(v).to_le_bytes().to_vec(),
                Dtype::I64 => (v as i64).to_le_bytes().to_vec(),
                other => panic!("no encoder for {other:?}"),
            })
            .collect()
    }

    fn write(path: &Path, tensors: &[(String, Vec<usize>, Vec<f64>)], dtype: Dtype) {
        let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, _, v)| encode(dtype, v)).collect();
        let views = tensors.iter().zip(&bytes).map(|((name, shape, _), data)| {
            (name, TensorView::new(dtype, shape.clone(), data).unwrap())
        });
        fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
    }

    fn values<const D: usize>(tensor: Tensor<Flex, D>) -> Vec<f32> {
        tensor.into_data().to_vec().unwrap()
    }

    fn mismatch<T: fmt::Debug>(result: Result<T, ImportError>) -> Mismatch {
        match result.unwrap_err() {
            ImportError::Mismatch(report) => *report,
            other => panic!("expected a mismatch, got {other}"),
        }
    }

    #[test]
    fn maps_timm_names_and_transposes_linear_in_every_float_dtype() {
        let dir = tempfile::tempdir().unwrap();
        for dtype in [Dtype::F32, Dtype::F64, Dtype::F16, Dtype::BF16] {
            let path = dir.path().join(format!("{dtype:?}.safetensors"));
            write(&path, &timm_head(""), dtype);
            let loaded = load_timm(head(), &path).unwrap();
            assert_eq!(loaded.fc.weight.dims(), [2, 3], "{dtype:?}");
            assert_eq!(
                values(loaded.fc.weight.val()),
                [1.0, 3.0, 5.0, 2.0, 4.0, 6.0],
                "{dtype:?}"
            );
            assert_eq!(values(loaded.bn.gamma.val()), [1.5, 2.5, 3.5]);
            assert_eq!(values(loaded.bn.beta.val()), [-1.0, -2.0, -3.0]);
            assert_eq!(values(loaded.bn.running_mean.value()), [0.125, 0.25, 0.375]);
            assert_eq!(values(loaded.bn.running_var.value()), [4.0, 8.0, 16.0]);
        }
    }

    #[test]
    fn a_prefix_loads_one_subtree_and_ignores_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested.safetensors");
        let mut tensors = timm_head("blocks.1.");
        tensors.extend(timm_head("blocks.10."));
        tensors.push(("blocks.1.bn.num_batches_tracked".into(), vec![], vec![7.0]));
        write(&path, &tensors, Dtype::F32);
        // `blocks.1` does not take `blocks.10.*`, and timm's batch counter has no counterpart.
        let loaded = load_timm_into(head(), &path, "blocks.1").unwrap();
        assert_eq!(values(loaded.bn.beta.val()), [-1.0, -2.0, -3.0]);

        tensors.push(("blocks.1.extra".into(), vec![1], vec![0.0]));
        write(&path, &tensors, Dtype::F32);
        let report = mismatch(load_timm_into(head(), &path, "blocks.1"));
        assert_eq!(report.unexpected, ["blocks.1.extra"]);
        assert!(report.missing.is_empty() && report.misshaped.is_empty());
    }

    #[test]
    fn a_large_mismatch_reads_in_a_few_lines() {
        let report = Mismatch {
            file: PathBuf::from("w.safetensors"),
            missing: (0..1000).map(|i| format!("blocks.{i}.weight")).collect(),
            misshaped: vec![Misshaped {
                name: "last_linear.weight".into(),
                ours: vec![10, 1536],
                theirs: vec![1000, 1536],
            }],
            ..Mismatch::default()
        };
        let text = report.to_string();
        assert!(text.lines().count() <= 5, "{text}");
        assert!(
            text.contains("1000 missing, 0 unexpected, 1 mis-shaped"),
            "{text}"
        );
        assert!(text.contains("blocks.4.weight and 995 more"), "{text}");
        assert!(!text.contains("blocks.5.weight"), "{text}");
        assert!(
            text.contains("--num-classes") && text.contains("--blocks"),
            "{text}"
        );
    }

    #[test]
    fn integer_tensors_are_reported_not_cast() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ints.safetensors");
        write(&path, &timm_head(""), Dtype::I64);
        let report = mismatch(load_timm(head(), &path));
        let names: Vec<&str> = report.unsupported.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "fc.weight",
                "fc.bias",
                "bn.weight",
                "bn.bias",
                "bn.running_mean",
                "bn.running_var"
            ]
        );
        assert!(
            report
                .to_string()
                .contains("bn.running_mean (I64) and 1 more")
        );
    }

    #[test]
    fn transpose_swaps_rows_and_columns() {
        assert_eq!(
            transpose(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3),
            [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
        );
    }
}
