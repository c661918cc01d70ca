//! The worker's side of the coordinator protocol: connect with bounded retries, join,
//! heartbeat, stream metrics, report the result.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use incept_common::proto::coordinator_client::CoordinatorClient;
use incept_common::proto::{
    Assignment, HeartbeatRequest, JoinRequest, MetricsReport, StepMetrics, TOKEN_METADATA_KEY,
    WorkerResult,
};
use tokio::sync::mpsc;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::training::{self, Progress, Report, evaluation_report};

type Client = CoordinatorClient<InterceptedService<Channel, TokenInterceptor>>;

/// Adds the join token to every request.
#[derive(Clone)]
pub struct TokenInterceptor(MetadataValue<tonic::metadata::Ascii>);

impl Interceptor for TokenInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert(TOKEN_METADATA_KEY, self.0.clone());
        Ok(request)
    }
}

/// A connection to the coordinator of one run.
pub struct Session {
    client: Client,
    url: String,
}

impl Session {
    /// Connects, retrying with exponential backoff (0.25 s doubling to 4 s) `attempts` times.
    pub async fn connect(url: &str, token: &str, attempts: u32) -> anyhow::Result<Self> {
        let token = MetadataValue::try_from(token).context("the join token is not valid ASCII")?;
        let endpoint = Endpoint::from_shared(url.to_string())
            .with_context(|| format!("invalid coordinator address {url:?}"))?
            .connect_timeout(Duration::from_secs(5));
        let mut delay = Duration::from_millis(250);
        let mut last_error = String::new();
        for attempt in 1..=attempts.max(1) {
            match endpoint.connect().await {
                Ok(channel) => {
                    return Ok(Self {
                        client: CoordinatorClient::with_interceptor(
                            channel,
                            TokenInterceptor(token),
                        ),
                        url: url.to_string(),
                    });
                }
                Err(err) => {
                    last_error = format!("{err}: {}", source_chain(&err));
                    tracing::warn!(attempt, %url, error = %last_error, "coordinator unreachable");
                }
            }
            if attempt < attempts {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(4));
            }
        }
        bail!("could not reach the coordinator at {url} after {attempts} attempts: {last_error}")
    }

    /// Joins the run; returns once every rank has joined. `nccl_id` is this worker's offer of
    /// the run's NCCL unique id (empty when it has none); `rank_hint` the rank it asks for.
    pub async fn join(
        &mut self,
        ring_addr: std::net::SocketAddr,
        nccl_id: Vec<u8>,
        rank_hint: Option<u32>,
    ) -> anyhow::Result<Assignment> {
        let request = JoinRequest {
            worker_id: format!("{}-{}", hostname(), std::process::id()),
            hostname: hostname(),
            ring_addr: ring_addr.to_string(),
            pid: std::process::id(),
            nccl_id,
            rank_hint,
        };
        match self.client.join(request).await {
            Ok(reply) => Ok(reply.into_inner()),
            Err(status) if status.code() == Code::Unauthenticated => bail!(
                "the coordinator at {} rejected the join token: {}",
                self.url,
                status.message()
            ),
            Err(status) => bail!(
                "joining the run at {} failed: {}",
                self.url,
                status.message()
            ),
        }
    }

    /// Trains on a blocking thread while heartbeats and metrics flow to the coordinator; reports
    /// the outcome either way.
    pub async fn train(
        mut self,
        assignment: Assignment,
        listener: std::net::TcpListener,
    ) -> anyhow::Result<()> {
        let rank = assignment.rank;
        let progress = Arc::new(Progress::default());
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        let heartbeat = tokio::spawn(heartbeat_loop(
            self.client.clone(),
            rank,
            Heartbeats {
                every: Duration::from_millis(u64::from(assignment.heartbeat_interval_ms.max(10))),
                lost_after: Duration::from_secs(u64::from(assignment.heartbeat_timeout_s.max(1))),
            },
            progress.clone(),
        ));
        let reporting = tokio::spawn(report_loop(self.client.clone(), rank, reports_rx));
        let thread_progress = progress.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            training::run(&assignment, listener, &reports_tx, &thread_progress)
        })
        .await
        .context("training thread panicked")?;
        heartbeat.abort();
        // A stopped worker says why, not what the abort did to its collective.
        let outcome = outcome.map_err(|error| match progress.stop_reason.get() {
            Some(reason) => anyhow::anyhow!("{reason}"),
            None => error,
        });
        // The report sender was moved into the training closure and is dropped: drain.
        reporting.await.context("reporting task panicked")?;

        let steps_done = progress.step.load(Ordering::Relaxed);
        let result = match &outcome {
            Ok(eval) => WorkerResult {
                rank,
                error: String::new(),
                steps_done,
                evaluation: Some(evaluation_report(eval, rank, steps_done)),
            },
            Err(err) => WorkerResult {
                rank,
                error: format!("{err:#}"),
                steps_done,
                evaluation: None,
            },
        };
        if let Err(status) = self.client.report_result(result).await {
            tracing::warn!(error = %status.message(), "could not report the result");
        }
        outcome.map(|eval| {
            tracing::info!(
                top1 = eval.top1(),
                top5 = eval.top5(),
                samples = eval.samples,
                "validation"
            );
        })
    }
}

