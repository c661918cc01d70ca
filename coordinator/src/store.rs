//! The run database: one SQLite file per state directory holding runs, workers, per-step
//! metrics and events. The coordinator's monitor is its only writer.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use incept_common::config::Experiment;
use incept_common::proto::{EvaluationReport, JoinRequest, StepMetrics};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    config TEXT NOT NULL,
    world_size INTEGER NOT NULL,
    total_steps INTEGER NOT NULL,
    created_at REAL NOT NULL,
    finished_at REAL,
    val_top1 REAL,
    val_top5 REAL,
    val_samples INTEGER,
    val_loss REAL,
    error TEXT,
    code_version TEXT
);
CREATE TABLE IF NOT EXISTS workers (
    run_id TEXT NOT NULL REFERENCES runs(id),
    rank INTEGER NOT NULL,
    worker_id TEXT NOT NULL,
    hostname TEXT NOT NULL,
    ring_addr TEXT NOT NULL,
    pid INTEGER NOT NULL,
    joined_at REAL NOT NULL,
    heartbeat_at REAL,
    PRIMARY KEY (run_id, rank)
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES runs(id),
    rank INTEGER NOT NULL,
    step INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    loss REAL NOT NULL,
    learning_rate REAL NOT NULL,
    images_per_sec REAL NOT NULL,
    data_seconds REAL NOT NULL,
    compute_seconds REAL NOT NULL,
    allreduce_seconds REAL NOT NULL,
    grad_norm REAL NOT NULL,
    skipped INTEGER NOT NULL,
    recorded_at REAL NOT NULL,
    bad_images INTEGER NOT NULL DEFAULT 0,
    allreduce_bytes INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, rank, step)
);
CREATE TABLE IF NOT EXISTS probes (
    run_id TEXT NOT NULL REFERENCES runs(id),
    step INTEGER NOT NULL,
    dead_fraction REAL NOT NULL,
    residual_ratio_a REAL,
    residual_ratio_b REAL,
    residual_ratio_c REAL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id TEXT NOT NULL REFERENCES runs(id),
    step INTEGER NOT NULL,
    path TEXT NOT NULL,
    committed_at REAL NOT NULL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS evaluations (
    run_id TEXT NOT NULL REFERENCES runs(id),
    step INTEGER NOT NULL,
    top1 REAL NOT NULL,
    top5 REAL NOT NULL,
    loss REAL NOT NULL,
    samples INTEGER NOT NULL,
    recorded_at REAL NOT NULL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS leases (
    run_id TEXT PRIMARY KEY REFERENCES runs(id),
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    renewed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL REFERENCES runs(id),
    at REAL NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL
);
";

/// Final state of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    Interrupted,
}

impl RunStatus {
    const ALL: [RunStatus; 4] = [
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
        }
    }

    /// The status stored as `text`, if it is one this version writes.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == text)
    }
}

/// A lease not renewed for this long belongs to a coordinator that is gone.
pub const LEASE_TTL_S: f64 = 15.0;
/// How often the driving coordinator renews its lease.
pub const LEASE_RENEW_S: f64 = 2.0;

/// Which coordinator drives a run: its host and pid, renewed while it runs, so that a second
/// coordinator (`launch --resume` on a live run) is refused instead of writing beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    /// Host name of the coordinator.
    pub host: String,
    /// Its process id on that host.
    pub pid: u32,
    /// When it last renewed the lease (seconds since the epoch).
    pub renewed_at: f64,
}

impl Lease {
    /// The lease this process holds.
    fn mine() -> Self {
        Lease {
            host: hostname(),
            pid: std::process::id(),
            renewed_at: now(),
        }
    }

    /// Whether its coordinator may still be running: it renewed recently and, when it ran on
    /// this host, its process still exists.
    pub fn is_live(&self) -> bool {
        let gone_here =
            self.host == hostname() && !Path::new(&format!("/proc/{}", self.pid)).exists();
        !gone_here && now() - self.renewed_at < LEASE_TTL_S
    }
}

