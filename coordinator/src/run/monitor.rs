//! Following a run: its workers' events, heartbeats and processes, until it succeeds, fails
//! or is interrupted.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::bail;
use incept_common::config::Experiment;
use incept_common::proto::{StepMetrics, WorkerResult};
use incept_common::train::checkpoint;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::launcher::{ExitedWorker, LocalWorkers};
use crate::progress::Progress;
use crate::service::{Event, RunContext};
use crate::store::{LEASE_RENEW_S, Protocol, Store, rates};
use crate::tensorboard::EventWriter;

use super::disk;
use super::dying::DyingAlert;
use super::signals::{Signal, Signals};
use super::straggler::StragglerWatch;
use super::{Outcome, RunFiles};

/// Follows a run's events and the health of its workers.
pub(super) struct Monitor<'a> {
    ctx: &'a RunContext,
    store: &'a mut Store,
    workers: Option<&'a mut LocalWorkers>,
    progress: Progress,
    heartbeat_timeout: Duration,
    join_deadline: Instant,
    /// In a re-forming generation: when the group may go on with fewer workers, and how few.
    shrink_from: Option<(Instant, usize)>,
    last_seen: Vec<Option<Instant>>,
    heartbeat_interval: Duration,
    /// Process ids the ranks joined with, to name the rank of a local worker that died.
    pids: Vec<Option<u32>>,
    results: Vec<Option<WorkerResult>>,
    /// Ranks that reported a failure, with the report; the run fails once the root cause is
    /// known (see [`Monitor::attribute`]).
    failures: Vec<Option<String>>,
    /// When the first failure report came: a rank whose peer died reports first, so the
    /// monitor looks a little longer for a rank that died or went silent.
    failing_since: Option<Instant>,
    pub(super) last_loss: f64,
    keep_checkpoints: usize,
    /// `data.max_bad_fraction`, for the warning about skipped images.
    max_bad_fraction: f64,
    /// Whether the console was told that images are being skipped (once per run).
    warned_bad_images: bool,
    /// When this coordinator last renewed its lease of the run.
    lease_renewed: Instant,
    /// How the run's evaluations are made, recorded with each.
    protocol: Protocol,
    /// For an evaluation run: the validation images each rank has evaluated, which the
    /// progress bar counts instead of steps.
    evaluated: Option<Vec<u64>>,
    /// The run's TensorBoard events and timeline.
    files: &'a mut RunFiles,
    /// Rank 0's dead-unit probes, watched for the "dying" alert.
    dying: DyingAlert,
    /// Every rank's step times, watched for a straggler.
    stragglers: StragglerWatch,
    /// When each rank's heartbeat was last written to the database.
    heartbeat_written: Vec<Option<Instant>>,
    /// `cluster.stop_checkpoint_s`: how long a signalled run waits for rank 0's checkpoint.
    stop_checkpoint: Duration,
    /// A signal came: the run stops once rank 0's checkpoint is in, or at the deadline.
    draining: Option<(Signal, Instant)>,
}

impl<'a> Monitor<'a> {
    pub(super) fn new(
        exp: &Experiment,
        ctx: &'a RunContext,
        store: &'a mut Store,
        workers: Option<&'a mut LocalWorkers>,
        evaluation: bool,
        files: &'a mut RunFiles,
    ) -> Self {
        let world = exp.cluster.world_size;
        let progress = if evaluation {
            Progress::counting("image", exp.data.val_samples as u64)
        } else {
            Progress::new(exp.total_steps())
        };
        Self {
            ctx,
            store,
            workers,
            progress,
            heartbeat_timeout: Duration::from_secs(exp.cluster.heartbeat_timeout_s),
            join_deadline: Instant::now() + Duration::from_secs(exp.cluster.join_timeout_s),
            shrink_from: (ctx.generation > 0 && exp.cluster.min_workers() < world).then(|| {
                (
                    Instant::now() + Duration::from_secs(exp.cluster.rejoin_timeout_s),
                    exp.cluster.min_workers(),
                )
            }),
            last_seen: vec![None; world],
            heartbeat_interval: Duration::from_millis(exp.cluster.heartbeat_interval_ms),
            pids: vec![None; world],
            results: vec![None; world],
            failures: vec![None; world],
            failing_since: None,
            last_loss: f64::NAN,
            keep_checkpoints: exp.checkpoint.keep,
            max_bad_fraction: exp.data.max_bad_fraction,
            warned_bad_images: false,
            lease_renewed: Instant::now(),
            protocol: Protocol::of(exp),
            evaluated: evaluation.then(|| vec![0; world]),
            files,
            dying: DyingAlert::new(exp.train.dead_alert, exp.train.dead_alert_window),
            stragglers: StragglerWatch::new(
                exp.cluster.straggler_factor,
                exp.cluster.straggler_window,
                world,
            ),
            heartbeat_written: vec![None; world],
            stop_checkpoint: Duration::from_secs(exp.cluster.stop_checkpoint_s),
            draining: None,
        }
    }

