//! The device-resident step on burn's GPU kernels without a GPU: burn's wgpu backend runs the
//! burn-cubecl kernels that CUDA runs, here on Mesa's lavapipe (a Vulkan driver that computes on
//! the CPU; Debian's `mesa-vulkan-drivers`, installed by .ci/run). A tiny Inception-ResNet-v2
//! (1×7 / 7×1 convolutions, max and average pooling, BatchNorm) trains with 2 workers through
//! the TCP ring, on wgpu and on flex from the same parameters: the replicas stay identical and
//! the two backends agree within float tolerance. Dropout draws are per-backend random streams,
//! so that comparison runs without dropout; a second check trains one wgpu replica with dropout
//! twice and expects bit-identical parameters (the per-step seeding that keeps `--resume` exact).

mod support;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use burn::backend::wgpu::WgpuDevice;
use burn::tensor::backend::Backend;
use incept_common::collective::device::WgpuBackend;
use incept_common::collective::{CpuBackend, Ring, TrainBackend};
use incept_common::config::Experiment;
use incept_common::model::params::{flatten_params, load_params};
use incept_common::model::registry;
use incept_common::train::Replica;

const STEPS: u64 = 2;

/// Mesa's lavapipe ICD, present when `mesa-vulkan-drivers` is installed.
const LAVAPIPE_ICD: &str = "/usr/share/vulkan/icd.d/lvp_icd.x86_64.json";

fn experiment(world_size: usize, dropout: f64) -> Experiment {
    let mut exp = support::experiment();
    exp.cluster.world_size = world_size;
    exp.cluster.bucket_mib = 0.05; // several buckets, most cutting a tensor in two
    exp.model.dropout = dropout;
    exp.train.max_steps = Some(STEPS);
    incept_common::resolve::check(&exp).expect("test experiment is valid");
    exp
}

/// What every rank of one run ended with.
struct Trained {
    /// Each rank's final parameters and losses.
    ranks: Vec<(Vec<f32>, Vec<f64>)>,
    /// Images per second of the last step, all ranks together (the first step also compiles
    /// the kernels).
    last_step_images_per_s: f64,
}

/// Trains every rank of `exp` from `initial` on backend `B`, one thread per rank over real
/// sockets.
fn train<B: TrainBackend>(exp: &Experiment, device: &B::Device, initial: &[f32]) -> Trained {
    let world = exp.cluster.world_size;
    let listeners: Vec<TcpListener> = (0..world)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let peers: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = listeners
            .into_iter()
            .enumerate()
            .map(|(rank, listener)| {
                let peers = &peers;
                scope.spawn(move || {
                    let ring =
                        Ring::connect(rank, peers, listener, Duration::from_secs(60)).unwrap();
                    let model = load_params(registry::build::<B>(&exp.model, device), initial);
                    let mut replica =
                        Replica::new(exp, Box::new(ring), model, device.clone()).unwrap();
                    let mut losses = Vec::new();
                    let mut last = (0, Duration::ZERO);
                    for step in 0..STEPS {
                        let started = Instant::now();
                        let stats = replica.step(step).unwrap();
                        last = (stats.images, started.elapsed());
                        losses.push(stats.loss);
                    }
                    ((replica.params(), losses), last)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let images: usize = results.iter().map(|(_, (images, _))| images).sum();
    let slowest = results.iter().map(|(_, (_, took))| *took).max().unwrap();
    Trained {
        ranks: results.into_iter().map(|(rank, _)| rank).collect(),
        last_step_images_per_s: images as f64 / slowest.as_secs_f64(),
    }
}

fn norm(values: impl Iterator<Item = f32>) -> f64 {
    values.map(|v| f64::from(v).powi(2)).sum::<f64>().sqrt()
}

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
    let exp = experiment(2, 0.0);
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
    let (on_gpu, on_cpu) = (on_gpu.ranks, on_cpu.ranks);
    assert_eq!(on_gpu[0], on_gpu[1], "wgpu replicas diverged");
    assert_eq!(on_cpu[0], on_cpu[1], "flex replicas diverged");

    let ((gpu_params, gpu_losses), (cpu_params, cpu_losses)) = (&on_gpu[0], &on_cpu[0]);
    for (g, c) in gpu_losses.iter().zip(cpu_losses) {
        assert!(
            (g - c).abs() <= 1e-4 * c.abs(),
            "loss on wgpu {g} vs flex {c}"
        );
    }
    // Kernels sum in other orders, and BatchNorm over a batch of 4 (1×1 maps in the last
    // stage) magnifies that: compare the whole update, not single values. Measured here: the
    // two backends' updates are 1.9e-4 of the update apart after 1 and after 2 steps.
    let update = norm(cpu_params.iter().zip(&initial).map(|(c, i)| c - i));
    let apart = norm(gpu_params.iter().zip(cpu_params).map(|(g, c)| g - c));
    assert!(update > 0.0, "training moved nothing");
    assert!(
        apart <= 1e-3 * update,
        "wgpu and flex updates differ by {apart} (update norm {update})"
    );

    // Dropout on the device is seeded per step: the same run twice draws the same masks.
    let exp = experiment(1, 0.3);
    let first = train::<WgpuBackend>(&exp, &gpu, &initial).ranks;
    let second = train::<WgpuBackend>(&exp, &gpu, &initial).ranks;
    assert_eq!(first, second, "dropout on wgpu is not reproducible");
    let without = train::<WgpuBackend>(&experiment(1, 0.0), &gpu, &initial).ranks;
    assert_ne!(first[0].0, without[0].0, "dropout had no effect");
}
