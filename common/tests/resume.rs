//! Checkpoints resume exactly: a replica stopped after step s, written to disk and restored in a
//! fresh replica, continues with the same losses and parameters as an uninterrupted one.

use std::net::TcpListener;
use std::sync::Mutex;
use std::time::Duration;

use burn::tensor::backend::Backend;
use incept_common::TrainBackend;
use incept_common::collective::Ring;
use incept_common::config::Experiment;
use incept_common::model::registry;
use incept_common::train::Replica;
use incept_common::train::checkpoint;

/// The backend RNG is process-wide: tests that rely on its seeding take turns.
static RNG: Mutex<()> = Mutex::new(());

fn experiment() -> Experiment {
    let mut exp = Experiment::default();
    exp.model.num_classes = 4;
    exp.model.image_size = 75;
    exp.model.width = 0.0625;
    exp.model.blocks = [1, 1, 1];
    exp.model.dropout = 0.3; // exercises the per-step RNG seeding
    exp.model.bn_momentum = 0.1;
    exp.data.train_samples = 64;
    exp.data.val_samples = 16;
    exp.train.batch_size = 4;
    exp.train.max_steps = Some(6);
    exp.train.optimizer.learning_rate = 0.01;
    exp.validate().expect("test experiment is valid");
    exp
}

/// A fresh single-rank replica, initialised from the experiment's seed.
fn replica(exp: &Experiment) -> Replica<TrainBackend> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let peers = [listener.local_addr().unwrap()];
    let ring = Ring::connect(0, &peers, listener, Duration::from_secs(5)).unwrap();
    let device = Default::default();
    TrainBackend::seed(&device, exp.run.seed);
    let model = registry::build(&exp.model, &device);
    Replica::new(exp, ring, model, device).unwrap()
}

#[test]
fn resumed_replica_matches_uninterrupted_bit_for_bit() {
    let _rng = RNG.lock().unwrap();
    let exp = experiment();
    let mut straight = replica(&exp);
    let losses: Vec<f64> = (0..6).map(|s| straight.step(s).unwrap().loss).collect();

    let mut first = replica(&exp);
    for s in 0..3 {
        assert_eq!(first.step(s).unwrap().loss, losses[s as usize]);
    }
    let root = tempfile::tempdir().unwrap();
    let dir = checkpoint::write(root.path(), &first.state(3), &exp.to_toml()).unwrap();
    drop(first);

    // A replica initialised differently proves the restore replaces every weight.
    let mut other_init = exp.clone();
    other_init.run.seed += 1;
    let mut resumed = replica(&other_init);
    resumed.restore(checkpoint::read(&dir).unwrap()).unwrap();
    // Data order and dropout follow the run's seed, so the run continues with its own.
    let mut resumed_same = replica(&exp);
    assert_ne!(resumed.params(), resumed_same.params());
    resumed_same
        .restore(checkpoint::read(&dir).unwrap())
        .unwrap();
    assert_eq!(resumed.params(), resumed_same.params());

    for s in 3..6 {
        assert_eq!(
            resumed_same.step(s).unwrap().loss,
            losses[s as usize],
            "step {}",
            s + 1
        );
    }
    assert_eq!(resumed_same.params(), straight.params());
    assert_eq!(resumed_same.state(6), straight.state(6));
    assert_eq!(
        resumed_same.evaluate().unwrap(),
        straight.evaluate().unwrap()
    );
}

#[test]
fn non_finite_steps_are_skipped_then_stop_the_run() {
    let _rng = RNG.lock().unwrap();
    let mut exp = experiment();
    exp.train.optimizer.kind = incept_common::config::OptimizerKind::Sgd;
    exp.train.optimizer.learning_rate = 1e30;
    exp.train.clip_global_norm = 0.0;
    exp.train.max_nonfinite_steps = 2;
    exp.train.max_steps = Some(10);
    let mut replica = replica(&exp);
    // Step 1 is finite but its update makes the weights explode.
    assert!(!replica.step(0).unwrap().skipped);
    let before = replica.params().to_vec();
    let second = replica.step(1).unwrap();
    assert!(second.skipped, "{second:?}");
    assert_eq!(
        replica.params(),
        &before[..],
        "a skipped step leaves the weights alone"
    );
    let err = replica.step(2).unwrap_err().to_string();
    assert!(
        err.contains("2 consecutive steps") && err.contains("step 3"),
        "{err}"
    );
}
