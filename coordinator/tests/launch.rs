//! End-to-end tests: the real `coordinator` binary launching real `worker` processes that train
//! over real sockets and report over gRPC into a real SQLite file.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod support;

use support::*;

#[test]
fn launch_trains_two_workers_and_records_metrics() {
    let fx = Fixture::new(TINY);
    let mut cmd = fx.coordinator(&["launch"]);
    cmd.arg(fx.experiment());
    let out = run_with_limit(cmd, Duration::from_secs(300));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("succeeded"), "{stdout}");
    assert!(stdout.contains("validation top-1"), "{stdout}");

    // Another terminal's view of it.
    let status = run_with_limit(fx.coordinator(&["status"]), Duration::from_secs(30));
    let shown = text(&status.stdout);
    assert!(status.status.success(), "{}", text(&status.stderr));
    // `cluster.kernels = "auto"` takes LibTorch's where the build has them.
    let compute = if cfg!(feature = "libtorch") {
        ", libtorch on cpu"
    } else {
        ", burn (flex) on cpu"
    };
    for expected in [
        "status      succeeded",
        "workers     2 of 2 joined",
        "rank 1: ",
        compute,
        "step        48/48 (100%)",
        "evaluation  step 48: top-1",
        "(1-crop)",
    ] {
        assert!(shown.contains(expected), "{expected:?} not in:\n{shown}");
    }
    let unknown = run_with_limit(fx.coordinator(&["status", "nope"]), Duration::from_secs(30));
    assert!(!unknown.status.success());
    assert!(text(&unknown.stderr).contains("no run \"nope\""));

    let db = fx.db();
    let (status, total_steps, top1, samples): (String, i64, f64, i64) = db
        .query_row(
            "SELECT status, total_steps, val_top1, val_samples FROM runs",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(status, "succeeded");
    assert_eq!(total_steps, 48); // 384 / (2 × 8) × 2 epochs
    assert_eq!(samples, 64);
    assert!((0.0..=1.0).contains(&top1));
    let workers: i64 = db
        .query_row("SELECT COUNT(*) FROM workers", [], |r| r.get(0))
        .unwrap();
    assert_eq!(workers, 2);

    for rank in 0..2 {
        let mut query = db
            .prepare(
                "SELECT step, loss, compute_seconds FROM metrics WHERE rank = ?1 ORDER BY step",
            )
            .unwrap();
        let rows: Vec<(i64, f64, f64)> = query
            .query_map([rank], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let steps: Vec<i64> = rows.iter().map(|r| r.0).collect();
        assert_eq!(steps, (1..=48).collect::<Vec<_>>(), "rank {rank} steps");
        assert!(rows.iter().all(|r| r.2 > 0.0), "compute time recorded");
        let mean =
            |rows: &[(i64, f64, f64)]| rows.iter().map(|r| r.1).sum::<f64>() / rows.len() as f64;
        let (first, last) = (mean(&rows[..8]), mean(&rows[40..]));
        assert!(
            last < first * 0.9,
            "rank {rank}: loss did not fall: {first:.4} -> {last:.4}"
        );
    }
    // Both ranks report the same, globally averaged loss.
    let differing: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM metrics a JOIN metrics b ON a.step = b.step AND a.rank = 0 AND b.rank = 1
             WHERE a.loss != b.loss",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(differing, 0);
}

#[test]
fn paper_config_without_imagenet_shards_fails_fast_naming_the_path() {
    let fx = Fixture::new("");
    let mut cmd = fx.coordinator(&["launch"]);
    cmd.arg(workspace_file("experiments/irv2_scale0.2.toml"));
    let started = Instant::now();
    let out = run_with_limit(cmd, Duration::from_secs(30));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("/data/imagenet-tfrecord/index.json") && stderr.contains("does not exist"),
        "{stderr}"
    );
}

#[test]
fn config_errors_name_the_file_key_or_value() {
    let cases: [(&str, &[&str]); 4] = [
        ("[model]\nwidth = \n", &["exp.toml", "line 2"]),
        (
            "[train]\nbatchsize = 8\n",
            &["train.batchsize", "unknown field"],
        ),
        (
            "[cluster]\nworld_size = 0\n",
            &["cluster.world_size = 0", "at least 1"],
        ),
        (
            "[model]\nresidual_scale = -1.0\n",
            &["model.residual_scale = -1"],
        ),
    ];
    for (body, needles) in cases {
        let fx = Fixture::new(body);
        let mut cmd = fx.coordinator(&["launch"]);
        cmd.arg(fx.experiment());
        let out = run_with_limit(cmd, Duration::from_secs(30));
        assert!(!out.status.success());
        let stderr = text(&out.stderr);
        for needle in needles {
            assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
        }
        // Nothing was created for a run that never started.
        assert!(!fx.state_dir().exists());
    }
    let fx = Fixture::new("");
    let mut cmd = fx.coordinator(&["launch"]);
    cmd.arg(fx.dir.path().join("missing.toml"));
    let out = run_with_limit(cmd, Duration::from_secs(30));
    assert!(text(&out.stderr).contains("missing.toml does not exist"));
}

#[test]
fn environment_and_set_overrides_apply_in_order() {
    let fx = Fixture::new("[train]\nbatch_size = 4\naccumulate = 2\n");
    let mut cmd = Command::new(COORDINATOR);
    cmd.arg("config")
        .arg(fx.experiment())
        .args(["--set", "train.accumulate=3"])
        .env("INCEPT__TRAIN__BATCH_SIZE", "16")
        .env("INCEPT__TRAIN__ACCUMULATE", "5");
    let out = run_with_limit(cmd, Duration::from_secs(30));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("batch_size = 16"), "{stdout}");
    assert!(stdout.contains("accumulate = 3"), "{stdout}");
}

