//! `coordinator sweep`: the study's arms listed by `--dry-run`, and a tiny sweep of real runs
//! that is interrupted and rerun without repeating what it finished.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Fixture, TINY, run_with_limit, text, workspace_file};

/// `coordinator sweep ARGS…` on `fx`'s state directory (no dashboard).
fn sweep(fx: &Fixture, args: &[&str]) -> Command {
    let mut cmd = fx.coordinator(&["sweep"]);
    cmd.args(args).args(["--dashboard-bind", ""]);
    cmd
}

#[test]
fn dry_run_lists_every_arm_times_every_seed() {
    let fx = Fixture::new(TINY);
    let study = workspace_file("experiments/residual_scaling");
    let study = study.to_str().unwrap();
    for (args, arms, profile) in [
        (vec![], 24, "local"),
        (vec!["--seeds", "3"], 36, "local"),
        (vec!["--profile", "cluster"], 24, "cluster"),
    ] {
        let out = run_with_limit(
            sweep(&fx, &[&[study, "--dry-run"], args.as_slice()].concat()),
            Duration::from_secs(60),
        );
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
        let lines: Vec<&str> = stdout.lines().skip(1).collect();
        assert_eq!(lines.len(), arms, "{stdout}");
        let ids: std::collections::BTreeSet<&str> = lines
            .iter()
            .map(|l| l.split_whitespace().nth(1).unwrap())
            .collect();
        assert_eq!(ids.len(), arms, "distinct run ids");
        for scale in ["1.0", "0.3", "0.2", "0.1"] {
            for warmup in ["none", "constant", "linear"] {
                let arm = format!("residual_scaling-{profile}-scale{scale}-warmup{warmup}-s");
                let seeds = ids.iter().filter(|id| id.starts_with(&arm)).count();
                assert_eq!(seeds, arms / 12, "{arm}");
            }
        }
        assert!(lines.iter().all(|l| l.starts_with("new ")));
        assert!(
            lines[0].contains("model.residual_scale=1.0") && lines[0].contains("run.seed=1"),
            "{}",
            lines[0]
        );
    }
    let out = run_with_limit(
        sweep(&fx, &[study, "--dry-run", "--profile", "laptop"]),
        Duration::from_secs(60),
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("\"laptop\""),
        "{}",
        text(&out.stderr)
    );
}

/// Two arms (residual scale 1.0 and 0.1) of TINY on one worker, 48 steps each.
const TINY_SWEEP: &str = r#"
seeds = [1]
[profiles.tiny]
experiment = "exp.toml"
set = { "cluster.world_size" = 1, "train.max_steps" = 48, "checkpoint.every_steps" = 8, "train.eval_every" = 0 }
[[axes]]
name = "scale"
levels = [{ name = "1.0", set = { "model.residual_scale" = 1.0 } },
          { name = "0.1", set = { "model.residual_scale" = 0.1 } }]
"#;

/// The tiny sweep's folder (TINY_SWEEP beside the fixture's experiment) in the fixture's dir.
fn tiny_study(fx: &Fixture) -> std::path::PathBuf {
    let study = fx.dir.path().join("tiny_study");
    std::fs::create_dir(&study).unwrap();
    std::fs::write(study.join("arms.toml"), TINY_SWEEP).unwrap();
    std::fs::copy(fx.experiment(), study.join("exp.toml")).unwrap();
    study
}

