//! The coordinator's gRPC service. Handlers validate each message and forward it to the run
//! monitor as an [`Event`]; the rendezvous is the only state they touch themselves.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use incept_common::collective::NCCL_ID_BYTES;
use incept_common::proto::coordinator_server::{Coordinator, CoordinatorServer};
use incept_common::proto::{
    Ack, Assignment, CheckpointReport, DataPlan, EvaluationReport, HeartbeatReply,
    HeartbeatRequest, JoinRequest, MEMBER_METADATA_KEY, MetricsReport, StepMetrics,
    TOKEN_METADATA_KEY, WorkerResult,
};
use tokio::sync::mpsc::UnboundedSender;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::rendezvous::{Joiner, Rendezvous, constant_time_eq};

/// What workers tell the coordinator, in arrival order.
#[derive(Debug)]
pub enum Event {
    Joined {
        rank: u32,
        request: JoinRequest,
    },
    /// A worker held at the rendezvous left (died, or gave up) and its rank is free again.
    Left {
        rank: u32,
    },
    Heartbeat {
        rank: u32,
        /// Validation images the rank has evaluated in its current (or last) evaluation.
        evaluated: u64,
    },
    Metrics {
        rank: u32,
        steps: Vec<StepMetrics>,
    },
    Evaluation(EvaluationReport),
    Checkpoint(CheckpointReport),
    Finished(WorkerResult),
    /// A request without the run's join token or a valid member key, from `peer` (recorded:
    /// someone is knocking, or a stale worker is calling).
    Rejected {
        peer: String,
        reason: String,
    },
}

/// Everything the handlers of one generation of a run need.
pub struct RunContext {
    pub run_id: String,
    /// The generation: 0 at launch, one more each time the group re-forms.
    pub generation: u32,
    pub experiment_toml: String,
    pub world_size: u32,
    pub total_steps: u64,
    pub heartbeat_interval_ms: u32,
    /// How long a worker goes on without an answered heartbeat before it stops.
    pub heartbeat_timeout_s: u32,
    /// How long a worker tries to join again after its coordinator or generation is lost.
    pub reconnect_timeout_s: u32,
    pub checkpoint_dir: String,
    /// Checkpoint the run continues from (empty: fresh start).
    pub resume_from: String,
    pub data_plan: DataPlan,
    pub join_timeout: Duration,
    pub rendezvous: Rendezvous,
    pub events: UnboundedSender<Event>,
    /// Set when the generation is ending; heartbeats then tell workers to stop, or, with
    /// `regroup`, to join the next generation.
    pub stopping: AtomicBool,
    /// Set (before `stopping`) when the generation ends and the run goes on in a new one.
    pub regroup: AtomicBool,
    /// Set when a signal asks the run to stop: heartbeats then ask rank 0 for a checkpoint first.
    pub checkpoint_now: AtomicBool,
}

pub struct CoordinatorService {
    run: Arc<RunContext>,
}

/// The largest message a worker may send: a metrics batch is a few KiB, so anything near this
/// is hostile or broken, and is refused before it is decoded.
const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// The service with its join-token check, ready to add to a tonic server.
pub fn server(
    run: Arc<RunContext>,
    token: String,
) -> InterceptedService<CoordinatorServer<CoordinatorService>, TokenCheck> {
    let events = run.events.clone();
    let service = CoordinatorServer::new(CoordinatorService { run })
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    InterceptedService::new(service, TokenCheck { token, events })
}

/// Rejects every request that does not carry the run's join token, and records who tried.
#[derive(Clone)]
pub struct TokenCheck {
    token: String,
    events: UnboundedSender<Event>,
}

