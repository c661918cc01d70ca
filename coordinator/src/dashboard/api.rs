//! The dashboard's JSON API. Every error is a JSON `{"error": …}` with a status that says whose
//! fault it is: 404 for an unknown run or path, 400 naming the query parameter that is wrong.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use rusqlite::{Connection, OptionalExtension};
use serde_json::{Value, json};

use super::Dashboard;
use super::series::{METRICS, Metric, Point, downsample};
use crate::store::{RunStatus, now};
use incept_common::config::{self, Experiment};

/// A request the API cannot answer, and why.
pub(super) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(super) fn bad_parameter(name: &str, message: impl std::fmt::Display) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: format!("query parameter `{name}`: {message}"),
        }
    }

    pub(super) fn internal(err: impl std::fmt::Display) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: err.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

/// Runs `read` on a read-only connection, off the async threads.
pub(super) async fn read<T: Send + 'static>(
    dashboard: Arc<Dashboard>,
    read: impl FnOnce(&Connection) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(move || {
        let conn = dashboard.connect().map_err(ApiError::internal)?;
        read(&conn)
    })
    .await
    .map_err(ApiError::internal)?
}

/// The creation time of `run_id`, or a 404 naming it.
pub(super) fn run_created_at(conn: &Connection, run_id: &str) -> Result<f64, ApiError> {
    conn.query_row("SELECT created_at FROM runs WHERE id = ?1", [run_id], |r| {
        r.get(0)
    })
    .optional()
    .map_err(ApiError::internal)?
    .ok_or_else(|| ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!("no run {run_id:?} in this state directory"),
    })
}

pub(super) async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!("no such page: {}", uri.path()),
    }
}

/// `GET /api/runs?name=REGEX&status=S`.
pub(super) async fn runs(
    State(dashboard): State<Arc<Dashboard>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let name = match query.get("name").filter(|n| !n.is_empty()) {
        Some(pattern) => {
            Some(regex::Regex::new(pattern).map_err(|err| ApiError::bad_parameter("name", err))?)
        }
        None => None,
    };
    let status = match query.get("status").filter(|s| !s.is_empty()) {
        Some(status) => Some(RunStatus::parse(status).ok_or_else(|| {
            ApiError::bad_parameter(
                "status",
                format!("{status:?} is not running, succeeded, failed or interrupted"),
            )
        })?),
        None => None,
    };
    if let Some(unknown) = query
        .keys()
        .find(|k| !["name", "status"].contains(&k.as_str()))
    {
        return Err(ApiError::bad_parameter(unknown, "unknown (name, status)"));
    }
    read(dashboard.clone(), move |conn| {
        let mut runs = list_runs(conn).map_err(ApiError::internal)?;
        runs.retain(|run| {
            name.as_ref().is_none_or(|re| re.is_match(&run.name))
                && status.is_none_or(|s| run.status == s.as_str())
        });
        let traced: Vec<bool> = runs
            .iter()
            .map(|run| dashboard.trace_file(&run.id).is_file())
            .collect();
        Ok(Json(runs_json(&runs, &traced)))
    })
    .await
}

/// One row of the runs table.
struct RunRow {
    id: String,
    name: String,
    status: String,
    world_size: i64,
    total_steps: i64,
    steps_done: Option<i64>,
    created_at: f64,
    finished_at: Option<f64>,
    top1: Option<f64>,
    top5: Option<f64>,
    best_top1: Option<f64>,
    best_top5: Option<f64>,
    /// Generations that failed and were restarted: the current one's number.
    generation: i64,
    /// The resolved experiment, flattened to `section.key = value`.
    config: BTreeMap<String, String>,
    /// What its workers computed with, once they said.
    compute: Option<String>,
}

fn list_runs(conn: &Connection) -> rusqlite::Result<Vec<RunRow>> {
    let mut query = conn.prepare(
        "SELECT r.id, r.name, r.status, r.world_size, r.total_steps,
                (SELECT MAX(step) FROM metrics m WHERE m.run_id = r.id AND m.rank = 0),
                r.created_at, r.finished_at, r.val_top1, r.val_top5,
                (SELECT MAX(top1) FROM evaluations e WHERE e.run_id = r.id),
                (SELECT MAX(top5) FROM evaluations e WHERE e.run_id = r.id),
                (SELECT COUNT(*) FROM events e
                  WHERE e.run_id = r.id AND e.message LIKE 'generation % failed:%'),
                r.config,
                (SELECT GROUP_CONCAT(DISTINCT w.compute) FROM workers w WHERE w.run_id = r.id)
         FROM runs r ORDER BY r.created_at DESC",
    )?;
    let rows = query.query_map([], |r| {
        let config: String = r.get(13)?;
        Ok(RunRow {
            id: r.get(0)?,
            name: r.get(1)?,
            status: r.get(2)?,
            world_size: r.get(3)?,
            total_steps: r.get(4)?,
            steps_done: r.get(5)?,
            created_at: r.get(6)?,
            finished_at: r.get(7)?,
            top1: r.get(8)?,
            top5: r.get(9)?,
            best_top1: r.get(10)?,
            best_top5: r.get(11)?,
            generation: r.get(12)?,
            config: config::flatten(&config),
            compute: r.get(14)?,
        })
    })?;
    rows.collect()
}

