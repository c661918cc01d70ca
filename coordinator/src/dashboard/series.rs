//! The series a chart draws, read from the run database, and their downsampling to a chart's
//! width by keeping each bucket's minimum and maximum, so a spike stays visible at any zoom
//! (random sampling would hide exactly the spikes this study looks for).

use rusqlite::Connection;

/// What a chart can plot, with the SQL that reads it as (step, seconds since the run started,
/// value) rows in step order; `?1` is the run id, `?2` the rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    pub name: &'static str,
    sql: &'static str,
}

/// One column of a table whose rows carry their step and the time they were recorded: the
/// step metrics (`rows` picks rank `?2`) or the evaluations (`rows` ignores `?2`).
macro_rules! recorded_metric {
    ($name:literal, $table:literal, $column:literal, $rows:literal) => {
        Metric {
            name: $name,
            sql: concat!(
                "SELECT step, recorded_at - (SELECT created_at FROM runs WHERE id = ?1), ",
                $column,
                " FROM ",
                $table,
                " WHERE run_id = ?1 AND ",
                $rows,
                " ORDER BY step"
            ),
        }
    };
}

/// One column of rank `?2`'s step metrics.
macro_rules! step_metric {
    ($name:literal, $column:literal) => {
        recorded_metric!($name, "metrics", $column, "rank = ?2")
    };
}

/// One column of the run's evaluations.
macro_rules! evaluation_metric {
    ($name:literal, $column:literal) => {
        recorded_metric!($name, "evaluations", $column, "?2 >= 0")
    };
}

/// One column of the dead-unit probe (rank 0's), timed by rank 0's step of the same number.
macro_rules! probe_metric {
    ($name:literal, $column:literal) => {
        Metric {
            name: $name,
            sql: concat!(
                "SELECT p.step, m.recorded_at - (SELECT created_at FROM runs WHERE id = ?1), p.",
                $column,
                " FROM probes p LEFT JOIN metrics m
                   ON m.run_id = p.run_id AND m.rank = 0 AND m.step = p.step
                 WHERE p.run_id = ?1 AND ?2 >= 0 AND p.",
                $column,
                " IS NOT NULL ORDER BY p.step"
            ),
        }
    };
}

/// Every metric, by the name the API and the page use.
pub const METRICS: [Metric; 16] = [
    step_metric!("loss", "loss"),
    step_metric!("learning_rate", "learning_rate"),
    step_metric!("grad_norm", "grad_norm"),
    step_metric!("skipped", "skipped"),
    step_metric!("images_per_sec", "images_per_sec"),
    step_metric!("data_seconds", "data_seconds"),
    step_metric!("compute_seconds", "compute_seconds"),
    step_metric!("allreduce_seconds", "allreduce_seconds"),
    step_metric!("bad_images", "bad_images"),
    evaluation_metric!("top1", "top1"),
    evaluation_metric!("top5", "top5"),
    evaluation_metric!("val_loss", "loss"),
    probe_metric!("dead_fraction", "dead_fraction"),
    probe_metric!("residual_ratio_a", "residual_ratio_a"),
    probe_metric!("residual_ratio_b", "residual_ratio_b"),
    probe_metric!("residual_ratio_c", "residual_ratio_c"),
];

impl Metric {
    /// The metric called `name`.
    pub fn named(name: &str) -> Option<Self> {
        METRICS.iter().copied().find(|m| m.name == name)
    }

    /// Reads the metric of `run_id` (rank `rank` for per-rank step metrics).
    pub fn read(self, conn: &Connection, run_id: &str, rank: u32) -> rusqlite::Result<Vec<Point>> {
        let mut query = conn.prepare_cached(self.sql)?;
        let rows = query.query_map(rusqlite::params![run_id, rank], |r| {
            Ok(Point {
                step: r.get(0)?,
                seconds: r.get::<_, Option<f64>>(1)?.unwrap_or(f64::NAN),
                value: r.get(2)?,
            })
        })?;
        rows.collect()
    }
}

/// One value of a series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub step: i64,
    /// Seconds since the run was created (NaN where the time is unknown).
    pub seconds: f64,
    pub value: f64,
}

/// At most `2 × buckets` of `points`: split into `buckets` runs of consecutive points, each
/// gives its lowest and its highest value (once when they are the same point), in step order.
/// Non-finite values (a skipped step's loss) count as extremes: they are what one looks for.
pub fn downsample(points: &[Point], buckets: usize) -> Vec<Point> {
    let buckets = buckets.max(1);
    if points.len() <= 2 * buckets {
        return points.to_vec();
    }
    let mut kept = Vec::with_capacity(2 * buckets);
    for b in 0..buckets {
        let start = b * points.len() / buckets;
        let end = (b + 1) * points.len() / buckets;
        let bucket = &points[start..end];
        let finite = bucket.iter().filter(|p| p.value.is_finite());
        let low = finite
            .clone()
            .min_by(|a, b| a.value.total_cmp(&b.value))
            .unwrap_or(&bucket[0]);
        let high = bucket
            .iter()
            .find(|p| !p.value.is_finite())
            .or_else(|| finite.max_by(|a, b| a.value.total_cmp(&b.value)))
            .unwrap_or(&bucket[0]);
        if low.step == high.step {
            kept.push(*low);
        } else if low.step < high.step {
            kept.extend([*low, *high]);
        } else {
            kept.extend([*high, *low]);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(values: &[f64]) -> Vec<Point> {
        values
            .iter()
            .enumerate()
            .map(|(i, &value)| Point {
                step: i as i64 + 1,
                seconds: i as f64,
                value,
            })
            .collect()
    }

    #[test]
    fn a_single_spike_survives_a_hundredfold_reduction() {
        let mut values = vec![1.0; 100_000];
        values[54_321] = 50.0;
        values[77_777] = f64::NAN;
        let kept = downsample(&series(&values), 500);
        assert!(kept.len() <= 1000, "{}", kept.len());
        assert!(kept.iter().any(|p| p.value == 50.0 && p.step == 54_322));
        assert!(kept.iter().any(|p| p.value.is_nan() && p.step == 77_778));
        assert!(
            kept.windows(2).all(|w| w[0].step < w[1].step),
            "in step order"
        );
    }

    #[test]
    fn short_series_are_returned_whole_and_extremes_are_kept_per_bucket() {
        let short = series(&[3.0, 1.0, 2.0]);
        assert_eq!(downsample(&short, 10), short);
        let kept = downsample(&series(&[5.0, 1.0, 9.0, 2.0, 4.0, 8.0, 0.0, 3.0]), 2);
        let values: Vec<f64> = kept.iter().map(|p| p.value).collect();
        assert_eq!(values, [1.0, 9.0, 8.0, 0.0]);
    }

    #[test]
    fn every_metric_has_a_distinct_name() {
        for (i, metric) in METRICS.iter().enumerate() {
            assert_eq!(Metric::named(metric.name), Some(METRICS[i]));
        }
    }
}
