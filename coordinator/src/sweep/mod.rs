//! `coordinator sweep DIR`: every arm of a study (`DIR/arms.toml`: profiles × axes' levels ×
//! seeds), each a `coordinator launch` with its own stable run id, N at a time. Arms that
//! succeeded in the state directory are skipped and interrupted or failed ones continue from
//! their checkpoints, so rerunning a sweep finishes it; a stop signal checkpoints the arms in
//! flight (each coordinator's own signal handling) and starts no more.

mod plan;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Instant;

use anyhow::Context;
use incept_common::config;
use tokio::process::Command;
use tokio::task::JoinSet;

pub(crate) use plan::{Arm, Sweep};

use crate::dashboard;
use crate::run::{DATABASE, Signals};
use crate::store::{RunStatus, Store};

/// What `coordinator sweep` was asked.
#[derive(Debug, clap::Args)]
pub struct SweepArgs {
    /// The study's folder, holding arms.toml (e.g. experiments/residual_scaling).
    pub dir: PathBuf,
    /// The profile whose arms run (default: arms.toml's default_profile).
    #[arg(long)]
    pub profile: Option<String>,
    /// Arms trained at once (each a coordinator and its workers).
    #[arg(long, default_value_t = 1)]
    pub parallel: usize,
    /// Seeds per arm (default: arms.toml's list; more continue after its largest).
    #[arg(long)]
    pub seeds: Option<usize>,
    /// List the arms, their state and their resolved differences; run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Where the arms' runs live.
    #[arg(long, default_value_os_t = crate::run::default_state_dir())]
    pub state_dir: PathBuf,
    /// Serve the dashboard of the state directory here while the sweep runs ("" for none).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub dashboard_bind: String,
}

