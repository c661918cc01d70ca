//! `coordinator dashboard` over real runs: its JSON API (and its errors), the downsampled and
//! full-resolution series, Prometheus' text format read by Prometheus' own Python parser, and
//! the page in a real headless Chromium driven through WebDriver (Selenium) while a run trains.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use incept_common::testing::skip;
use support::{Fixture, TINY, run_with_limit, text, workspace_file};

/// A running `coordinator dashboard`, killed when dropped.
struct Served {
    child: Child,
    /// host:port it listens on.
    addr: String,
}

impl Served {
    fn start(fx: &Fixture) -> Self {
        let mut child = fx
            .coordinator(&["dashboard", "--bind", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "dashboard at http://127.0.0.1:PORT/ (runs of …)"
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        Self { child, addr }
    }

    /// GET `path`: the status code and the body.
    fn get(&self, path: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, body.to_string())
    }

    fn json(&self, path: &str) -> (u16, serde_json::Value) {
        let (status, body) = self.get(path);
        let value = serde_json::from_str(&body)
            .unwrap_or_else(|err| panic!("GET {path}: {err} in {body:?}"));
        (status, value)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs TINY to the end in `fx` with `settings` (`--set` values); returns the run id.
fn finished_run(fx: &Fixture, settings: &[&str]) -> String {
    let mut cmd = fx.coordinator(&["launch"]);
    cmd.arg(fx.experiment());
    for setting in settings {
        cmd.args(["--set", setting]);
    }
    let out = run_with_limit(cmd, Duration::from_secs(300));
    assert!(out.status.success(), "{}", text(&out.stderr));
    fx.db()
        .query_row("SELECT id FROM runs", [], |r| r.get(0))
        .unwrap()
}

/// Steps whose spans the API test's run records, and how often it checkpoints.
const TRACED: [&str; 2] = ["train.trace_steps=[5, 8]", "checkpoint.every_steps=8"];

/// The "dying" alert on any dead unit at two probes in a row (TINY probes every 16 steps).
const ALERT_ON_ANY_DEAD_UNIT: [&str; 2] = ["train.dead_alert=0.0", "train.dead_alert_window=2"];

#[test]
fn the_api_serves_runs_series_and_events_and_names_what_is_wrong() {
    let fx = Fixture::new(TINY);
    let run = finished_run(&fx, &[TRACED, ALERT_ON_ANY_DEAD_UNIT].concat());
    let served = Served::start(&fx);

    let (status, runs) = served.json("/api/runs");
    assert_eq!(status, 200);
    let listed = &runs["runs"][0];
    assert_eq!(listed["id"], run.as_str());
    assert_eq!(listed["status"], "succeeded");
    assert_eq!(listed["steps_done"], 48);
    assert_eq!(listed["generation"], 0, "no restart");
    assert!(listed["top1"].as_f64().is_some() && listed["best_top1"].as_f64().is_some());
    assert_eq!(
        served.json("/api/runs?status=failed").1["runs"],
        serde_json::json!([])
    );
    assert_eq!(
        served.json("/api/runs?name=^tiny$").1["runs"][0]["id"],
        run.as_str()
    );

    // Every step at full resolution; downsampled to the points asked for, extremes kept.
    let (status, loss) = served.json(&format!("/api/runs/{run}/series?metric=loss"));
    assert_eq!(status, 200);
    assert_eq!(loss["total_points"], 48);
    assert_eq!(loss["step"].as_array().unwrap().len(), 48);
    let values: Vec<f64> = loss["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let (_, small) = served.json(&format!("/api/runs/{run}/series?metric=loss&points=10"));
    let kept: Vec<f64> = small["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!(kept.len() <= 10, "{kept:?}");
    let max = values.iter().copied().fold(f64::MIN, f64::max);
    let min = values.iter().copied().fold(f64::MAX, f64::min);
    assert!(kept.contains(&max) && kept.contains(&min), "{kept:?}");
    // TINY has 24 steps per epoch: the x axis by epoch.
    let epochs: Vec<f64> = loss["epoch"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(epochs[0], 1.0 / 24.0);
    assert_eq!(epochs[47], 2.0);
    let (_, all) = served.json(&format!("/api/runs/{run}/series?metric=loss&points=all"));
    assert_eq!(all["value"].as_array().unwrap().len(), 48);
    let (status, csv) = served.get(&format!("/api/runs/{run}/series?metric=loss&format=csv"));
    assert_eq!(status, 200);
    assert_eq!(csv.lines().count(), 49, "a header and every step");
    let (_, top1) = served.json(&format!("/api/runs/{run}/series?metric=top1"));
    assert_eq!(
        top1["step"],
        serde_json::json!([16, 32, 48]),
        "each evaluation"
    );
    let (_, probe) = served.json(&format!("/api/runs/{run}/series?metric=dead_fraction"));
    assert_eq!(probe["step"], serde_json::json!([16, 32, 48]));
    let (_, rank1) = served.json(&format!(
        "/api/runs/{run}/series?metric=compute_seconds&rank=1"
    ));
    assert_eq!(rank1["total_points"], 48);
    let (status, events) = served.json(&format!("/api/runs/{run}/events"));
    assert_eq!(status, 200);
    let messages: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_dying_alert_follows_the_probes(&fx, &messages);
    assert_ranks_split_step_time(&served, &run);
    assert_timeline_holds_the_traced_steps(&served, &run);

    // Errors: 404 naming the run, 400 naming the parameter.
    let (status, body) = served.json("/api/runs/no-such-run/series");
    assert_eq!(status, 404);
    assert!(
        body["error"].as_str().unwrap().contains("no-such-run"),
        "{body}"
    );
    assert_eq!(served.json("/api/runs/no-such-run/events").0, 404);
    assert_eq!(served.get("/no/such/page").0, 404);
    for (query, parameter) in [
        ("metric=bogus", "metric"),
        ("points=0", "points"),
        ("points=many", "points"),
        ("rank=-1", "rank"),
        ("format=xml", "format"),
        ("colour=red", "colour"),
    ] {
        let (status, body) = served.json(&format!("/api/runs/{run}/series?{query}"));
        assert_eq!(status, 400, "{query}");
        let message = body["error"].as_str().unwrap();
        assert!(
            message.contains(&format!("`{parameter}`")),
            "{query}: {message}"
        );
    }
    for (query, parameter) in [("last=0", "last"), ("rank=1", "rank")] {
        let (status, body) = served.json(&format!("/api/runs/{run}/ranks?{query}"));
        assert_eq!(status, 400, "{query}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains(&format!("`{parameter}`"))
        );
    }
    assert_eq!(served.json("/api/runs/no-such-run/ranks").0, 404);
    assert_eq!(served.json("/api/runs/no-such-run/trace.json").0, 404);
    assert_eq!(served.json("/api/runs?name=(").0, 400);
    assert_eq!(served.json("/api/runs?status=done").0, 400);

    // The page and the chart library it loads, served by this binary (works offline).
    let (status, page) = served.get("/");
    assert_eq!(status, 200);
    assert!(page.contains("<script src=\"/plotly.min.js\">"));
    let (status, plotly) = served.get("/plotly.min.js");
    assert_eq!(status, 200);
    assert!(plotly.contains("plotly.js v") && plotly.len() > 1_000_000);
}

/// The probes went above the threshold (0) at two probes in a row exactly when the run
/// recorded its one "dying" event.
fn assert_dying_alert_follows_the_probes(fx: &Fixture, messages: &[&str]) {
    let fractions: Vec<(i64, f64)> = fx
        .db()
        .prepare("SELECT step, dead_fraction FROM probes ORDER BY step")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(fractions.len(), 3, "{fractions:?}");
    let expected = fractions
        .windows(2)
        .find(|w| w[0].1 > 0.0 && w[1].1 > 0.0)
        .map(|w| w[1].0);
    let alerts: Vec<&&str> = messages
        .iter()
        .filter(|m| m.starts_with("dying:"))
        .collect();
    match expected {
        Some(step) => {
            assert_eq!(alerts.len(), 1, "{messages:?}");
            assert!(alerts[0].contains(&format!("at step {step}")), "{alerts:?}");
        }
        None => assert!(alerts.is_empty(), "{fractions:?} {alerts:?}"),
    }
}

/// Both ranks' step time, split, over the steps asked for; no heartbeat age once finished.
fn assert_ranks_split_step_time(served: &Served, run: &str) {
    let (status, ranks) = served.json(&format!("/api/runs/{run}/ranks?last=10"));
    assert_eq!(status, 200, "{ranks}");
    let ranks = ranks["ranks"].as_array().unwrap();
    assert_eq!(ranks.len(), 2, "{ranks:?}");
    for (rank, row) in ranks.iter().enumerate() {
        assert_eq!(row["rank"], rank);
        assert_eq!(row["steps"], 10);
        let p50 = |key: &str| row[key]["p50"].as_f64().unwrap();
        assert!(
            p50("compute_s") > 0.0 && p50("step_s") >= p50("compute_s"),
            "{row}"
        );
        assert!(row["allreduce_s"]["p90"].as_f64().unwrap() >= p50("allreduce_s"));
        assert!(row["heartbeat_age_s"].is_null(), "{row}");
    }
}

/// trace.json (Chrome trace format) holds each rank's phases of steps 5 to 8 and no other, the
/// all-reduces on their own lane, and rank 0's checkpoint of step 8.
fn assert_timeline_holds_the_traced_steps(served: &Served, run: &str) {
    let (_, runs) = served.json("/api/runs");
    assert_eq!(runs["runs"][0]["has_trace"], true);
    let (status, trace) = served.json(&format!("/api/runs/{run}/trace.json"));
    assert_eq!(status, 200);
    let spans: Vec<&serde_json::Value> = trace["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ph"] == "X")
        .collect();
    let has = |pid: u64, name: &str, step: u64| {
        spans.iter().any(|s| {
            s["pid"] == pid && s["args"]["step"] == step && s["name"].as_str().unwrap() == name
        })
    };
    for pid in [0, 1] {
        for step in 5..=8 {
            for phase in [
                "data wait",
                "forward",
                "backward",
                "all-reduce",
                "optimizer",
            ] {
                assert!(has(pid, phase, step), "rank {pid} step {step} {phase}");
            }
            assert!(spans.iter().any(|s| {
                s["pid"] == pid
                    && s["tid"] == 1
                    && s["args"]["step"] == step
                    && s["name"]
                        .as_str()
                        .unwrap()
                        .starts_with("all-reduce bucket 0 ")
            }));
        }
    }
    assert!(has(0, "checkpoint", 8) && !has(1, "checkpoint", 8));
    assert!(
        spans
            .iter()
            .all(|s| (5..=8).contains(&s["args"]["step"].as_u64().unwrap()))
    );
    assert!(
        spans
            .iter()
            .all(|s| s["dur"].as_u64().is_some() && s["ts"].as_u64().is_some())
    );
}

#[test]
fn prometheus_parses_the_metrics() {
    let fx = Fixture::new(TINY);
    let run = finished_run(&fx, &[]);
    let served = Served::start(&fx);
    let (status, exposition) = served.get("/metrics");
    assert_eq!(status, 200);
    let parser = "import sys\n\
        from prometheus_client.parser import text_string_to_metric_families\n\
        for family in text_string_to_metric_families(sys.stdin.read()):\n\
        \x20   for s in family.samples:\n\
        \x20       print(family.type, s.name, s.labels.get('run', ''), float(s.value))\n";
    let Ok(mut python) = Command::new("python3")
        .args(["-c", parser])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        return skip("prometheus", "no python3");
    };
    python
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = python.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    if stderr.contains("No module named 'prometheus_client'") {
        return skip("prometheus", "pip install prometheus-client");
    }
    assert!(out.status.success(), "{stderr}\n{exposition}");
    let samples = text(&out.stdout);
    assert!(
        samples.contains(&format!("gauge incept_run_step {run} 48.0")),
        "{samples}"
    );
    assert!(
        samples.contains(&format!("counter incept_run_steps_total {run} 48.0")),
        "{samples}"
    );
    assert!(
        samples.contains(&format!("counter incept_run_skipped_steps_total {run} 0.0")),
        "{samples}"
    );
    // Every step of both ranks handed the same bytes to the all-reduces: the gradient and loss.
    let per_step: Vec<i64> = fx
        .db()
        .prepare("SELECT DISTINCT allreduce_bytes FROM metrics")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(per_step.len() == 1 && per_step[0] > 4, "{per_step:?}");
    let total = format!(
        "counter incept_run_allreduce_bytes_total {run} {}.0",
        96 * per_step[0]
    );
    assert!(samples.contains(&total), "{total}\n{samples}");
    assert!(exposition.contains("# TYPE incept_worker_heartbeat_age_seconds gauge"));
}

#[test]
fn chromium_shows_runs_live_smooths_groups_and_hides_them() {
    let script = workspace_file("coordinator/tests/dashboard_browser.py");
    let fx = Fixture::new(&TINY.replace("epochs = 2", "epochs = 40"));
    // A finished run with another learning rate, to group by.
    let mut finished = fx.coordinator(&["launch"]);
    finished.arg(fx.experiment()).args([
        "--set",
        "train.epochs=1",
        "--set",
        "train.optimizer.learning_rate=0.02",
    ]);
    let out = run_with_limit(finished, Duration::from_secs(300));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut launch = fx.coordinator(&["launch"]);
    launch
        .arg(fx.experiment())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut training = launch.spawn().unwrap();
    let served = Served::start(&fx);
    // The README's picture is a copy of this one (coordinator/docs/dashboard.png).
    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let mut browser = Command::new("python3");
    browser
        .arg(&script)
        .arg(format!("http://{}/", served.addr))
        .arg(&screenshot);
    let out = run_with_limit(browser, Duration::from_secs(240));
    let _ = training.kill();
    let _ = training.wait();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    if out.status.code() == Some(77) {
        return skip("chromium dashboard", stdout.trim());
    }
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("loss chart grew"), "{stdout}");
    println!("screenshot: {}", screenshot.display());
}