/// The worker processes a run's database lists.
fn worker_pids(fx: &Fixture) -> Vec<i64> {
    let db = fx.db();
    let mut query = db.prepare("SELECT pid FROM workers").unwrap();
    query
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Waits until none of `pids` runs, failing after `limit`.
fn assert_all_end(pids: &[i64], limit: Duration) {
    let deadline = Instant::now() + limit;
    while let Some(pid) = pids.iter().find(|&&pid| is_running(pid)) {
        assert!(
            Instant::now() < deadline,
            "worker {pid} still running {limit:?} after its coordinator stopped"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn wrong_join_token_is_rejected() {
    let fx = Fixture::new(
        &format!("{TINY}\n[cluster]\nlauncher = \"external\"\nworld_size = 1\n").replace(
            "[cluster]\nworld_size = 2\nheartbeat_interval_ms = 200\n",
            "",
        ),
    );
    let launched = Launched::spawn(&fx);
    let line = launched.wait_for_line("coordinator at ");
    let url = line.trim().rsplit(' ').next().unwrap().to_string();

    let mut worker = Command::new(worker_bin());
    worker.args([
        "--coordinator",
        &url,
        "--token",
        "not-the-token",
        "--connect-attempts",
        "2",
    ]);
    let out = run_with_limit(worker, Duration::from_secs(30));
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("rejected the join token"), "{stderr}");

    launched.wait_for_line("rejected a request from 127.0.0.1:");
    let status = interrupt_and_wait(launched.child, Duration::from_secs(15));
    assert_eq!(status.code(), Some(130));
    let rejections: i64 = fx
        .db()
        .query_row(
            "SELECT COUNT(*) FROM events WHERE message LIKE 'rejected a request from %invalid join token'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(rejections >= 1, "the rejected join is recorded");
    let run_status: String = fx
        .db()
        .query_row("SELECT status FROM runs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(run_status, "interrupted");
}

#[test]
fn interrupt_stops_local_workers() {
    let fx = Fixture::new(&TINY.replace("epochs = 2", "epochs = 1000"));
    let launched = Launched::spawn(&fx);
    launched.wait_for_line("rank 0 joined");
    launched.wait_for_line("rank 1 joined");
    let pids = worker_pids(&fx);
    assert_eq!(pids.len(), 2);

    let status = interrupt_and_wait(launched.child, Duration::from_secs(15));
    assert_eq!(status.code(), Some(130));
    for pid in pids {
        assert!(
            !is_running(pid),
            "worker {pid} still running after the coordinator stopped"
        );
    }
}

#[test]
fn scheduler_signals_interrupt_the_run_and_stop_local_workers() {
    for (signal, code) in [("TERM", 143), ("HUP", 129)] {
        let fx = Fixture::new(&TINY.replace("epochs = 2", "epochs = 1000"));
        let launched = Launched::spawn(&fx);
        launched.wait_for_line("rank 0 joined");
        launched.wait_for_line("rank 1 joined");
        let pids = worker_pids(&fx);
        let status = signal_and_wait(launched.child, signal, Duration::from_secs(15));
        assert_eq!(status.code(), Some(code), "SIG{signal}");
        let (status, error): (String, String) = fx
            .db()
            .query_row("SELECT status, error FROM runs", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(status, "interrupted", "SIG{signal}");
        assert_eq!(error, format!("interrupted by SIG{signal}"));
        assert_all_end(&pids, Duration::from_secs(10));
    }
}

#[test]
fn local_workers_end_with_a_killed_coordinator() {
    let fx = Fixture::new(&TINY.replace("epochs = 2", "epochs = 1000"));
    let launched = Launched::spawn(&fx);
    launched.wait_for_line("rank 0 joined");
    launched.wait_for_line("rank 1 joined");
    let pids = worker_pids(&fx);
    assert_eq!(pids.len(), 2);
    let status = signal_and_wait(launched.child, "KILL", Duration::from_secs(15));
    assert_eq!(status.code(), None, "killed by the signal");
    // No orphan trains on: the kernel ends each worker with its coordinator.
    assert_all_end(&pids, Duration::from_secs(10));
}

#[test]
fn a_second_coordinator_is_refused_and_a_dead_one_shows_as_stale() {
    let fx = Fixture::new(&TINY.replace("epochs = 2", "epochs = 1000"));
    let launched = Launched::spawn(&fx);
    let run_id = launched.run_id();
    launched.wait_for_line("rank 1 joined");
    let runs = || {
        let out = run_with_limit(fx.coordinator(&["runs"]), Duration::from_secs(30));
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };

    let out = run_with_limit(
        fx.coordinator(&["launch", "--resume", &run_id]),
        Duration::from_secs(30),
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "is driven by the coordinator with pid {}",
            launched.child.id()
        )),
        "{stderr}"
    );
    assert!(runs().contains(" running "), "{}", runs());

    signal_and_wait(launched.child, "KILL", Duration::from_secs(15));
    let listing = runs();
    assert!(
        listing.contains(&run_id) && listing.contains(" stale "),
        "{listing}"
    );
}

/// Kills the worker process of `rank` (kill -9), as a node failure would.
fn kill_rank(fx: &Fixture, rank: u32) {
    let pid = rank_pid(fx, rank);
    let killed = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success(), "kill -9 {pid}");
}

#[test]
fn the_rank_that_died_is_named_not_its_surviving_peer() {
    let fx = Fixture::new(&TINY.replace("epochs = 2", "epochs = 1000"));
    let launched = Launched::spawn(&fx);
    launched.wait_for_line("rank 0 joined");
    launched.wait_for_line("rank 1 joined");
    kill_rank(&fx, 0);
    let failed = launched.wait_for_line("generation 0 failed: ");
    assert!(failed.contains("failed: rank 0 died: worker"), "{failed}");
    assert!(failed.contains("SIGKILL"), "{failed}");
    interrupt_and_wait(launched.child, Duration::from_secs(15));
}

/// TINY for 72 steps with a checkpoint every 8: the run the recovery tests interrupt.
fn checkpointed() -> String {
    TINY.replace("epochs = 2", "epochs = 3") + "[checkpoint]\nevery_steps = 8\nkeep = 2\n"
}

/// [`checkpointed`] run without interruption: rank 0's per-step losses and the final top-1.
struct Uninterrupted {
    losses: Vec<(i64, f64)>,
    top1: f64,
}

/// The [`Uninterrupted`] run, made once for every test that compares against it.
fn uninterrupted() -> &'static Uninterrupted {
    static RUN: std::sync::OnceLock<Uninterrupted> = std::sync::OnceLock::new();
    RUN.get_or_init(|| {
        let reference = Fixture::new(&checkpointed());
        let mut cmd = reference.coordinator(&["launch"]);
        cmd.arg(reference.experiment());
        let out = run_with_limit(cmd, Duration::from_secs(300));
        assert!(out.status.success(), "{}", text(&out.stderr));
        let losses = losses(&reference);
        assert_eq!(losses.len(), 72);
        let top1 = final_top1(&reference);
        Uninterrupted { losses, top1 }
    })
}

/// The run's final validation top-1.
fn final_top1(fx: &Fixture) -> f64 {
    fx.db()
        .query_row("SELECT val_top1 FROM runs", [], |r| r.get(0))
        .unwrap()
}

/// Rank 0's newest step in the run database (0 before the first report).
fn newest_step(fx: &Fixture) -> i64 {
    fx.db()
        .query_row(
            "SELECT COALESCE(MAX(step), 0) FROM metrics WHERE rank = 0",
            [],
            |r| r.get(0),
        )
        .unwrap_or(0)
}

/// Waits until rank 0 has reported step `step` (a minute at most).
fn wait_for_step(fx: &Fixture, step: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while newest_step(fx) < step {
        assert!(
            Instant::now() < deadline,
            "rank 0 never reached step {step}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_worker_killed_at_a_random_step_is_replaced_and_the_run_ends_as_if_nothing_happened() {
    let expected = &uninterrupted().losses;
    // Five seeded trials: which rank dies, and after which of the 72 steps.
    let mut state: u64 = 0x1ce7_5eed;
    for trial in 0..5 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let rank = (state >> 33) as u32 % 2;
        let step = 2 + (state >> 40) as i64 % 60;
        let fx = Fixture::new(&checkpointed());
        let mut launched = Launched::spawn(&fx);
        launched.wait_for_line("rank 1 joined");
        wait_for_step(&fx, step);
        kill_rank(&fx, rank);
        let restart = launched.wait_for_line("the group re-forms from step");
        let status = wait_for_exit(
            &mut launched.child,
            Duration::from_secs(300),
            "the restarted run",
        );
        assert!(
            status.success(),
            "trial {trial}: rank {rank} killed after step {step}"
        );
        // Every step done once in the metrics, each with the uninterrupted run's loss.
        assert_eq!(
            &losses(&fx),
            expected,
            "trial {trial}: rank {rank} killed after step {step}, {restart}"
        );
    }
}

#[test]
fn a_stopped_worker_is_detected_named_and_replaced() {
    let expected = &uninterrupted().losses;
    let timeout = 3;
    let fx = Fixture::new(&checkpointed().replace(
        "[cluster]\n",
        &format!("[cluster]\nheartbeat_timeout_s = {timeout}\n"),
    ));
    let mut launched = Launched::spawn(&fx);
    launched.wait_for_line("checkpoint step 8 committed");
    let pid = rank_pid(&fx, 1);
    let stopped = Instant::now();
    let sent = Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let failed = launched.wait_for_line("generation 0 failed: ");
    let detected = stopped.elapsed();
    assert!(failed.contains("rank 1 sent no heartbeat"), "{failed}");
    assert!(
        detected < Duration::from_secs(2 * timeout),
        "detected after {detected:?}, heartbeat timeout {timeout} s"
    );
    let status = wait_for_exit(
        &mut launched.child,
        Duration::from_secs(300),
        "the run after a stopped worker",
    );
    assert!(status.success());
    assert!(!is_running(pid), "the stopped worker is gone");
    assert_eq!(&losses(&fx), expected);
}

#[test]
fn a_worker_that_dies_at_the_rendezvous_gives_its_rank_back() {
    let fx = Fixture::new(&TINY.replace("[cluster]\n", "[cluster]\nlauncher = \"external\"\n"));
    let mut launched = Launched::spawn(&fx);
    let mut command = launched.worker_command();
    command.stderr(Stdio::null());
    let mut worker = || command.spawn().unwrap();
    let mut doomed = worker();
    launched.wait_for_line("rank 0 joined");
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    launched.wait_for_line("rank 0 left");

    let mut replacements = [worker(), worker()];
    let status = wait_for_exit(
        &mut launched.child,
        Duration::from_secs(120),
        "the run with the replacements",
    );
    for replacement in &mut replacements {
        assert!(replacement.wait().unwrap().success());
    }
    assert!(
        status.success(),
        "the run finishes with the two replacements"
    );
}

#[test]
fn an_interrupted_coordinator_stops_its_external_workers() {
    let fx = Fixture::new(
        &TINY
            .replace("epochs = 2", "epochs = 1000")
            .replace(
                "[cluster]\n",
                "[cluster]\nlauncher = \"external\"\nworld_size = 1\n",
            )
            .replace("world_size = 2\n", ""),
    );
    let launched = Launched::spawn(&fx);
    let mut worker = launched
        .worker_command()
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, worker_lines) = mpsc::channel();
    forward_lines(worker.stderr.take().unwrap(), tx);
    // The worker holds its assignment (the coordinator's "joined" comes before its answer).
    worker_lines
        .iter()
        .find(|line| line.contains("joined"))
        .expect("the worker joins");
    let status = interrupt_and_wait(launched.child, Duration::from_secs(15));
    assert_eq!(status.code(), Some(130));
    // Told by the coordinator, well before the 60 s heartbeat timeout would end it.
    let status = wait_for_exit(
        &mut worker,
        Duration::from_secs(30),
        "the external worker of an interrupted coordinator",
    );
    let stderr = worker_lines.iter().collect::<Vec<_>>().join("\n");
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("stopped by the coordinator"), "{stderr}");
}

#[test]
fn the_grpc_health_service_answers_serving_without_the_token() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    // Waiting for an external worker: the coordinator is up, the run not started.
    let fx = Fixture::new(&TINY.replace("[cluster]\n", "[cluster]\nlauncher = \"external\"\n"));
    let launched = Launched::spawn(&fx);
    let line = launched.wait_for_line("coordinator at ");
    let url = line.trim().rsplit(' ').next().unwrap().to_string();
    let status = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = HealthClient::new(channel);
        let request = HealthCheckRequest {
            service: String::new(),
        };
        client.check(request).await.unwrap().into_inner().status
    });
    assert_eq!(status, ServingStatus::Serving as i32);
    interrupt_and_wait(launched.child, Duration::from_secs(15));
}

