//! `[cluster]`: how many workers, where they meet, what they compute on and how they talk.

use serde::{Deserialize, Serialize};

use crate::collective::{WireFormat, bucket};

/// How workers are started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Launcher {
    /// The coordinator spawns `world_size` worker processes on this machine.
    Local,
    /// Workers are started elsewhere (`worker --coordinator URL --token T`).
    External,
}

impl std::fmt::Display for Launcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Launcher::Local => "local",
            Launcher::External => "external",
        })
    }
}

/// Processes, addresses and timeouts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// Who starts the workers.
    pub launcher: Launcher,
    /// Number of data-parallel replicas.
    pub world_size: usize,
    /// Address the coordinator's gRPC API binds (port 0: ephemeral).
    pub bind: String,
    /// PEM certificate (chain) the gRPC API presents: with `tls_key` the control plane is
    /// TLS (`https://`), and each worker checks it against the CA it is given
    /// (`worker --tls-ca`; a self-signed certificate is its own CA).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of `tls_cert` (read by the coordinator only; keep it mode 0600).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<std::path::PathBuf>,
    /// How long the rendezvous waits for every rank to join.
    pub join_timeout_s: u64,
    /// How often each worker reports that it is alive.
    pub heartbeat_interval_ms: u64,
    /// A worker silent for this long is declared lost and fails the run.
    pub heartbeat_timeout_s: u64,
    /// Deadline of every collective operation (ring connection, all-reduce, broadcast).
    pub collective_timeout_s: u64,
    /// How workers all-reduce gradients.
    pub backend: CollectiveBackend,
    /// Gradient bucket size: bucket `k` is all-reduced while bucket `k + 1` is packed.
    /// (Fractions allowed: tests use small buckets to exercise several on tiny models.)
    pub bucket_mib: f64,
    /// Format gradients travel in between workers: `f32` (exact), or `f16`/`bf16` to halve
    /// the traffic at some precision (the reduction itself stays in f32).
    pub gradient_wire: WireFormat,
    /// CPU threads each locally launched worker computes with.
    pub threads_per_worker: usize,
    /// What each worker computes on: `cpu`, `cuda` (GPU `LOCAL_RANK`), or `auto` (cuda where
    /// the preflight finds a driver, a GPU and NVRTC; else cpu).
    pub device: DeviceKind,
    /// Whose kernels compute the model on that device: `burn` (flex on CPUs, cubecl on GPUs),
    /// `libtorch` (oneDNN/MKL on CPUs, cuDNN/cuBLAS on GPUs; workers built with the `libtorch`
    /// feature), or `auto` (libtorch where the worker has it, else burn).
    pub kernels: KernelsKind,
    /// Generations a run may start after the first: each time a worker is lost the group
    /// re-forms from the newest checkpoint that verifies (the local launcher restarts its
    /// workers; external survivors join again by themselves, a lost one by running `worker`
    /// again); past this many the run fails with every generation's cause.
    pub max_restarts: usize,
    /// The fewest workers a re-formed group may continue with (default: `world_size`, never
    /// smaller). With fewer, the group starts once `rejoin_timeout_s` has passed: the global
    /// batch is kept through `train.accumulate` when the numbers divide, else the learning rate
    /// follows the linear scaling rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_workers: Option<usize>,
    /// How long a re-forming group waits for every rank before it continues smaller (with at
    /// least `min_workers`).
    pub rejoin_timeout_s: u64,
    /// How long a worker that lost its coordinator (or whose group is re-forming) keeps trying
    /// to join again (a `launch --resume` on the same address takes it) before it exits.
    pub reconnect_timeout_s: u64,
    /// On a stop signal (Ctrl-C, SIGTERM, SIGHUP, Slurm's SIGUSR1 warning) the coordinator asks
    /// rank 0 for a checkpoint of its current step and waits this long for it before stopping
    /// the workers; 0 stops them at once.
    pub stop_checkpoint_s: u64,
    /// A "straggler" event names a rank whose median data + compute time per step, over its
    /// newest `straggler_window` steps, exceeds this many times the other ranks' median (they
    /// wait for it in every all-reduce); 0 turns it off.
    pub straggler_factor: f64,
    /// Steps per rank the straggler medians cover.
    pub straggler_window: usize,
    /// Where `coordinator launch` serves the dashboard of its state directory (port 0: any free
    /// one; empty: no dashboard). A non-loopback address shows every run to whoever reaches it.
    pub dashboard_bind: String,
    /// GPUs of one node: the local launcher gives its worker `i` `LOCAL_RANK = i % gpus_per_node`
    /// (two workers share GPU 0 with the default 1).
    pub gpus_per_node: usize,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            launcher: Launcher::Local,
            world_size: 1,
            bind: "127.0.0.1:0".into(),
            tls_cert: None,
            tls_key: None,
            join_timeout_s: 120,
            heartbeat_interval_ms: 1000,
            heartbeat_timeout_s: 60,
            collective_timeout_s: 300,
            backend: CollectiveBackend::Ring,
            bucket_mib: bucket::DEFAULT_BUCKET_MIB,
            gradient_wire: WireFormat::F32,
            threads_per_worker: 1,
            device: DeviceKind::Cpu,
            kernels: KernelsKind::Auto,
            gpus_per_node: 1,
            max_restarts: 3,
            min_workers: None,
            rejoin_timeout_s: 60,
            reconnect_timeout_s: 300,
            stop_checkpoint_s: 120,
            straggler_factor: 1.5,
            straggler_window: 50,
            dashboard_bind: "127.0.0.1:0".into(),
        }
    }
}

