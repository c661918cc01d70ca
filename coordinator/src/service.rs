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
        /// What the rank computes with (empty until it has resolved it).
        compute: String,
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
            rank,
            evaluated,
            compute,
            ..
        } = request.into_inner();
        // Once the generation ends nobody follows its events, but its workers must still hear
        // whether to stop or to join the next one.
        let ending = self.run.stopping.load(Ordering::Relaxed);
        let regroup = ending && self.run.regroup.load(Ordering::Relaxed);
        if !ending {
            self.emit(Event::Heartbeat {
                rank,
                evaluated,
                compute,
            })?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc::UnboundedReceiver;
    use tonic::Code;

    /// The service of generation 3 of a two-rank run, and the events it emits.
    fn service() -> (CoordinatorService, UnboundedReceiver<Event>) {
        let (events, received) = tokio::sync::mpsc::unbounded_channel();
        let run = RunContext {
            run_id: "run-a".into(),
            generation: 3,
            experiment_toml: String::new(),
            world_size: 2,
            total_steps: 10,
            heartbeat_interval_ms: 100,
            heartbeat_timeout_s: 5,
            reconnect_timeout_s: 60,
            checkpoint_dir: String::new(),
            resume_from: String::new(),
            data_plan: DataPlan::default(),
            join_timeout: Duration::from_secs(5),
            rendezvous: Rendezvous::new(2),
            events,
            stopping: AtomicBool::new(false),
            regroup: AtomicBool::new(false),
            checkpoint_now: AtomicBool::new(false),
        };
        let run = Arc::new(run);
        (CoordinatorService { run }, received)
    }

    fn join_request(worker: &str, port: u16) -> JoinRequest {
        JoinRequest {
            worker_id: worker.into(),
            ring_addr: format!("127.0.0.1:{port}"),
            ..Default::default()
        }
    }

    /// A request carrying `member_key`, as a worker sends it after joining.
    fn as_member<T>(message: T, member_key: &str) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert(MEMBER_METADATA_KEY, member_key.parse().unwrap());
        request
    }

    fn beat(rank: u32) -> HeartbeatRequest {
        HeartbeatRequest {
            rank,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn each_rank_speaks_for_itself_and_strangers_are_refused_and_recorded() {
        let (service, mut events) = service();
        let (a, b) = tokio::join!(
            service.join(Request::new(join_request("a", 1))),
            service.join(Request::new(join_request("b", 2)))
        );
        let (a, b) = (a.unwrap().into_inner(), b.unwrap().into_inner());
        assert_eq!((a.rank, b.rank, a.generation), (0, 1, 3));
        assert_ne!(a.member_key, b.member_key);

        let own = service.heartbeat(as_member(beat(0), &a.member_key)).await;
        assert!(own.is_ok());
        let other = service
            .heartbeat(as_member(beat(1), &a.member_key))
            .await
            .unwrap_err();
        assert_eq!(other.code(), Code::PermissionDenied);
        assert!(
            other
                .message()
                .contains("for rank 1 from the worker of rank 0")
        );
        let metrics = MetricsReport {
            rank: 1,
            steps: Vec::new(),
        };
        let stranger = service
            .report_metrics(Request::new(metrics))
            .await
            .unwrap_err();
        assert_eq!(stranger.code(), Code::FailedPrecondition);
        assert!(
            stranger.message().contains("generation 3 of run run-a"),
            "{}",
            stranger.message()
        );
        let again = service
            .join(Request::new(join_request("a", 3)))
            .await
            .unwrap_err();
        assert_eq!(again.code(), Code::ResourceExhausted, "{}", again.message());

        let mut rejected = Vec::new();
        while let Ok(event) = events.try_recv() {
            if let Event::Rejected { reason, .. } = event {
                rejected.push(reason);
            }
        }
        assert_eq!(rejected.len(), 2, "{rejected:?}");
    }

    #[tokio::test]
    async fn an_ending_generation_says_whether_to_join_again() {
        let (service, _events) = service();
        service.run.regroup.store(true, Ordering::Relaxed);
        service.run.stopping.store(true, Ordering::Relaxed);
        let regroup = service
            .join(Request::new(join_request("a", 1)))
            .await
            .unwrap_err();
        assert_eq!(regroup.code(), Code::Unavailable);
        assert!(regroup.message().contains("join again"));
        service.run.regroup.store(false, Ordering::Relaxed);
        let ended = service
            .join(Request::new(join_request("a", 1)))
            .await
            .unwrap_err();
        assert_eq!(
            (ended.code(), ended.message()),
            (Code::Aborted, "run run-a has ended")
        );
    }
}
