//! `coordinator bench control-plane`: what the control plane costs and how fast a run recovers.
//!
//! 1. Scale: a real `coordinator launch` (external workers, its own process) and a thousand
//!    simulated workers in this process, each with its own gRPC connection: the rendezvous
//!    time, heartbeat round trips at 1 Hz (p50, p99, max), and the coordinator's CPU and
//!    memory meanwhile, read from /proc.
//! 2. Recovery: a real local run of four workers, one killed with SIGKILL after a checkpoint:
//!    the time until the coordinator records the failure, and from there until the next
//!    generation's first step is in the run database.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use incept_common::config::Launcher;
use incept_common::proto::coordinator_client::CoordinatorClient;
use incept_common::proto::{HeartbeatRequest, JoinRequest};
use incept_worker::Credentials;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use super::{at_least_one, in_scratch_dir, status_mib};
use crate::run::DATABASE;
use crate::store::now;

/// What to measure (`coordinator bench control-plane`'s flags).
#[derive(clap::Args, Debug)]
pub struct ControlPlaneBench {
    /// Simulated workers that join one run and beat once a second.
    #[arg(long, default_value_t = 1000, value_parser = at_least_one)]
    pub workers: usize,
    /// Seconds of heartbeats measured after the rendezvous.
    #[arg(long, default_value_t = 20, value_parser = at_least_one)]
    pub seconds: usize,
    /// Real local workers of the recovery measurement.
    #[arg(long, default_value_t = 4, value_parser = at_least_one)]
    pub recovery_workers: usize,
    /// Recovery runs, each with one worker killed (the median and the slowest are shown).
    #[arg(long, default_value_t = 5, value_parser = at_least_one)]
    pub recovery_trials: usize,
}

pub fn run(bench: &ControlPlaneBench) -> anyhow::Result<()> {
    in_scratch_dir("control", |dir| measure(bench, dir))
}

fn measure(bench: &ControlPlaneBench, dir: &Path) -> anyhow::Result<()> {
    raise_open_files(bench.workers)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let scale = runtime.block_on(scale(bench, &dir.join("scale")))?;
    let recoveries = [Launcher::Local, Launcher::External]
        .into_iter()
        .map(|launcher| recoveries(bench, launcher, dir))
        .collect::<anyhow::Result<Vec<_>>>()?;
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| rendezvous of {} simulated workers (first join sent to last assignment received) | {:.2} s |",
        bench.workers, scale.rendezvous_s
    );
    println!(
        "| heartbeat round trip at 1 Hz × {} workers, {} beats: p50 / p99 / max | {:.2} / {:.2} / {:.2} ms |",
        bench.workers,
        scale.beats.len(),
        percentile(&scale.beats, 0.50),
        percentile(&scale.beats, 0.99),
        percentile(&scale.beats, 1.0)
    );
    println!(
        "| coordinator CPU while they beat ({} s) | {:.1} % of one core |",
        bench.seconds,
        100.0 * scale.cpu_s / scale.window_s
    );
    println!(
        "| coordinator memory: resident at the end / peak | {:.1} / {:.1} MiB |",
        scale.rss_mib, scale.peak_rss_mib
    );
    for (launcher, trials) in [Launcher::Local, Launcher::External]
        .into_iter()
        .zip(&recoveries)
    {
        let detect: Vec<f64> = trials.iter().map(|t| t.detect_s).collect();
        let restart: Vec<f64> = trials.iter().map(|t| t.restart_s).collect();
        let total: Vec<f64> = trials.iter().map(|t| t.detect_s + t.restart_s).collect();
        println!(
            "| recovery, {} {launcher} workers, one killed ({} runs, median / slowest): kill to \
             failure recorded | {} |",
            bench.recovery_workers,
            bench.recovery_trials,
            summary(&detect)
        );
        println!(
            "| {launcher}: failure recorded to the next generation's first step | {} |",
            summary(&restart)
        );
        println!(
            "| {launcher}: kill to the next generation's first step | {} |",
            summary(&total)
        );
    }
    Ok(())
}