#[test]
fn listening_beyond_loopback_without_tls_warns() {
    let fx = Fixture::new(&TINY.replace(
        "[cluster]\n",
        "[cluster]\nlauncher = \"external\"\nbind = \"0.0.0.0:0\"\n",
    ));
    let launched = Launched::spawn(&fx);
    let warning = launched.wait_for_line("without TLS");
    assert!(warning.contains("listens on 0.0.0.0:"), "{warning}");
    interrupt_and_wait(launched.child, Duration::from_secs(15));
}

#[test]
fn an_external_worker_stops_when_its_coordinator_is_lost() {
    let fx = Fixture::new(
        &format!(
            "{}\n[cluster]\nlauncher = \"external\"\nworld_size = 1\nheartbeat_interval_ms = 200\n\
             heartbeat_timeout_s = 2\nreconnect_timeout_s = 3\n",
            TINY.replace("epochs = 2", "epochs = 1000")
        )
        .replace(
            "[cluster]\nworld_size = 2\nheartbeat_interval_ms = 200\n",
            "",
        ),
    );
    let launched = Launched::spawn(&fx);
    let mut worker = launched
        .worker_command()
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, worker_lines) = mpsc::channel();
    forward_lines(worker.stderr.take().unwrap(), tx);
    // The worker holds its assignment: from here on only the coordinator's loss can stop it.
    let joined = worker_lines
        .iter()
        .find(|line| line.contains("joined"))
        .expect("the worker joins");
    assert!(joined.contains("rank=0"), "{joined}");

    let status = signal_and_wait(launched.child, "KILL", Duration::from_secs(15));
    assert_eq!(status.code(), None);
    let lost = Instant::now();
    let status = wait_for_exit(
        &mut worker,
        Duration::from_secs(60),
        "the worker of a dead coordinator",
    );
    let stderr: Vec<String> = worker_lines.iter().collect();
    let stderr = stderr.join("\n");
    assert!(
        !status.success(),
        "a worker without its coordinator must fail: {stderr}"
    );
    assert!(stderr.contains("lost the coordinator"), "{stderr}");
    assert!(
        lost.elapsed() < Duration::from_secs(30),
        "stopped {:?} after the coordinator died (timeout 2 s)",
        lost.elapsed()
    );
}

