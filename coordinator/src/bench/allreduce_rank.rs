//! One rank process of `coordinator bench allreduce` (the hidden `bench allreduce-rank`).
//!
//! Protocol with the parent, one line each on stdout/stdin: the rank binds a listener and
//! prints `listening ADDR`; the parent answers `peers ADDR,ADDR,…` (rank order); the rank
//! connects the ring, then prints one JSON [`SizeReport`] line per size and exits 0. Any failure
//! is printed to stderr and exits non-zero, so a parent (or a test) sees which rank failed and
//! why.

use std::io::{BufRead, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use incept_common::CRC32C;
use incept_common::collective::{Collective, ReduceOp, Ring, WireFormat};
use serde::{Deserialize, Serialize};

/// What one rank process does (the hidden `bench allreduce-rank`'s flags).
#[derive(clap::Args, Debug)]
pub struct RankJob {
    /// This process's rank.
    #[arg(long)]
    pub rank: usize,
    /// Rank processes in all.
    #[arg(long)]
    pub world: usize,
    /// Buffer sizes in bytes of f32 values, in order.
    #[arg(long, value_parser = super::allreduce::parse_sizes)]
    pub sizes: std::vec::Vec<usize>,
    /// Wire format.
    #[arg(long, default_value_t = WireFormat::F32)]
    pub wire: WireFormat,
    /// Deadline of every collective operation, in seconds.
    #[arg(long)]
    pub timeout_s: u64,
    /// Verify every operation's result instead of timing all-reduce.
    #[arg(long)]
    pub check: bool,
    /// Timed iterations per size (0: chosen from the size, the same on every rank).
    #[arg(long, default_value_t = 0)]
    pub iters: usize,
}

/// One size's outcome on one rank, printed as a JSON line.
#[derive(Debug, Serialize, Deserialize)]
pub struct SizeReport {
    pub bytes: usize,
    /// Timing mode: mean seconds per all-reduce on this rank.
    #[serde(default)]
    pub seconds: f64,
    /// Check mode: CRC-32C of every output buffer, which must agree across ranks.
    #[serde(default)]
    pub digest: u32,
    /// Check mode: the results that differ from the reference.
    #[serde(default)]
    pub errors: Vec<String>,
}

/// What a rank prints once its ring is connected, before its reports.
pub const CONNECTED: &str = "connected";

/// Runs the rank: handshake with the parent over stdio, connect, measure or check each size.
pub fn run(job: &RankJob) -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding the ring listener")?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening {}", listener.local_addr()?)?;
    stdout.flush()?;
    let peers = read_peers(job.world)?;
    let mut ring = Ring::connect(
        job.rank,
        &peers,
        listener,
        Duration::from_secs(job.timeout_s),
    )
    .with_context(|| format!("rank {}: connecting the ring", job.rank))?;
    writeln!(stdout, "{CONNECTED}")?;
    stdout.flush()?;
    for &bytes in &job.sizes {
        let report = match job.check {
            true => check_size(&mut ring, bytes)?,
            false => time_size(&mut ring, bytes, job.wire, job.iters)?,
        };
        writeln!(stdout, "{}", serde_json::to_string(&report)?)?;
        stdout.flush()?;
    }
    Ok(())
}

fn read_peers(world: usize) -> anyhow::Result<Vec<SocketAddr>> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the peer list from the parent")?;
    let list = line
        .trim()
        .strip_prefix("peers ")
        .with_context(|| format!("expected `peers ADDR,…` from the parent, got {line:?}"))?;
    let peers = list
        .split(',')
        .map(|p| p.parse().with_context(|| format!("bad peer address {p:?}")))
        .collect::<anyhow::Result<Vec<SocketAddr>>>()?;
    if peers.len() != world {
        bail!("got {} peers for a world of {world}", peers.len());
    }
    Ok(peers)
}

