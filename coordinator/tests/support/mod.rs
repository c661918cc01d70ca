//! Helpers shared by the end-to-end tests: the binaries, tiny experiments, a state directory
//! per test, and running a command with a time limit.
#![allow(dead_code)] // each test binary that shares this module uses part of it

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

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

/// A running `coordinator launch` whose stdout and stderr lines arrive on one channel.
pub struct Launched {
    pub child: Child,
    pub lines: Receiver<String>,
}

impl Launched {
    pub fn spawn(fx: &Fixture) -> Self {
        Self::spawn_with(fx, &[])
    }

    /// [`Launched::spawn`] with more `launch` flags.
    pub fn spawn_with(fx: &Fixture, flags: &[&str]) -> Self {
        let mut cmd = fx.coordinator(&["launch"]);
        cmd.arg(fx.experiment())
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        forward_lines(stdout, tx.clone());
        forward_lines(stderr, tx);
        Self { child, lines }
    }

    /// The `worker` command its coordinator prints for external workers
    /// ("  worker --coordinator <url> --token-file <run folder>/token").
    pub fn worker_command(&self) -> Command {
        let hint = self.wait_for_line("--token-file");
        let words: Vec<&str> = hint.split_whitespace().collect();
        assert_eq!(words[0], "worker", "{hint}");
        let mut worker = Command::new(worker_bin());
        worker.args(&words[1..]);
        worker.stdout(Stdio::null());
        worker
    }

    /// The run's id, from the line that announces it ("run <id>: … coordinator at <url>").
    pub fn run_id(&self) -> String {
        let line = self.wait_for_line("coordinator at");
        let id = line.split_whitespace().nth(1).expect("run <id>: …");
        id.trim_end_matches(':').to_string()
    }

    /// Waits up to a minute for an output line containing `needle`; returns it.
    pub fn wait_for_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(err) => panic!("no line containing {needle:?}: {err}"),
            }
        }
    }
}

pub fn forward_lines(stream: impl std::io::Read + Send + 'static, tx: Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
}

pub fn interrupt_and_wait(child: Child, limit: Duration) -> std::process::ExitStatus {
    signal_and_wait(child, "INT", limit)
}

/// Sends `signal` (a `kill` name: INT, TERM, HUP, KILL) and waits for the process to exit.
pub fn signal_and_wait(
    mut child: Child,
    signal: &str,
    limit: Duration,
) -> std::process::ExitStatus {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    wait_for_exit(
        &mut child,
        limit,
        &format!("the coordinator after SIG{signal}"),
    )
}

/// Waits for `child` to exit; past `limit` kills it and fails, saying `what` did not end.
pub fn wait_for_exit(child: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("{what} did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether process `pid` still runs (a zombie waiting for its parent does not).
pub fn is_running(pid: i64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// A free TCP port on the loopback interface (free when this returns).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
