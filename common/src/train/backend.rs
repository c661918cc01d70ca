//! The one place where a resolved [`Compute`] (device × kernels) becomes a burn backend type.
//!
//! Training code is generic over [`TrainBackend`]; [`run_on`] picks the concrete backend at run
//! time and runs a [`BackendJob`] on it, so the worker, the benchmarks and anything else that
//! trains share one match instead of each writing its own.

use burn::tensor::backend::AutodiffBackend;

use crate::collective::TrainDevice;
use crate::device::{Compute, ComputeDevice, KernelFamily};
use crate::model::Kernels;

/// What a replica trains on: burn's autodiff over a backend with [`TrainDevice`], both with the
/// model's [`Kernels`].
pub trait TrainBackend: AutodiffBackend<InnerBackend: TrainDevice + Kernels> + Kernels {}

impl<B: AutodiffBackend<InnerBackend: TrainDevice + Kernels> + Kernels> TrainBackend for B {}

/// burn's kernels on the CPU: the flex backend with autodiff.
pub type CpuBackend = burn::backend::Autodiff<burn::backend::Flex>;

/// burn's wgpu backend: the same burn-cubecl kernels as CUDA, which tests run on Mesa's
/// lavapipe Vulkan driver (a CPU device).
#[cfg(feature = "wgpu")]
pub type WgpuBackend = burn::backend::Autodiff<burn::backend::Wgpu>;

/// burn's kernels on an NVIDIA GPU: the CUDA backend (no fusion, so every tensor has a raw
/// buffer) with autodiff.
#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Autodiff<burn::backend::Cuda>;

/// LibTorch's kernels, on the CPU or a CUDA GPU, with burn's autodiff over them.
#[cfg(feature = "libtorch")]
pub type TorchBackend = burn::backend::Autodiff<crate::model::libtorch::Torch>;

/// Work generic over the backend, which [`run_on`] runs on the one a [`Compute`] names.
pub trait BackendJob {
    /// What the work returns.
    type Output;

    /// Runs the work on backend `B`, device `device`.
    fn run<B: TrainBackend>(self, device: B::Device) -> anyhow::Result<Self::Output>;
}

/// Runs `job` on the backend of `compute`; a combination this build lacks is an error saying
/// which feature to build with.
pub fn run_on<J: BackendJob>(compute: Compute, job: J) -> anyhow::Result<J::Output> {
    match (compute.kernels, compute.device) {
        (KernelFamily::Burn, ComputeDevice::Cpu) => job.run::<CpuBackend>(Default::default()),
        #[cfg(feature = "cuda")]
        (KernelFamily::Burn, ComputeDevice::Cuda(ordinal)) => {
            job.run::<CudaBackend>(burn::backend::cuda::CudaDevice::new(ordinal))
        }
        #[cfg(feature = "libtorch")]
        (KernelFamily::Libtorch, ComputeDevice::Cpu) => {
            job.run::<TorchBackend>(burn::backend::libtorch::LibTorchDevice::Cpu)
        }
        #[cfg(feature = "libtorch")]
        (KernelFamily::Libtorch, ComputeDevice::Cuda(ordinal)) => {
            job.run::<TorchBackend>(burn::backend::libtorch::LibTorchDevice::Cuda(ordinal))
        }
        #[allow(unreachable_patterns)]
        (kernels, device) => anyhow::bail!("{}", kernels.missing_from_build(device)),
    }
}

/// Compute threads of this process: `RAYON_NUM_THREADS` if set (the local launcher sets it to
/// `cluster.threads_per_worker`), else every core.
pub fn cpu_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Sets how many CPU threads LibTorch computes with (its intra-op pool; one inter-op thread),
/// as `RAYON_NUM_THREADS` does for burn's; nothing without the `libtorch` feature.
pub fn set_cpu_threads(threads: usize) {
    #[cfg(feature = "libtorch")]
    {
        tch::set_num_threads(threads.max(1) as i32);
    }
    #[cfg(not(feature = "libtorch"))]
    let _ = threads;
}