#[test]
fn resume_takes_a_checkpoint_written_while_the_coordinator_was_down() {
    let fx =
        Fixture::new(&checkpointed().replace("[cluster]\n", "[cluster]\nstop_checkpoint_s = 0\n"));
    let launched = Launched::spawn(&fx);
    let run_id = launched.run_id();
    launched.wait_for_line("checkpoint step 16 committed");
    interrupt_and_wait(launched.child, Duration::from_secs(15));
    // As if the coordinator had been down when rank 0 wrote step 16: on disk, never committed.
    let newest: i64 = fx
        .db()
        .query_row("SELECT MAX(step) FROM checkpoints", [], |r| r.get(0))
        .unwrap();
    fx.db()
        .execute("DELETE FROM checkpoints WHERE step = ?1", [newest])
        .unwrap();

    let mut cmd = fx.coordinator(&["launch", "--resume", &run_id]);
    cmd.current_dir(fx.dir.path());
    let out = run_with_limit(cmd, Duration::from_secs(300));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("resuming from step {newest} ")),
        "the newest verifying checkpoint, not the newest committed one: {stdout}"
    );
    assert!(
        stderr.contains(&format!(
            "checkpoint of step {newest} was written but never committed"
        )),
        "{stderr}"
    );
}

/// Per-step losses of rank 0 in a state directory's database.
fn losses(fx: &Fixture) -> Vec<(i64, f64)> {
    let db = fx.db();
    let mut query = db
        .prepare("SELECT step, loss FROM metrics WHERE rank = 0 ORDER BY step")
        .unwrap();
    query
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn interrupted_run_resumes_with_identical_losses() {
    let expected = &uninterrupted().losses;
    let experiment = checkpointed();

    // Interrupt a second run once its checkpoint of step 16 is committed, then resume it
    // (stopping at once: the checkpoint a signal asks for is another test's).
    let fx = Fixture::new(&experiment.replace("[cluster]\n", "[cluster]\nstop_checkpoint_s = 0\n"));
    let launched = Launched::spawn(&fx);
    let run_id = launched.run_id();
    launched.wait_for_line("checkpoint step 16 committed");
    let status = interrupt_and_wait(launched.child, Duration::from_secs(15));
    assert_eq!(status.code(), Some(130));
    let committed: Vec<i64> = {
        let db = fx.db();
        let mut query = db
            .prepare("SELECT step FROM checkpoints ORDER BY step")
            .unwrap();
        query
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert!(
        committed.len() <= 2 && committed.contains(&16),
        "{committed:?}"
    );
    // Damage the newest checkpoint: resuming must fall back to the one before it.
    let newest: String = fx
        .db()
        .query_row(
            "SELECT path FROM checkpoints ORDER BY step DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    // A checkpoint rank 0 wrote after the interrupt would be resumed from (it verifies):
    // remove any, so the damaged one is the newest.
    let checkpoints = Path::new(&newest).parent().unwrap();
    for entry in std::fs::read_dir(checkpoints).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_str().unwrap()
            > Path::new(&newest).file_name().unwrap().to_str().unwrap()
        {
            std::fs::remove_dir_all(&path).unwrap();
        }
    }
    let params = Path::new(&newest).join("params.f32");
    let mut bytes = std::fs::read(&params).unwrap();
    bytes[7] ^= 0x40;
    std::fs::write(&params, bytes).unwrap();

    let mut cmd = fx.coordinator(&["launch", "--resume", &run_id]);
    cmd.current_dir(fx.dir.path());
    let out = run_with_limit(cmd, Duration::from_secs(300));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let older = committed.iter().rev().nth(1).copied().unwrap_or(0);
    assert!(
        stdout.contains(&format!("resuming from step {older} ")),
        "{stdout}"
    );
    assert!(
        stderr.contains("unusable") && stderr.contains("CRC-32C"),
        "{stderr}"
    );

    // Every step, before and after the interruption, has the uninterrupted run's loss.
    assert_eq!(&losses(&fx), expected);
    assert_eq!(final_top1(&fx), uninterrupted().top1);
    // Only the newest `keep` checkpoints remain, on disk and in the database.
    let kept: i64 = fx
        .db()
        .query_row("SELECT COUNT(*) FROM checkpoints", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kept, 2);
}

#[test]
fn a_scheduler_signal_checkpoints_the_current_step_and_the_same_run_id_continues_it() {
    let expected = &uninterrupted().losses;
    let fx = Fixture::new(&checkpointed());
    let launched = Launched::spawn_with(&fx, &["--run-id", "requeued-job"]);
    assert_eq!(launched.run_id(), "requeued-job");
    launched.wait_for_line("checkpoint step 8 committed");
    let pids = worker_pids(&fx);
    Command::new("kill")
        .args(["-USR1", &launched.child.id().to_string()])
        .status()
        .unwrap();
    launched.wait_for_line("SIGUSR1: checkpointing the current step");
    let mut child = launched.child;
    let status = wait_for_exit(&mut child, Duration::from_secs(30), "the signalled run");
    assert_eq!(status.code(), Some(138), "128 + SIGUSR1");
    // The run stops right after the checkpoint the signal asked for: the last one committed (a
    // scheduled one may be committed between the signal and it). Read to the end of the output.
    let committed: Vec<i64> = launched
        .lines
        .iter()
        .filter_map(|line| {
            let step = line
                .strip_prefix("checkpoint step ")?
                .split_whitespace()
                .next()?;
            step.parse().ok()
        })
        .collect();
    let step = *committed
        .last()
        .expect("a checkpoint committed after the signal");
    assert!(step > 8 && step < 72, "{committed:?}");
    assert_all_end(&pids, Duration::from_secs(10));
    let (status, error, newest): (String, String, i64) = fx
        .db()
        .query_row(
            "SELECT status, error, (SELECT MAX(step) FROM checkpoints) FROM runs",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(
        (status.as_str(), error.as_str(), newest),
        ("interrupted", "interrupted by SIGUSR1", step)
    );

    // What a requeued job does: the same command, which continues the run from that step.
    let relaunch = || {
        let mut cmd = fx.coordinator(&["launch"]);
        cmd.arg(fx.experiment()).args(["--run-id", "requeued-job"]);
        run_with_limit(cmd, Duration::from_secs(300))
    };
    let out = relaunch();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("run requeued-job exists"), "{stdout}");
    assert!(
        stdout.contains(&format!("resuming from step {step} ")),
        "{stdout}"
    );
    assert_eq!(&losses(&fx), expected, "no step lost or trained twice");
    let out = relaunch();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("run requeued-job already succeeded; nothing to do"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn a_given_token_file_is_the_token_workers_join_with() {
    let fx = Fixture::new(&TINY.replace("[cluster]\n", "[cluster]\nlauncher = \"external\"\n"));
    let secret = fx.dir.path().join("secret-token");
    std::fs::write(&secret, "0123456789abcdef\n").unwrap();
    let flags = [
        "--token-file",
        secret.to_str().unwrap(),
        "--run-id",
        "bad/id",
    ];
    let mut cmd = fx.coordinator(&["launch"]);
    cmd.arg(fx.experiment()).args(flags);
    let out = run_with_limit(cmd, Duration::from_secs(30));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--run-id \"bad/id\""),
        "{}",
        text(&out.stderr)
    );

    let launched = Launched::spawn_with(&fx, &flags[..2]);
    let hint = launched.wait_for_line("--token-file");
    let token_file = hint.split_whitespace().last().unwrap();
    assert_eq!(
        std::fs::read_to_string(token_file).unwrap().trim(),
        "0123456789abcdef"
    );
    interrupt_and_wait(launched.child, Duration::from_secs(15));
}

#[test]
fn models_table_measures_each_architecture() {
    let mut cmd = Command::new(COORDINATOR);
    cmd.args(["models", "--arch", "bn_inception"]);
    let out = run_with_limit(cmd, Duration::from_secs(120));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // REFERENCES.md: 11,295,240 parameters and 2,032,600,064 MACs at 224.
    let row = stdout
        .lines()
        .find(|l| l.starts_with("bn_inception"))
        .unwrap();
    for expected in ["11,295,240", "2,032,600,064", "224", "7×7×1024"] {
        assert!(row.contains(expected), "{expected} not in {row}");
    }
    let mut cmd = Command::new(COORDINATOR);
    cmd.args(["models", "--arch", "resnet50"]);
    let out = run_with_limit(cmd, Duration::from_secs(30));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("unknown architecture \"resnet50\""));
}

#[test]
fn imported_timm_weights_initialise_a_run() {
    let fx = Fixture::new("");
    let weights = fx.dir.path().join("irv2.safetensors");
    let mut cmd = Command::new(COORDINATOR);
    cmd.args([
        "models",
        "import",
        "--arch",
        "inception_resnet_v2",
        "--num-classes",
        "10",
    ])
    .args(["--width", "0.0625", "--blocks", "1,1,1", "--out"])
    .arg(&weights)
    .arg("--from")
    .arg(workspace_file(
        "common/tests/fixtures/timm_irv2_full.safetensors",
    ));
    let out = run_with_limit(cmd, Duration::from_secs(60));
    assert!(out.status.success(), "{}", text(&out.stderr));

    let experiment = |classes: usize| {
        format!(
            "[cluster]\nworld_size = 1\n\
             [model]\nnum_classes = {classes}\nimage_size = 75\nwidth = 0.0625\n\
             blocks = [1, 1, 1]\ninit_from = {:?}\n\
             [data]\ntrain_samples = 64\nval_samples = 16\n\
             [train]\nbatch_size = 8\nmax_steps = 2\n",
            weights.display().to_string()
        )
    };
    let fx = Fixture::new(&experiment(10));
    let mut cmd = fx.coordinator(&["launch"]);
    cmd.arg(fx.experiment());
    let out = run_with_limit(cmd, Duration::from_secs(120));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let log = std::fs::read_dir(fx.state_dir())
        .unwrap()
        .flatten()
        .find(|e| e.path().is_dir())
        .map(|run| std::fs::read_to_string(run.path().join("worker-0.log")).unwrap())
        .unwrap();
    assert!(log.contains("initialised from imported weights"), "{log}");

    // Weights for another classifier width fail the run, naming the file and the tensor.
    let fx = Fixture::new(&experiment(4));
    let mut cmd = fx.coordinator(&["launch"]);
    cmd.arg(fx.experiment());
    let out = run_with_limit(cmd, Duration::from_secs(120));
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("irv2.safetensors") && stderr.contains("classif.weight"),
        "{stderr}"
    );
}