/// Runs `coordinator sweep`.
pub fn run(args: &SweepArgs) -> anyhow::Result<ExitCode> {
    let sweep = Sweep::read(&args.dir)?;
    let profile = match &args.profile {
        Some(profile) => profile.clone(),
        None => sweep.default_profile().to_string(),
    };
    anyhow::ensure!(args.parallel >= 1, "--parallel must be at least 1");
    anyhow::ensure!(args.seeds != Some(0), "--seeds must be at least 1");
    let arms = sweep.arms(&profile, args.seeds)?;
    let states = arm_states(&args.state_dir, &arms)?;
    if args.dry_run {
        print_plan(&sweep, &profile, &arms, &states)?;
        return Ok(ExitCode::SUCCESS);
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(execute(args, &arms, &states))
}

/// Each arm's status in the state directory (`None`: not started).
fn arm_states(state_dir: &Path, arms: &[Arm]) -> anyhow::Result<Vec<Option<RunStatus>>> {
    let database = state_dir.join(DATABASE);
    if !database.is_file() {
        return Ok(vec![None; arms.len()]);
    }
    let store = Store::open(&database)?;
    arms.iter()
        .map(|arm| Ok(store.run_config(&arm.run_id)?.map(|(_, status)| status)))
        .collect()
}

/// The `--dry-run` listing: each arm's run id, state and the resolved values in which the arms
/// differ (every arm's experiment is loaded, so a bad override shows here).
fn print_plan(
    sweep: &Sweep,
    profile: &str,
    arms: &[Arm],
    states: &[Option<RunStatus>],
) -> anyhow::Result<()> {
    let resolved: Vec<BTreeMap<String, String>> = arms
        .iter()
        .map(|arm| {
            let exp = config::read(&arm.experiment, &arm.overrides)
                .with_context(|| format!("arm {}", arm.run_id))?;
            Ok(config::flatten(&exp.to_toml()))
        })
        .collect::<anyhow::Result<_>>()?;
    let keys: Vec<&String> = config::differing_keys(&resolved.iter().collect::<Vec<_>>())
        .into_iter()
        .filter(|key| key.as_str() != "run.name")
        .collect();
    println!(
        "sweep {} (profile {profile}): {} arms",
        sweep.study,
        arms.len()
    );
    for ((arm, state), values) in arms.iter().zip(states).zip(&resolved) {
        let differing: Vec<String> = keys
            .iter()
            .map(|key| format!("{key}={}", values.get(*key).map_or("-", String::as_str)))
            .collect();
        let state = state.map_or("new", RunStatus::as_str);
        println!("{:<11} {}  {}", state, arm.run_id, differing.join(" "));
    }
    Ok(())
}

/// Launches the arms that have not succeeded, `parallel` at a time, until all ended or a
/// signal came; each arm's output goes to `STATE_DIR/sweep-logs/RUN_ID.log`.
async fn execute(
    args: &SweepArgs,
    arms: &[Arm],
    states: &[Option<RunStatus>],
) -> anyhow::Result<ExitCode> {
    let logs = args.state_dir.join("sweep-logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let mut pending: Vec<&Arm> = Vec::new();
    for (arm, state) in arms.iter().zip(states) {
        match state {
            Some(RunStatus::Succeeded) => println!("{}: already succeeded; skipped", arm.run_id),
            Some(state) => {
                println!("{}: {}; continuing it", arm.run_id, state.as_str());
                pending.push(arm);
            }
            None => pending.push(arm),
        }
    }
    if !args.dashboard_bind.is_empty() && !pending.is_empty() {
        // The dashboard needs the database the first arm creates.
        Store::open(&args.state_dir.join(DATABASE))?;
        let url = dashboard::start(&args.state_dir, &args.dashboard_bind)
            .await
            .context("--dashboard-bind")?;
        println!("dashboard: {url}");
    }
    let total = pending.len();
    let mut signals = Signals::install().context("installing the signal handlers")?;
    let mut running: JoinSet<(
        String,
        PathBuf,
        f64,
        std::io::Result<std::process::ExitStatus>,
    )> = JoinSet::new();
    let mut children: BTreeMap<String, u32> = BTreeMap::new();
    let (mut done, mut failed) = (0, Vec::new());
    let mut stopping = None;
    let mut queue = pending.into_iter();
    loop {
        while stopping.is_none() && running.len() < args.parallel {
            let Some(arm) = queue.next() else { break };
            let log = logs.join(format!("{}.log", arm.run_id));
            let mut child = launch(arm, &args.state_dir, &log)?;
            if let Some(pid) = child.id() {
                children.insert(arm.run_id.clone(), pid);
            }
            println!(
                "[{}/{total}] started {} (log: {})",
                done + running.len() + 1,
                arm.run_id,
                log.display()
            );
            let run_id = arm.run_id.clone();
            let started = Instant::now();
            running.spawn(async move {
                let status = child.wait().await;
                (run_id, log, started.elapsed().as_secs_f64(), status)
            });
        }
        if running.is_empty() {
            break;
        }
        tokio::select! {
            Some(joined) = running.join_next() => {
                let (run_id, log, seconds, status) = joined?;
                children.remove(&run_id);
                done += 1;
                match status {
                    Ok(status) if status.success() => {
                        println!("[{done}/{total}] {run_id} succeeded in {seconds:.0} s");
                    }
                    Ok(status) => {
                        println!("[{done}/{total}] {run_id} ended with {status} after \
                                  {seconds:.0} s (log: {})", log.display());
                        failed.push(run_id);
                    }
                    Err(err) => {
                        println!("[{done}/{total}] {run_id}: waiting for it failed: {err}");
                        failed.push(run_id);
                    }
                }
            }
            signal = signals.next() => {
                // Each arm's coordinator checkpoints and stops on its own signal; a second
                // one stops them at once, as it does a launch.
                println!("{}: stopping the arms in flight ({}); rerun the sweep to continue",
                    signal.name(), children.keys().cloned().collect::<Vec<_>>().join(", "));
                for pid in children.values() {
                    // SAFETY: kill(2) on our own child's pid, with a valid signal number.
                    unsafe { libc::kill(*pid as i32, libc::SIGINT) };
                }
                stopping = Some(signal);
            }
        }
    }
    let left = queue.len();
    if let Some(signal) = stopping {
        println!("sweep interrupted with {left} arm(s) not started; rerun it to continue");
        return Ok(ExitCode::from(signal.exit_code()));
    }
    if failed.is_empty() {
        println!("sweep finished: every arm succeeded");
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "sweep finished with {} arm(s) not succeeded: {} (rerun the sweep to continue them)",
            failed.len(),
            failed.join(", ")
        );
        Ok(ExitCode::FAILURE)
    }
}

/// `coordinator launch` of `arm` (this binary), in its own process group so that a terminal's
/// Ctrl-C reaches it only through the sweep, once.
fn launch(arm: &Arm, state_dir: &Path, log: &Path) -> anyhow::Result<tokio::process::Child> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("launch")
        .arg(&arm.experiment)
        .args(["--run-id", &arm.run_id])
        .arg("--state-dir")
        .arg(state_dir);
    for setting in &arm.overrides {
        cmd.args(["--set", setting]);
    }
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(true);
    cmd.spawn()
        .with_context(|| format!("starting the coordinator of {}", arm.run_id))
}