/// How often a worker beats, and how long unanswered beats mean a lost coordinator.
struct Heartbeats {
    every: Duration,
    lost_after: Duration,
}

/// Beats until the task is aborted; stops training when the coordinator says so, or when no
/// beat was answered for `lost_after` (the coordinator died or is unreachable).
async fn heartbeat_loop(mut client: Client, rank: u32, beats: Heartbeats, progress: Arc<Progress>) {
    let mut ticker = tokio::time::interval(beats.every);
    let mut answered = Instant::now();
    // The coordinator asks on every beat until it stops the run; one checkpoint answers it.
    let mut checkpoint_asked = false;
    loop {
        ticker.tick().await;
        let step = progress.step.load(Ordering::Relaxed);
        let evaluated = progress
            .evaluated
            .get()
            .map_or(0, |count| count.load(Ordering::Relaxed));
        let beat = HeartbeatRequest {
            rank,
            step,
            evaluated,
        };
        match client.heartbeat(beat).await {
            Ok(reply) if reply.get_ref().stop => {
                tracing::warn!("the coordinator stopped the run");
                progress.stop(format!("stopped by the coordinator at step {step}"));
            }
            Ok(reply) => {
                answered = Instant::now();
                if reply.get_ref().checkpoint && !checkpoint_asked {
                    checkpoint_asked = true;
                    tracing::warn!("the coordinator asks for a checkpoint: it is stopping the run");
                    progress.checkpoint_now.store(true, Ordering::Relaxed);
                }
            }
            Err(status) if answered.elapsed() >= beats.lost_after => {
                progress.stop(format!(
                    "lost the coordinator: no heartbeat answered for {:?} (cluster.heartbeat_timeout_s; \
                     last error: {}); stopped at step {step}",
                    beats.lost_after,
                    status.message()
                ));
                return;
            }
            Err(status) => tracing::warn!(error = %status.message(), "heartbeat failed"),
        }
    }
}

/// Sends step metrics in batches, every half second, evaluations as they come, and drains
/// when training ends.
async fn report_loop(mut client: Client, rank: u32, mut rx: mpsc::UnboundedReceiver<Report>) {
    let mut pending = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            item = rx.recv() => match item {
                Some(Report::Step(m)) => pending.push(m),
                Some(Report::Evaluation(eval)) => {
                    flush_metrics(&mut client, rank, &mut pending).await;
                    if let Err(status) = client.report_evaluation(eval).await {
                        tracing::warn!(error = %status.message(), "could not send an evaluation");
                    }
                }
                Some(Report::Checkpoint(checkpoint)) => {
                    flush_metrics(&mut client, rank, &mut pending).await;
                    if let Err(status) = client.report_checkpoint(checkpoint).await {
                        tracing::warn!(error = %status.message(), "could not report a checkpoint");
                    }
                }
                None => {
                    flush_metrics(&mut client, rank, &mut pending).await;
                    return;
                }
            },
            _ = ticker.tick() => flush_metrics(&mut client, rank, &mut pending).await,
        }
    }
}

async fn flush_metrics(client: &mut Client, rank: u32, pending: &mut Vec<StepMetrics>) {
    if pending.is_empty() {
        return;
    }
    let steps = std::mem::take(pending);
    if let Err(status) = client.report_metrics(MetricsReport { rank, steps }).await {
        tracing::warn!(error = %status.message(), "could not send metrics");
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

fn source_chain(err: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut source = err.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.join(": ")
}