/// This machine's host name (leases, event file names, the worker command printed).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// A row of `coordinator runs`.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub id: String,
    pub status: String,
    /// The coordinator driving it, if any holds the lease.
    pub lease: Option<Lease>,
    pub world_size: i64,
    pub total_steps: i64,
    pub steps_done: Option<i64>,
    pub val_top1: Option<f64>,
    /// What its workers computed with ("libtorch on cpu"; several, comma-separated, if they
    /// differed), once they said.
    pub compute: Option<String>,
}

/// How an evaluation was made, as the run database records it.
#[derive(Debug, Clone, PartialEq)]
pub struct Protocol {
    /// The crop protocol: `1-crop`, `10-crop` or `144-crop`.
    pub crops: String,
    /// Which weights: `average` or `trained` during training; what `coordinator eval` evaluated.
    pub weights: String,
}

impl Protocol {
    /// The protocol of a run's own evaluations.
    pub fn of(exp: &Experiment) -> Self {
        let averaged = exp.train.ema_decay > 0.0 && exp.train.evaluate_average;
        Protocol {
            crops: exp.data.augment.eval_crops.name(),
            weights: if averaged { "average" } else { "trained" }.into(),
        }
    }
}

pub struct Store {
    conn: Connection,
}

/// Columns added after a table was first released: (table, column, definition).
const ADDED_COLUMNS: [(&str, &str, &str); 7] = [
    ("runs", "code_version", "TEXT"),
    ("metrics", "bad_images", "INTEGER NOT NULL DEFAULT 0"),
    ("metrics", "allreduce_bytes", "INTEGER NOT NULL DEFAULT 0"),
    ("workers", "heartbeat_at", "REAL"),
    ("workers", "compute", "TEXT"),
    ("evaluations", "protocol", "TEXT NOT NULL DEFAULT '1-crop'"),
    ("evaluations", "weights", "TEXT NOT NULL DEFAULT ''"),
];

/// `value`, with NaN as +∞: SQLite stores a NaN as NULL, which a `NOT NULL` column refuses,
/// and a diverged step (recorded with `skipped` set) must not fail the run's bookkeeping.
fn storable(value: f64) -> f64 {
    if value.is_nan() { f64::INFINITY } else { value }
}