/// The runs as JSON, each with the hyperparameters in which the listed runs differ and
/// whether it has a timeline (`traced`, in the same order).
fn runs_json(runs: &[RunRow], traced: &[bool]) -> Value {
    let configs: Vec<&BTreeMap<String, String>> = runs.iter().map(|r| &r.config).collect();
    let differing = config::differing_keys(&configs);
    let now = now();
    let rows: Vec<Value> = runs
        .iter()
        .zip(traced)
        .map(|(run, traced)| {
            let params: BTreeMap<&String, Option<&String>> = differing
                .iter()
                .map(|key| (*key, run.config.get(*key)))
                .collect();
            json!({
                "id": run.id,
                "name": run.name,
                "status": run.status,
                "world_size": run.world_size,
                "generation": run.generation,
                "total_steps": run.total_steps,
                "steps_done": run.steps_done.unwrap_or(0),
                "created_at": run.created_at,
                "elapsed_s": run.finished_at.unwrap_or(now) - run.created_at,
                "top1": run.top1,
                "top5": run.top5,
                "best_top1": run.best_top1,
                "best_top5": run.best_top5,
                "params": params,
                "has_trace": traced,
                "compute": run.compute,
            })
        })
        .collect();
    json!({ "runs": rows, "differing": differing })
}

/// What `GET /api/runs/{id}/series` asks for.
struct SeriesQuery {
    metric: Metric,
    rank: u32,
    format: Format,
}

/// How a series is answered.
enum Format {
    /// JSON with at most `2 × buckets` points, or every point (`None`).
    Json(Option<usize>),
    /// CSV at full resolution.
    Csv,
}

/// Most points a chart asks for: a chart is never wider than this many pixels.
const MAX_POINTS: usize = 100_000;

impl SeriesQuery {
    fn parse(query: &HashMap<String, String>) -> Result<Self, ApiError> {
        let metric_name = query.get("metric").map_or("loss", String::as_str);
        let metric = Metric::named(metric_name).ok_or_else(|| {
            let known: Vec<&str> = METRICS.iter().map(|m| m.name).collect();
            ApiError::bad_parameter(
                "metric",
                format!("unknown {metric_name:?}; known: {}", known.join(", ")),
            )
        })?;
        let rank = match query.get("rank") {
            Some(rank) => rank
                .parse()
                .map_err(|_| ApiError::bad_parameter("rank", format!("{rank:?} is not a rank")))?,
            None => 0,
        };
        let points = match query.get("points").map(String::as_str) {
            Some("all") => None,
            Some(points) => Some(
                points
                    .parse::<usize>()
                    .ok()
                    .filter(|p| (2..=MAX_POINTS).contains(p))
                    .ok_or_else(|| {
                        ApiError::bad_parameter(
                            "points",
                            format!("{points:?} is not `all` or a number from 2 to {MAX_POINTS}"),
                        )
                    })?,
            ),
            None => Some(1000),
        };
        let format = match query.get("format").map(String::as_str) {
            None | Some("json") => Format::Json(points.map(|p| p / 2)),
            Some("csv") => Format::Csv,
            Some(other) => {
                return Err(ApiError::bad_parameter(
                    "format",
                    format!("{other:?} is not json or csv"),
                ));
            }
        };
        let known = ["metric", "rank", "points", "format"];
        if let Some(unknown) = query.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(ApiError::bad_parameter(
                unknown,
                format!("unknown ({})", known.join(", ")),
            ));
        }
        Ok(Self {
            metric,
            rank,
            format,
        })
    }
}

