//! The worker's side of the coordinator protocol: connect with bounded retries, join,
//! heartbeat, stream metrics, report the result; join again when the group re-forms or the
//! coordinator comes back.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use incept_common::proto::coordinator_client::CoordinatorClient;
use incept_common::proto::{
    Assignment, HeartbeatRequest, JoinRequest, MEMBER_METADATA_KEY, MetricsReport, StepMetrics,
    TOKEN_METADATA_KEY, WorkerResult,
};
use tokio::sync::mpsc;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

use crate::training::{self, Progress, Report, evaluation_report};

type Client = CoordinatorClient<InterceptedService<Channel, Credentials>>;
type Ascii = MetadataValue<tonic::metadata::Ascii>;

/// Adds the join token to every request, and, once the worker holds a seat, its member key.
#[derive(Clone)]
pub struct Credentials {
    token: Ascii,
    member: Option<Ascii>,
}

impl Credentials {
    /// The credentials of a worker holding `token`, and `member_key` once it has joined; an
    /// error when either cannot travel in a gRPC header.
    pub fn new(token: &str, member_key: Option<&str>) -> anyhow::Result<Self> {
        Ok(Self {
            token: MetadataValue::try_from(token).context("the join token is not valid ASCII")?,
            member: member_key
                .map(MetadataValue::try_from)
                .transpose()
                .context("the member key is not valid ASCII")?,
        })
    }
}

impl Interceptor for Credentials {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let metadata = request.metadata_mut();
        metadata.insert(TOKEN_METADATA_KEY, self.token.clone());
        if let Some(member) = &self.member {
            metadata.insert(MEMBER_METADATA_KEY, member.clone());
        }
        Ok(request)
    }
}

/// A connection to the coordinator of one run.
pub struct Session {
    channel: Channel,
    token: Ascii,
    url: String,
    /// Step metrics no coordinator acknowledged (it was down), with the rank they are of:
    /// sent once the worker has joined again with that rank, so no step goes unrecorded.
    unsent: Option<(u32, Vec<StepMetrics>)>,
}

/// The most undelivered step metrics a worker keeps for a coordinator that comes back (days
/// of steps at one a second; the oldest are dropped beyond).
const MAX_UNSENT_STEPS: usize = 1 << 20;

/// How a worker's part in one generation ended, when the worker has more to do.
pub enum Ended {
    /// The run is over for this worker: it succeeded.
    Finished,
    /// The generation ended (a peer was lost, or the coordinator): join again, within the
    /// assignment's `reconnect_timeout_s`.
    Rejoin { reason: String, within: Duration },
}

/// TLS towards the coordinator at `url`: required by an `https://` address, trusting only the
/// CA in `ca` (`--tls-ca`); refused for a plain `http://` one, which would send the token in
/// the clear while the user believes otherwise.
pub fn tls_config(
    url: &str,
    ca: Option<&std::path::Path>,
) -> anyhow::Result<Option<ClientTlsConfig>> {
    let https = url.starts_with("https://");
    match ca {
        None if https => bail!(
            "the coordinator {url} speaks TLS: pass --tls-ca FILE, the CA that signed its \
             cluster.tls_cert (for a self-signed certificate, the certificate itself)"
        ),
        None => Ok(None),
        Some(path) if !https => bail!(
            "--tls-ca {} is for a TLS coordinator: its address starts with https://, not {url}",
            path.display()
        ),
        Some(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading --tls-ca {}", path.display()))?;
            Ok(Some(
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
            ))
        }
    }
}

