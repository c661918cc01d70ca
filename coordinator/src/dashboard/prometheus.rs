//! `GET /metrics`: the state directory's runs in Prometheus' text format, for a scraper that
//! alerts on a stalled or diverging run. Gauges per run (step, loss, images/s) and per rank
//! (images/s, seconds since its last heartbeat and since its last report), counters per run
//! (steps, skipped steps, bad images, restarts, bytes handed to all-reduces).

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use rusqlite::Connection;

use super::Dashboard;
use super::api::ApiError;
use crate::store::now;

/// One metric family: its samples are added under one HELP and TYPE header.
struct Family<'a> {
    out: &'a mut String,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &str, kind: &str, help: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        Self { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(key, value)| format!("{key}=\"{}\"", escape(value)))
            .collect();
        let value = match value {
            v if v.is_nan() => "NaN".to_string(),
            v if v == f64::INFINITY => "+Inf".to_string(),
            v if v == f64::NEG_INFINITY => "-Inf".to_string(),
            v => v.to_string(),
        };
        let _ = writeln!(self.out, "{name}{{{}}} {value}", labels.join(","));
    }
}

/// A label value as the text format quotes it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub(super) async fn metrics(
    State(dashboard): State<Arc<Dashboard>>,
) -> Result<impl IntoResponse, ApiError> {
    let text = tokio::task::spawn_blocking(move || {
        let conn = dashboard.connect()?;
        exposition(&conn)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    ))
}

/// Per run: (id, name, status, newest step, its loss, its images/s, skipped, bad images,
/// restarts, all-reduce bytes).
type RunRow = (String, String, String, i64, f64, f64, i64, i64, i64, i64);

/// Per rank of a running run: (run id, rank, images/s of its newest step, seconds since that
/// step was recorded, seconds since its last heartbeat).
type RankRow = (String, i64, f64, f64, f64);

/// A metric family drawn from rows of type `T`: its name, its help text, and each row's value.
type Column<T> = (&'static str, &'static str, fn(&T) -> f64);

fn exposition(conn: &Connection) -> anyhow::Result<String> {
    let mut query = conn.prepare(
        "SELECT r.id, r.name, r.status,
                COALESCE(m.step, 0), COALESCE(m.loss, 0), COALESCE(m.images_per_sec, 0),
                (SELECT COUNT(*) FROM metrics s WHERE s.run_id = r.id AND s.rank = 0 AND s.skipped),
                (SELECT COALESCE(SUM(bad_images), 0) FROM metrics b WHERE b.run_id = r.id),
                (SELECT COUNT(*) FROM events e
                  WHERE e.run_id = r.id AND e.message LIKE 'generation % failed:%'),
                (SELECT COALESCE(SUM(allreduce_bytes), 0) FROM metrics a WHERE a.run_id = r.id)
         FROM runs r LEFT JOIN metrics m ON m.run_id = r.id AND m.rank = 0
              AND m.step = (SELECT MAX(step) FROM metrics x WHERE x.run_id = r.id AND x.rank = 0)
         ORDER BY r.created_at",
    )?;
    let runs: Vec<RunRow> = query
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
                r.get(9)?,
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = String::new();
    let gauges: [Column<RunRow>; 3] = [
        (
            "incept_run_step",
            "Optimizer steps rank 0 has completed.",
            |r| r.3 as f64,
        ),
        (
            "incept_run_loss",
            "Training loss of rank 0's newest step.",
            |r| r.4,
        ),
        (
            "incept_run_images_per_second",
            "Images per second of rank 0's newest step.",
            |r| r.5,
        ),
    ];
    for (name, help, value) in gauges {
        let mut family = Family::new(&mut out, name, "gauge", help);
        for run in &runs {
            let labels = [
                ("run", run.0.as_str()),
                ("name", &run.1),
                ("status", &run.2),
            ];
            family.sample(name, &labels, value(run));
        }
    }
    let counters: [Column<RunRow>; 5] = [
        ("incept_run_steps", "Optimizer steps completed.", |r| {
            r.3 as f64
        }),
        (
            "incept_run_skipped_steps",
            "Steps skipped for a non-finite loss or gradient.",
            |r| r.6 as f64,
        ),
        (
            "incept_run_bad_images",
            "Training images left out because they did not decode.",
            |r| r.7 as f64,
        ),
        (
            "incept_run_restarts",
            "Generations restarted after a failure.",
            |r| r.8 as f64,
        ),
        (
            "incept_run_allreduce_bytes",
            "Bytes every rank handed to the all-reduces (gradients in their wire format, loss).",
            |r| r.9 as f64,
        ),
    ];
    for (name, help, value) in counters {
        let total = format!("{name}_total");
        let mut family = Family::new(&mut out, &total, "counter", help);
        for run in &runs {
            family.sample(&total, &[("run", run.0.as_str())], value(run));
        }
    }
    rank_gauges(conn, &mut out)?;
    Ok(out)
}

/// Per rank of the running runs: images/s of its newest step and the ages of its last report
/// and heartbeat (NaN before the first).
fn rank_gauges(conn: &Connection, out: &mut String) -> anyhow::Result<()> {
    let mut query = conn.prepare(
        "SELECT m.run_id, m.rank, m.images_per_sec, m.recorded_at, w.heartbeat_at
         FROM metrics m JOIN runs r ON r.id = m.run_id AND r.status = 'running'
              LEFT JOIN workers w ON w.run_id = m.run_id AND w.rank = m.rank
         WHERE m.step = (SELECT MAX(step) FROM metrics x WHERE x.run_id = m.run_id AND x.rank = m.rank)
         ORDER BY m.run_id, m.rank",
    )?;
    let now = now();
    let rows: Vec<RankRow> = query
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                now - r.get::<_, f64>(3)?,
                now - r.get::<_, Option<f64>>(4)?.unwrap_or(f64::NAN),
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let families: [Column<RankRow>; 3] = [
        (
            "incept_worker_images_per_second",
            "Images per second of the rank's newest step.",
            |r| r.2,
        ),
        (
            "incept_worker_report_age_seconds",
            "Seconds since the rank's newest step was recorded.",
            |r| r.3,
        ),
        (
            "incept_worker_heartbeat_age_seconds",
            "Seconds since the rank's last heartbeat (or join) was recorded.",
            |r| r.4,
        ),
    ];
    for (name, help, value) in families {
        let mut family = Family::new(out, name, "gauge", help);
        for row in &rows {
            let rank = row.1.to_string();
            family.sample(
                name,
                &[("run", row.0.as_str()), ("rank", &rank)],
                value(row),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
