//! Which device a worker computes on (`cluster.device`), which GPU (`LOCAL_RANK`), whose
//! kernels compute there (`cluster.kernels`), and the preflight that turns a missing CUDA piece
//! into a clear error before any model is built.
//!
//! burn's CUDA runtime panics deep inside when a piece is missing: the driver (`libcuda`), the
//! GPU, NVRTC (cubecl compiles its kernels at run time) or the CUDA headers NVRTC includes
//! (`cuda_runtime.h`, found through `CUDA_PATH`, `/usr/local/cuda` or `/opt/cuda`). The
//! preflight looks for each with the same names and folders, names every one that is missing
//! and says what to install or set. It runs in any build, so a coordinator without the `cuda`
//! feature still says what a GPU run would lack.

use std::ffi::{OsString, c_int};
use std::fmt;
use std::path::PathBuf;

use crate::config::{DeviceKind, KernelsKind};

/// Environment variables that carry a process's rank on its node, in the order they are read:
/// torchrun's and incept's launchers, Slurm's `srun`, Open MPI's `mpirun`.
pub const LOCAL_RANK_VARS: [&str; 3] =
    ["LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK"];

/// The device a worker trains on, resolved from `cluster.device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComputeDevice {
    /// The host CPU (`cluster.device = "cpu"`, or `auto` without a usable GPU).
    Cpu,
    /// CUDA GPU with this ordinal.
    Cuda(usize),
}

impl fmt::Display for ComputeDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ComputeDevice::Cpu => f.write_str("cpu"),
            ComputeDevice::Cuda(ordinal) => write!(f, "cuda:{ordinal}"),
        }
    }
}

/// Whose kernels compute the model, resolved from `cluster.kernels`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFamily {
    /// burn's own: flex on the CPU, cubecl's on a GPU.
    Burn,
    /// LibTorch's (the `libtorch` feature): oneDNN/MKL on the CPU, cuDNN/cuBLAS on a GPU.
    Libtorch,
}

impl KernelFamily {
    /// Whether this binary was built with these kernels.
    pub fn built(self) -> bool {
        match self {
            KernelFamily::Burn => true,
            KernelFamily::Libtorch => cfg!(feature = "libtorch"),
        }
    }

    /// What to do when this binary cannot compute with these kernels on `device`.
    pub fn missing_from_build(self, device: ComputeDevice) -> String {
        match (self, device) {
            (KernelFamily::Libtorch, _) => NO_LIBTORCH.to_owned(),
            (KernelFamily::Burn, _) => format!(
                "burn's kernels on {device}: this binary was built without the `cuda` feature \
                 (cargo build --release --features cuda)"
            ),
        }
    }
}

/// Why a binary without the `libtorch` feature cannot run `cluster.kernels = "libtorch"`, and
/// how to get one that can.
pub const NO_LIBTORCH: &str = "cluster.kernels = \"libtorch\" needs a build with LibTorch, and \
    this one was built without it: run deploy/libtorch/setup.sh (it installs PyTorch 2.9.0 into \
    a virtual environment and builds with `--features libtorch`), or set cluster.kernels = \
    \"burn\" (or \"auto\")";

impl fmt::Display for KernelFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KernelFamily::Burn => "burn",
            KernelFamily::Libtorch => "libtorch",
        })
    }
}

/// Where and with whose kernels a worker computes: what selects its backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compute {
    /// The device.
    pub device: ComputeDevice,
    /// The kernels.
    pub kernels: KernelFamily,
}

impl fmt::Display for Compute {
    /// `libtorch on cpu`, `burn (flex) on cpu`, `burn (cubecl) on cuda:0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.kernels, self.device) {
            (KernelFamily::Burn, ComputeDevice::Cpu) => write!(f, "burn (flex) on cpu"),
            (KernelFamily::Burn, device) => write!(f, "burn (cubecl) on {device}"),
            (KernelFamily::Libtorch, device) => write!(f, "libtorch on {device}"),
        }
    }
}

/// Resolves `cluster.kernels`: `libtorch` needs a build with it, `auto` takes it when built.
pub fn resolve_kernels(kind: KernelsKind) -> anyhow::Result<KernelFamily> {
    match kind {
        KernelsKind::Burn => Ok(KernelFamily::Burn),
        KernelsKind::Libtorch if KernelFamily::Libtorch.built() => Ok(KernelFamily::Libtorch),
        KernelsKind::Libtorch => Err(anyhow::anyhow!(NO_LIBTORCH)),
        KernelsKind::Auto if KernelFamily::Libtorch.built() => Ok(KernelFamily::Libtorch),
        KernelsKind::Auto => Ok(KernelFamily::Burn),
    }
}

/// Resolves `cluster.device` and `cluster.kernels` for GPU `ordinal` (see [`resolve`] and
/// [`resolve_kernels`]).
pub fn resolve_compute(
    device: DeviceKind,
    kernels: KernelsKind,
    ordinal: usize,
) -> anyhow::Result<Compute> {
    let kernels = resolve_kernels(kernels)?;
    Ok(Compute {
        device: resolve(device, kernels, ordinal)?,
        kernels,
    })
}

