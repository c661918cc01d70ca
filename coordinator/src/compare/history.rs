//! What a comparison needs of one run, read from the run database: its configuration and
//! provenance, its per-step training loss and gradient norms, its evaluations and its probes.

use anyhow::Context;
use incept_common::config::Experiment;
use rusqlite::{Connection, OptionalExtension};
use sha2::{Digest, Sha256};

/// One probe of the final feature map and the residual stages (rank 0's).
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub step: u64,
    pub dead_fraction: f64,
    /// ‖scale·residual‖ / ‖shortcut‖ of stages A, B and C (`None` without residual blocks).
    pub ratios: [Option<f64>; 3],
}

/// One training step, over every rank that reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub step: u64,
    /// The mean of the ranks' losses: the global batch's.
    pub loss: f64,
    pub learning_rate: f64,
    /// The pre-clip global gradient norm (the same on every rank).
    pub grad_norm: f64,
    pub skipped: bool,
}

/// A run as a comparison reads it.
#[derive(Debug, Clone)]
pub struct History {
    pub id: String,
    pub status: String,
    pub seed: u64,
    /// The first 12 hex digits of the SHA-256 of the resolved configuration.
    pub config_hash: String,
    /// The coordinator version that created the run (`None`: a run older than the column).
    pub code_version: Option<String>,
    /// The resolved configuration, flattened to `section.key = value`.
    pub config: std::collections::BTreeMap<String, String>,
    /// `train.dead_alert` and `train.dead_alert_window`: when the run counts as "died".
    pub dead_alert: (f64, u32),
    pub steps: Vec<Step>,
    /// (step, top-1, top-5) of each evaluation, in step order.
    pub evaluations: Vec<(u64, f64, f64)>,
    /// The final evaluation's (top-1, top-5), once the run ended with one.
    pub final_accuracy: Option<(f64, f64)>,
    pub probes: Vec<Probe>,
}

impl History {
    /// Reads run `id`; `None` when the database has no such run.
    pub fn read(conn: &Connection, id: &str) -> anyhow::Result<Option<Self>> {
        let row = conn
            .query_row(
                "SELECT status, config, code_version, val_top1, val_top5 FROM runs WHERE id = ?1",
                [id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, Option<f64>>(3)?,
                        r.get::<_, Option<f64>>(4)?,
                    ))
                },
            )
            .optional()?;
        let Some((status, config_text, code_version, top1, top5)) = row else {
            return Ok(None);
        };
        let exp = Experiment::from_toml(&config_text)
            .with_context(|| format!("the stored configuration of run {id}"))?;
        let config_hash = Sha256::digest(config_text.as_bytes())
            .iter()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Some(Self {
            id: id.to_string(),
            status,
            seed: exp.run.seed,
            config_hash,
            code_version,
            config: incept_common::config::flatten(&config_text),
            dead_alert: (exp.train.dead_alert, exp.train.dead_alert_window),
            steps: read_steps(conn, id)?,
            evaluations: read_evaluations(conn, id)?,
            final_accuracy: top1.zip(top5),
            probes: read_probes(conn, id)?,
        }))
    }
}

fn read_steps(conn: &Connection, id: &str) -> rusqlite::Result<Vec<Step>> {
    let mut query = conn.prepare(
        "SELECT step, AVG(loss), AVG(learning_rate), MAX(grad_norm), MAX(skipped)
         FROM metrics WHERE run_id = ?1 GROUP BY step ORDER BY step",
    )?;
    let rows = query.query_map([id], |r| {
        Ok(Step {
            step: r.get::<_, i64>(0)? as u64,
            loss: r.get(1)?,
            learning_rate: r.get(2)?,
            grad_norm: r.get(3)?,
            skipped: r.get::<_, i64>(4)? != 0,
        })
    })?;
    rows.collect()
}

fn read_evaluations(conn: &Connection, id: &str) -> rusqlite::Result<Vec<(u64, f64, f64)>> {
    let mut query =
        conn.prepare("SELECT step, top1, top5 FROM evaluations WHERE run_id = ?1 ORDER BY step")?;
    let rows = query.query_map([id], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?))
    })?;
    rows.collect()
}

fn read_probes(conn: &Connection, id: &str) -> rusqlite::Result<Vec<Probe>> {
    let mut query = conn.prepare(
        "SELECT step, dead_fraction, residual_ratio_a, residual_ratio_b, residual_ratio_c
         FROM probes WHERE run_id = ?1 ORDER BY step",
    )?;
    let rows = query.query_map([id], |r| {
        Ok(Probe {
            step: r.get::<_, i64>(0)? as u64,
            dead_fraction: r.get(1)?,
            ratios: [r.get(2)?, r.get(3)?, r.get(4)?],
        })
    })?;
    rows.collect()
}
