//! Data-parallel equivalence: 2 workers × batch B over real ring sockets end with the same
//! parameters as 1 worker accumulating gradients over 2 micro-batches of B. Gradient buckets
//! are small here, so each step reduces several of them and most cut a tensor in two.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use burn::tensor::backend::Backend;
use incept_common::collective::{Ring, WireFormat};
use incept_common::config::{Experiment, OptimizerKind};
use incept_common::model::params::flatten_params;
use incept_common::model::registry::{self, Network};
use incept_common::train::CpuBackend;
use incept_common::train::Replica;

const STEPS: u64 = 5;

fn experiment(world_size: usize, accumulate: usize) -> Experiment {
    let mut exp = Experiment::default();
    exp.cluster.world_size = world_size;
    exp.cluster.bucket_mib = 0.05;
    exp.model.num_classes = 4;
    exp.model.image_size = 75;
    exp.model.width = 0.0625;
    exp.model.blocks = Some([1, 1, 1]);
    exp.model.dropout = 0.0;
    exp.model.bn_momentum = 0.1;
    exp.data.train_samples = 64;
    exp.data.val_samples = 8;
    exp.train.batch_size = 4;
    exp.train.accumulate = accumulate;
    exp.train.max_steps = Some(STEPS);
    exp.train.optimizer.kind = OptimizerKind::Rmsprop;
    exp.train.optimizer.learning_rate = 0.01;
    incept_common::resolve::check(&exp).expect("test experiment is valid");
    exp
}

fn initial_model(exp: &Experiment) -> Network<CpuBackend> {
    let device = Default::default();
    CpuBackend::seed(&device, exp.run.seed);
    registry::build(&exp.model, &device)
}

/// Runs `work` for every rank of a `world`-sized ring over real sockets, one thread each.
fn on_ring<T: Send>(world: usize, work: impl Fn(usize, Ring) -> T + Sync) -> Vec<T> {
    let listeners: Vec<TcpListener> = (0..world)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let peers: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = listeners
            .into_iter()
            .enumerate()
            .map(|(rank, listener)| {
                let (peers, work) = (&peers, &work);
                scope.spawn(move || {
                    let ring =
                        Ring::connect(rank, peers, listener, Duration::from_secs(30)).unwrap();
                    work(rank, ring)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Trains every rank of `exp`; returns each rank's final parameters and step losses.
fn train(exp: &Experiment, model: &Network<CpuBackend>) -> Vec<(Vec<f32>, Vec<f64>)> {
    on_ring(exp.cluster.world_size, |_, ring| {
        let mut replica =
            Replica::new(exp, Box::new(ring), model.clone(), Default::default()).unwrap();
        let steps = exp.train.max_steps.expect("tests set max_steps");
        let losses = (0..steps).map(|s| replica.step(s).unwrap().loss).collect();
        (replica.params().to_vec(), losses)
    })
}

#[test]
fn two_workers_equal_one_worker_accumulating_two_micro_batches() {
    let model = initial_model(&experiment(1, 2));
    // Reading the parameters materialises burn's lazy initialisation, so the clones handed to
    // each run share these values.
    let initial = flatten_params(&model);
    let distributed = train(&experiment(2, 1), &model);
    let accumulated = train(&experiment(1, 2), &model);
    let (params_a, losses_a) = &accumulated[0];

    // The ranks of the distributed run hold identical replicas.
    assert_eq!(distributed[0].0, distributed[1].0);
    assert_eq!(distributed[0].1, distributed[1].1);
    // Training moved the parameters.
    assert_ne!(&initial, params_a);

    let (params_d, losses_d) = &distributed[0];
    assert_eq!(params_d.len(), params_a.len());
    for (i, (d, a)) in params_d.iter().zip(params_a).enumerate() {
        let tolerance = 1e-5 * d.abs().max(a.abs()).max(1e-3);
        assert!((d - a).abs() <= tolerance, "parameter {i}: {d} vs {a}");
    }
    for (d, a) in losses_d.iter().zip(losses_a) {
        assert!((d - a).abs() <= 1e-5 * a.abs(), "loss {d} vs {a}");
    }
}

#[test]
fn diverged_replicas_are_detected_by_checksum() {
    let exp = experiment(2, 1);
    let model = initial_model(&exp);
    flatten_params(&model);
    let outcomes = on_ring(2, |rank, ring| {
        let mut replica =
            Replica::new(&exp, Box::new(ring), model.clone(), Default::default()).unwrap();
        replica.step(0).unwrap();
        replica.check_consistency(1).unwrap();
        if rank == 1 {
            let mut state = replica.state(1);
            state.params[0] += 1.0;
            replica.restore(state).unwrap();
        }
        replica.check_consistency(2).unwrap_err().to_string()
    });
    for err in outcomes {
        assert!(err.contains("replicas diverged at step 2"), "{err}");
    }
}

#[test]
fn compressed_gradients_keep_replicas_identical_and_close() {
    let mut exp = experiment(2, 1);
    exp.train.max_steps = Some(1);
    let model = initial_model(&exp);
    let initial = flatten_params(&model); // materialises the initialisation both runs clone
    let exact = train(&exp, &model);
    exp.cluster.gradient_wire = WireFormat::Bf16;
    let compressed = train(&exp, &model);

    assert_eq!(compressed[0], compressed[1], "bf16 replicas diverged");
    assert_eq!(
        compressed[0].1, exact[0].1,
        "the loss travels in f32 either way"
    );
    // bf16 keeps 8 bits of mantissa, rounding each rank's contribution: the update as a
    // whole is within a few 2^-8 of the exact one (single values can be further off where the
    // ranks' gradients cancel).
    let (params_c, params_e) = (&compressed[0].0, &exact[0].0);
    assert_ne!(params_c, params_e, "bf16 rounding left no trace");
    let norm = |v: Vec<f32>| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let update = norm(params_e.iter().zip(&initial).map(|(e, i)| e - i).collect());
    let error = norm(params_c.iter().zip(params_e).map(|(c, e)| c - e).collect());
    assert!(
        error <= update * 2f64.powi(-6),
        "update norm {update}, bf16 off by {error}"
    );
}
