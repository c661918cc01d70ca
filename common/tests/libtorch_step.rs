//! LibTorch's kernels (the `libtorch` feature) train like burn's: a tiny Inception-ResNet-v2
//! with 2 workers over the TCP ring, on libtorch and on flex from the same parameters, gives the
//! same losses and updates within float tolerance with identical replicas; dropout on libtorch
//! is reproducible; and a checkpoint written by one kernel family resumes with the other.
#![cfg(feature = "libtorch")]

mod support;

use burn::backend::libtorch::LibTorchDevice;
use burn::tensor::backend::Backend;
use incept_common::model::params::{flatten_params, load_params};
use incept_common::model::registry;
use incept_common::train::backend::TorchBackend;
use incept_common::train::{CpuBackend, Replica, TrainBackend, checkpoint};
use support::ranks::{assert_trained_alike, experiment, train};

/// As many steps as the wgpu test: BatchNorm over a batch of 4 with 1×1 maps in the last stage
/// amplifies float differences step by step (measured here: the updates 1.9e-4 and 1.8e-4 of
/// the update apart after 1 and 2 steps, 5.4e-3 after 3).
const STEPS: u64 = 2;

/// The tiny network's initial parameters, drawn once on flex.
fn initial(exp: &incept_common::config::Experiment) -> Vec<f32> {
    let device = Default::default();
    CpuBackend::seed(&device, exp.run.seed);
    flatten_params(&registry::build::<CpuBackend>(&exp.model, &device))
}

#[test]
fn libtorch_trains_like_flex() {
    let _rng = support::RNG.lock().unwrap();
    let exp = experiment(2, 0.0, STEPS);
    let initial = initial(&exp);
    let on_torch = train::<TorchBackend>(&exp, &LibTorchDevice::Cpu, &initial);
    let on_flex = train::<CpuBackend>(&exp, &Default::default(), &initial);
    eprintln!(
        "tiny IRv2, 2 ranks × batch {}, last step: libtorch {:.1} images/s, flex {:.1} images/s",
        exp.train.batch_size, on_torch.last_step_images_per_s, on_flex.last_step_images_per_s
    );
    assert_trained_alike(("libtorch", &on_torch), ("flex", &on_flex), &initial, 1e-3);
}

#[test]
fn dropout_on_libtorch_is_reproducible() {
    let _rng = support::RNG.lock().unwrap();
    let exp = experiment(1, 0.3, 2);
    let initial = initial(&exp);
    let first = train::<TorchBackend>(&exp, &LibTorchDevice::Cpu, &initial).ranks;
    let second = train::<TorchBackend>(&exp, &LibTorchDevice::Cpu, &initial).ranks;
    assert_eq!(first, second, "dropout on libtorch is not reproducible");
    let without = train::<TorchBackend>(&experiment(1, 0.0, 2), &LibTorchDevice::Cpu, &initial);
    assert_ne!(first[0].0, without.ranks[0].0, "dropout had no effect");
}

/// A single-rank replica of `exp` on backend `B` from `initial`.
fn replica<B: TrainBackend>(
    exp: &incept_common::config::Experiment,
    device: B::Device,
    initial: &[f32],
) -> Replica<B> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let peers = [listener.local_addr().unwrap()];
    let ring = incept_common::collective::Ring::connect(
        0,
        &peers,
        listener,
        std::time::Duration::from_secs(5),
    )
    .unwrap();
    let model = load_params(registry::build::<B>(&exp.model, &device), initial);
    Replica::new(exp, Box::new(ring), model, device).unwrap()
}

#[test]
fn a_checkpoint_resumes_with_the_other_kernels() {
    let _rng = support::RNG.lock().unwrap();
    let exp = experiment(1, 0.0, 4);
    let initial = initial(&exp);
    let root = tempfile::tempdir().unwrap();
    // Written by each family after 2 steps, resumed by the other for 2 more: the losses follow
    // the uninterrupted run of the resuming family.
    let mut flex = replica::<CpuBackend>(&exp, Default::default(), &initial);
    let mut torch = replica::<TorchBackend>(&exp, LibTorchDevice::Cpu, &initial);
    for step in 0..2 {
        flex.step(step).unwrap();
        torch.step(step).unwrap();
    }
    let from_flex =
        checkpoint::write(&root.path().join("flex"), &flex.state(2), &exp.to_toml()).unwrap();
    let from_torch =
        checkpoint::write(&root.path().join("torch"), &torch.state(2), &exp.to_toml()).unwrap();
    let mut flex_then_torch = replica::<TorchBackend>(&exp, LibTorchDevice::Cpu, &initial);
    flex_then_torch
        .restore(checkpoint::read(&from_flex).unwrap())
        .unwrap();
    let mut torch_then_flex = replica::<CpuBackend>(&exp, Default::default(), &initial);
    torch_then_flex
        .restore(checkpoint::read(&from_torch).unwrap())
        .unwrap();
    for step in 2..4 {
        let straight = (
            flex.step(step).unwrap().loss,
            torch.step(step).unwrap().loss,
        );
        let resumed = (
            flex_then_torch.step(step).unwrap().loss,
            torch_then_flex.step(step).unwrap().loss,
        );
        for (resumed, straight, what) in [
            (resumed.0, straight.1, "flex's checkpoint on libtorch"),
            (resumed.1, straight.0, "libtorch's checkpoint on flex"),
        ] {
            assert!(
                (resumed - straight).abs() <= 1e-4 * straight.abs(),
                "step {}: {what} gave loss {resumed}, the uninterrupted run {straight}",
                step + 1
            );
        }
    }
}
