//! `GET /api/runs/{id}/ranks?last=N`: each rank's step time split into data wait, compute and
//! all-reduce (median and 90th percentile over its newest `N` steps), and the age of its last
//! heartbeat: a straggler, or a rank waiting on one, shows here.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use rusqlite::Connection;
use serde_json::{Value, json};

use super::Dashboard;
use super::api::{ApiError, read, run_created_at};
use crate::store::now;

/// Steps per rank the percentiles cover when the query does not say.
const DEFAULT_LAST: usize = 100;

pub(super) async fn ranks(
    State(dashboard): State<Arc<Dashboard>>,
    Path(run_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    if let Some(unknown) = query.keys().find(|k| k.as_str() != "last") {
        return Err(ApiError::bad_parameter(unknown, "unknown (last)"));
    }
    let last = match query.get("last") {
        Some(last) => last
            .parse::<usize>()
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| {
                ApiError::bad_parameter("last", format!("{last:?} is not a positive number"))
            })?,
        None => DEFAULT_LAST,
    };
    read(dashboard, move |conn| {
        run_created_at(conn, &run_id)?;
        let ranks = rank_rows(conn, &run_id, last).map_err(ApiError::internal)?;
        Ok(Json(json!({ "run": run_id, "last": last, "ranks": ranks })))
    })
    .await
}

/// One JSON object per rank that joined or reported, in rank order.
fn rank_rows(conn: &Connection, run_id: &str, last: usize) -> rusqlite::Result<Vec<Value>> {
    let running: bool = conn.query_row(
        "SELECT status = 'running' FROM runs WHERE id = ?1",
        [run_id],
        |r| r.get(0),
    )?;
    let mut ranks = conn.prepare(
        "SELECT rank, MAX(heartbeat_at) FROM (
             SELECT rank, heartbeat_at FROM workers WHERE run_id = ?1
             UNION ALL SELECT DISTINCT rank, NULL FROM metrics WHERE run_id = ?1)
         GROUP BY rank ORDER BY rank",
    )?;
    let ranks: Vec<(u32, Option<f64>)> = ranks
        .query_map([run_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut steps = conn.prepare(
        "SELECT data_seconds, compute_seconds, allreduce_seconds FROM metrics
         WHERE run_id = ?1 AND rank = ?2 ORDER BY step DESC LIMIT ?3",
    )?;
    let now = now();
    ranks
        .into_iter()
        .map(|(rank, heartbeat_at)| {
            let rows: Vec<[f64; 3]> = steps
                .query_map(rusqlite::params![run_id, rank, last as i64], |r| {
                    Ok([r.get(0)?, r.get(1)?, r.get(2)?])
                })?
                .collect::<rusqlite::Result<_>>()?;
            let column = |pick: fn(&[f64; 3]) -> f64| {
                let values: Vec<f64> = rows.iter().map(pick).collect();
                percentiles(values)
            };
            // A finished run's workers are gone: an age would only say when it ended.
            let age = heartbeat_at.filter(|_| running).map(|at| now - at);
            Ok(json!({
                "rank": rank,
                "steps": rows.len(),
                "data_s": column(|r| r[0]),
                "compute_s": column(|r| r[1]),
                "allreduce_s": column(|r| r[2]),
                "step_s": column(|r| r[0] + r[1] + r[2]),
                "heartbeat_age_s": age,
            }))
        })
        .collect()
}

/// The median and 90th percentile (nearest rank) of `values`; nulls when there are none.
fn percentiles(mut values: Vec<f64>) -> Value {
    values.retain(|v| v.is_finite());
    values.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let n = values.len();
        (n > 0).then(|| values[((q * n as f64).ceil() as usize).clamp(1, n) - 1])
    };
    json!({ "p50": at(0.5), "p90": at(0.9) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let values: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentiles(values), json!({ "p50": 5.0, "p90": 9.0 }));
        assert_eq!(percentiles(vec![3.0]), json!({ "p50": 3.0, "p90": 3.0 }));
        assert_eq!(
            percentiles(vec![f64::NAN]),
            json!({ "p50": null, "p90": null })
        );
    }
}
