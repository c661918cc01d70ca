//! `coordinator bench allreduce`: ring all-reduce time and bandwidth across real rank processes
//! on this machine, as nccl-tests reports it, optionally side by side with torch.distributed's
//! Gloo backend and with the loopback TCP bandwidth iperf3 measures, all in the same run.
//!
//! Per size: the time of one all-reduce (the slowest rank's mean over the timed iterations),
//! algbw = bytes / time, and busbw = algbw × 2(n − 1)/n, the rate each link must carry, which is
//! comparable across process counts and with a link's raw bandwidth.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use incept_common::collective::WireFormat;

use super::allreduce_rank::{CONNECTED, SizeReport};
use super::{at_least_one, run_json_script};

/// What to measure (`coordinator bench allreduce`'s flags).
#[derive(clap::Args, Debug)]
pub struct AllReduceBench {
    /// Rank processes on this machine.
    #[arg(long, default_value_t = 4, value_parser = at_least_one)]
    pub workers: usize,
    /// Bytes per all-reduce: a doubling range `1KiB..256MiB` or a list `4,28,4KiB`.
    #[arg(long, default_value = "1KiB..256MiB", value_parser = parse_sizes)]
    pub sizes: std::vec::Vec<usize>,
    /// Wire format: f32, f16 or bf16.
    #[arg(long, default_value_t = WireFormat::F32)]
    pub wire: WireFormat,
    /// Deadline of every collective operation, in seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout_s: u64,
    /// Timed iterations per size (0: about 1 GiB per size, 5 to 500).
    #[arg(long, default_value_t = 0)]
    pub iters: usize,
    /// Verify every operation (sum/mean in each wire format, broadcast, barrier) on every size
    /// instead of timing.
    #[arg(long)]
    pub check: bool,
    /// Also run this torch.distributed Gloo script with the same sizes and processes (e.g.
    /// experiments/baselines/bench_allreduce_gloo.py) and print both side by side.
    #[arg(long)]
    pub compare: Option<PathBuf>,
    /// Also measure loopback TCP bandwidth with iperf3.
    #[arg(long)]
    pub iperf3: bool,
}

/// The JSON line the Gloo script prints.
#[derive(serde::Deserialize)]
struct GlooResult {
    torch: String,
    results: Vec<GlooSize>,
}

#[derive(serde::Deserialize)]
struct GlooSize {
    bytes: usize,
    seconds: f64,
}

/// The size the targets are stated at.
const HEADLINE_BYTES: usize = 64 << 20;

pub fn run(bench: &AllReduceBench) -> anyhow::Result<()> {
    if bench.workers < 2 {
        bail!("--workers must be at least 2 (one rank has nothing to all-reduce)");
    }
    let mode = if bench.check { "checking" } else { "timing" };
    eprintln!(
        "{mode} all-reduce over {} rank processes, {} sizes, {} on the wire…",
        bench.workers,
        bench.sizes.len(),
        bench.wire
    );
    let reports = run_ranks(bench)?;
    if bench.check {
        return report_check(bench, &reports);
    }
    let ours: Vec<f64> = (0..bench.sizes.len())
        .map(|i| reports.iter().map(|r| r[i].seconds).fold(0.0, f64::max))
        .collect();
    let gloo = match &bench.compare {
        Some(script) => {
            eprintln!("measuring torch.distributed Gloo ({})…", script.display());
            Some(measure_gloo(script, bench)?)
        }
        None => None,
    };
    let iperf = match bench.iperf3 {
        true => {
            eprintln!(
                "measuring loopback TCP with iperf3 (1 stream, then {})…",
                bench.workers
            );
            Some(Iperf {
                single: measure_iperf3(1)?,
                parallel: measure_iperf3(bench.workers)?,
            })
        }
        false => None,
    };
    print_table(bench, &ours, gloo.as_ref());
    if let Some(iperf) = &iperf {
        println!(
            "iperf3 loopback TCP, 5 s: 1 stream {:.2} GB/s; {} parallel streams {:.2} GB/s in all \
             ({:.2} GB/s each)",
            iperf.single / 8e9,
            bench.workers,
            iperf.parallel / 8e9,
            iperf.parallel / 8e9 / bench.workers as f64
        );
    }
    print_headline(bench, &ours, gloo.as_ref(), iperf.as_ref());
    Ok(())
}