impl Session {
    /// Connects (over TLS with `tls`), retrying with exponential backoff (0.25 s doubling to
    /// 4 s) `attempts` times.
    pub async fn connect(
        url: &str,
        token: &str,
        tls: Option<ClientTlsConfig>,
        attempts: u32,
    ) -> anyhow::Result<Self> {
        let token: Ascii =
            MetadataValue::try_from(token).context("the join token is not valid ASCII")?;
        let mut endpoint = Endpoint::from_shared(url.to_string())
            .with_context(|| format!("invalid coordinator address {url:?}"))?
            .connect_timeout(Duration::from_secs(5));
        if let Some(tls) = tls {
            endpoint = endpoint
                .tls_config(tls)
                .with_context(|| format!("TLS towards {url}"))?;
        }
        let mut delay = Duration::from_millis(250);
        let mut last_error = String::new();
        for attempt in 1..=attempts.max(1) {
            match endpoint.connect().await {
                Ok(channel) => {
                    return Ok(Self {
                        channel,
                        token,
                        url: url.to_string(),
                        unsent: None,
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

    /// A client that speaks as this worker: its token, and its seat's member key once it has
    /// one.
    fn client(&self, member: Option<Ascii>) -> Client {
        let credentials = Credentials {
            token: self.token.clone(),
            member,
        };
        CoordinatorClient::with_interceptor(self.channel.clone(), credentials)
    }

    /// Joins the run; returns once every rank has joined. `nccl_id` is this worker's offer of
    /// the run's NCCL unique id (empty when it has none); `rank_hint` the rank it asks for.
    /// With `retry_until`, a coordinator that is unreachable, between generations, or busy
    /// with a generation that has not ended yet is asked again (backing off to once a second: a
    /// join is one cheap call, and the next generation should not wait for it) until
    /// then; only the run's end or a rejected token stops it sooner.
    pub async fn join(
        &mut self,
        ring_addr: std::net::SocketAddr,
        nccl_id: Vec<u8>,
        rank_hint: Option<u32>,
        retry_until: Option<Instant>,
    ) -> anyhow::Result<Assignment> {
        let request = JoinRequest {
            worker_id: format!("{}-{}", hostname(), std::process::id()),
            hostname: hostname(),
            ring_addr: ring_addr.to_string(),
            pid: std::process::id(),
            nccl_id,
            rank_hint,
        };
        let mut delay = Duration::from_millis(250);
        loop {
            let status = match self.client(None).join(request.clone()).await {
                Ok(reply) => return Ok(reply.into_inner()),
                Err(status) => status,
            };
            match status.code() {
                Code::Unauthenticated => bail!(
                    "the coordinator at {} rejected the join token: {}",
                    self.url,
                    status.message()
                ),
                Code::Aborted => bail!("{}", status.message()),
                _ => {}
            }
            match retry_until {
                Some(deadline) if Instant::now() + delay < deadline => {
                    tracing::info!(reason = %status.message(), "joining again shortly");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
                Some(_) => bail!(
                    "no coordinator at {} took this worker back in time (cluster.\
                     reconnect_timeout_s); last answer: {}",
                    self.url,
                    status.message()
                ),
                None => bail!(
                    "joining the run at {} failed: {}",
                    self.url,
                    status.message()
                ),
            }
        }
    }

    /// Trains on a blocking thread while heartbeats and metrics flow to the coordinator; reports
    /// the outcome either way. An error means the run is over for this worker and it failed.
    pub async fn train(
        &mut self,
        assignment: Assignment,
        listener: std::net::TcpListener,
    ) -> anyhow::Result<Ended> {
        let rank = assignment.rank;
        let member = MetadataValue::try_from(assignment.member_key.as_str())
            .context("the coordinator's member key is not valid ASCII")?;
        let mut client = self.client(Some(member));
        let rejoin_within = Duration::from_secs(u64::from(assignment.reconnect_timeout_s.max(1)));
        let progress = Arc::new(Progress::default());
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        let heartbeat = tokio::spawn(heartbeat_loop(
            client.clone(),
            rank,
            Heartbeats {
                every: Duration::from_millis(u64::from(assignment.heartbeat_interval_ms.max(10))),
                lost_after: Duration::from_secs(u64::from(assignment.heartbeat_timeout_s.max(1))),
            },
            progress.clone(),
        ));
        let unsent = match self.unsent.take() {
            Some((of, steps)) if of == rank => steps,
            Some((of, steps)) => {
                tracing::warn!(
                    steps = steps.len(),
                    of,
                    rank,
                    "undelivered metrics of another rank dropped"
                );
                Vec::new()
            }
            None => Vec::new(),
        };
        let reporting = tokio::spawn(report_loop(client.clone(), rank, reports_rx, unsent));
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
        let unsent = reporting.await.context("reporting task panicked")?;
        if !unsent.is_empty() {
            self.unsent = Some((rank, unsent));
        }

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
        // Bounded: a coordinator that is stopped (not gone) never answers.
        let reported =
            match tokio::time::timeout(Duration::from_secs(10), client.report_result(result)).await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(status)) => Err(status.message().to_string()),
                Err(_) => Err("no answer within 10 s".to_string()),
            };
        if let Err(error) = &reported {
            tracing::warn!(%error, "could not report the result");
        }
        match outcome {
            // Trained to the end while the coordinator was away: the run ends only when a
            // coordinator has the result (a resumed one takes this worker back).
            Ok(_) if let Err(error) = reported => Ok(Ended::Rejoin {
                reason: format!("finished, but no coordinator took the result: {error}"),
                within: rejoin_within,
            }),
            Ok(eval) => {
                tracing::info!(
                    top1 = eval.top1(),
                    top5 = eval.top5(),
                    samples = eval.samples,
                    "validation"
                );
                Ok(Ended::Finished)
            }
            // Stopped for good by the coordinator: the run is over.
            Err(err)
                if progress.stop.load(Ordering::Relaxed)
                    && !progress.rejoin.load(Ordering::Relaxed) =>
            {
                Err(err)
            }
            // Told to re-form, cut off from the coordinator, or failed (a lost peer, most
            // often): the coordinator decides whether the run goes on, and takes it back if so.
            Err(err) => Ok(Ended::Rejoin {
                reason: format!("{err:#}"),
                within: rejoin_within,
            }),
        }
    }
}

/// How often a worker beats, and how long unanswered beats mean a lost coordinator.
struct Heartbeats {
    every: Duration,
    lost_after: Duration,
}

/// Beats until the task is aborted; stops training when the coordinator says so (for good, or
/// to join its next generation), or to join again when no beat was answered for `lost_after`
/// (the coordinator died or is unreachable) or the coordinator no longer knows this worker's
/// seat (its generation is over).
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
            compute: progress.compute.get().cloned().unwrap_or_default(),
        };
        match client.heartbeat(beat).await {
            Ok(reply) if reply.get_ref().regroup => {
                tracing::warn!("the coordinator is re-forming the group");
                progress.stop_to_rejoin(format!(
                    "the coordinator ended this generation at step {step}: the group re-forms"
                ));
            }
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
            Err(status) if status.code() == Code::FailedPrecondition => {
                progress.stop_to_rejoin(format!(
                    "the coordinator no longer counts this worker in the run ({}); stopped at \
                     step {step}",
                    status.message()
                ));
                return;
            }
            Err(status) if answered.elapsed() >= beats.lost_after => {
                progress.stop_to_rejoin(format!(
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

/// Sends step metrics in batches, every half second (starting with `pending`), evaluations as
/// they come, and drains when training ends; returns the metrics no coordinator acknowledged.
async fn report_loop(
    mut client: Client,
    rank: u32,
    mut rx: mpsc::UnboundedReceiver<Report>,
    mut pending: Vec<StepMetrics>,
) -> Vec<StepMetrics> {
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
                    return pending;
                }
            },
            _ = ticker.tick() => flush_metrics(&mut client, rank, &mut pending).await,
        }
    }
}

/// Sends the pending metrics, a bounded batch at a time; what the coordinator could not take
/// (it is unreachable, or no longer knows this worker) stays pending, the newest
/// [`MAX_UNSENT_STEPS`] of it.
async fn flush_metrics(client: &mut Client, rank: u32, pending: &mut Vec<StepMetrics>) {
    /// Steps per message: far below the coordinator's message size limit.
    const BATCH: usize = 1024;
    while !pending.is_empty() {
        let steps = pending[..pending.len().min(BATCH)].to_vec();
        let sent = steps.len();
        match client.report_metrics(MetricsReport { rank, steps }).await {
            Ok(_) => drop(pending.drain(..sent)),
            Err(status) if status.code() == Code::InvalidArgument => {
                tracing::warn!(error = %status.message(), "metrics refused; dropped");
                pending.drain(..sent);
            }
            Err(status) => {
                tracing::warn!(error = %status.message(), "could not send metrics");
                let excess = pending.len().saturating_sub(MAX_UNSENT_STEPS);
                pending.drain(..excess);
                return;
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_is_required_by_https_and_refused_for_plain_http() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(tls_config("http://127.0.0.1:1", None).unwrap().is_none());
        assert!(
            tls_config("https://127.0.0.1:1", Some(&ca))
                .unwrap()
                .is_some()
        );
        let missing = tls_config("https://127.0.0.1:1", None).unwrap_err();
        assert!(missing.to_string().contains("pass --tls-ca"), "{missing}");
        let plain = tls_config("http://127.0.0.1:1", Some(&ca)).unwrap_err();
        assert!(plain.to_string().contains("https://"), "{plain}");
        let unreadable = tls_config("https://h:1", Some(&dir.path().join("none"))).unwrap_err();
        assert!(
            unreadable.to_string().contains("reading --tls-ca"),
            "{unreadable}"
        );
    }
}
