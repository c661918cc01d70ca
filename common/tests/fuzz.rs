//! Hostile input, generated: the experiment loader and the decoding of every control-plane
//! message take arbitrary text and bytes without panicking, and an error names what is wrong.
//! Bounded: proptest's default 256 cases per property (a few seconds in all).

use incept_common::config::{Experiment, flatten, read};
use incept_common::proto::{
    Ack, Assignment, CheckpointReport, EvaluationReport, HeartbeatReply, HeartbeatRequest,
    JoinRequest, MetricsReport, ProbeMetrics, StepMetrics, TraceSpan, WorkerResult,
};
use proptest::prelude::*;
use prost::Message;

/// Every key of an experiment, as `section.key`.
fn experiment_keys() -> Vec<String> {
    flatten(&Experiment::default().to_toml())
        .into_keys()
        .collect()
}

/// A `--set` value as a user might mistype it: numbers of every kind, strings, arrays,
/// booleans, and junk.
fn override_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| v.to_string()),
        Just("1e20".to_string()),
        Just("-0.0".to_string()),
        Just("nan".to_string()),
        "\"[a-z0-9 ]{0,8}\"",
        "\\[[0-9., -]{0,12}\\]",
        Just("true".to_string()),
        ".{0,12}",
    ]
}

proptest! {
    #[test]
    fn any_text_as_an_experiment_is_loaded_or_refused_with_a_message(text in "(?s).{0,300}") {
        if let Err(err) = Experiment::from_toml(&text) {
            prop_assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn any_override_of_any_key_is_applied_or_refused_naming_the_key(
        key in proptest::sample::select(experiment_keys()),
        value in override_value(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("exp.toml");
        std::fs::write(&file, "[run]\nname = \"fuzz\"\n").unwrap();
        let setting = format!("{key}={value}");
        if let Err(err) = read(&file, std::slice::from_ref(&setting)) {
            let message = format!("{err:#}");
            prop_assert!(message.contains(&key), "{setting}: {message}");
        }
    }
}

/// For each message type: arbitrary bytes decode or fail cleanly, and what decodes re-encodes
/// to the same message.
macro_rules! decoding_never_panics {
    ($($name:ident: $message:ty),* $(,)?) => {
        proptest! {
            $(
                #[test]
                fn $name(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                    if let Ok(message) = <$message>::decode(bytes.as_slice()) {
                        let again = <$message>::decode(message.encode_to_vec().as_slice());
                        prop_assert_eq!(again.ok(), Some(message));
                    }
                }
            )*
        }
    };
}

decoding_never_panics! {
    join_request: JoinRequest,
    assignment: Assignment,
    heartbeat_request: HeartbeatRequest,
    heartbeat_reply: HeartbeatReply,
    metrics_report: MetricsReport,
    checkpoint_report: CheckpointReport,
    evaluation_report: EvaluationReport,
    worker_result: WorkerResult,
    ack: Ack,
}

proptest! {
    /// A real metrics report with bytes overwritten (the likeliest corruption on a wire): it
    /// decodes or fails cleanly.
    #[test]
    fn a_corrupted_metrics_report_decodes_or_fails_cleanly(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let report = MetricsReport {
            rank: 1,
            steps: vec![StepMetrics {
                step: 12,
                loss: 2.5,
                probe: Some(ProbeMetrics { dead_fraction: 0.5, residual_ratios: vec![0.1, 0.2] }),
                trace: vec![TraceSpan { name: "forward".into(), step: 12, ..Default::default() }],
                ..Default::default()
            }],
        };
        let mut bytes = report.encode_to_vec();
        for (at, byte) in edits {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        let _ = MetricsReport::decode(bytes.as_slice());
    }
}
