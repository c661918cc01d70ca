//! The burn backends a replica trains on, and what sets them apart: whether their tensors live
//! in host memory (flex: the optimizer then updates them in place, in one fused pass, as a CPU
//! kernel would), and whether a gradient bucket can be all-reduced where it lies in device
//! memory.
//!
//! On CUDA with NCCL it can: the bucket tensor's own allocation is handed to `ncclAllReduce`
//! (no host copy). Everywhere else (the flex CPU backend, wgpu, CUDA with the TCP ring) a bucket
//! is downloaded, reduced on the host and uploaded again (see
//! [`GradientBuckets::all_reduce_mean_tensor`](super::GradientBuckets::all_reduce_mean_tensor)).

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use super::{Collective, CollectiveError};

/// A backend a replica's step runs on.
pub trait TrainDevice: Backend {
    /// Tensors live in host memory, where `into_data` and `from_data` move a unique tensor's
    /// buffer without copying it: element-wise updates run as fused loops over it in place
    /// (a chain of tensor operations would allocate and fill a new buffer at every step).
    const HOST_MEMORY: bool = false;

    /// Whether `collective` all-reduces this backend's tensors in their device memory.
    fn reduces_in_place(_collective: &mut dyn Collective) -> bool {
        false
    }

    /// Mean all-reduce of `bucket` in its own device memory; only valid where
    /// [`reduces_in_place`](Self::reduces_in_place) said so.
    fn all_reduce_in_place(
        _bucket: Tensor<Self, 1>,
        _collective: &mut dyn Collective,
    ) -> Result<Tensor<Self, 1>, CollectiveError> {
        Err(CollectiveError::Invalid(
            "this backend's tensors cannot be all-reduced in device memory".into(),
        ))
    }
}

/// A flat tensor's buffer in host memory ([`TrainDevice::HOST_MEMORY`]), to update in place:
/// flex hands a unique tensor's buffer over and takes it back without copying (it copies a
/// shared one).
pub struct HostBuffer(TensorData);

impl HostBuffer {
    /// The tensor's buffer.
    pub fn take<B: Backend>(tensor: Tensor<B, 1>) -> Self {
        Self(tensor.into_data())
    }

    /// Its values, to read and write.
    pub fn values(&mut self) -> &mut [f32] {
        self.0.as_mut_slice().expect("flat tensors hold f32")
    }

    /// The buffer back as a tensor.
    pub fn into_tensor<B: Backend>(self, device: &B::Device) -> Tensor<B, 1> {
        Tensor::from_data(self.0, device)
    }

    /// Runs `read` over `tensor`'s values where they lie (if nothing else shares them),
    /// leaving the tensor as it was.
    pub fn read<B: Backend, R>(tensor: &mut Tensor<B, 1>, read: impl FnOnce(&[f32]) -> R) -> R {
        let device = tensor.device();
        let mut buffer = Self::take(std::mem::replace(tensor, Tensor::empty([0], &device)));
        let result = read(buffer.values());
        *tensor = buffer.into_tensor(&device);
        result
    }
}

/// What a replica trains on: burn's autodiff over a backend with [`TrainDevice`]. The worker
/// picks one at run time from `cluster.device`.
pub trait TrainBackend: AutodiffBackend<InnerBackend: TrainDevice> {}

impl<B: AutodiffBackend<InnerBackend: TrainDevice>> TrainBackend for B {}

/// The CPU: burn's flex backend with autodiff (the default, `cluster.device = "cpu"`).
pub type CpuBackend = burn::backend::Autodiff<burn::backend::Flex>;

impl TrainDevice for burn::backend::Flex {
    const HOST_MEMORY: bool = true;
}

/// burn's wgpu backend: the same burn-cubecl kernels as CUDA, which tests run on Mesa's
/// lavapipe Vulkan driver (a CPU device).
#[cfg(feature = "wgpu")]
pub type WgpuBackend = burn::backend::Autodiff<burn::backend::Wgpu>;

#[cfg(feature = "wgpu")]
impl TrainDevice for burn::backend::Wgpu {}

/// An NVIDIA GPU: burn's CUDA backend (no fusion, so every tensor has a raw buffer) with
/// autodiff (`cluster.device = "cuda"`).
#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Autodiff<burn::backend::Cuda>;

#[cfg(feature = "cuda")]
impl TrainDevice for burn::backend::Cuda {
    fn reduces_in_place(collective: &mut dyn Collective) -> bool {
        collective.as_nccl().is_some()
    }

    fn all_reduce_in_place(
        bucket: Tensor<Self, 1>,
        collective: &mut dyn Collective,
    ) -> Result<Tensor<Self, 1>, CollectiveError> {
        let Some(nccl) = collective.as_nccl() else {
            return Err(CollectiveError::Invalid(
                "only NCCL all-reduces CUDA tensors in place".into(),
            ));
        };
        let device = bucket.device();
        let mut buffer = bucket.into_primitive().tensor();
        // NCCL writes into the allocation: it must be this tensor's alone, without gaps.
        if !(buffer.can_mut() && buffer.is_contiguous()) {
            buffer = buffer.copy();
        }
        let len = buffer.meta.shape().num_elements();
        // Kernels run on the training thread's stream, NCCL on its own: everything queued so
        // far (the gradient and this bucket's copy) must have finished before NCCL reads.
        <Self as Backend>::sync(&device).map_err(|e| CollectiveError::Nccl {
            rank: nccl.rank(),
            message: format!("synchronising the training stream before the all-reduce: {e:?}"),
        })?;
        let resource = buffer
            .client
            .get_resource(buffer.handle.clone())
            .map_err(|e| CollectiveError::Nccl {
                rank: nccl.rank(),
                message: format!("the bucket's device buffer: {e:?}"),
            })?;
        // SAFETY: the resource is `len` contiguous f32 values owned by `buffer` alone (checked
        // above), kept alive by `resource` until the call returns; the call waits for NCCL's
        // completion, so no kernel touches the buffer while NCCL writes it.
        unsafe {
            nccl.all_reduce_device(resource.resource().ptr, len, super::ReduceOp::Mean)?;
        }
        drop(resource);
        Ok(Tensor::from_primitive(
            burn::tensor::TensorPrimitive::Float(buffer),
        ))
    }
}