    pub(super) async fn follow(
        &mut self,
        mut events: UnboundedReceiver<Event>,
        signals: &mut Signals,
    ) -> Outcome {
        let mut ticker = tokio::time::interval(Duration::from_millis(250));
        let outcome = loop {
            let step = tokio::select! {
                Some(event) = events.recv() => self.on_event(event),
                _ = ticker.tick() => self.renew_lease().map(|()| self.check_health()),
                signal = signals.next() => self.on_signal(signal),
            };
            match step {
                Ok(Some(outcome)) => break outcome,
                Ok(None) => {}
                Err(err) if disk::is_full(&err) => break self.disk_full(err, &mut events).await,
                Err(err) => break Outcome::Failed(format!("recording the run failed: {err:#}")),
            }
        };
        self.progress.finish();
        outcome
    }

    /// The run's disk is full: names it, with its free space and what the workers reported
    /// (rank 0's checkpoint most likely failed too: its report is waited for a moment, not
    /// recorded).
    async fn disk_full(
        &mut self,
        err: anyhow::Error,
        events: &mut UnboundedReceiver<Event>,
    ) -> Outcome {
        let run_dir = Path::new(&self.ctx.checkpoint_dir)
            .parent()
            .unwrap_or(Path::new("."));
        let mut message = disk::explain(run_dir, &format!("{err:#}"));
        let deadline = tokio::time::Instant::now() + 3 * self.heartbeat_interval;
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.recv()).await {
            if let Event::Finished(result) = event
                && !result.error.is_empty()
            {
                message.push_str(&format!(
                    "\n(rank {} failed: {})",
                    result.rank, result.error
                ));
            }
        }
        Outcome::Unrecorded(message)
    }

    /// A stop signal: a training run first asks rank 0 for a checkpoint of its current step
    /// (the run then loses nothing), a second signal or an evaluation stops at once.
    fn on_signal(&mut self, signal: Signal) -> anyhow::Result<Option<Outcome>> {
        let training = self.evaluated.is_none() && self.ctx.rendezvous.is_complete();
        if self.draining.is_some() || !training || self.stop_checkpoint.is_zero() {
            return Ok(Some(Outcome::Interrupted(signal)));
        }
        self.ctx.checkpoint_now.store(true, Ordering::Relaxed);
        self.draining = Some((signal, Instant::now() + self.stop_checkpoint));
        let message = format!(
            "{}: checkpointing the current step before stopping (up to {} s, \
             cluster.stop_checkpoint_s; another signal stops at once)",
            signal.name(),
            self.stop_checkpoint.as_secs()
        );
        self.progress.println(&message);
        self.store.event(&self.ctx.run_id, "warn", &message)?;
        Ok(None)
    }

    fn on_event(&mut self, event: Event) -> anyhow::Result<Option<Outcome>> {
        let run_id = &self.ctx.run_id;
        match event {
            Event::Joined { rank, request } => {
                self.last_seen[rank as usize] = Some(Instant::now());
                self.pids[rank as usize] = Some(request.pid);
                self.store.record_worker(run_id, rank, &request)?;
                self.progress.println(&format!(
                    "rank {rank} joined: {} (pid {}, ring {})",
                    request.hostname, request.pid, request.ring_addr
                ));
            }
            Event::Left { rank } => {
                self.last_seen[rank as usize] = None;
                self.pids[rank as usize] = None;
                self.progress.println(&format!(
                    "rank {rank} left before the run started; its rank is free for another worker"
                ));
                self.store
                    .event(run_id, "warn", &format!("rank {rank} left the rendezvous"))?;
            }
            Event::Heartbeat {
                rank,
                evaluated,
                compute,
            } => {
                self.last_seen[rank as usize] = Some(Instant::now());
                self.write_heartbeat(rank, &compute)?;
                if let Some(counts) = &mut self.evaluated {
                    counts[rank as usize] = evaluated;
                    self.progress.advance(counts.iter().sum(), String::new());
                }
            }
            Event::Rejected { peer, reason } => {
                let message = format!("rejected a request from {peer}: {reason}");
                self.progress.println(&format!("warning: {message}"));
                self.store.event(run_id, "warn", &message)?;
            }
            Event::Metrics { rank, steps } => {
                self.last_seen[rank as usize] = Some(Instant::now());
                self.store.insert_metrics(run_id, rank, &steps)?;
                let bad: u32 = steps.iter().map(|m| m.bad_images).sum();
                if bad > 0 && !self.warned_bad_images {
                    self.warned_bad_images = true;
                    self.progress.println(&format!(
                        "warning: rank {rank} skipped {bad} training image(s) that do not decode \
                         (each is named in its log); the run fails above \
                         data.max_bad_fraction = {}",
                        self.max_bad_fraction
                    ));
                }
                for (step, probe) in steps
                    .iter()
                    .filter(|_| rank == 0)
                    .filter_map(|m| m.probe.as_ref().map(|p| (m.step, p)))
                {
                    let ratios: Vec<String> = probe
                        .residual_ratios
                        .iter()
                        .map(|r| format!("{r:.3}"))
                        .collect();
                    self.progress.println(&format!(
                        "probe at step {step}: {:.2}% of the final feature map is zero; \
                         residual/shortcut per stage [{}]",
                        100.0 * probe.dead_fraction,
                        ratios.join(", ")
                    ));
                    if let Some(alert) = self.dying.observe(step, probe.dead_fraction) {
                        self.progress.println(&format!("warning: {alert}"));
                        self.store.event(run_id, "warn", &alert)?;
                    }
                }
                if rank == 0 {
                    self.write_events(|events| events.steps(&steps));
                }
                self.write_trace(rank, &steps);
                if let Some(straggler) = self.stragglers.observe(rank, &steps) {
                    self.progress.println(&format!("warning: {straggler}"));
                    self.store.event(run_id, "warn", &straggler)?;
                }
                if let Some(last) = steps.iter().filter(|_| rank == 0).max_by_key(|m| m.step) {
                    self.last_loss = last.loss;
                    self.progress
                        .update(last.step, last.loss, last.images_per_sec);
                }
            }
            Event::Evaluation(eval) => {
                self.store
                    .record_evaluation(run_id, &eval, &self.protocol)?;
                self.write_events(|events| events.evaluation(&eval));
                let [top1, top5] = rates(&eval);
                self.progress.println(&format!(
                    "evaluation at step {}: top-1 {:.2}%, top-5 {:.2}%, loss {:.4}",
                    eval.step,
                    100.0 * top1,
                    100.0 * top5,
                    eval.loss
                ));
            }
            Event::Checkpoint(report) => {
                self.commit_checkpoint(report.step, &report.path)?;
                // Only the checkpoint asked for ends a stopping run: rank 0 trains on until it
                // has written it (a scheduled one may cross the ask). The last step's comes just
                // before the run succeeds: let it.
                if let Some((signal, _)) = self.draining
                    && report.asked
                    && report.step < self.ctx.total_steps
                {
                    return Ok(Some(Outcome::Interrupted(signal)));
                }
            }
            Event::Finished(result) => {
                let rank = result.rank as usize;
                if !result.error.is_empty() {
                    self.failures[rank] = Some(format!(
                        "rank {rank} failed after {} steps: {}",
                        result.steps_done, result.error
                    ));
                    self.failing_since.get_or_insert_with(Instant::now);
                    return Ok(self.attribute());
                }
                self.results[rank] = Some(result);
                if self.results.iter().all(Option::is_some) {
                    // Every rank all-reduced the same totals; rank 0's stand for the run.
                    let final_eval = self.results[0].as_ref().and_then(|r| r.evaluation);
                    if let Some(eval) = &final_eval {
                        self.write_events(|events| events.evaluation(eval));
                    }
                    return Ok(final_eval.map(Outcome::Succeeded));
                }
            }
        }
        Ok(None)
    }

    /// Writes to the TensorBoard events; a failure is a warning and ends the events, not the
    /// run (the run database keeps everything).
    fn write_events(&mut self, write: impl FnOnce(&mut EventWriter) -> std::io::Result<()>) {
        let Some(events) = self.files.tensorboard.as_mut() else {
            return;
        };
        if let Err(err) = write(events) {
            self.progress.println(&format!(
                "warning: writing {} failed ({err}); no more TensorBoard events for this run",
                events.path().display()
            ));
            self.files.tensorboard = None;
        }
    }

    /// Adds a report's spans to the timeline; a failure is a warning and ends the timeline.
    fn write_trace(&mut self, rank: u32, steps: &[StepMetrics]) {
        let Some(trace) = self.files.trace.as_mut() else {
            return;
        };
        match trace.add(rank, steps, self.ctx.total_steps) {
            Ok(true) => self.progress.println(&format!(
                "timeline of the traced steps (train.trace_steps) in {}: open it in Perfetto \
                 (ui.perfetto.dev) or chrome://tracing",
                trace.path().display()
            )),
            Ok(false) => {}
            Err(err) => {
                self.progress.println(&format!(
                    "warning: writing {} failed ({err}); no timeline for this run",
                    trace.path().display()
                ));
                self.files.trace = None;
            }
        }
    }

    /// Notes in the database that `rank` was heard from, at most once a second per rank.
    fn write_heartbeat(&mut self, rank: u32, compute: &str) -> anyhow::Result<()> {
        let written = &mut self.heartbeat_written[rank as usize];
        if written.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            *written = Some(Instant::now());
            self.store
                .record_heartbeat(&self.ctx.run_id, rank, compute)?;
        }
        Ok(())
    }

    /// Verifies a checkpoint rank 0 wrote, commits it, and prunes beyond `checkpoint.keep`.
    fn commit_checkpoint(&mut self, step: u64, path: &str) -> anyhow::Result<()> {
        let run_id = &self.ctx.run_id;
        let dir = PathBuf::from(path);
        match checkpoint::verify_position(&dir) {
            Ok((found, _)) if found == step => {}
            Ok((found, _)) => {
                bail!("checkpoint {path} holds step {found}, reported as step {step}")
            }
            Err(err) => {
                let message = format!("checkpoint of step {step} not committed: {err}");
                self.progress.println(&message);
                return self.store.event(run_id, "warn", &message);
            }
        }
        self.store.commit_checkpoint(run_id, step, &dir)?;
        let root = dir.parent().unwrap_or(Path::new("."));
        for removed in checkpoint::prune(root, self.keep_checkpoints)? {
            self.store.remove_checkpoint(run_id, removed)?;
        }
        self.progress
            .println(&format!("checkpoint step {step} committed: {path}"));
        Ok(())
    }

    /// Keeps the run's lease fresh, so a second coordinator sees this one is alive.
    fn renew_lease(&mut self) -> anyhow::Result<()> {
        if self.lease_renewed.elapsed() >= Duration::from_secs_f64(LEASE_RENEW_S) {
            self.store.renew_lease(&self.ctx.run_id)?;
            self.lease_renewed = Instant::now();
        }
        Ok(())
    }

    /// Ranks that may still be training without having heard how the generation ended: heard
    /// from within the last two heartbeat intervals, with neither a result nor a failure
    /// reported (a rank whose training failed is already on its way to join again).
    pub(super) fn still_training(&self) -> usize {
        (0..self.last_seen.len())
            .filter(|&rank| {
                self.results[rank].is_none()
                    && self.failures[rank].is_none()
                    && self.last_seen[rank]
                        .is_some_and(|seen| seen.elapsed() <= 2 * self.heartbeat_interval)
            })
            .count()
    }

    /// Names the root cause of a failing run once it is known: a rank that died without a
    /// report (its process exited, or it went silent) comes before the ranks that failed
    /// because their peer was gone. `None` while the reports may still be consequences.
    fn attribute(&mut self) -> Option<Outcome> {
        let reported: Vec<String> = self.failures.iter().flatten().cloned().collect();
        let consequences = |cause: String| {
            let mut message = cause;
            for report in &reported {
                message.push_str(&format!("\n(then {report})"));
            }
            Outcome::Failed(message)
        };
        let mut exited = self
            .workers
            .as_mut()
            .map(|w| w.failures())
            .unwrap_or_default();
        // Killed first: a worker that exits with its own error has (or is about to have)
        // reported it.
        exited.sort_by_key(|worker| !worker.killed);
        // A worker that exited without reporting died on its own (killed, crashed).
        let rank_of = |worker: &ExitedWorker| {
            let pid = worker.pid?;
            self.pids.iter().position(|&p| p == Some(pid))
        };
        let unreported = exited
            .iter()
            .map(|worker| (worker, rank_of(worker)))
            .find(|(_, rank)| rank.is_none_or(|rank| self.failures[rank].is_none()));
        if let Some((worker, rank)) = unreported {
            let who = rank.map_or_else(|| "a worker".to_string(), |rank| format!("rank {rank}"));
            return Some(consequences(format!("{who} died: {}", worker.description)));
        }
        let since = self.failing_since?;
        // Three missed heartbeats: the rank is gone, whatever the others report.
        let silence = 3 * self.heartbeat_interval;
        if since.elapsed() < silence + Duration::from_secs(1) {
            return None;
        }
        let silent = (0..self.last_seen.len()).find(|&rank| {
            self.failures[rank].is_none()
                && self.results[rank].is_none()
                && self.last_seen[rank].is_some_and(|seen| seen.elapsed() > silence)
        });
        Some(match silent {
            Some(rank) => consequences(format!(
                "rank {rank} stopped responding: no heartbeat for {:.1} s",
                self.last_seen[rank].map_or(0.0, |seen| seen.elapsed().as_secs_f64())
            )),
            None => Outcome::Failed(reported.join("\n")),
        })
    }

    fn check_health(&mut self) -> Option<Outcome> {
        if let Some((signal, deadline)) = self.draining
            && Instant::now() >= deadline
        {
            self.progress.println(&format!(
                "warning: no checkpoint within {} s (cluster.stop_checkpoint_s): stopping without one",
                self.stop_checkpoint.as_secs()
            ));
            return Some(Outcome::Interrupted(signal));
        }
        // A worker that exited, or a failure whose root cause is still being looked for.
        let failed = self.attribute();
        if failed.is_some() || self.failing_since.is_some() {
            return failed;
        }
        let joined = self.ctx.rendezvous.joined_count();
        if let Some((after, min_workers)) = self.shrink_from
            && !self.ctx.rendezvous.is_complete()
            && Instant::now() >= after
            && joined >= min_workers
        {
            return Some(Outcome::Shrink(joined));
        }
        if !self.ctx.rendezvous.is_complete() && Instant::now() > self.join_deadline {
            return Some(Outcome::Failed(format!(
                "rendezvous timed out: {} of {} workers joined within {} s (cluster.join_timeout_s)",
                joined,
                self.ctx.world_size,
                self.ctx.join_timeout.as_secs()
            )));
        }
        let silent =
            self.last_seen
                .iter()
                .zip(&self.results)
                .enumerate()
                .find(|(_, (seen, result))| {
                    result.is_none() && seen.is_some_and(|t| t.elapsed() > self.heartbeat_timeout)
                });
        silent.map(|(rank, _)| {
            Outcome::Failed(format!(
                "rank {rank} sent no heartbeat for {} s (cluster.heartbeat_timeout_s)",
                self.heartbeat_timeout.as_secs()
            ))
        })
    }
}