/// Lets this process (and the coordinator it starts) hold a connection per simulated worker.
fn raise_open_files(workers: usize) -> anyhow::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write and read the struct given, nothing else.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            bail!("getrlimit: {}", std::io::Error::last_os_error());
        }
        let wanted = (2 * workers as libc::rlim_t + 256).min(limit.rlim_max);
        if limit.rlim_cur < wanted {
            limit.rlim_cur = wanted;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                bail!("setrlimit: {}", std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// What the scale half measured.
struct Scale {
    rendezvous_s: f64,
    /// Every heartbeat round trip, in ms.
    beats: Vec<f64>,
    /// Coordinator CPU seconds (user + system) over `window_s` of beating.
    cpu_s: f64,
    window_s: f64,
    rss_mib: f64,
    peak_rss_mib: f64,
}

/// A tiny experiment (nothing trains: the simulated workers only join and beat).
fn experiment(launcher: &str, world_size: usize, epochs: usize) -> String {
    format!(
        "[run]\nname = \"bench-control-plane\"\nseed = 1\n\
         [cluster]\nlauncher = \"{launcher}\"\nworld_size = {world_size}\njoin_timeout_s = 600\n\
         heartbeat_interval_ms = 1000\nstop_checkpoint_s = 0\nmax_restarts = 1\n\
         dashboard_bind = \"\"\n\
         [model]\nnum_classes = 4\nimage_size = 75\nwidth = 0.0625\nblocks = [1, 1, 1]\n\
         dropout = 0.0\n\
         [data]\ntrain_samples = {}\nval_samples = 8\n\
         [train]\nbatch_size = 8\nepochs = {epochs}\nlog_every = 1\nprobe_every = 0\n\
         eval_every = 0\n\
         [checkpoint]\nevery_steps = 8\n",
        8 * world_size * 16
    )
}

/// Starts `coordinator launch` on `experiment` in `dir`; returns it with the gRPC address it
/// prints.
fn launch(dir: &Path, experiment: &str, token: &str) -> anyhow::Result<(Child, String)> {
    std::fs::create_dir_all(dir)?;
    let (file, token_file) = (dir.join("exp.toml"), dir.join("token"));
    std::fs::write(&file, experiment)?;
    std::fs::write(&token_file, token)?;
    let mut child = Command::new(std::env::current_exe()?)
        .arg("launch")
        .arg(&file)
        .arg("--state-dir")
        .arg(dir.join("runs"))
        .arg("--token-file")
        .arg(&token_file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the coordinator")?;
    let stdout = child.stdout.take().context("the coordinator's stdout")?;
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let url = loop {
        let Some(line) = lines.next() else {
            bail!("the coordinator exited before it printed its address");
        };
        if let Some((_, url)) = line?.split_once("coordinator at ") {
            break url.trim().to_string();
        }
    };
    // Keep reading, so the coordinator never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Ok((child, url))
}

async fn scale(bench: &ControlPlaneBench, dir: &Path) -> anyhow::Result<Scale> {
    let token = crate::rendezvous::new_key();
    let (mut coordinator, url) = launch(dir, &experiment("external", bench.workers, 1), &token)?;
    let measured = beat_together(bench, &url, &token, coordinator.id()).await;
    let _ = Command::new("kill")
        .args(["-INT", &coordinator.id().to_string()])
        .status();
    let _ = coordinator.wait();
    measured
}

/// Joins `bench.workers` simulated workers, then has each beat once a second (spread over the
/// second) for `bench.seconds`, timing every call; samples the coordinator `pid` meanwhile.
async fn beat_together(
    bench: &ControlPlaneBench,
    url: &str,
    token: &str,
    pid: u32,
) -> anyhow::Result<Scale> {
    let endpoint = Endpoint::from_shared(url.to_string())?;
    let mut channels = Vec::with_capacity(bench.workers);
    for _ in 0..bench.workers {
        channels.push(
            endpoint
                .connect()
                .await
                .context("connecting a simulated worker")?,
        );
    }
    let token: Arc<str> = token.into();
    let started = Instant::now();
    let joins: Vec<_> = channels
        .iter()
        .enumerate()
        .map(|(index, channel)| {
            let (channel, token) = (channel.clone(), token.clone());
            tokio::spawn(async move { join(channel, &token, index).await })
        })
        .collect();
    let mut keys = Vec::with_capacity(bench.workers);
    for joined in joins {
        keys.push(joined.await??);
    }
    let rendezvous_s = started.elapsed().as_secs_f64();

    let cpu_before = cpu_seconds(pid)?;
    let window = Instant::now();
    let beaters: Vec<_> = channels
        .into_iter()
        .zip(keys)
        .enumerate()
        .map(|(index, (channel, (rank, key)))| {
            let token = token.clone();
            let phase = Duration::from_secs_f64(index as f64 / bench.workers as f64);
            let beats = bench.seconds;
            tokio::spawn(async move { beat(channel, &token, &key, rank, phase, beats).await })
        })
        .collect();
    let mut beats = Vec::new();
    for beater in beaters {
        beats.extend(beater.await??);
    }
    let window_s = window.elapsed().as_secs_f64();
    let cpu_s = cpu_seconds(pid)? - cpu_before;
    let pid = pid.to_string();
    let (rss_mib, peak_rss_mib) = (status_mib(&pid, "VmRSS")?, status_mib(&pid, "VmHWM")?);
    beats.sort_by(f64::total_cmp);
    Ok(Scale {
        rendezvous_s,
        beats,
        cpu_s,
        window_s,
        rss_mib,
        peak_rss_mib,
    })
}

/// The client of a simulated worker.
type Client = CoordinatorClient<InterceptedService<Channel, Credentials>>;

/// A client speaking as a worker: with the run's token, and, once joined, its member key.
fn client(channel: Channel, token: &str, member_key: Option<&str>) -> anyhow::Result<Client> {
    Ok(CoordinatorClient::with_interceptor(
        channel,
        Credentials::new(token, member_key)?,
    ))
}

/// Joins as simulated worker `index`; returns its rank and member key.
async fn join(channel: Channel, token: &str, index: usize) -> anyhow::Result<(u32, String)> {
    let request = JoinRequest {
        worker_id: format!("simulated-{index}"),
        hostname: "bench".into(),
        // Never dialled: the simulated workers do not train.
        ring_addr: format!("127.0.0.1:{}", 1 + index % 60_000),
        pid: std::process::id(),
        nccl_id: Vec::new(),
        rank_hint: None,
    };
    let assignment = client(channel, token, None)?
        .join(request)
        .await?
        .into_inner();
    Ok((assignment.rank, assignment.member_key))
}

/// Beats `count` times a second apart after `phase`; returns each round trip in ms.
async fn beat(
    channel: Channel,
    token: &str,
    key: &str,
    rank: u32,
    phase: Duration,
    count: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut client = client(channel, token, Some(key))?;
    tokio::time::sleep(phase).await;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut trips = Vec::with_capacity(count);
    for _ in 0..count {
        ticker.tick().await;
        let sent = Instant::now();
        let request = HeartbeatRequest {
            rank,
            ..Default::default()
        };
        client.heartbeat(request).await?;
        trips.push(sent.elapsed().as_secs_f64() * 1e3);
    }
    Ok(trips)
}

/// User + system CPU seconds process `pid` has used (/proc/PID/stat, clock ticks).
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name, which ends at the last ')': utime and stime are the
    // 12th and 13th of them.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i)
            .context("a short /proc stat line")?
            .parse::<f64>()?)
    };
    // SAFETY: sysconf reads a constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(11)? + ticks(12)?) / per_second)
}