/// Loopback TCP throughput in bits/s: one stream alone, and the sum of one stream per rank
/// running at once (what the ring's links share when every rank sends).
struct Iperf {
    single: f64,
    parallel: f64,
}

/// One rank process and the reader of its stdout.
struct RankProcess {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

/// Spawns the ranks, hands them the peer list, and collects their per-size reports.
fn run_ranks(bench: &AllReduceBench) -> anyhow::Result<Vec<Vec<SizeReport>>> {
    let exe = std::env::current_exe().context("locating the coordinator binary")?;
    let sizes: Vec<String> = bench.sizes.iter().map(usize::to_string).collect();
    let mut ranks = Vec::with_capacity(bench.workers);
    for rank in 0..bench.workers {
        let mut command = Command::new(&exe);
        command
            .args(["bench", "allreduce-rank"])
            .args(["--rank", &rank.to_string()])
            .args(["--world", &bench.workers.to_string()])
            .args(["--sizes", &sizes.join(",")])
            .args(["--wire", &bench.wire.to_string()])
            .args(["--timeout-s", &bench.timeout_s.to_string()])
            .args(["--iters", &bench.iters.to_string()]);
        if bench.check {
            command.arg("--check");
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting rank {rank} ({})", exe.display()))?;
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        ranks.push(RankProcess { child, stdout });
    }
    let mut peers = Vec::with_capacity(bench.workers);
    for (rank, process) in ranks.iter_mut().enumerate() {
        let line = read_line(process, rank)?;
        let addr = line
            .strip_prefix("listening ")
            .with_context(|| format!("rank {rank} printed {line:?} instead of its address"))?;
        peers.push(addr.to_owned());
    }
    let peers = format!("peers {}\n", peers.join(","));
    for (rank, process) in ranks.iter_mut().enumerate() {
        let stdin = process.child.stdin.as_mut().expect("piped");
        stdin
            .write_all(peers.as_bytes())
            .with_context(|| format!("sending the peer list to rank {rank}"))?;
    }
    let mut all = Vec::with_capacity(bench.workers);
    for (rank, mut process) in ranks.into_iter().enumerate() {
        let line = read_line(&mut process, rank)?;
        if line != CONNECTED {
            bail!("rank {rank} printed {line:?} instead of {CONNECTED:?}");
        }
        let mut reports = Vec::with_capacity(bench.sizes.len());
        for _ in &bench.sizes {
            let line = read_line(&mut process, rank)?;
            reports.push(
                serde_json::from_str::<SizeReport>(&line)
                    .with_context(|| format!("rank {rank} printed an unexpected line {line:?}"))?,
            );
        }
        let status = process.child.wait()?;
        if !status.success() {
            bail!("rank {rank} exited with {status}");
        }
        all.push(reports);
    }
    Ok(all)
}

/// Reads one line of a rank's stdout; the rank's own error went to stderr if it ended early.
fn read_line(process: &mut RankProcess, rank: usize) -> anyhow::Result<String> {
    let mut line = String::new();
    process.stdout.read_line(&mut line)?;
    if line.is_empty() {
        let status = process.child.wait()?;
        bail!("rank {rank} ended ({status}) before reporting (its error is above)");
    }
    Ok(line.trim_end().to_owned())
}

fn report_check(bench: &AllReduceBench, reports: &[Vec<SizeReport>]) -> anyhow::Result<()> {
    let mut failures = 0;
    println!("{:>12} {:>10}  result", "size (B)", "count");
    for (i, &bytes) in bench.sizes.iter().enumerate() {
        let mut problems: Vec<String> = reports
            .iter()
            .enumerate()
            .flat_map(|(rank, r)| r[i].errors.iter().map(move |e| format!("rank {rank}: {e}")))
            .collect();
        let digests: Vec<u32> = reports.iter().map(|r| r[i].digest).collect();
        if digests.iter().any(|&d| d != digests[0]) {
            problems.push(format!(
                "outputs differ between ranks (digests {digests:08x?})"
            ));
        }
        let result = match problems.is_empty() {
            true => "ok: sum/mean in f32, f16, bf16; broadcast from every root; barrier".into(),
            false => problems.join("; "),
        };
        failures += usize::from(!problems.is_empty());
        println!("{bytes:>12} {:>10}  {result}", bytes / 4);
    }
    if failures > 0 {
        bail!("{failures} of {} sizes failed the check", bench.sizes.len());
    }
    Ok(())
}

fn measure_gloo(script: &Path, bench: &AllReduceBench) -> anyhow::Result<GlooResult> {
    let sizes: Vec<String> = bench.sizes.iter().map(usize::to_string).collect();
    let (workers, iters) = (bench.workers.to_string(), bench.iters.to_string());
    let result: GlooResult = run_json_script(
        script,
        &[
            ("--workers", &workers),
            ("--sizes", &sizes.join(",")),
            ("--iters", &iters),
        ],
    )?;
    let measured: Vec<usize> = result.results.iter().map(|r| r.bytes).collect();
    if measured != bench.sizes {
        bail!(
            "{} measured sizes {measured:?}, not the requested ones",
            script.display()
        );
    }
    Ok(result)
}

/// Loopback TCP throughput of `streams` parallel streams in bits/s (their sum), from `iperf3 -J`.
fn measure_iperf3(streams: usize) -> anyhow::Result<f64> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port()
        .to_string();
    let mut server = Command::new("iperf3")
        .args(["-s", "-1", "-B", "127.0.0.1", "-p", &port])
        .stdout(Stdio::null())
        .spawn()
        .context("starting `iperf3 -s` (install it: apt-get install iperf3)")?;
    // The server needs a moment to listen; retry the client briefly.
    let mut last = None;
    for _ in 0..50 {
        let output = Command::new("iperf3")
            .args(["-c", "127.0.0.1", "-p", &port, "-t", "5", "-J"])
            .args(["-P", &streams.to_string()])
            .output()
            .context("running `iperf3 -c`")?;
        if output.status.success() {
            let _ = server.wait();
            let report: serde_json::Value = serde_json::from_slice(&output.stdout)
                .context("iperf3 printed something other than JSON")?;
            return report["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .context("no end.sum_received.bits_per_second in iperf3's report");
        }
        last = Some(String::from_utf8_lossy(&output.stdout).into_owned());
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = server.kill();
    bail!("iperf3 never connected: {}", last.unwrap_or_default())
}

fn bus_factor(workers: usize) -> f64 {
    2.0 * (workers - 1) as f64 / workers as f64
}

fn print_table(bench: &AllReduceBench, ours: &[f64], gloo: Option<&GlooResult>) {
    let factor = bus_factor(bench.workers);
    println!(
        "all-reduce (mean), {} processes on this machine, {} on the wire; time in µs, bandwidth in GB/s",
        bench.workers, bench.wire
    );
    print!(
        "{:>10} {:>10} {:>11} {:>7} {:>7}",
        "size", "count", "incept", "algbw", "busbw"
    );
    match gloo {
        Some(g) => println!(
            " {:>11} {:>7} {:>7} {:>7}",
            format!("gloo {}", g.torch.split('+').next().unwrap_or_default()),
            "algbw",
            "busbw",
            "ratio"
        ),
        None => println!(),
    }
    for (i, &bytes) in bench.sizes.iter().enumerate() {
        let algbw = bytes as f64 / ours[i] / 1e9;
        print!(
            "{:>10} {:>10} {:>11.1} {:>7.3} {:>7.3}",
            human_bytes(bytes),
            bytes / 4,
            ours[i] * 1e6,
            algbw,
            algbw * factor
        );
        match gloo {
            Some(g) => {
                let theirs = g.results[i].seconds;
                let their_algbw = bytes as f64 / theirs / 1e9;
                println!(
                    " {:>11.1} {:>7.3} {:>7.3} {:>6.2}×",
                    theirs * 1e6,
                    their_algbw,
                    their_algbw * factor,
                    theirs / ours[i]
                );
            }
            None => println!(),
        }
    }
}

/// The comparison at 64 MiB, when that size was measured.
fn print_headline(
    bench: &AllReduceBench,
    ours: &[f64],
    gloo: Option<&GlooResult>,
    iperf: Option<&Iperf>,
) {
    let Some(i) = bench.sizes.iter().position(|&b| b == HEADLINE_BYTES) else {
        return;
    };
    let busbw = HEADLINE_BYTES as f64 / ours[i] * bus_factor(bench.workers) / 1e9;
    let mut line = format!("at 64 MiB: busbw {busbw:.3} GB/s");
    if let Some(g) = gloo {
        line += &format!(", {:.2}× Gloo's", g.results[i].seconds / ours[i]);
    }
    if let Some(iperf) = iperf {
        let per_stream = iperf.parallel / bench.workers as f64;
        line += &format!(
            ", {:.0}% of iperf3's single-stream loopback TCP, {:.0}% of its per-stream rate with \
             {} streams at once",
            busbw * 8e9 / iperf.single * 100.0,
            busbw * 8e9 / per_stream * 100.0,
            bench.workers
        );
    }
    println!("{line}");
}

fn human_bytes(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 30 && b.is_multiple_of(1 << 30) => format!("{}GiB", b >> 30),
        b if b >= 1 << 20 && b.is_multiple_of(1 << 20) => format!("{}MiB", b >> 20),
        b if b >= 1 << 10 && b.is_multiple_of(1 << 10) => format!("{}KiB", b >> 10),
        b => format!("{b}B"),
    }
}

/// Parses `--sizes`: a doubling range `1KiB..256MiB`, or a comma list `4,28,4KiB`. Every size is
/// a positive multiple of 4 bytes (whole f32 values).
pub fn parse_sizes(spec: &str) -> anyhow::Result<Vec<usize>> {
    let sizes = match spec.split_once("..") {
        Some((from, to)) => {
            let (from, to) = (parse_bytes(from)?, parse_bytes(to)?);
            if from > to {
                bail!("--sizes {spec:?}: the range runs backwards");
            }
            std::iter::successors(Some(from), |&s| Some(s * 2))
                .take_while(|&s| s <= to)
                .collect()
        }
        None => spec
            .split(',')
            .map(parse_bytes)
            .collect::<anyhow::Result<Vec<_>>>()?,
    };
    if let Some(bad) = sizes.iter().find(|&&s| s == 0 || s % 4 != 0) {
        bail!("--sizes {spec:?}: {bad} bytes is not a positive whole number of f32 values");
    }
    Ok(sizes)
}

/// `4096`, `4KiB`, `4K`, `64MiB`, `1GiB` (binary units).
fn parse_bytes(text: &str) -> anyhow::Result<usize> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let shift = match unit {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        _ => bail!("size {text:?}: unknown unit {unit:?} (use B, KiB, MiB or GiB)"),
    };
    let count: usize = digits
        .parse()
        .with_context(|| format!("size {text:?} does not start with a number"))?;
    count
        .checked_mul(1 << shift)
        .with_context(|| format!("size {text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_ranges_and_lists() {
        assert_eq!(parse_sizes("1KiB..8KiB").unwrap(), [1024, 2048, 4096, 8192]);
        assert_eq!(parse_sizes("4,28,4K").unwrap(), [4, 28, 4096]);
        assert_eq!(parse_sizes("1KiB..256MiB").unwrap().len(), 19);
        assert_eq!(parse_sizes("64MiB").unwrap(), [64 << 20]);
        for bad in ["3", "0", "1KiB..1B", "5XB", "KiB", "1KiB..3KiB,4"] {
            assert!(parse_sizes(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn bus_bandwidth_factor_matches_nccl_tests() {
        assert_eq!(bus_factor(2), 1.0);
        assert_eq!(bus_factor(4), 1.5);
    }

    #[test]
    fn sizes_print_in_their_unit() {
        assert_eq!(human_bytes(64 << 20), "64MiB");
        assert_eq!(human_bytes(1024), "1KiB");
        assert_eq!(human_bytes(28), "28B");
    }
}