/// Shards packed from real JPEGs (one corrupt) and a bn_inception small enough for seconds.
#[test]
fn packed_shards_train_two_workers_and_count_a_corrupt_image() {
    use incept_common::data::testing::{WNIDS, write_imagenet};

    let fx = Fixture::new("");
    let images = fx.dir.path().join("imagenet");
    write_imagenet(&images, 16).unwrap();
    let corrupt = images.join("train").join(WNIDS[0]).join("zz_corrupt.JPEG");
    std::fs::write(&corrupt, b"\xFF\xD8\xFF\xE0 truncated before any frame").unwrap();
    let shards = fx.dir.path().join("shards");

    let mut pack = Command::new(COORDINATOR);
    pack.args([
        "dataset",
        "pack",
        "--shards",
        "3",
        "--val-shards",
        "1",
        "--from",
    ])
    .arg(&images)
    .arg("--out")
    .arg(&shards);
    let out = run_with_limit(pack, Duration::from_secs(60));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("3 shards") && stdout.contains("49 images"),
        "{stdout}"
    );

    let mut inspect = Command::new(COORDINATOR);
    inspect.args(["dataset", "inspect"]).arg(&shards);
    let out = run_with_limit(inspect, Duration::from_secs(30));
    let stdout = text(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("train-00002-of-00003"),
        "{stdout}"
    );
    assert!(stdout.contains("validation-00000-of-00001"), "{stdout}");

    let experiment = ON_SHARDS.replace("SHARDS", &shards.display().to_string());
    std::fs::write(fx.experiment(), experiment).unwrap();
    let mut launch = fx.coordinator(&["launch"]);
    launch.arg(fx.experiment());
    let out = run_with_limit(launch, Duration::from_secs(300));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stderr.contains("training image(s) that do not decode"),
        "the console says images are skipped: {stderr}"
    );
    // 49 images / (2 workers × 8) = 3 steps per epoch, the remainder of 1 dropped.
    assert!(stdout.contains("steps 6 "), "{stdout}");
    assert!(
        stdout.contains("(6 images)"),
        "validation on the 6 val images: {stdout}"
    );

    let db = fx.db();
    let (rows, bad): (i64, i64) = db
        .query_row("SELECT COUNT(*), SUM(bad_images) FROM metrics", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(rows, 12, "6 steps × 2 ranks");
    assert!(
        (1..=2).contains(&bad),
        "the corrupt image counted once per epoch read: {bad}"
    );
    let run_dir = std::fs::read_dir(fx.state_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    let logs: String = (0..2)
        .map(|r| std::fs::read_to_string(run_dir.join(format!("worker-{r}.log"))).unwrap())
        .collect();
    assert!(
        logs.contains("image skipped") && logs.contains("byte offset"),
        "{logs}"
    );
}

#[test]
fn a_missing_dataset_is_named_before_any_worker_starts() {
    let missing = "/nonexistent/shards";
    let fx = Fixture::new(&ON_SHARDS.replace("SHARDS", missing));
    let mut cmd = fx.coordinator(&["launch"]);
    cmd.arg(fx.experiment());
    let out = run_with_limit(cmd, Duration::from_secs(30));
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/shards/index.json"),
        "{stderr}"
    );
    assert!(stderr.contains("data.path"), "{stderr}");
    assert!(!fx.state_dir().exists(), "nothing was created for the run");
}