impl Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let given = request
            .metadata()
            .get(TOKEN_METADATA_KEY)
            .and_then(|v| v.to_str().ok());
        let reason = match given {
            Some(token) if constant_time_eq(token.as_bytes(), self.token.as_bytes()) => {
                return Ok(request);
            }
            Some(_) => "invalid join token".to_string(),
            None => format!("missing join token (metadata `{TOKEN_METADATA_KEY}`)"),
        };
        let peer = request
            .remote_addr()
            .map_or_else(|| "an unknown address".into(), |addr| addr.to_string());
        // The run may have ended (nobody listens): the rejection stands either way.
        let _ = self.events.send(Event::Rejected {
            peer,
            reason: reason.clone(),
        });
        Err(Status::unauthenticated(reason))
    }
}

/// Rejects evaluations whose counts cannot be right.
fn check_evaluation(eval: &EvaluationReport) -> Result<(), Status> {
    if eval.top1_correct > eval.top5_correct || eval.top5_correct > eval.samples {
        return Err(Status::invalid_argument(format!(
            "inconsistent evaluation: top-1 {} ≤ top-5 {} ≤ samples {} does not hold",
            eval.top1_correct, eval.top5_correct, eval.samples
        )));
    }
    Ok(())
}

impl CoordinatorService {
    /// Checks that the caller holds a seat of this generation (its member key) and that the
    /// rank its message `claimed` is that seat's; a refusal is recorded as a rejection.
    fn check_member<T>(&self, request: &Request<T>, claimed: u32) -> Result<(), Status> {
        let key = request
            .metadata()
            .get(MEMBER_METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let refusal = match self.run.rendezvous.rank_of(key) {
            Some(rank) if rank == claimed => return Ok(()),
            Some(rank) => Status::permission_denied(format!(
                "a message for rank {claimed} from the worker of rank {rank}: a worker speaks \
                 for its own rank only"
            )),
            None => Status::failed_precondition(format!(
                "not a member of generation {} of run {} (a stale or unknown member key): join \
                 again",
                self.run.generation, self.run.run_id
            )),
        };
        let peer = request
            .remote_addr()
            .map_or_else(|| "an unknown address".into(), |addr| addr.to_string());
        let _ = self.run.events.send(Event::Rejected {
            peer,
            reason: refusal.message().to_string(),
        });
        Err(refusal)
    }

    /// Why a generation that is ending takes no more joins: the next one will (join again),
    /// or the run has ended.
    fn ending(&self) -> Status {
        if self.run.regroup.load(Ordering::Relaxed) {
            Status::unavailable(format!(
                "generation {} of run {} has ended and the group is re-forming: join again",
                self.run.generation, self.run.run_id
            ))
        } else {
            Status::aborted(format!("run {} has ended", self.run.run_id))
        }
    }

    fn emit(&self, event: Event) -> Result<(), Status> {
        self.run
            .events
            .send(event)
            .map_err(|_| Status::unavailable("the run has ended"))
    }
}

/// A rank held at the rendezvous for a worker whose join call is still open; dropping it (the
/// call was cancelled: the worker died or disconnected) gives the rank back.
struct HeldRank<'a> {
    run: &'a RunContext,
    rank: u32,
}