/// This process's rank on its node: the first of [`LOCAL_RANK_VARS`] that is set, else 0.
pub fn local_rank() -> anyhow::Result<usize> {
    for var in LOCAL_RANK_VARS {
        if let Ok(value) = std::env::var(var) {
            return value.trim().parse().map_err(|_| {
                anyhow::anyhow!("{var}={value:?} is not a local rank (a GPU ordinal like 0)")
            });
        }
    }
    Ok(0)
}

/// Resolves `kind` for GPU `ordinal` and `kernels`: `cuda` must pass the preflight (else the
/// error lists what is missing), `auto` falls back to the CPU when it does not.
pub fn resolve(
    kind: DeviceKind,
    kernels: KernelFamily,
    ordinal: usize,
) -> anyhow::Result<ComputeDevice> {
    match kind {
        DeviceKind::Cpu => Ok(ComputeDevice::Cpu),
        DeviceKind::Cuda => match preflight(ordinal, kernels) {
            Ok(()) => Ok(ComputeDevice::Cuda(ordinal)),
            Err(missing) => Err(anyhow::anyhow!("cluster.device = \"cuda\": {missing}")),
        },
        DeviceKind::Auto => match preflight(ordinal, kernels) {
            Ok(()) => Ok(ComputeDevice::Cuda(ordinal)),
            Err(missing) => {
                tracing::info!("cluster.device = \"auto\" chose the CPU: {missing}");
                Ok(ComputeDevice::Cpu)
            }
        },
    }
}

/// Everything burn's CUDA backend needs to train on GPU `ordinal` that this process lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing(pub Vec<String>);

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "this machine cannot train on CUDA:")?;
        for (k, piece) in self.0.iter().enumerate() {
            write!(f, "\n  {}. {piece}", k + 1)?;
        }
        Ok(())
    }
}

impl std::error::Error for Missing {}

/// Checks the build, the driver and GPU `ordinal`, and what the `kernels` need besides: NVRTC
/// and the CUDA headers for burn's (cubecl compiles at run time), a libtorch with CUDA for
/// LibTorch's; names each piece that is missing.
pub fn preflight(ordinal: usize, kernels: KernelFamily) -> Result<(), Missing> {
    let mut missing = Vec::new();
    if kernels == KernelFamily::Libtorch {
        if let Err(problem) = gpu_count().and_then(|count| visible(ordinal, count)) {
            missing.push(problem);
        }
        if !libtorch_has_cuda() {
            missing.push(
                "the libtorch this binary runs with has no CUDA (a CPU-only PyTorch build): \
                 install PyPI's Linux `torch` wheel, which is the CUDA build"
                    .to_owned(),
            );
        }
        return if missing.is_empty() {
            Ok(())
        } else {
            Err(Missing(missing))
        };
    }
    if !cfg!(feature = "cuda") {
        missing.push(
            "this binary was built without CUDA: build it with `cargo build --release --features \
             cuda`"
                .to_owned(),
        );
    }
    if let Err(problem) = gpu_count().and_then(|count| visible(ordinal, count)) {
        missing.push(problem);
    }
    if open_library("nvrtc").is_none() {
        missing.push(
            "NVRTC (libnvrtc.so) not found, which compiles burn's GPU kernels at run time: put \
             the CUDA toolkit's lib64 folder, or the nvidia/cuda_nvrtc/lib folder of PyTorch's \
             nvidia-cuda-nvrtc wheel, on LD_LIBRARY_PATH"
                .to_owned(),
        );
    }
    if let Err(problem) = cuda_headers(std::env::var_os("CUDA_PATH")) {
        missing.push(problem);
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Missing(missing))
    }
}

/// Whether GPU `ordinal` is among the `count` the driver sees.
fn visible(ordinal: usize, count: usize) -> Result<(), String> {
    if ordinal < count {
        return Ok(());
    }
    Err(format!(
        "GPU {ordinal} (from {}) is not visible: the driver sees {count} GPU(s) \
         (check CUDA_VISIBLE_DEVICES and cluster.gpus_per_node)",
        LOCAL_RANK_VARS.join(" / ")
    ))
}

/// Whether the linked libtorch can use CUDA (false in a build without libtorch).
fn libtorch_has_cuda() -> bool {
    #[cfg(feature = "libtorch")]
    return tch::Cuda::is_available();
    #[cfg(not(feature = "libtorch"))]
    false
}