#[test]
#[cfg(not(feature = "libtorch"))]
fn libtorch_kernels_without_the_feature_say_how_to_get_them_before_any_worker_starts() {
    let fx = Fixture::new(TINY);
    let mut cmd = fx.coordinator(&["launch"]);
    cmd.arg(fx.experiment())
        .args(["--set", "cluster.kernels=libtorch"]);
    let out = run_with_limit(cmd, Duration::from_secs(30));
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    for needle in [
        "cluster.kernels = \"libtorch\"",
        "built without it",
        "deploy/libtorch/setup.sh",
    ] {
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    }
    assert!(!fx.state_dir().exists(), "nothing was created for the run");
}

#[test]
fn cuda_on_a_machine_without_a_gpu_stops_before_any_worker_starts() {
    if Path::new("/dev/nvidia0").exists() {
        incept_common::testing::skip(
            "cuda_on_a_machine_without_a_gpu_stops_before_any_worker_starts",
            "this machine has an NVIDIA GPU",
        );
        return;
    }
    let fx = Fixture::new(TINY);
    let mut cmd = fx.coordinator(&["launch"]);
    cmd.arg(fx.experiment())
        .args(["--set", "cluster.device=cuda"])
        .env_remove("CUDA_PATH");
    let out = run_with_limit(cmd, Duration::from_secs(30));
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    for needle in [
        "cluster.device = \"cuda\"",
        "this machine cannot train on CUDA",
        "libcuda.so not found",
        "NVRTC (libnvrtc.so) not found",
        "set CUDA_PATH",
    ] {
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    }
    assert!(!fx.state_dir().exists(), "nothing was created for the run");
}

