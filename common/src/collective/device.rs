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
use burn::tensor::TensorData;

use super::{Collective, CollectiveError};

/// A backend a replica's step runs on.
pub trait TrainDevice: Backend {
    /// Whether tensors on `device` live in host memory and [`HostBuffer::take`] hands over a
    /// unique tensor's buffer without copying it: element-wise updates then run as fused loops
    /// over it in place (a chain of tensor operations would allocate and fill a new buffer at
    /// every step), and the model keeps copies of its parameters rather than views of the flat
    /// tensor, so that the flat tensor stays its buffer's only owner.
    fn host_memory(_device: &Self::Device) -> bool {
        false
    }

    /// `tensor`'s values in host memory: its own buffer where it can ([`host_memory`]), else a
    /// copy.
    ///
    /// [`host_memory`]: TrainDevice::host_memory
    fn into_host(tensor: Tensor<Self, 1>) -> HostBuffer {
        HostBuffer(HostValues::Data(tensor.into_data()))
    }

    /// The tensor of `buffer`'s values on `device`.
    fn from_host(buffer: HostBuffer, device: &Self::Device) -> Tensor<Self, 1> {
        Tensor::from_data(buffer.into_data(), device)
    }

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

/// A flat tensor's values in host memory, to update in place: flex hands a unique tensor's
/// buffer over and takes it back without copying (it copies a shared one), and so does
/// LibTorch on the CPU.
pub struct HostBuffer(HostValues);

enum HostValues {
    Data(TensorData),
    /// A contiguous f32 CPU tensor that nothing else references.
    #[cfg(feature = "libtorch")]
    Torch(tch::Tensor),
}

impl HostBuffer {
    /// The tensor's buffer (see [`TrainDevice::into_host`]).
    pub fn take<B: TrainDevice>(tensor: Tensor<B, 1>) -> Self {
        B::into_host(tensor)
    }

    /// Its values, to read and write.
    pub fn values(&mut self) -> &mut [f32] {
        match &mut self.0 {
            HostValues::Data(data) => data.as_mut_slice().expect("flat tensors hold f32"),
            #[cfg(feature = "libtorch")]
            HostValues::Torch(tensor) => {
                let len = tensor.numel();
                // SAFETY: `into_host` keeps only contiguous f32 CPU tensors that no other
                // tensor shares, so these `len` values are this buffer's alone while it is
                // borrowed.
                unsafe { std::slice::from_raw_parts_mut(tensor.data_ptr() as *mut f32, len) }
            }
        }
    }

    /// The buffer back as a tensor.
    pub fn into_tensor<B: TrainDevice>(self, device: &B::Device) -> Tensor<B, 1> {
        B::from_host(self, device)
    }

    /// The values as burn's `TensorData` (a copy unless they are one already).
    fn into_data(self) -> TensorData {
        match self.0 {
            HostValues::Data(data) => data,
            #[cfg(feature = "libtorch")]
            torch @ HostValues::Torch(_) => {
                let values = HostBuffer(torch).values().to_vec();
                let len = values.len();
                TensorData::new(values, [len])
            }
        }
    }

    /// Runs `read` over `tensor`'s values where they lie (if nothing else shares them),
    /// leaving the tensor as it was.
    pub fn read<B: TrainDevice, R>(tensor: &mut Tensor<B, 1>, read: impl FnOnce(&[f32]) -> R) -> R {
        let device = tensor.device();
        let mut buffer = Self::take(std::mem::replace(tensor, Tensor::empty([0], &device)));
        let result = read(buffer.values());
        *tensor = buffer.into_tensor(&device);
        result
    }
}

impl TrainDevice for burn::backend::Flex {
    fn host_memory(_device: &Self::Device) -> bool {
        true
    }
}

#[cfg(feature = "wgpu")]
impl TrainDevice for burn::backend::Wgpu {}

/// The NCCL communicator behind `collective`, the only one that reduces device memory in place.
#[cfg(feature = "cuda")]
fn nccl_of(collective: &mut dyn Collective) -> Result<&mut super::nccl::Nccl, CollectiveError> {
    collective.as_nccl().ok_or_else(|| {
        CollectiveError::Invalid("only NCCL all-reduces CUDA tensors in place".into())
    })
}

#[cfg(feature = "cuda")]
impl TrainDevice for burn::backend::Cuda {
    fn reduces_in_place(collective: &mut dyn Collective) -> bool {
        collective.as_nccl().is_some()
    }

