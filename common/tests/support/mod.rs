//! Helpers shared by the integration tests: a tiny experiment and single-rank replicas, and
//! ([`ranks`]) every rank of a run trained on one backend.

#[allow(dead_code)] // not every test binary that shares this module uses it
pub mod ranks;

use std::net::TcpListener;
use std::sync::Mutex;
use std::time::Duration;

use burn::tensor::backend::Backend;
use incept_common::collective::Ring;
use incept_common::config::Experiment;
use incept_common::model::registry;
use incept_common::train::{CpuBackend, Replica};

/// The backend RNG is process-wide: tests that rely on its seeding take turns.
pub static RNG: Mutex<()> = Mutex::new(());

pub fn experiment() -> Experiment {
    let mut exp = Experiment::default();
    exp.model.num_classes = 4;
    exp.model.image_size = 75;
    exp.model.width = 0.0625;
    exp.model.blocks = Some([1, 1, 1]);
    exp.model.dropout = 0.3; // exercises the per-step RNG seeding
    exp.model.bn_momentum = 0.1;
    exp.data.train_samples = 64;
    exp.data.val_samples = 16;
    exp.train.batch_size = 4;
    exp.train.max_steps = Some(6);
    exp.train.optimizer.learning_rate = 0.01;
    incept_common::resolve::check(&exp).expect("test experiment is valid");
    exp
}

/// A fresh single-rank replica, initialised from the experiment's seed.
#[allow(dead_code)] // not every test binary that shares this module uses it
pub fn replica(exp: &Experiment) -> Replica<CpuBackend> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let peers = [listener.local_addr().unwrap()];
    let ring = Ring::connect(0, &peers, listener, Duration::from_secs(5)).unwrap();
    let device = Default::default();
    CpuBackend::seed(&device, exp.run.seed);
    let model = registry::build(&exp.model, &device);
    Replica::new(exp, Box::new(ring), model, device).unwrap()
}