#[test]
fn a_dataset_in_which_nothing_decodes_fails_the_run() {
    use incept_common::data::testing::write_imagenet;

    let fx = Fixture::new("");
    let images = fx.dir.path().join("imagenet");
    write_imagenet(&images, 4).unwrap();
    for split in ["train", "val"] {
        for class in std::fs::read_dir(images.join(split)).unwrap() {
            for file in std::fs::read_dir(class.unwrap().path()).unwrap() {
                std::fs::write(file.unwrap().path(), b"not a JPEG at all").unwrap();
            }
        }
    }
    let experiment = ON_SHARDS
        .replace("source = \"tfrecord\"", "source = \"imagenet\"")
        .replace("SHARDS", &images.display().to_string())
        .replace("world_size = 2", "world_size = 1")
        .replace("batch_size = 8", "batch_size = 4");
    std::fs::write(fx.experiment(), experiment).unwrap();
    let mut launch = fx.coordinator(&["launch"]);
    launch.arg(fx.experiment());
    let out = run_with_limit(launch, Duration::from_secs(120));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        !out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stderr.contains("none of this rank's 4 images could be used"),
        "{stderr}"
    );
    // The same cause in every generation: the run fails once the restarts are spent.
    assert!(stderr.contains("after 3 restarts"), "{stderr}");
    assert_eq!(
        stderr.matches("the group re-forms from step 0").count(),
        3,
        "{stderr}"
    );
    let status: String = fx
        .db()
        .query_row("SELECT status FROM runs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(status, "failed");
}

/// [`checkpointed`] with external workers, which the test starts: `worker` as a user runs it.
fn external(experiment: &str) -> String {
    experiment.replace("[cluster]\n", "[cluster]\nlauncher = \"external\"\n")
}