/// `GET /api/runs/{id}/series?metric=M&rank=R&points=N|all&format=json|csv`: JSON downsampled
/// to at most `points` points (default 1000; `all`: none left out), or CSV at full resolution.
/// JSON gives each point's step, fractional epoch, and seconds since the run started.
pub(super) async fn series(
    State(dashboard): State<Arc<Dashboard>>,
    Path(run_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let query = SeriesQuery::parse(&query)?;
    read(dashboard, move |conn| {
        run_created_at(conn, &run_id)?;
        let points = query
            .metric
            .read(conn, &run_id, query.rank)
            .map_err(ApiError::internal)?;
        Ok(match query.format {
            Format::Json(buckets) => {
                let kept = buckets.map_or_else(|| points.clone(), |b| downsample(&points, b));
                let steps_per_epoch = steps_per_epoch(conn, &run_id)?;
                let json = series_json(&run_id, query.metric, &kept, points.len());
                Json(with_epochs(json, &kept, steps_per_epoch)).into_response()
            }
            Format::Csv => (
                [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
                series_csv(query.metric, &points),
            )
                .into_response(),
        })
    })
    .await
}

/// The optimizer steps per epoch of `run_id`, from its resolved experiment (`None` when that
/// does not parse, e.g. a database of a later version).
fn steps_per_epoch(conn: &Connection, run_id: &str) -> Result<Option<u64>, ApiError> {
    let config: String = conn
        .query_row("SELECT config FROM runs WHERE id = ?1", [run_id], |r| {
            r.get(0)
        })
        .map_err(ApiError::internal)?;
    Ok(Experiment::from_toml(&config)
        .ok()
        .map(|exp| exp.steps_per_epoch())
        .filter(|&steps| steps > 0))
}

/// Adds each point's fractional epoch (`null` when the epoch length is unknown).
fn with_epochs(mut json: Value, kept: &[Point], steps_per_epoch: Option<u64>) -> Value {
    let epochs: Vec<Option<f64>> = kept
        .iter()
        .map(|p| steps_per_epoch.map(|n| p.step as f64 / n as f64))
        .collect();
    json["epoch"] = json!(epochs);
    json
}

fn series_json(run_id: &str, metric: Metric, kept: &[Point], total_points: usize) -> Value {
    // JSON has no NaN or infinity: a non-finite value (a skipped step's loss) is null.
    let finite = |v: f64| v.is_finite().then_some(v);
    json!({
        "run": run_id,
        "metric": metric.name,
        "total_points": total_points,
        "step": kept.iter().map(|p| p.step).collect::<Vec<_>>(),
        "seconds": kept.iter().map(|p| finite(p.seconds)).collect::<Vec<_>>(),
        "value": kept.iter().map(|p| finite(p.value)).collect::<Vec<_>>(),
    })
}

fn series_csv(metric: Metric, points: &[Point]) -> String {
    let mut csv = format!("step,seconds,{}\n", metric.name);
    for p in points {
        csv.push_str(&format!("{},{},{}\n", p.step, p.seconds, p.value));
    }
    csv
}

/// `GET /api/runs/{id}/events`: the run's events, oldest first.
pub(super) async fn events(
    State(dashboard): State<Arc<Dashboard>>,
    Path(run_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    read(dashboard, move |conn| {
        let created = run_created_at(conn, &run_id)?;
        let mut query = conn
            .prepare("SELECT at, level, message FROM events WHERE run_id = ?1 ORDER BY at")
            .map_err(ApiError::internal)?;
        let events: Vec<Value> = query
            .query_map([&run_id], |r| {
                let at: f64 = r.get(0)?;
                let level: String = r.get(1)?;
                let message: String = r.get(2)?;
                Ok(json!({ "seconds": at - created, "level": level, "message": message }))
            })
            .and_then(Iterator::collect)
            .map_err(ApiError::internal)?;
        Ok(Json(json!({ "run": run_id, "events": events })))
    })
    .await
}

/// `GET /api/runs/{id}/trace.json`: the run's timeline (Chrome trace format), or a 404 saying
/// how to get one.
pub(super) async fn trace(
    State(dashboard): State<Arc<Dashboard>>,
    Path(run_id): Path<String>,
) -> Result<Response, ApiError> {
    read(dashboard.clone(), move |conn| {
        run_created_at(conn, &run_id)?;
        let path = dashboard.trace_file(&run_id);
        let bytes = std::fs::read(&path).map_err(|err| ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "run {run_id:?} has no timeline ({}: {err}); set train.trace_steps = [from, to] \
                 to record one",
                path.display()
            ),
        })?;
        Ok(([(header::CONTENT_TYPE, "application/json")], bytes).into_response())
    })
    .await
}
