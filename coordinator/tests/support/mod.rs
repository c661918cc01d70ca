//! Helpers shared by the end-to-end tests: the binaries, tiny experiments, a state directory
//! per test, and running a command with a time limit.
#![allow(dead_code)] // each test binary that shares this module uses part of it

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const COORDINATOR: &str = env!("CARGO_BIN_EXE_coordinator");

/// The worker binary cargo built next to the coordinator.
pub fn worker_bin() -> PathBuf {
    let path = Path::new(COORDINATOR).with_file_name("worker");
    assert!(
        path.is_file(),
        "{} is missing: run the tests with `cargo test --workspace`",
        path.display()
    );
    path
}

pub fn workspace_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

/// A tiny experiment: 2 workers, a 1/16-width Inception-ResNet-v2 at 75 px, a few dozen steps.
pub const TINY: &str = r#"
[run]
name = "tiny"
seed = 7
[cluster]
world_size = 2
heartbeat_interval_ms = 200
[model]
num_classes = 4
image_size = 75
width = 0.0625
blocks = [1, 1, 1]
dropout = 0.0
bn_momentum = 0.1
[data]
train_samples = 384
val_samples = 64
noise = 0.3
[train]
batch_size = 8
epochs = 2
log_every = 4
eval_every = 16
probe_every = 16
check_replicas_every = 8
[train.optimizer]
learning_rate = 0.01
[train.schedule]
kind = "constant"
"#;

pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new(experiment: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("exp.toml"), experiment).unwrap();
        Self { dir }
    }

    pub fn experiment(&self) -> PathBuf {
        self.dir.path().join("exp.toml")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("runs")
    }

    /// `coordinator ARGS` on this fixture's state directory.
    pub fn coordinator(&self, args: &[&str]) -> Command {
        let mut cmd = coordinator(args);
        cmd.arg("--state-dir").arg(self.state_dir());
        cmd
    }

    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.state_dir().join("incept.db")).unwrap()
    }
}

/// `coordinator ARGS`, its workers the worker binary cargo built.
pub fn coordinator(args: &[&str]) -> Command {
    let mut cmd = Command::new(COORDINATOR);
    cmd.args(args)
        .env("INCEPT_WORKER_BIN", worker_bin())
        .stdin(Stdio::null());
    cmd
}

/// Runs `cmd` to completion, failing the test if it takes longer than `limit`.
pub fn run_with_limit(mut cmd: Command, limit: Duration) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(limit) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("command did not finish within {limit:?}");
        }
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A tiny BN-Inception on JPEG data (`SHARDS`: the data path), 2 workers.
pub const ON_SHARDS: &str = r#"
[run]
name = "shards"
seed = 3
[cluster]
world_size = 2
heartbeat_interval_ms = 200
[model]
arch = "bn_inception"
num_classes = 3
image_size = 32
width = 0.125
dropout = 0.0
bn_momentum = 0.1
[data]
source = "tfrecord"
path = "SHARDS"
shuffle_buffer = 8
threads = 2
[train]
batch_size = 8
epochs = 2
log_every = 1
check_replicas_every = 2
[train.optimizer]
learning_rate = 0.01
[train.schedule]
kind = "constant"
"#;