#[test]
fn an_interrupted_sweep_is_rerun_without_repeating_finished_work() {
    let fx = Fixture::new(TINY);
    let study = tiny_study(&fx);
    let study = study.to_str().unwrap();
    let (first, second) = ("tiny_study-tiny-scale1.0-s1", "tiny_study-tiny-scale0.1-s1");

    // Interrupted once the second arm has trained a step.
    let mut running = sweep(&fx, &[study])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(running.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line.starts_with("[2/2] started") {
            break;
        }
    }
    assert!(
        seen.iter()
            .any(|l| l.starts_with(&format!("[1/2] {first} succeeded"))),
        "{seen:?}"
    );
    let db = fx.db();
    let steps_of = |run: &str| -> i64 {
        db.query_row(
            "SELECT COUNT(*) FROM metrics WHERE run_id = ?1 AND rank = 0",
            [run],
            |r| r.get(0),
        )
        .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while steps_of(second) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{second} trained no step"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) on the child this test started.
    unsafe { libc::kill(running.id() as i32, libc::SIGINT) };
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let status = running.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest:?}");
    let finished_at = |run: &str| -> (String, Option<f64>) {
        db.query_row(
            "SELECT status, finished_at FROM runs WHERE id = ?1",
            [run],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    };
    let first_done = finished_at(first);
    assert_eq!(first_done.0, "succeeded");
    assert_eq!(finished_at(second).0, "interrupted");

    // Rerun: the finished arm is left alone, the interrupted one continues from its checkpoint.
    let out = run_with_limit(sweep(&fx, &[study]), Duration::from_secs(300));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains(&format!("{first}: already succeeded; skipped")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{second}: interrupted; continuing it")),
        "{stdout}"
    );
    assert!(
        stdout.contains("[1/1]") && !stdout.contains("[1/2]"),
        "{stdout}"
    );
    assert_eq!(
        finished_at(first),
        first_done,
        "the finished arm was not rerun"
    );
    assert_eq!(finished_at(second).0, "succeeded");
    assert_eq!(steps_of(second), 48);
    let log = std::fs::read_to_string(
        fx.state_dir()
            .join("sweep-logs")
            .join(format!("{second}.log")),
    )
    .unwrap();
    let resumed = log
        .lines()
        .find_map(|l| l.strip_prefix("resuming from step "))
        .unwrap_or_else(|| panic!("not resumed:\n{log}"));
    assert!(!resumed.starts_with('0'), "{resumed}");
}

/// `coordinator compare` of the tiny sweep's two arms: the report's numbers are the database's.
#[test]
fn compare_reports_the_arms_of_a_sweep_with_the_databases_numbers() {
    let fx = Fixture::new(TINY);
    let study = tiny_study(&fx);
    let study = study.to_str().unwrap();
    let out = run_with_limit(sweep(&fx, &[study]), Duration::from_secs(300));
    assert!(out.status.success(), "{}", text(&out.stderr));

    let report = fx.dir.path().join("results").join("tiny.md");
    let compare = |args: &[&str]| {
        let mut cmd = fx.coordinator(&["compare"]);
        cmd.args(args);
        run_with_limit(cmd, Duration::from_secs(60))
    };
    let out = compare(&["--sweep", study, "--out", report.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("compared 2 run(s) in 2 arm(s)"),
        "{}",
        text(&out.stdout)
    );
    let markdown = std::fs::read_to_string(&report).unwrap();
    let db = fx.db();
    for (run, arm) in [
        ("tiny_study-tiny-scale1.0-s1", "scale=1.0"),
        ("tiny_study-tiny-scale0.1-s1", "scale=0.1"),
    ] {
        let (top1, top5, max_grad, skipped, steps): (f64, f64, f64, i64, i64) = db
            .query_row(
                "SELECT val_top1, val_top5,
                        (SELECT MAX(grad_norm) FROM metrics WHERE run_id = ?1),
                        (SELECT SUM(skipped) FROM metrics WHERE run_id = ?1 AND rank = 0),
                        (SELECT MAX(step) FROM metrics WHERE run_id = ?1)
                 FROM runs WHERE id = ?1",
                [run],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .unwrap();
        let peak_dead: f64 = db
            .query_row(
                "SELECT MAX(dead_fraction) FROM probes WHERE run_id = ?1",
                [run],
                |r| r.get(0),
            )
            .unwrap();
        // One seed per arm: the arm's row holds the run's own values.
        let row = markdown
            .lines()
            .find(|l| l.starts_with(&format!("| {arm} | 1 |")))
            .unwrap_or_else(|| panic!("no row for {arm}:\n{markdown}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(cells[3], format!("{:.2}", 100.0 * top1), "{row}");
        assert_eq!(cells[4], format!("{:.2}", 100.0 * top5), "{row}");
        assert_eq!(cells[6], format!("{max_grad:.2}"), "{row}");
        assert_eq!(cells[7], format!("{:.1}", skipped as f64), "{row}");
        assert_eq!(cells[8], format!("{:.1}", 100.0 * peak_dead), "{row}");
        assert!(
            markdown.contains(&format!("| {run} | 1 | succeeded | {steps} |")),
            "{markdown}"
        );
    }
    let sibling = |suffix: &str| report.with_file_name(format!("tiny-{suffix}"));
    for figure in ["loss", "top1", "dead", "ratio"] {
        let svg = std::fs::read_to_string(sibling(&format!("{figure}.svg"))).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("scale=0.1") && svg.contains("<polyline"),
            "{figure}.svg"
        );
        assert!(
            markdown.contains(&format!("(tiny-{figure}.svg)")),
            "{figure} not linked"
        );
    }
    let runs_csv = std::fs::read_to_string(sibling("runs.csv")).unwrap();
    assert_eq!(runs_csv.lines().count(), 1 + 2, "{runs_csv}");
    let curves = std::fs::read_to_string(sibling("curves.csv")).unwrap();
    assert_eq!(curves.lines().count(), 1 + 2 * 48);

    // Runs named directly are grouped by the keys in which they differ.
    let out = compare(&[
        "tiny_study-tiny-scale1.0-s1",
        "tiny_study-tiny-scale0.1-s1",
        "--out",
        report.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let markdown = std::fs::read_to_string(&report).unwrap();
    assert!(
        markdown.contains("| model.residual_scale=0.1 | 1 |"),
        "{markdown}"
    );

    // Mistakes are named.
    for (args, named) in [
        (vec!["no-such-run", "--out", "x.md"], "no-such-run"),
        (
            vec![
                "--sweep",
                study,
                "--group-by",
                "model.widht",
                "--out",
                "x.md",
            ],
            "model.widht",
        ),
        (vec!["--sweep", study, "--out", "x.html"], "x.html"),
    ] {
        let out = compare(&args);
        assert!(!out.status.success());
        assert!(text(&out.stderr).contains(named), "{}", text(&out.stderr));
    }
}
