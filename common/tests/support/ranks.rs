//! Every rank of a tiny run trained on one backend, one thread per rank over real sockets, and
//! the comparison of two backends' runs from the same parameters.

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use incept_common::collective::Ring;
use incept_common::config::Experiment;
use incept_common::model::params::load_params;
use incept_common::model::registry;
use incept_common::train::{Replica, TrainBackend};

/// The tiny test experiment with `world_size` ranks, `dropout`, several gradient buckets (most
/// cutting a tensor in two) and `steps` steps.
pub fn experiment(world_size: usize, dropout: f64, steps: u64) -> Experiment {
    let mut exp = super::experiment();
    exp.cluster.world_size = world_size;
    exp.cluster.bucket_mib = 0.05;
    exp.model.dropout = dropout;
    exp.train.max_steps = Some(steps);
    incept_common::resolve::check(&exp).expect("test experiment is valid");
    exp
}

/// What every rank of one run ended with.
pub struct Trained {
    /// Each rank's final parameters and losses.
    pub ranks: Vec<(Vec<f32>, Vec<f64>)>,
    /// Images per second of the last step, all ranks together (the first step may also
    /// compile kernels).
    pub last_step_images_per_s: f64,
}

/// Trains every rank of `exp` for its `max_steps` from `initial` on backend `B`.
pub fn train<B: TrainBackend>(exp: &Experiment, device: &B::Device, initial: &[f32]) -> Trained {
    let steps = exp
        .train
        .max_steps
        .expect("the test experiment sets max_steps");
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
                    for step in 0..steps {
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

/// Euclidean norm.
pub fn norm(values: impl Iterator<Item = f32>) -> f64 {
    values.map(|v| f64::from(v).powi(2)).sum::<f64>().sqrt()
}

/// Asserts that two backends trained alike from `initial`: each run's replicas are identical,
/// the losses agree within 1e-4 (relative), and the updates are at most `tolerance` of the
/// update's norm apart (kernels sum in other orders, and BatchNorm over a batch of 4 with 1×1
/// maps in the last stage magnifies that: compare the whole update, not single values).
pub fn assert_trained_alike(
    (name, ours): (&str, &Trained),
    (reference_name, reference): (&str, &Trained),
    initial: &[f32],
    tolerance: f64,
) {
    assert_eq!(ours.ranks[0], ours.ranks[1], "{name} replicas diverged");
    assert_eq!(
        reference.ranks[0], reference.ranks[1],
        "{reference_name} replicas diverged"
    );
    let ((params, losses), (reference_params, reference_losses)) =
        (&ours.ranks[0], &reference.ranks[0]);
    for (a, b) in losses.iter().zip(reference_losses) {
        assert!(
            (a - b).abs() <= 1e-4 * b.abs(),
            "loss on {name} {a} vs {reference_name} {b}"
        );
    }
    let update = norm(reference_params.iter().zip(initial).map(|(c, i)| c - i));
    let apart = norm(params.iter().zip(reference_params).map(|(g, c)| g - c));
    assert!(update > 0.0, "training moved nothing");
    assert!(
        apart <= tolerance * update,
        "{name} and {reference_name} updates differ by {apart} (update norm {update}, {:.1e} of it)",
        apart / update
    );
    eprintln!(
        "{name} vs {reference_name}: updates {:.1e} of the update apart",
        apart / update
    );
}