impl ClusterSection {
    /// The fewest workers a re-formed group may continue with.
    pub fn min_workers(&self) -> usize {
        self.min_workers.unwrap_or(self.world_size)
    }

    /// `bucket_mib` in whole bytes.
    pub fn bucket_bytes(&self) -> usize {
        bucket::mib_to_bytes(self.bucket_mib)
    }
}

/// What a worker computes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    /// burn's flex backend on the CPU.
    Cpu,
    /// burn's CUDA backend on GPU `LOCAL_RANK` (workers built with the `cuda` feature).
    Cuda,
    /// CUDA where the preflight passes, else the CPU.
    Auto,
}

impl DeviceKind {
    /// Every kind, in the order the docs list them.
    pub const ALL: [DeviceKind; 3] = [DeviceKind::Cpu, DeviceKind::Cuda, DeviceKind::Auto];
}

impl std::str::FromStr for DeviceKind {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        DeviceKind::ALL
            .into_iter()
            .find(|kind| kind.to_string() == name)
            .ok_or_else(|| format!("unknown device {name:?}; known: cpu, cuda, auto"))
    }
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
            DeviceKind::Auto => "auto",
        })
    }
}

/// Whose kernels compute the model (`cluster.kernels`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelsKind {
    /// LibTorch's where the build has them, else burn's.
    Auto,
    /// burn's own: flex on CPUs, cubecl's on GPUs.
    Burn,
    /// LibTorch's, through burn's tch backend (the `libtorch` feature).
    Libtorch,
}

impl KernelsKind {
    /// Every kind, in the order the docs list them.
    pub const ALL: [KernelsKind; 3] = [KernelsKind::Auto, KernelsKind::Burn, KernelsKind::Libtorch];
}

impl std::str::FromStr for KernelsKind {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        KernelsKind::ALL
            .into_iter()
            .find(|kind| kind.to_string() == name)
            .ok_or_else(|| format!("unknown kernels {name:?}; known: auto, burn, libtorch"))
    }
}

impl std::fmt::Display for KernelsKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KernelsKind::Auto => "auto",
            KernelsKind::Burn => "burn",
            KernelsKind::Libtorch => "libtorch",
        })
    }
}

/// The communicator between workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CollectiveBackend {
    /// TCP ring on the CPUs: works everywhere.
    Ring,
    /// NCCL on the GPUs: workers built with the `cuda` feature, one GPU each.
    Nccl,
}
