//! The run's timeline: the phases of the steps `train.trace_steps` names, as every rank
//! reported them, written as a Chrome trace (`<run dir>/trace.json`, a process per rank, a
//! thread per lane) that Perfetto and chrome://tracing open.

use std::path::{Path, PathBuf};

use incept_common::fsutil::write_atomic;
use incept_common::proto::{StepMetrics, TraceSpan};
use serde_json::{Value, json};

/// The file a run's timeline is written to, in its run folder.
pub const TRACE_FILE: &str = "trace.json";

/// The spans collected so far, and where they go.
pub(super) struct TraceFile {
    path: PathBuf,
    /// The last traced step: once a rank reports it, the file is rewritten.
    last_step: u64,
    spans: Vec<(u32, TraceSpan)>,
    /// Whether the file has been written yet.
    written: bool,
}

impl TraceFile {
    /// The timeline of the run in `run_dir`, when `trace_steps` names steps.
    pub(super) fn new(run_dir: &Path, trace_steps: Option<[u64; 2]>) -> Option<Self> {
        trace_steps.map(|[_, to]| Self {
            path: run_dir.join(TRACE_FILE),
            last_step: to,
            spans: Vec::new(),
            written: false,
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Adds the spans in `rank`'s report and rewrites the file when the report holds the last
    /// traced step (or the run's, `total_steps`); says whether that was the file's first write.
    pub(super) fn add(
        &mut self,
        rank: u32,
        steps: &[StepMetrics],
        total_steps: u64,
    ) -> std::io::Result<bool> {
        let before = self.spans.len();
        for m in steps {
            self.spans.extend(m.trace.iter().map(|s| (rank, s.clone())));
        }
        let last = self.last_step.min(total_steps);
        if self.spans.len() == before || steps.iter().all(|m| m.step < last) {
            return Ok(false);
        }
        let json = chrome_trace(&self.spans);
        write_atomic(&self.path, json.to_string().as_bytes(), 0o644)?;
        Ok(!std::mem::replace(&mut self.written, true))
    }
}

/// The Chrome trace event format: complete events (`ph: X`) in microseconds from the first
/// span, with the ranks and lanes named by metadata events.
fn chrome_trace(spans: &[(u32, TraceSpan)]) -> Value {
    let origin = spans.iter().map(|(_, s)| s.start_us).min().unwrap_or(0);
    let mut ranks: Vec<u32> = spans.iter().map(|(rank, _)| *rank).collect();
    ranks.sort_unstable();
    ranks.dedup();
    let mut events: Vec<Value> = Vec::new();
    for rank in ranks {
        events.push(json!({"name": "process_name", "ph": "M", "pid": rank,
                           "args": {"name": format!("rank {rank}")}}));
        events.push(json!({"name": "process_sort_index", "ph": "M", "pid": rank,
                           "args": {"sort_index": rank}}));
        for (lane, name) in [(0, "training"), (1, "network")] {
            events.push(
                json!({"name": "thread_name", "ph": "M", "pid": rank, "tid": lane,
                               "args": {"name": name}}),
            );
        }
    }
    events.extend(spans.iter().map(|(rank, s)| {
        json!({
            "name": s.name, "cat": "step", "ph": "X", "pid": rank, "tid": s.lane,
            "ts": s.start_us - origin, "dur": s.duration_us, "args": {"step": s.step},
        })
    }));
    json!({
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {"origin_unix_us": origin},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(name: &str, step: u64, lane: u32, start_us: u64) -> TraceSpan {
        TraceSpan {
            name: name.into(),
            step,
            lane,
            start_us,
            duration_us: 10,
        }
    }

    #[test]
    fn the_file_is_written_once_the_last_traced_step_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let mut trace = TraceFile::new(dir.path(), Some([2, 3])).unwrap();
        let report = |step, spans| StepMetrics {
            step,
            trace: spans,
            ..Default::default()
        };
        let early = vec![span("forward", 2, 0, 1_000_100)];
        assert!(!trace.add(1, &[report(2, early)], 10).unwrap());
        assert!(!trace.path().exists());
        let spans = vec![span("all-reduce bucket 0", 3, 1, 1_000_000)];
        assert!(trace.add(0, &[report(3, spans)], 10).unwrap());
        let again = vec![span("checkpoint", 3, 0, 1_000_200)];
        assert!(!trace.add(1, &[report(3, again)], 10).unwrap());
        let written: Value = serde_json::from_slice(&std::fs::read(trace.path()).unwrap()).unwrap();
        let events = written["traceEvents"].as_array().unwrap();
        let complete: Vec<&Value> = events.iter().filter(|e| e["ph"] == "X").collect();
        assert_eq!(complete.len(), 3, "rewritten with the late checkpoint span");
        assert_eq!(complete[2]["name"], "checkpoint");
        assert_eq!(complete[0]["ts"], 100);
        assert_eq!(complete[0]["pid"], 1);
        assert_eq!(complete[1]["ts"], 0);
        assert_eq!(complete[1]["tid"], 1);
        assert!(events.iter().any(|e| e["name"] == "process_name"
            && e["pid"] == 1
            && e["args"]["name"] == "rank 1"));
        assert!(TraceFile::new(dir.path(), None).is_none());
    }
}