/// Starts a worker with the command `launch` printed, its stderr lines on a channel.
fn start_worker(command: &mut Command) -> (Child, mpsc::Receiver<String>) {
    // One compute thread, as the local launcher gives its workers: the same arithmetic.
    let mut worker = command
        .env("RAYON_NUM_THREADS", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    forward_lines(worker.stderr.take().unwrap(), tx);
    (worker, lines)
}

#[test]
fn external_survivors_rejoin_by_themselves_and_a_lost_worker_is_replaced_by_running_worker_again() {
    let expected = &uninterrupted().losses;
    let fx = Fixture::new(&external(&checkpointed()));
    let mut launched = Launched::spawn(&fx);
    let mut command = launched.worker_command();
    let mut workers: Vec<Child> = (0..2).map(|_| start_worker(&mut command).0).collect();
    launched.wait_for_line("rank 1 joined");
    wait_for_step(&fx, 20);
    let lost = rank_pid(&fx, 0);
    kill_rank(&fx, 0);
    let failed = launched.wait_for_line("generation 0 failed: ");
    assert!(failed.contains("rank 0 stopped responding"), "{failed}");
    // The survivor joins generation 1 by itself; a replacement is started as a user would.
    launched.wait_for_line("generation 1: waiting for 2 workers");
    workers.push(start_worker(&mut command).0);
    let status = wait_for_exit(
        &mut launched.child,
        Duration::from_secs(300),
        "the re-formed run",
    );
    assert!(status.success());
    for worker in workers.iter_mut().filter(|w| i64::from(w.id()) != lost) {
        // The survivor trained on in the same process it started in.
        assert!(wait_for_exit(worker, Duration::from_secs(30), "a worker").success());
    }
    // Every step done once, each with the uninterrupted run's loss.
    assert_eq!(&losses(&fx), expected);
}

/// The process id the run database lists for `rank`.
fn rank_pid(fx: &Fixture, rank: u32) -> i64 {
    fx.db()
        .query_row("SELECT pid FROM workers WHERE rank = ?1", [rank], |r| {
            r.get(0)
        })
        .unwrap()
}

#[test]
fn a_group_that_loses_a_worker_for_good_goes_on_with_min_workers_keeping_the_global_batch() {
    // 3 workers × batch 8 × accumulate 2 = 48 images a step, 24 steps; at least 2 workers.
    let fx = Fixture::new(&external(
        &(TINY
            .replace("epochs = 2", "epochs = 3")
            .replace("batch_size = 8", "batch_size = 8\naccumulate = 2")
            .replace(
                "[cluster]\nworld_size = 2\n",
                "[cluster]\nworld_size = 3\nmin_workers = 2\nrejoin_timeout_s = 2\n",
            )
            + "[checkpoint]\nevery_steps = 4\n"),
    ));
    let mut launched = Launched::spawn(&fx);
    let mut command = launched.worker_command();
    let mut workers: Vec<Child> = (0..3).map(|_| start_worker(&mut command).0).collect();
    launched.wait_for_line("rank 2 joined");
    wait_for_step(&fx, 6);
    let lost = rank_pid(&fx, 2);
    kill_rank(&fx, 2);
    let shrunk = launched.wait_for_line("goes on with them");
    assert!(
        shrunk.contains("2 of 3 workers joined") && shrunk.contains("train.accumulate 2 -> 3"),
        "{shrunk}"
    );
    let status = wait_for_exit(
        &mut launched.child,
        Duration::from_secs(300),
        "the run that went on smaller",
    );
    assert!(status.success());
    for worker in workers.iter_mut().filter(|w| i64::from(w.id()) != lost) {
        assert!(wait_for_exit(worker, Duration::from_secs(30), "a survivor").success());
    }
    let steps: Vec<i64> = losses(&fx).into_iter().map(|(step, _)| step).collect();
    assert_eq!(steps, (1..=24).collect::<Vec<_>>(), "every step done once");
    let recorded: String = fx
        .db()
        .query_row(
            "SELECT message FROM events WHERE message LIKE '%goes on with them%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let ranks: i64 = fx
        .db()
        .query_row("SELECT COUNT(*) FROM workers", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ranks, 2, "the lost rank is no longer listed");
    assert!(
        recorded.contains("keeps the global batch of 48 images"),
        "{recorded}"
    );
}

#[test]
fn a_resumed_coordinator_takes_back_the_external_workers_of_a_killed_one() {
    // An ephemeral port (the default): the resumed coordinator takes the same one again.
    let fx = Fixture::new(&external(&checkpointed()).replace(
        "[cluster]\n",
        "[cluster]\nheartbeat_timeout_s = 2\nreconnect_timeout_s = 120\n",
    ));
    let launched = Launched::spawn(&fx);
    let run_id = launched.run_id();
    let mut command = launched.worker_command();
    let mut workers = [start_worker(&mut command), start_worker(&mut command)];
    launched.wait_for_line("checkpoint step 16 committed");
    let status = signal_and_wait(launched.child, "KILL", Duration::from_secs(15));
    assert_eq!(status.code(), None);
    // Both workers notice (within the heartbeat timeout, or when their result finds no
    // coordinator) and keep asking to join.
    for (_, lines) in &workers {
        let mut seen = Vec::new();
        let noticed = lines.iter().any(|line| {
            seen.push(line.clone());
            line.contains("joining the run again")
        });
        assert!(
            noticed,
            "the worker notices its coordinator is gone:\n{}",
            seen.join("\n")
        );
    }

    let mut cmd = fx.coordinator(&["launch", "--resume", &run_id]);
    cmd.current_dir(fx.dir.path());
    let out = run_with_limit(cmd, Duration::from_secs(300));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for (worker, _) in &mut workers {
        assert!(
            wait_for_exit(worker, Duration::from_secs(30), "a worker taken back").success(),
            "the same worker processes finished the run"
        );
    }
    let steps: Vec<i64> = losses(&fx).into_iter().map(|(step, _)| step).collect();
    assert_eq!(
        steps,
        (1..=72).collect::<Vec<_>>(),
        "every step recorded once"
    );
}

/// A self-signed certificate for 127.0.0.1 and localhost: `<name>.pem` and `<name>.key` in
/// `dir`.
fn self_signed(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    let certified = rcgen::generate_simple_self_signed(names).unwrap();
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
    (cert, key)
}

#[test]
fn a_tls_control_plane_trains_and_refuses_workers_that_do_not_trust_it() {
    let fx = Fixture::new(TINY);
    let (cert, key) = self_signed(fx.dir.path(), "coordinator");
    let tls = format!(
        "[cluster]\ntls_cert = {:?}\ntls_key = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    let experiment = TINY.replace("[cluster]\n", &tls);
    std::fs::write(fx.experiment(), &experiment).unwrap();
    let mut cmd = fx.coordinator(&["launch"]);
    cmd.arg(fx.experiment());
    let out = run_with_limit(cmd, Duration::from_secs(300));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("coordinator at https://127.0.0.1:"),
        "{stdout}"
    );

    // An external worker that trusts another certificate is refused at the handshake.
    std::fs::write(fx.experiment(), external(&experiment)).unwrap();
    let launched = Launched::spawn(&fx);
    let command = launched.worker_command();
    let (stranger, _) = self_signed(fx.dir.path(), "stranger");
    let args: Vec<std::ffi::OsString> = command
        .get_args()
        .map(|arg| {
            if arg == cert.as_os_str() {
                stranger.clone().into()
            } else {
                arg.into()
            }
        })
        .collect();
    let mut distrustful = Command::new(worker_bin());
    distrustful.args(&args).args(["--connect-attempts", "1"]);
    let out = run_with_limit(distrustful, Duration::from_secs(60));
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("invalid peer certificate"), "{stderr}");
    assert!(command.get_args().any(|arg| arg == "--tls-ca"));
    interrupt_and_wait(launched.child, Duration::from_secs(15));

    // Half a pair, or a pair that is not one, is named before anything starts.
    let half = TINY.replace(
        "[cluster]\n",
        &format!("[cluster]\ntls_cert = {:?}\n", cert.display().to_string()),
    );
    std::fs::write(fx.experiment(), half).unwrap();
    let mut cmd = fx.coordinator(&["launch"]);
    cmd.arg(fx.experiment());
    let out = run_with_limit(cmd, Duration::from_secs(60));
    assert!(
        text(&out.stderr).contains("cluster.tls_cert and cluster.tls_key go together"),
        "{}",
        text(&out.stderr)
    );
    let swapped = experiment.replace(&key.display().to_string(), &stranger.display().to_string());
    std::fs::write(fx.experiment(), swapped).unwrap();
    let mut cmd = fx.coordinator(&["launch"]);
    cmd.arg(fx.experiment());
    let out = run_with_limit(cmd, Duration::from_secs(60));
    assert!(
        text(&out.stderr).contains("are not a PEM certificate and its private key"),
        "{}",
        text(&out.stderr)
    );
}

/// A tmpfs of `mib` MiB mounted at `dir` for the life of the value (needs root).
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, mib: u32) -> Result<Self, String> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(text(&out.stderr));
        }
        Ok(Self(dir.to_path_buf()))
    }

    /// Writes zeros into `fill` until the filesystem refuses more.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.0.join("fill");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 << 10];
        while file.write_all(&chunk).is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_is_named_with_the_checkpoint_it_stopped_and_the_run_resumes_once_there_is_room() {
    let fx = Fixture::new(
        &(TINY.replace("epochs = 2", "epochs = 10")
            + "[checkpoint]\nevery_steps = 8\nkeep = 100\n")
            .replace("[cluster]\n", "[cluster]\nmax_restarts = 2\n"),
    );
    let disk = match SmallDisk::mount(&fx.state_dir(), 64) {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("SKIPPED a full-disk test: no tmpfs could be mounted (needs root): {why}");
            return;
        }
    };
    let mut launched = Launched::spawn(&fx);
    let run_id = launched.run_id();
    launched.wait_for_line("checkpoint step 16 committed");
    let filler = disk.fill();
    let status = wait_for_exit(
        &mut launched.child,
        Duration::from_secs(120),
        "the run on a full disk",
    );
    let said: Vec<String> = launched.lines.try_iter().collect();
    let said = said.join("\n");
    assert!(!status.success(), "{said}");
    assert!(said.contains(" is full (0 bytes free)"), "{said}");
    assert!(
        said.contains("(rank 0 failed: writing the checkpoint of step ")
            && said.contains("No space left on device"),
        "{said}"
    );
    assert!(
        said.contains(&format!("launch --resume {run_id}")),
        "{said}"
    );
    assert!(
        !said.contains("re-forms"),
        "a full disk is not retried: {said}"
    );

    std::fs::remove_file(filler).unwrap();
    let mut cmd = fx.coordinator(&["launch", "--resume", &run_id]);
    cmd.current_dir(fx.dir.path());
    let out = run_with_limit(cmd, Duration::from_secs(300));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let steps: Vec<i64> = losses(&fx).into_iter().map(|(step, _)| step).collect();
    assert_eq!(
        steps,
        (1..=240).collect::<Vec<_>>(),
        "every step recorded once"
    );
}