impl Drop for HeldRank<'_> {
    fn drop(&mut self) {
        if self.run.rendezvous.withdraw(self.rank) {
            let _ = self.run.events.send(Event::Left { rank: self.rank });
        }
    }
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<Assignment>, Status> {
        let request = request.into_inner();
        if request.ring_addr.parse::<SocketAddr>().is_err() {
            return Err(Status::invalid_argument(format!(
                "ring_addr {:?} is not a socket address",
                request.ring_addr
            )));
        }
        if !matches!(request.nccl_id.len(), 0 | NCCL_ID_BYTES) {
            return Err(Status::invalid_argument(format!(
                "nccl_id holds {} bytes; an NCCL unique id has {NCCL_ID_BYTES}",
                request.nccl_id.len()
            )));
        }
        if self.run.stopping.load(Ordering::Relaxed) {
            return Err(self.ending());
        }
        let seat = self.run.rendezvous.register(Joiner {
            worker_id: request.worker_id.clone(),
            ring_addr: request.ring_addr.clone(),
            nccl_id: request.nccl_id.clone(),
            hint: request.rank_hint,
        })?;
        let rank = seat.rank;
        // Dropped with this call when the worker goes away while held: its rank is freed.
        let held = HeldRank {
            run: &self.run,
            rank,
        };
        self.emit(Event::Joined {
            rank,
            request: request.clone(),
        })?;
        let roster = self.run.rendezvous.wait(self.run.join_timeout).await?;
        std::mem::forget(held);
        Ok(Response::new(Assignment {
            run_id: self.run.run_id.clone(),
            rank,
            generation: self.run.generation,
            member_key: seat.member_key,
            reconnect_timeout_s: self.run.reconnect_timeout_s,
            world_size: self.run.world_size,
            peers: roster.peers.clone(),
            nccl_id: roster.nccl_id.clone(),
            experiment_toml: self.run.experiment_toml.clone(),
            total_steps: self.run.total_steps,
            heartbeat_interval_ms: self.run.heartbeat_interval_ms,
            heartbeat_timeout_s: self.run.heartbeat_timeout_s,
            checkpoint_dir: self.run.checkpoint_dir.clone(),
            resume_from: self.run.resume_from.clone(),
            data_plan: Some(self.run.data_plan.clone()),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        self.check_member(&request, request.get_ref().rank)?;
        let HeartbeatRequest {
            rank, evaluated, ..
        } = request.into_inner();
        // Once the generation ends nobody follows its events, but its workers must still hear
        // whether to stop or to join the next one.
        let ending = self.run.stopping.load(Ordering::Relaxed);
        let regroup = ending && self.run.regroup.load(Ordering::Relaxed);
        if !ending {
            self.emit(Event::Heartbeat { rank, evaluated })?;
        }
        let checkpoint = self.run.checkpoint_now.load(Ordering::Relaxed);
        Ok(Response::new(HeartbeatReply {
            stop: ending && !regroup,
            checkpoint,
            regroup,
        }))
    }

    async fn report_metrics(
        &self,
        request: Request<MetricsReport>,
    ) -> Result<Response<Ack>, Status> {
        self.check_member(&request, request.get_ref().rank)?;
        let MetricsReport { rank, steps } = request.into_inner();
        if let Some(bad) = steps
            .iter()
            .find(|m| m.step == 0 || m.step > self.run.total_steps)
        {
            return Err(Status::invalid_argument(format!(
                "step {} is outside 1..={}",
                bad.step, self.run.total_steps
            )));
        }
        self.emit(Event::Metrics { rank, steps })?;
        Ok(Response::new(Ack {}))
    }

    async fn report_checkpoint(
        &self,
        request: Request<CheckpointReport>,
    ) -> Result<Response<Ack>, Status> {
        self.check_member(&request, request.get_ref().rank)?;
        let report = request.into_inner();
        if report.step == 0 || report.step > self.run.total_steps || report.path.is_empty() {
            return Err(Status::invalid_argument(format!(
                "checkpoint of step {} at {:?} is out of range or unnamed",
                report.step, report.path
            )));
        }
        self.emit(Event::Checkpoint(report))?;
        Ok(Response::new(Ack {}))
    }

    async fn report_evaluation(
        &self,
        request: Request<EvaluationReport>,
    ) -> Result<Response<Ack>, Status> {
        self.check_member(&request, request.get_ref().rank)?;
        let report = request.into_inner();
        check_evaluation(&report)?;
        self.emit(Event::Evaluation(report))?;
        Ok(Response::new(Ack {}))
    }

    async fn report_result(&self, request: Request<WorkerResult>) -> Result<Response<Ack>, Status> {
        self.check_member(&request, request.get_ref().rank)?;
        let result = request.into_inner();
        match &result.evaluation {
            Some(eval) => check_evaluation(eval)?,
            None if result.error.is_empty() => {
                return Err(Status::invalid_argument(
                    "a successful result must carry its evaluation",
                ));
            }
            None => {}
        }
        self.emit(Event::Finished(result))?;
        Ok(Response::new(Ack {}))
    }
}