/// What the recovery half measured.
struct Recovery {
    detect_s: f64,
    restart_s: f64,
}

/// `bench.recovery_trials` recovery runs with `launcher`'s workers, each printed as it ends.
fn recoveries(
    bench: &ControlPlaneBench,
    launcher: Launcher,
    dir: &Path,
) -> anyhow::Result<Vec<Recovery>> {
    (0..bench.recovery_trials)
        .map(|trial| {
            let dir = dir.join(format!("recovery-{launcher}-{trial}"));
            let measured = recovery(bench.recovery_workers, launcher, &dir)?;
            println!(
                "recovery trial {} ({launcher} workers): failure recorded {:.2} s after the \
                 kill, next generation's first step {:.2} s later",
                trial + 1,
                measured.detect_s,
                measured.restart_s
            );
            Ok(measured)
        })
        .collect()
}

/// Kills one of `workers` workers after the first checkpoint and times the recovery from the
/// run database. External workers are started here as a user would (`worker --coordinator
/// URL --token-file F`), and a replacement once the failure is recorded.
fn recovery(workers: usize, launcher: Launcher, dir: &Path) -> anyhow::Result<Recovery> {
    let token = crate::rendezvous::new_key();
    let experiment = experiment(&launcher.to_string(), workers, 1000);
    let (mut coordinator, url) = launch(dir, &experiment, &token)?;
    let start_worker = || {
        Command::new(std::env::current_exe()?)
            .args(["worker", "--coordinator", &url, "--token-file"])
            .arg(dir.join("token"))
            .env("RAYON_NUM_THREADS", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting a worker")
    };
    let mut started = Vec::new();
    let measured = (|| {
        if launcher == Launcher::External {
            for _ in 0..workers {
                started.push(start_worker()?);
            }
        }
        kill_and_time(&dir.join("runs").join(DATABASE), || {
            if launcher == Launcher::External {
                started.push(start_worker()?);
            }
            Ok(())
        })
    })();
    let _ = Command::new("kill")
        .args(["-INT", &coordinator.id().to_string()])
        .status();
    let _ = coordinator.wait();
    for mut worker in started {
        let _ = worker.kill();
        let _ = worker.wait();
    }
    measured
}

/// Kills rank 1 once a checkpoint is committed, calls `after_failure` once the failure is
/// recorded, and times both from the run database.
fn kill_and_time(
    database: &Path,
    after_failure: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<Recovery> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let db = wait_for(deadline, || {
        Ok(database
            .is_file()
            .then(|| rusqlite::Connection::open(database))
            .transpose()?)
    })?;
    let query = |sql: &str| -> anyhow::Result<Option<f64>> {
        Ok(db.query_row(sql, [], |r| r.get::<_, Option<f64>>(0))?)
    };
    wait_for(deadline, || {
        query("SELECT MAX(step) FROM checkpoints").map(|s| s.filter(|&s| s >= 8.0))
    })?;
    let pid: i64 = db.query_row("SELECT pid FROM workers WHERE rank = 1", [], |r| r.get(0))?;
    let killed = now();
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()?;
    if !status.success() {
        bail!("kill -KILL {pid} failed");
    }
    let failed = wait_for(deadline, || {
        query("SELECT MIN(at) FROM events WHERE message LIKE 'generation 0 failed%'")
    })?;
    after_failure()?;
    let first_step = wait_for(deadline, || {
        query(&format!(
            "SELECT MIN(recorded_at) FROM metrics WHERE recorded_at > {failed}"
        ))
    })?;
    Ok(Recovery {
        detect_s: failed - killed,
        restart_s: first_step - failed,
    })
}

/// Polls `probe` every 20 ms until it finds something; an error past `deadline`.
fn wait_for<T>(
    deadline: Instant,
    mut probe: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    loop {
        if let Some(found) = probe()? {
            return Ok(found);
        }
        if Instant::now() > deadline {
            bail!("the recovery run did not get there within 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Median and slowest of `values`, in seconds.
fn summary(values: &[f64]) -> String {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    format!(
        "{:.2} / {:.2} s",
        percentile(&sorted, 0.5),
        percentile(&sorted, 1.0)
    )
}

/// The `q` quantile of sorted `values` (nearest rank).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), 50.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert_eq!(percentile(&values, 1.0), 100.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
