//! A run's scalars as TensorBoard event files, so `tensorboard --logdir runs/` shows every run.
//!
//! One file per coordinator session of a run (`runs/<id>/tensorboard/events.out.tfevents.<time>.
//! <host>`; TensorBoard reads all files of a folder as one run): TFRecord framing with masked
//! CRC-32C, a `brain.Event:2` version event, then one `tensorflow.Event` of scalar summaries per
//! step. The run database stays the record; these files are a view of it, flushed as metrics
//! arrive.

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

use incept_common::data::tfrecord::RecordWriter;
use incept_common::proto::tensorflow::{Event, Summary, event, summary};
use incept_common::proto::{EvaluationReport, StepMetrics};
use prost::Message;

use crate::store::{hostname, now, rates};

/// The folder of a run's event files, inside its run folder.
pub const TENSORBOARD: &str = "tensorboard";

/// The probe's ‖scale·residual‖/‖shortcut‖ per residual stage (A, B, C).
const RATIO_TAGS: [&str; 3] = [
    "probe/residual_ratio_a",
    "probe/residual_ratio_b",
    "probe/residual_ratio_c",
];

/// Writes a run's scalars as TensorBoard events.
pub struct EventWriter {
    path: PathBuf,
    records: RecordWriter<BufWriter<File>>,
}

impl EventWriter {
    /// Creates a new event file in `run_dir/tensorboard/`.
    pub fn create(run_dir: &Path) -> io::Result<Self> {
        let dir = run_dir.join(TENSORBOARD);
        std::fs::create_dir_all(&dir)?;
        let now = now();
        let host = hostname();
        let path = dir.join(format!(
            "events.out.tfevents.{}.{host}.{}",
            now as u64,
            std::process::id()
        ));
        let mut writer = Self {
            records: RecordWriter::new(BufWriter::new(File::create(&path)?)),
            path,
        };
        writer.write(Event {
            wall_time: now,
            step: 0,
            what: Some(event::What::FileVersion("brain.Event:2".into())),
        })?;
        writer.records.flush()?;
        Ok(writer)
    }

    /// The event file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rank 0's training scalars of each step (and its probe's, where it ran).
    pub fn steps(&mut self, steps: &[StepMetrics]) -> io::Result<()> {
        for m in steps {
            let mut scalars = vec![
                ("train/loss", m.loss),
                ("train/learning_rate", m.learning_rate),
                ("train/grad_norm", m.grad_norm),
                ("train/skipped", f64::from(u8::from(m.skipped))),
                ("train/images_per_sec", m.images_per_sec),
                ("time/data_seconds", m.data_seconds),
                ("time/compute_seconds", m.compute_seconds),
                ("time/allreduce_seconds", m.allreduce_seconds),
            ];
            if let Some(probe) = &m.probe {
                scalars.push(("probe/dead_fraction", probe.dead_fraction));
                for (tag, ratio) in RATIO_TAGS.iter().zip(&probe.residual_ratios) {
                    scalars.push((tag, *ratio));
                }
            }
            self.scalars(m.step, &scalars)?;
        }
        self.records.flush()
    }

    /// An evaluation's top-1, top-5 and loss.
    pub fn evaluation(&mut self, eval: &EvaluationReport) -> io::Result<()> {
        let [top1, top5] = rates(eval);
        self.scalars(
            eval.step,
            &[
                ("eval/top1", top1),
                ("eval/top5", top5),
                ("eval/loss", eval.loss),
            ],
        )?;
        self.records.flush()
    }

    fn scalars(&mut self, step: u64, scalars: &[(&str, f64)]) -> io::Result<()> {
        let value = scalars
            .iter()
            .map(|(tag, value)| summary::Value {
                tag: (*tag).to_string(),
                value: Some(summary::value::Value::SimpleValue(*value as f32)),
            })
            .collect();
        self.write(Event {
            wall_time: now(),
            step: step as i64,
            what: Some(event::What::Summary(Summary { value })),
        })
    }

    fn write(&mut self, event: Event) -> io::Result<()> {
        self.records.write(&event.encode_to_vec()).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use incept_common::data::tfrecord::{read_record, scan};
    use incept_common::proto::ProbeMetrics;

    use super::*;

    /// Reads an event file back with the TFRecord reader (CRCs checked) and decodes it.
    fn events(path: &Path) -> Vec<Event> {
        let file = File::open(path).unwrap();
        scan(path)
            .unwrap()
            .into_iter()
            .map(|span| Event::decode(&read_record(&file, path, span).unwrap()[..]).unwrap())
            .collect()
    }

    fn scalars(event: &Event) -> Vec<(String, f32)> {
        match &event.what {
            Some(event::What::Summary(summary)) => summary
                .value
                .iter()
                .map(|v| match v.value {
                    Some(summary::value::Value::SimpleValue(x)) => (v.tag.clone(), x),
                    None => panic!("a value without a scalar"),
                })
                .collect(),
            other => panic!("not a summary: {other:?}"),
        }
    }

    #[test]
    fn writes_a_version_event_then_one_event_per_step() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = EventWriter::create(dir.path()).unwrap();
        let probe = ProbeMetrics {
            dead_fraction: 0.25,
            residual_ratios: vec![0.1, 0.2, 0.3],
        };
        let steps = [
            StepMetrics {
                step: 1,
                loss: 2.5,
                ..StepMetrics::default()
            },
            StepMetrics {
                step: 2,
                loss: 2.0,
                skipped: true,
                probe: Some(probe),
                ..StepMetrics::default()
            },
        ];
        writer.steps(&steps).unwrap();
        writer
            .evaluation(&EvaluationReport {
                step: 2,
                top1_correct: 3,
                top5_correct: 4,
                samples: 4,
                loss: 0.5,
                ..EvaluationReport::default()
            })
            .unwrap();
        let name = writer.path().file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("events.out.tfevents."), "{name}");

        let events = events(writer.path());
        assert_eq!(events.len(), 4);
        assert_eq!(
            events[0].what,
            Some(event::What::FileVersion("brain.Event:2".into()))
        );
        assert_eq!((events[1].step, events[2].step, events[3].step), (1, 2, 2));
        let second = scalars(&events[2]);
        assert!(second.contains(&("train/loss".into(), 2.0)));
        assert!(second.contains(&("train/skipped".into(), 1.0)));
        assert!(second.contains(&("probe/dead_fraction".into(), 0.25)));
        assert!(second.contains(&("probe/residual_ratio_c".into(), 0.3)));
        assert!(scalars(&events[3]).contains(&("eval/top1".into(), 0.75)));
    }
}