/// Timed iterations for a size, as nccl-tests does it: many for latency-bound sizes, a few for
/// bandwidth-bound ones (about 1 GiB moved per size, 5 to 500 iterations).
fn default_iters(bytes: usize) -> usize {
    ((1usize << 30) / bytes.max(1)).clamp(5, 500)
}

fn time_size(
    ring: &mut Ring,
    bytes: usize,
    wire: WireFormat,
    iters: usize,
) -> anyhow::Result<SizeReport> {
    let iters = match iters {
        0 => default_iters(bytes),
        n => n,
    };
    let mut data = vec![1.0f32; bytes / 4];
    // Mean keeps the values at one, whatever the iteration count (a sum would overflow).
    let reduce = |ring: &mut Ring, data: &mut [f32]| {
        ring.all_reduce(data, ReduceOp::Mean, wire)
            .with_context(|| format!("all-reduce of {bytes} bytes"))
    };
    // Warm-up: first-touch page faults, socket buffers growing, caches.
    for _ in 0..iters.div_ceil(10) {
        reduce(ring, &mut data)?;
    }
    ring.barrier().context("barrier")?;
    let started = Instant::now();
    for _ in 0..iters {
        reduce(ring, &mut data)?;
    }
    let seconds = started.elapsed().as_secs_f64() / iters as f64;
    Ok(SizeReport {
        bytes,
        seconds,
        digest: 0,
        errors: Vec::new(),
    })
}

/// Runs every operation on deterministic inputs and compares with a reference every rank can
/// compute alone (each knows all ranks' inputs).
fn check_size(ring: &mut Ring, bytes: usize) -> anyhow::Result<SizeReport> {
    let (rank, world) = (ring.rank(), ring.world_size());
    let len = bytes / 4;
    let mut digest = CRC32C.digest();
    let mut errors = Vec::new();
    let cases = [
        (ReduceOp::Sum, WireFormat::F32),
        (ReduceOp::Mean, WireFormat::F32),
        (ReduceOp::Sum, WireFormat::F16),
        (ReduceOp::Mean, WireFormat::F16),
        (ReduceOp::Mean, WireFormat::Bf16),
    ];
    for (op, wire) in cases {
        let mut data = input(rank, len);
        ring.all_reduce(&mut data, op, wire)
            .with_context(|| format!("{op:?} all-reduce in {wire} of {len} values"))?;
        digest.update(bytemuck::cast_slice(&data));
        let tolerance = world as f64 * relative_precision(wire);
        let divisor = if op == ReduceOp::Mean {
            world as f64
        } else {
            1.0
        };
        let wrong = (0..len).find(|&i| {
            let want = (0..world).map(|r| value(r, i)).sum::<f64>() / divisor;
            (f64::from(data[i]) - want).abs() > tolerance * want
        });
        if let Some(i) = wrong {
            errors.push(format!("{op:?} in {wire}: value {i} is {}", data[i]));
        }
    }
    for root in 0..world {
        let mut data = input(rank, len);
        ring.broadcast(&mut data, root)
            .with_context(|| format!("broadcast of {len} values from rank {root}"))?;
        if data != input(root, len) {
            errors.push(format!("broadcast from rank {root} differs"));
        }
    }
    ring.barrier().context("barrier")?;
    Ok(SizeReport {
        bytes,
        seconds: 0.0,
        digest: digest.finalize(),
        errors,
    })
}

/// Relative precision of one rounding to the wire format (f32's covers summation order).
fn relative_precision(wire: WireFormat) -> f64 {
    match wire {
        WireFormat::F32 => 1e-6,
        WireFormat::F16 => 2f64.powi(-11),
        WireFormat::Bf16 => 2f64.powi(-8),
    }
}

/// Positive values, distinct per rank and position, exact in f16 and bf16 neither.
fn value(rank: usize, i: usize) -> f64 {
    1.0 + ((rank * 7919 + i * 104_729) % 1000) as f64 / 1000.0
}

fn input(rank: usize, len: usize) -> Vec<f32> {
    (0..len).map(|i| value(rank, i) as f32).collect()
}