/// The folder whose `include/cuda_runtime.h` NVRTC is given, as cubecl-cuda looks for it:
/// `cuda_path` (the value of CUDA_PATH), else the usual install folders.
fn cuda_headers(cuda_path: Option<OsString>) -> Result<PathBuf, String> {
    let hint = "set CUDA_PATH to a folder with include/cuda_runtime.h: a CUDA toolkit \
                (/usr/local/cuda), or the nvidia/cuda_runtime folder of PyTorch's \
                nvidia-cuda-runtime wheel";
    let root = match cuda_path {
        Some(path) => PathBuf::from(path),
        None => ["/usr/local/cuda", "/opt/cuda"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or_else(|| {
                format!("the CUDA headers were not found (CUDA_PATH is unset): {hint}")
            })?,
    };
    let header = root.join("include").join("cuda_runtime.h");
    if header.is_file() {
        Ok(root)
    } else {
        Err(format!("{} does not exist: {hint}", header.display()))
    }
}

/// The number of GPUs the driver sees (through `cuInit` and `cuDeviceGetCount`).
fn gpu_count() -> Result<usize, String> {
    let no_driver = "no NVIDIA driver: libcuda.so not found (install the NVIDIA driver; in a \
                     container, start it with the GPUs exposed, e.g. the NVIDIA container \
                     toolkit's --gpus)";
    let driver = open_library("cuda").ok_or_else(|| no_driver.to_owned())?;
    type CuInit = unsafe extern "C" fn(flags: u32) -> c_int;
    type CuDeviceGetCount = unsafe extern "C" fn(count: *mut c_int) -> c_int;
    // SAFETY: both symbols have these signatures in every CUDA driver API version; the library
    // stays loaded while they are called.
    unsafe {
        let init = driver
            .get::<CuInit>(b"cuInit\0")
            .map_err(|e| format!("libcuda has no cuInit: {e}"))?;
        let count_fn = driver
            .get::<CuDeviceGetCount>(b"cuDeviceGetCount\0")
            .map_err(|e| format!("libcuda has no cuDeviceGetCount: {e}"))?;
        let status = init(0);
        if status != 0 {
            return Err(format!(
                "the NVIDIA driver failed to initialise (cuInit error {status}; 100 means no \
                 GPU is visible, 35 a driver older than the CUDA runtime)"
            ));
        }
        let mut count = 0;
        let status = count_fn(&mut count);
        if status != 0 {
            return Err(format!("cuDeviceGetCount failed with CUDA error {status}"));
        }
        Ok(usize::try_from(count).unwrap_or(0))
    }
}

/// Opens `lib{name}.so` under the names cudarc tries (unversioned, then the CUDA majors).
fn open_library(name: &str) -> Option<libloading::Library> {
    ["", ".1", ".13", ".12", ".11"]
        .into_iter()
        .find_map(|suffix| {
            // SAFETY: loading a CUDA library runs no code of ours; its initialisers are the
            // vendor's, the same that burn's CUDA backend would run.
            unsafe { libloading::Library::new(format!("lib{name}.so{suffix}")).ok() }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_needs_no_preflight_and_auto_falls_back_here() {
        for kernels in [KernelFamily::Burn, KernelFamily::Libtorch] {
            assert_eq!(
                resolve(DeviceKind::Cpu, kernels, 0).unwrap(),
                ComputeDevice::Cpu
            );
        }
        // This machine has no NVIDIA driver: `auto` picks the CPU, `cuda` names what is missing.
        if gpu_count().is_err() {
            for kernels in [KernelFamily::Burn, KernelFamily::Libtorch] {
                assert_eq!(
                    resolve(DeviceKind::Auto, kernels, 0).unwrap(),
                    ComputeDevice::Cpu
                );
                let error = resolve(DeviceKind::Cuda, kernels, 0)
                    .unwrap_err()
                    .to_string();
                assert!(error.contains("cluster.device = \"cuda\""), "{error}");
                assert!(error.contains("libcuda.so not found"), "{error}");
            }
        } else {
            eprintln!("skipped the no-GPU half: an NVIDIA driver is present");
        }
    }

    #[test]
    fn kernels_resolve_to_what_the_build_has() {
        assert_eq!(
            resolve_kernels(KernelsKind::Burn).unwrap(),
            KernelFamily::Burn
        );
        let auto = resolve_kernels(KernelsKind::Auto).unwrap();
        if cfg!(feature = "libtorch") {
            assert_eq!(auto, KernelFamily::Libtorch);
            assert_eq!(
                resolve_kernels(KernelsKind::Libtorch).unwrap(),
                KernelFamily::Libtorch
            );
        } else {
            assert_eq!(auto, KernelFamily::Burn);
            let error = resolve_kernels(KernelsKind::Libtorch)
                .unwrap_err()
                .to_string();
            assert!(error.contains("deploy/libtorch/setup.sh"), "{error}");
        }
        let compute = resolve_compute(DeviceKind::Cpu, KernelsKind::Burn, 0).unwrap();
        assert_eq!(compute.to_string(), "burn (flex) on cpu");
    }

    #[test]
    fn missing_headers_name_cuda_path() {
        let error = cuda_headers(Some("/nonexistent/cuda".into())).unwrap_err();
        assert!(
            error.contains("/nonexistent/cuda/include/cuda_runtime.h does not exist"),
            "{error}"
        );
        assert!(error.contains("set CUDA_PATH"), "{error}");
    }
}