    fn all_reduce_in_place(
        bucket: Tensor<Self, 1>,
        collective: &mut dyn Collective,
    ) -> Result<Tensor<Self, 1>, CollectiveError> {
        let nccl = nccl_of(collective)?;
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

/// LibTorch: on the CPU a unique contiguous tensor's memory is updated where it lies (a shared
/// one is copied first); on a GPU updates run as tensor operations, and with NCCL a bucket is
/// reduced in its own CUDA memory.
#[cfg(feature = "libtorch")]
impl TrainDevice for burn::backend::LibTorch<f32> {
    fn host_memory(device: &Self::Device) -> bool {
        matches!(device, burn::backend::libtorch::LibTorchDevice::Cpu)
    }

    fn into_host(tensor: Tensor<Self, 1>) -> HostBuffer {
        let primitive = tensor.into_primitive().tensor();
        let on_cpu = primitive.tensor.device() == tch::Device::Cpu;
        let tensor = if on_cpu && primitive.can_mut() && primitive.tensor.is_contiguous() {
            primitive.tensor
        } else {
            primitive
                .tensor
                .to_device(tch::Device::Cpu)
                .contiguous()
                .copy()
        };
        HostBuffer(HostValues::Torch(tensor.to_kind(tch::Kind::Float)))
    }

    fn from_host(buffer: HostBuffer, device: &Self::Device) -> Tensor<Self, 1> {
        let tensor = match buffer.0 {
            HostValues::Torch(tensor) => tensor,
            HostValues::Data(data) => {
                return Tensor::from_data(data, device);
            }
        };
        let tensor = tensor.to_device((*device).into());
        Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(
            burn::backend::libtorch::TchTensor::new(tensor),
        ))
    }

    #[cfg(feature = "cuda")]
    fn reduces_in_place(collective: &mut dyn Collective) -> bool {
        collective.as_nccl().is_some()
    }

    #[cfg(feature = "cuda")]
    fn all_reduce_in_place(
        bucket: Tensor<Self, 1>,
        collective: &mut dyn Collective,
    ) -> Result<Tensor<Self, 1>, CollectiveError> {
        use burn::backend::libtorch::TchTensor;
        let nccl = nccl_of(collective)?;
        let bucket = bucket.into_primitive().tensor();
        // NCCL writes into the allocation: it must be this tensor's alone, without gaps.
        let buffer = if bucket.can_mut() && bucket.tensor.is_contiguous() {
            bucket.tensor
        } else {
            bucket.tensor.copy()
        };
        let tch::Device::Cuda(ordinal) = buffer.device() else {
            return Err(CollectiveError::Invalid(
                "NCCL all-reduces CUDA tensors only; this bucket is on the CPU".into(),
            ));
        };
        let len = buffer.numel();
        // libtorch queues its kernels on the device's current stream, NCCL on its own: the
        // gradient and this bucket's copy must have finished before NCCL reads.
        tch::Cuda::synchronize(ordinal as i64);
        // SAFETY: `buffer` is `len` contiguous f32 values in this GPU's memory that only this
        // function holds until the call returns; the call waits for NCCL's completion.
        unsafe {
            nccl.all_reduce_device(
                buffer.data_ptr() as cudarc::driver::sys::CUdeviceptr,
                len,
                super::ReduceOp::Mean,
            )?;
        }
        Ok(Tensor::from_primitive(
            burn::tensor::TensorPrimitive::Float(TchTensor::new(buffer)),
        ))
    }
}
