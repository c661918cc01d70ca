//! The local launcher: spawns a run's worker processes on this machine, watches them, and stops
//! them with the run.

use std::ffi::OsStr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use incept_common::config::{ClusterSection, DeviceKind};
use tokio::process::{Child, Command};

/// Environment variable naming the worker binary explicitly.
pub const WORKER_BIN_ENV: &str = "INCEPT_WORKER_BIN";

/// How to start a worker process: a program and the arguments that precede the worker's own.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    program: PathBuf,
    leading_args: Vec<&'static str>,
}

impl WorkerCommand {
    /// `$INCEPT_WORKER_BIN`, else this executable's hidden `worker` subcommand: the same code
    /// from the same build, so a `worker` binary left next to it by an earlier build can never
    /// train with a protocol or config schema the coordinator does not speak.
    pub fn locate() -> anyhow::Result<Self> {
        if let Some(path) = std::env::var_os(WORKER_BIN_ENV) {
            let program = PathBuf::from(path);
            if !program.is_file() {
                bail!(
                    "{WORKER_BIN_ENV} names {}, which is not a file",
                    program.display()
                );
            }
            return Ok(Self {
                program,
                leading_args: Vec::new(),
            });
        }
        Ok(Self {
            program: std::env::current_exe().context("locating the coordinator executable")?,
            leading_args: vec!["worker"],
        })
    }
}

struct LocalWorker {
    index: usize,
    /// Taken at spawn: tokio forgets it once the child is reaped.
    pid: Option<u32>,
    child: Child,
    log: PathBuf,
}

/// A local worker that exited unsuccessfully.
pub struct ExitedWorker {
    /// Its process id while it ran.
    pub pid: Option<u32>,
    /// Whether a signal ended it (killed, crashed) rather than its own error exit.
    pub killed: bool,
    /// How it ended, with the end of its log.
    pub description: String,
}

/// Checks that local workers of `cluster` (this build's siblings) have the kernels it asks for
/// and, on CUDA, runs the preflight for their GPUs, so a build or machine without them fails
/// the launch before any worker starts, naming what is missing.
pub fn check_local_devices(cluster: &ClusterSection) -> anyhow::Result<()> {
    let kernels = incept_common::device::resolve_kernels(cluster.kernels)?;
    if cluster.device != DeviceKind::Cuda {
        return Ok(());
    }
    let gpus = cluster.world_size.min(cluster.gpus_per_node);
    for ordinal in 0..gpus {
        incept_common::device::preflight(ordinal, kernels)
            .map_err(|missing| anyhow::anyhow!("cluster.device = \"cuda\": {missing}"))?;
    }
    Ok(())
}

/// Worker processes spawned by this coordinator; killed when dropped.
pub struct LocalWorkers {
    workers: Vec<LocalWorker>,
}

impl LocalWorkers {
    /// Starts `cluster.world_size` workers that join the coordinator at `url`; each logs to
    /// `worker-<i>.log` in `log_dir`, computes with `cluster.threads_per_worker` CPU threads and,
    /// on CUDA, on GPU `LOCAL_RANK = i % cluster.gpus_per_node`.
    pub fn spawn(
        worker: &WorkerCommand,
        cluster: &ClusterSection,
        url: &str,
        token: &str,
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        let count = cluster.world_size;
        let mut workers = Vec::with_capacity(count);
        for index in 0..count {
            let log = log_dir.join(format!("worker-{index}.log"));
            let file = std::fs::File::create(&log)
                .with_context(|| format!("creating {}", log.display()))?;
            let mut command = Command::new(&worker.program);
            command
                .args(&worker.leading_args)
                .arg("--coordinator")
                .arg(url)
                .args(["--listen-host", "127.0.0.1"])
                // The certificate (chain) names its own issuer: for a self-signed one, itself.
                .args(
                    cluster
                        .tls_cert
                        .iter()
                        .flat_map(|cert| [OsStr::new("--tls-ca"), cert.as_os_str()]),
                )
                .env("INCEPT_TOKEN", token)
                .env("RAYON_NUM_THREADS", cluster.threads_per_worker.to_string())
                // LibTorch's OpenMP pool (the `libtorch` kernels).
                .env("OMP_NUM_THREADS", cluster.threads_per_worker.to_string())
                .env("LOCAL_RANK", (index % cluster.gpus_per_node).to_string())
                .stdin(Stdio::null())
                .stdout(file.try_clone()?)
                .stderr(file)
                .kill_on_drop(true);
            end_with_this_process(&mut command);
            let child = command.spawn().with_context(|| {
                format!("starting worker {index} ({})", worker.program.display())
            })?;
            workers.push(LocalWorker {
                index,
                pid: child.id(),
                child,
                log,
            });
        }
        Ok(Self { workers })
    }

    /// Every worker that exited unsuccessfully: its process id and how it ended, with the end
    /// of its log.
    pub fn failures(&mut self) -> Vec<ExitedWorker> {
        self.workers
            .iter_mut()
            .filter_map(|w| match w.child.try_wait() {
                Ok(Some(status)) if !status.success() => Some(ExitedWorker {
                    pid: w.pid,
                    killed: status.signal().is_some(),
                    description: format!(
                        "worker {} exited with {status}; last lines of {}:\n{}",
                        w.index,
                        w.log.display(),
                        log_tail(&w.log, 8)
                    ),
                }),
                _ => None,
            })
            .collect()
    }

    /// Waits up to `grace` for every worker to exit, then kills the rest.
    pub async fn stop(&mut self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        for w in &mut self.workers {
            if tokio::time::timeout_at(deadline, w.child.wait())
                .await
                .is_err()
            {
                tracing::warn!(worker = w.index, "did not exit in time; killing it");
                let _ = w.child.kill().await;
            }
        }
    }

    /// Kills every worker now.
    pub async fn kill(&mut self) {
        for w in &mut self.workers {
            let _ = w.child.kill().await;
        }
    }
}

/// The last `lines` lines of a log file (or why it could not be read).
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(err) => format!("(unreadable: {err})"),
    }
}

/// Has the kernel stop the worker when this coordinator dies, however it dies (kill -9
/// included), so no worker trains on as an orphan. The coordinator spawns workers from the
/// thread that runs the whole launch, so the signal follows the process.
fn end_with_this_process(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe, and the closure allocates nothing.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}