/// Brings a database made by an earlier version up to the current schema.
fn add_missing_columns(conn: &Connection) -> rusqlite::Result<()> {
    for (table, column, definition) in ADDED_COLUMNS {
        let mut columns =
            conn.prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?;
        let present = columns
            .query_map([], |row| row.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?
            .contains(&column.to_string());
        if !present {
            conn.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN {column} {definition}"
            ))?;
        }
    }
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let conn = Connection::open(path)
            .with_context(|| format!("opening the run database {}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Coordinators of a sweep share the database: a writer waits for another's commit.
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        conn.execute_batch(SCHEMA)
            .with_context(|| format!("creating the schema in {}", path.display()))?;
        add_missing_columns(&conn)
            .with_context(|| format!("upgrading the schema in {}", path.display()))?;
        Ok(Self { conn })
    }

    /// Records a new run, `running`, made by this binary's [`crate::CODE_VERSION`].
    pub fn create_run(
        &self,
        id: &str,
        name: &str,
        config: &str,
        world_size: usize,
        total_steps: u64,
    ) -> anyhow::Result<()> {
        self.conn.execute(
            "INSERT INTO runs (id, name, status, config, world_size, total_steps, created_at,
                               code_version)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                id,
                name,
                RunStatus::Running.as_str(),
                config,
                world_size as i64,
                total_steps as i64,
                now(),
                crate::CODE_VERSION
            ],
        )?;
        Ok(())
    }

    pub fn record_worker(&self, run_id: &str, rank: u32, join: &JoinRequest) -> anyhow::Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO workers (run_id, rank, worker_id, hostname, ring_addr, pid,
             joined_at, heartbeat_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
            params![
                run_id,
                rank,
                join.worker_id,
                join.hostname,
                join.ring_addr,
                join.pid,
                now()
            ],
        )?;
        Ok(())
    }

    /// Notes when rank `rank` of `run_id` was last heard from, for the dashboard's heartbeat
    /// ages, and what it computes with once it says (an empty `compute` keeps the last one).
    pub fn record_heartbeat(&self, run_id: &str, rank: u32, compute: &str) -> anyhow::Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE workers SET heartbeat_at = ?3, compute = COALESCE(NULLIF(?4, ''), compute)
                 WHERE run_id = ?1 AND rank = ?2",
            )?
            .execute(params![run_id, rank, now(), compute])?;
        Ok(())
    }

    /// Inserts a batch of step metrics in one transaction.
    pub fn insert_metrics(
        &mut self,
        run_id: &str,
        rank: u32,
        steps: &[StepMetrics],
    ) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR REPLACE INTO metrics (run_id, rank, step, epoch, loss, learning_rate,
                 images_per_sec, data_seconds, compute_seconds, allreduce_seconds, grad_norm,
                 skipped, recorded_at, bad_images, allreduce_bytes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            )?;
            let mut probe = tx.prepare_cached(
                "INSERT OR REPLACE INTO probes (run_id, step, dead_fraction, residual_ratio_a,
                 residual_ratio_b, residual_ratio_c) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            let at = now();
            for m in steps {
                if let Some(p) = &m.probe {
                    let ratio = |i: usize| p.residual_ratios.get(i).copied();
                    probe.execute(params![
                        run_id,
                        m.step as i64,
                        storable(p.dead_fraction),
                        ratio(0),
                        ratio(1),
                        ratio(2)
                    ])?;
                }
                insert.execute(params![
                    run_id,
                    rank,
                    m.step as i64,
                    m.epoch,
                    storable(m.loss),
                    m.learning_rate,
                    m.images_per_sec,
                    m.data_seconds,
                    m.compute_seconds,
                    m.allreduce_seconds,
                    storable(m.grad_norm),
                    m.skipped,
                    at,
                    m.bad_images,
                    m.allreduce_bytes as i64
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn event(&self, run_id: &str, level: &str, message: &str) -> anyhow::Result<()> {
        self.conn.execute(
            "INSERT INTO events (run_id, at, level, message) VALUES (?1, ?2, ?3, ?4)",
            params![run_id, now(), level, message],
        )?;
        Ok(())
    }

    /// Records a verified checkpoint as committed.
    pub fn commit_checkpoint(&self, run_id: &str, step: u64, path: &Path) -> anyhow::Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO checkpoints (run_id, step, path, committed_at)
             VALUES (?1, ?2, ?3, ?4)",
            params![run_id, step as i64, path.display().to_string(), now()],
        )?;
        Ok(())
    }

    /// Forgets the workers of ranks `from` and above: the run went on with fewer.
    pub fn forget_workers_from(&self, run_id: &str, from: usize) -> anyhow::Result<()> {
        self.conn.execute(
            "DELETE FROM workers WHERE run_id = ?1 AND rank >= ?2",
            params![run_id, from as i64],
        )?;
        Ok(())
    }

    /// Forgets a checkpoint whose folder was pruned.
    pub fn remove_checkpoint(&self, run_id: &str, step: u64) -> anyhow::Result<()> {
        self.conn.execute(
            "DELETE FROM checkpoints WHERE run_id = ?1 AND step = ?2",
            params![run_id, step as i64],
        )?;
        Ok(())
    }

    /// Committed checkpoints of a run as (step, folder), newest first.
    pub fn checkpoints(&self, run_id: &str) -> anyhow::Result<Vec<(u64, PathBuf)>> {
        let mut query = self
            .conn
            .prepare("SELECT step, path FROM checkpoints WHERE run_id = ?1 ORDER BY step DESC")?;
        let rows = query.query_map([run_id], |row| {
            Ok((
                row.get::<_, i64>(0)? as u64,
                PathBuf::from(row.get::<_, String>(1)?),
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The resolved experiment and status of a run, if it exists.
    pub fn run_config(&self, run_id: &str) -> anyhow::Result<Option<(String, RunStatus)>> {
        let row: Option<(String, String)> = self
            .conn
            .query_row(
                "SELECT config, status FROM runs WHERE id = ?1",
                [run_id],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        row.map(|(config, status)| match RunStatus::parse(&status) {
            Some(status) => Ok((config, status)),
            None => anyhow::bail!("run {run_id} has an unknown status {status:?}"),
        })
        .transpose()
    }

    /// Marks a stopped run as running again (resume).
    pub fn reopen_run(&self, run_id: &str) -> anyhow::Result<()> {
        self.conn.execute(
            "UPDATE runs SET status = ?2, finished_at = NULL, error = NULL WHERE id = ?1",
            params![run_id, RunStatus::Running.as_str()],
        )?;
        Ok(())
    }

    /// Records a distributed evaluation made after `eval.step` steps, the way `protocol` says.
    pub fn record_evaluation(
        &self,
        run_id: &str,
        eval: &EvaluationReport,
        protocol: &Protocol,
    ) -> anyhow::Result<()> {
        let [top1, top5] = rates(eval);
        self.conn.execute(
            "INSERT OR REPLACE INTO evaluations
             (run_id, step, top1, top5, loss, samples, recorded_at, protocol, weights)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                run_id,
                eval.step as i64,
                top1,
                top5,
                eval.loss,
                eval.samples as i64,
                now(),
                protocol.crops,
                protocol.weights
            ],
        )?;
        Ok(())
    }

    /// Marks a run finished with its status, final evaluation (recorded apart, with its
    /// protocol) or error.
    pub fn finish_run(
        &self,
        run_id: &str,
        status: RunStatus,
        evaluation: Option<&EvaluationReport>,
        error: Option<&str>,
    ) -> anyhow::Result<()> {
        let rates = evaluation.map(rates);
        self.conn.execute(
            "UPDATE runs SET status = ?2, finished_at = ?3, val_top1 = ?4, val_top5 = ?5,
             val_samples = ?6, val_loss = ?7, error = ?8 WHERE id = ?1",
            params![
                run_id,
                status.as_str(),
                now(),
                rates.map(|r| r[0]),
                rates.map(|r| r[1]),
                evaluation.map(|e| e.samples as i64),
                evaluation.map(|e| e.loss),
                error
            ],
        )?;
        Ok(())
    }

    /// Takes the lease of `run_id` for this process, refusing while another coordinator that
    /// may still be running holds it.
    pub fn take_lease(&mut self, run_id: &str) -> anyhow::Result<()> {
        let transaction = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let held = lease_of(&transaction, run_id)?;
        let me = Lease::mine();
        if let Some(held) = held.filter(|held| held.is_live() && held.pid != me.pid) {
            anyhow::bail!(
                "run {run_id} is driven by the coordinator with pid {} on {} (lease renewed \
                 {:.0} s ago); stop that one first, or resume {LEASE_TTL_S:.0} s after it died",
                held.pid,
                held.host,
                now() - held.renewed_at
            );
        }
        transaction.execute(
            "INSERT OR REPLACE INTO leases (run_id, host, pid, renewed_at) VALUES (?1, ?2, ?3, ?4)",
            params![run_id, me.host, me.pid, me.renewed_at],
        )?;
        transaction.commit()?;
        Ok(())
    }

    /// Renews this process's lease of `run_id`.
    pub fn renew_lease(&self, run_id: &str) -> anyhow::Result<()> {
        self.conn.execute(
            "UPDATE leases SET renewed_at = ?3 WHERE run_id = ?1 AND pid = ?2",
            params![run_id, std::process::id(), now()],
        )?;
        Ok(())
    }

    /// Gives the lease of `run_id` up (the run ended).
    pub fn release_lease(&self, run_id: &str) -> anyhow::Result<()> {
        self.conn.execute(
            "DELETE FROM leases WHERE run_id = ?1 AND pid = ?2",
            params![run_id, std::process::id()],
        )?;
        Ok(())
    }

    /// Runs, newest first.
    pub fn runs(&self) -> anyhow::Result<Vec<RunSummary>> {
        let mut query = self.conn.prepare(
            "SELECT r.id, r.status, r.world_size, r.total_steps,
                    (SELECT MAX(step) FROM metrics m WHERE m.run_id = r.id), r.val_top1,
                    l.host, l.pid, l.renewed_at,
                    (SELECT GROUP_CONCAT(DISTINCT w.compute) FROM workers w WHERE w.run_id = r.id)
             FROM runs r LEFT JOIN leases l ON l.run_id = r.id ORDER BY r.created_at DESC",
        )?;
        let rows = query.query_map([], |row| {
            let host: Option<String> = row.get(6)?;
            Ok(RunSummary {
                id: row.get(0)?,
                status: row.get(1)?,
                lease: match host {
                    Some(host) => Some(Lease {
                        host,
                        pid: row.get(7)?,
                        renewed_at: row.get(8)?,
                    }),
                    None => None,
                },
                world_size: row.get(2)?,
                total_steps: row.get(3)?,
                steps_done: row.get(4)?,
                val_top1: row.get(5)?,
                compute: row.get(9)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// What `coordinator status` shows of one run, besides its [`RunSummary`].
#[derive(Debug, Clone)]
pub struct RunDetail {
    pub summary: RunSummary,
    pub name: String,
    pub created_at: f64,
    pub finished_at: Option<f64>,
    pub error: Option<String>,
    /// (rank, host, pid, what it computes with) of the workers that joined, newest
    /// generation's.
    pub workers: Vec<(i64, String, i64, Option<String>)>,
    /// Rank 0's newest step: (step, loss, images/s of the rank, seconds the step took).
    pub last_step: Option<(i64, f64, f64, f64)>,
    /// The newest evaluation: (step, top-1, top-5, loss, protocol).
    pub last_evaluation: Option<(i64, f64, f64, f64, String)>,
    /// Generations restarted after a failure.
    pub restarts: i64,
    /// The newest events, oldest first: (time, level, message).
    pub events: Vec<(f64, String, String)>,
}

impl Store {
    /// The id of the newest run, if any.
    pub fn newest_run(&self) -> anyhow::Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id FROM runs ORDER BY created_at DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Everything `coordinator status` shows of `run_id`, with its `recent` newest events;
    /// `None` when there is no such run.
    pub fn detail(&self, run_id: &str, recent: usize) -> anyhow::Result<Option<RunDetail>> {
        let Some(summary) = self.runs()?.into_iter().find(|r| r.id == run_id) else {
            return Ok(None);
        };
        let (name, created_at, finished_at, error) = self.conn.query_row(
            "SELECT name, created_at, finished_at, error FROM runs WHERE id = ?1",
            [run_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
        let mut query = self.conn.prepare(
            "SELECT rank, hostname, pid, compute FROM workers WHERE run_id = ?1 ORDER BY rank",
        )?;
        let workers = query
            .query_map([run_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let last_step = self
            .conn
            .query_row(
                "SELECT step, loss, images_per_sec, data_seconds + compute_seconds + allreduce_seconds
                 FROM metrics WHERE run_id = ?1 AND rank = 0 ORDER BY step DESC LIMIT 1",
                [run_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let last_evaluation = self
            .conn
            .query_row(
                "SELECT step, top1, top5, loss, protocol FROM evaluations WHERE run_id = ?1
                 ORDER BY step DESC LIMIT 1",
                [run_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?;
        let restarts = self.conn.query_row(
            "SELECT COUNT(*) FROM events WHERE run_id = ?1 AND message LIKE 'generation % failed:%'",
            [run_id],
            |r| r.get(0),
        )?;
        let mut query = self.conn.prepare(
            "SELECT at, level, message FROM
               (SELECT rowid, at, level, message FROM events WHERE run_id = ?1
                ORDER BY rowid DESC LIMIT ?2)
             ORDER BY rowid",
        )?;
        let events = query
            .query_map(params![run_id, recent as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(Some(RunDetail {
            summary,
            name,
            created_at,
            finished_at,
            error,
            workers,
            last_step,
            last_evaluation,
            restarts,
            events,
        }))
    }
}

/// The lease of `run_id`, if any.
fn lease_of(conn: &Connection, run_id: &str) -> rusqlite::Result<Option<Lease>> {
    conn.query_row(
        "SELECT host, pid, renewed_at FROM leases WHERE run_id = ?1",
        [run_id],
        |row| {
            Ok(Lease {
                host: row.get(0)?,
                pid: row.get(1)?,
                renewed_at: row.get(2)?,
            })
        },
    )
    .optional()
}

/// Top-1 and top-5 accuracy of an evaluation.
pub fn rates(eval: &EvaluationReport) -> [f64; 2] {
    let samples = eval.samples.max(1) as f64;
    [
        eval.top1_correct as f64 / samples,
        eval.top5_correct as f64 / samples,
    ]
}

/// Seconds since the epoch: the database's timestamps, and what status and events compare with.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_a_run_with_metrics_and_result() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("incept.db")).unwrap();
        store.create_run("r1", "test", "x = 1", 2, 10).unwrap();
        let metric = |step| StepMetrics {
            step,
            loss: 1.0 / step as f64,
            ..Default::default()
        };
        store
            .insert_metrics("r1", 0, &[metric(1), metric(2)])
            .unwrap();
        store.insert_metrics("r1", 1, &[metric(1)]).unwrap();
        let evaluation = EvaluationReport {
            step: 2,
            top1_correct: 75,
            top5_correct: 90,
            samples: 100,
            loss: 0.5,
            ..Default::default()
        };
        let protocol = Protocol {
            crops: "10-crop".into(),
            weights: "trained".into(),
        };
        store
            .record_evaluation("r1", &evaluation, &protocol)
            .unwrap();
        store
            .finish_run("r1", RunStatus::Succeeded, Some(&evaluation), None)
            .unwrap();
        let recorded: (i64, f64, String, String) = store
            .conn
            .query_row(
                "SELECT step, top1, protocol, weights FROM evaluations WHERE run_id = 'r1'",
                [],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
            )
            .unwrap();
        assert_eq!(recorded, (2, 0.75, "10-crop".into(), "trained".into()));
        let runs = store.runs().unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].status, "succeeded");
        assert_eq!(runs[0].steps_done, Some(2));
        assert_eq!(runs[0].val_top1, Some(0.75));
        // Reopening sees the same data (it is on disk).
        drop(store);
        let store = Store::open(&dir.path().join("incept.db")).unwrap();
        assert_eq!(store.runs().unwrap()[0].status, "succeeded");
        assert_eq!(
            store.run_config("r1").unwrap().unwrap().1,
            RunStatus::Succeeded
        );
        assert!(store.run_config("r2").unwrap().is_none());
    }

    #[test]
    fn a_diverged_step_is_stored_as_infinite_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("incept.db")).unwrap();
        store.create_run("r1", "test", "x = 1", 1, 10).unwrap();
        let diverged = StepMetrics {
            step: 1,
            loss: f64::NAN,
            grad_norm: f64::NAN,
            skipped: true,
            probe: Some(incept_common::proto::ProbeMetrics {
                dead_fraction: f64::NAN,
                residual_ratios: vec![f64::NAN, 0.5],
            }),
            ..Default::default()
        };
        store.insert_metrics("r1", 0, &[diverged]).unwrap();
        let (loss, grad_norm, skipped): (f64, f64, bool) = store
            .conn
            .query_row(
                "SELECT loss, grad_norm, skipped FROM metrics WHERE run_id = 'r1'",
                [],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .unwrap();
        assert_eq!(
            (loss, grad_norm, skipped),
            (f64::INFINITY, f64::INFINITY, true)
        );
        let probe: (f64, Option<f64>, Option<f64>) = store
            .conn
            .query_row(
                "SELECT dead_fraction, residual_ratio_a, residual_ratio_b FROM probes",
                [],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .unwrap();
        assert_eq!(probe, (f64::INFINITY, None, Some(0.5)));
        let version: String = store
            .conn
            .query_row("SELECT code_version FROM runs", [], |row| row.get(0))
            .unwrap();
        assert_eq!(version, crate::CODE_VERSION);
    }

    #[test]
    fn a_status_this_version_does_not_write_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("incept.db")).unwrap();
        store.create_run("r1", "test", "x = 1", 2, 10).unwrap();
        store
            .conn
            .execute("UPDATE runs SET status = 'paused' WHERE id = 'r1'", [])
            .unwrap();
        let err = store.run_config("r1").unwrap_err().to_string();
        assert!(err.contains("r1") && err.contains("\"paused\""), "{err}");
    }
}
