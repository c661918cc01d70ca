//! The device-resident step on burn's GPU kernels without a GPU: burn's wgpu backend runs the
//! burn-cubecl kernels that CUDA runs, here on Mesa's lavapipe (a Vulkan driver that computes on
//! the CPU; Debian's `mesa-vulkan-drivers`, installed by .ci/run). A tiny Inception-ResNet-v2
//! (1×7 / 7×1 convolutions, max and average pooling, BatchNorm) trains with 2 workers through
//! the TCP ring, on wgpu and on flex from the same parameters: the replicas stay identical and
//! the two backends agree within float tolerance. Dropout draws are per-backend random streams,
//! so that comparison runs without dropout; a second check trains one wgpu replica with dropout
//! twice and expects bit-identical parameters (the per-step seeding that keeps `--resume` exact).

mod support;

use std::path::Path;

use burn::backend::wgpu::WgpuDevice;
use burn::tensor::backend::Backend;
use incept_common::model::params::flatten_params;
use incept_common::model::registry;
use incept_common::train::CpuBackend;
use incept_common::train::backend::WgpuBackend;
use support::ranks::{assert_trained_alike, experiment, train};

const STEPS: u64 = 2;

/// Mesa's lavapipe ICD, present when `mesa-vulkan-drivers` is installed.
const LAVAPIPE_ICD: &str = "/usr/share/vulkan/icd.d/lvp_icd.x86_64.json";

#[test]
fn wgpu_on_lavapipe_trains_like_flex() {
    if !Path::new(LAVAPIPE_ICD).exists() {
        incept_common::testing::skip(
            "wgpu_on_lavapipe_trains_like_flex",
            &format!(
                "no lavapipe Vulkan driver ({LAVAPIPE_ICD}); \
                 `apt-get install mesa-vulkan-drivers` (done by .ci/run)"
            ),
        );
        return;
    }
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // SAFETY: set before any other thread of this test binary (it has this one test) runs.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
    }
    let _rng = support::RNG.lock().unwrap();
    let gpu = WgpuDevice::Cpu;
    let exp = experiment(2, 0.0, STEPS);
    let cpu_device = Default::default();
    CpuBackend::seed(&cpu_device, exp.run.seed);
    let initial = flatten_params(&registry::build::<CpuBackend>(&exp.model, &cpu_device));

    let on_gpu = train::<WgpuBackend>(&exp, &gpu, &initial);
    let on_cpu = train::<CpuBackend>(&exp, &cpu_device, &initial);
    // For the record (experiments/results/bench_step.md), seen with `--nocapture`.
    eprintln!(
        "tiny IRv2, 2 ranks × batch {}, last step: wgpu/lavapipe {:.1} images/s, flex {:.1} images/s",
        exp.train.batch_size, on_gpu.last_step_images_per_s, on_cpu.last_step_images_per_s
    );
    // Measured here: the two backends' updates are 1.9e-4 of the update apart after 1 and
    // after 2 steps.
    assert_trained_alike(("wgpu", &on_gpu), ("flex", &on_cpu), &initial, 1e-3);

    // Dropout on the device is seeded per step: the same run twice draws the same masks.
    let exp = experiment(1, 0.3, STEPS);
    let first = train::<WgpuBackend>(&exp, &gpu, &initial).ranks;
    let second = train::<WgpuBackend>(&exp, &gpu, &initial).ranks;
    assert_eq!(first, second, "dropout on wgpu is not reproducible");
    let without = train::<WgpuBackend>(&experiment(1, 0.0, STEPS), &gpu, &initial).ranks;
    assert_ne!(first[0].0, without[0].0, "dropout had no effect");
}
