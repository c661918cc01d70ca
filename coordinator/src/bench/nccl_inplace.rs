//! `coordinator bench nccl-inplace`: the in-place NCCL path of training on a real GPU. A flat
//! gradient tensor on GPU `LOCAL_RANK` is all-reduced (world size 1) bucket by bucket in its
//! own device memory, as a training step does, and every value is checked against the host
//! copy; the input tensor must come back untouched (NCCL wrote only the buckets' own copies).
//! Buckets cut the tensor at offsets inside one allocation, so a wrong device address shows.

use anyhow::bail;

/// Runs the check over `len` values in buckets of `bucket_bytes`; prints one line of figures.
pub fn run(len: usize, bucket_bytes: usize) -> anyhow::Result<()> {
    if len == 0 || bucket_bytes < 4 {
        bail!("--len must be at least 1 and --bucket-mib at least 4 bytes' worth");
    }
    check(len, bucket_bytes)
}

#[cfg(feature = "cuda")]
fn check(len: usize, bucket_bytes: usize) -> anyhow::Result<()> {
    use std::time::{Duration, Instant};

    use burn::backend::Cuda;
    use burn::backend::cuda::CudaDevice;
    use burn::prelude::*;
    use burn::tensor::TensorData;
    use incept_common::collective::nccl::{Nccl, NcclId};
    use incept_common::collective::{GradientBuckets, TrainDevice, WireFormat};
    use incept_common::device;

    let ordinal = device::local_rank()?;
    device::preflight(ordinal, device::KernelFamily::Burn)?;
    let mut nccl = Nccl::connect(0, 1, NcclId::new()?, ordinal, Duration::from_secs(60))?;
    if !Cuda::reduces_in_place(&mut nccl) {
        bail!("NCCL does not take CUDA tensors in place");
    }
    let values: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
    let gpu = CudaDevice::new(ordinal);
    let flat = Tensor::<Cuda, 1>::from_data(TensorData::new(values.clone(), [len]), &gpu);
    let buckets = GradientBuckets::new(bucket_bytes, WireFormat::F32);
    let started = Instant::now();
    let reduced = buckets.all_reduce_mean_tensor(&mut nccl, flat.clone())?;
    let reduced = reduced.into_data().into_vec::<f32>()?;
    let elapsed = started.elapsed();
    let input = flat.into_data().into_vec::<f32>()?;
    let wrong = reduced.iter().zip(&values).filter(|(r, v)| r != v).count();
    let touched = input.iter().zip(&values).filter(|(r, v)| r != v).count();
    println!(
        "nccl in place on cuda:{ordinal}: {len} values in {} buckets, {:.1} ms, {wrong} wrong, \
         {touched} input values changed",
        buckets.ranges(len).count(),
        elapsed.as_secs_f64() * 1e3
    );
    if wrong > 0 || touched > 0 {
        bail!("the in-place NCCL all-reduce gave wrong values");
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn check(_: usize, _: usize) -> anyhow::Result<()> {
    bail!("this binary was built without the `cuda` feature: build with --features cuda")
}
