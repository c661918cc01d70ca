//! Rank assignment: joins are collected until the world is complete, then every waiting worker
//! is released with the same peer list and rank 0's NCCL unique id (like torchrun's c10d
//! store). A worker that leaves while it is held (its process died, its call was cancelled)
//! gives its rank back, so a replacement takes it instead of the run starting with a ghost.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tonic::Status;

/// What every rank needs to connect to the others, published once every rank has joined.
#[derive(Clone, Debug, PartialEq)]
pub struct Roster {
    /// Ring listener addresses by rank.
    pub peers: Vec<String>,
    /// Rank 0's NCCL unique id (empty unless it sent one).
    pub nccl_id: Vec<u8>,
}

/// A rank given to a joining worker, with the key that proves it in the worker's later calls.
#[derive(Clone, Debug, PartialEq)]
pub struct Seat {
    pub rank: u32,
    pub member_key: String,
}

/// What a joined worker brought.
#[derive(Clone, Debug)]
struct Member {
    worker_id: String,
    ring_addr: String,
    nccl_id: Vec<u8>,
    member_key: String,
}

/// Where the rendezvous stands.
#[derive(Clone, Debug)]
enum State {
    Filling,
    Complete(Arc<Roster>),
    /// Closed before it completed (the generation ended): the held joins get this answer.
    Closed(Status),
}

pub struct Rendezvous {
    world_size: usize,
    /// Each rank's joined worker; kept once the world is complete, to check member keys.
    joining: Mutex<Vec<Option<Member>>>,
    state: watch::Sender<State>,
}

/// A worker's join, as the rendezvous sees it.
pub struct Joiner {
    /// The worker's own name for itself (host and pid): the same one joining twice is refused.
    pub worker_id: String,
    pub ring_addr: String,
    pub nccl_id: Vec<u8>,
    /// The rank it asks for (its task index under its scheduler, or its rank before a regroup).
    pub hint: Option<u32>,
}

impl Rendezvous {
    pub fn new(world_size: usize) -> Self {
        Self {
            world_size,
            joining: Mutex::new(vec![None; world_size]),
            state: watch::channel(State::Filling).0,
        }
    }

    /// Registers a worker's ring address (and NCCL id, kept from rank 0) and gives it a seat:
    /// rank `hint` when that rank is free, else the lowest free one. Refused once the world is
    /// complete or closed, and for a worker that already holds a rank.
    pub fn register(&self, joiner: Joiner) -> Result<Seat, Status> {
        let mut slots = self.slots();
        match &*self.state.borrow() {
            State::Filling => {}
            State::Complete(_) => {
                return Err(Status::resource_exhausted(format!(
                    "the run is full: all {} ranks have joined and are training",
                    self.world_size
                )));
            }
            State::Closed(status) => return Err(status.clone()),
        }
        if let Some(rank) = slots
            .iter()
            .position(|m| m.as_ref().is_some_and(|m| m.worker_id == joiner.worker_id))
        {
            return Err(Status::already_exists(format!(
                "worker {} has already joined as rank {rank}",
                joiner.worker_id
            )));
        }
        let hinted = joiner
            .hint
            .map(|rank| rank as usize)
            .filter(|&rank| slots.get(rank).is_some_and(Option::is_none));
        let Some(rank) = hinted.or_else(|| slots.iter().position(Option::is_none)) else {
            unreachable!("a filling world has a free rank");
        };
        let member_key = new_key();
        slots[rank] = Some(Member {
            worker_id: joiner.worker_id,
            ring_addr: joiner.ring_addr,
            nccl_id: joiner.nccl_id,
            member_key: member_key.clone(),
        });
        if slots.iter().all(Option::is_some) {
            let joined: Vec<&Member> = slots.iter().flatten().collect();
            let nccl_id = joined[0].nccl_id.clone();
            let peers = joined
                .iter()
                .map(|member| member.ring_addr.clone())
                .collect();
            self.state
                .send_replace(State::Complete(Arc::new(Roster { peers, nccl_id })));
        }
        Ok(Seat {
            rank: rank as u32,
            member_key,
        })
    }

    /// Gives `rank` back while the world is still incomplete (its worker left); true if it did.
    pub fn withdraw(&self, rank: u32) -> bool {
        let mut slots = self.slots();
        if self.is_complete() {
            return false;
        }
        slots
            .get_mut(rank as usize)
            .and_then(Option::take)
            .is_some()
    }

    /// Ends a rendezvous that has not completed: every held and later join gets `status`.
    pub fn close(&self, status: Status) {
        let _slots = self.slots();
        self.state.send_if_modified(|state| {
            let filling = matches!(state, State::Filling);
            if filling {
                *state = State::Closed(status);
            }
            filling
        });
    }

    /// The rank whose seat `member_key` proves, compared in constant time.
    pub fn rank_of(&self, member_key: &str) -> Option<u32> {
        let slots = self.slots();
        let mut found = None;
        for (rank, member) in slots.iter().enumerate() {
            if let Some(member) = member
                && constant_time_eq(member.member_key.as_bytes(), member_key.as_bytes())
            {
                found = Some(rank as u32);
            }
        }
        found
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Option<Member>>> {
        self.joining.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until every rank has joined.
    pub async fn wait(&self, timeout: Duration) -> Result<Arc<Roster>, Status> {
        let mut rx = self.state.subscribe();
        let waited = tokio::time::timeout(
            timeout,
            rx.wait_for(|state| !matches!(state, State::Filling)),
        );
        match waited.await {
            Ok(Ok(state)) => match &*state {
                State::Complete(roster) => Ok(roster.clone()),
                State::Closed(status) => Err(status.clone()),
                State::Filling => unreachable!("waited for another state"),
            },
            Ok(Err(_)) => Err(Status::unavailable("the coordinator is shutting down")),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "rendezvous timed out: {} of {} workers joined within {} s",
                self.joined_count(),
                self.world_size,
                timeout.as_secs()
            ))),
        }
    }

    /// Ranks taken so far.
    pub fn joined_count(&self) -> usize {
        self.slots().iter().flatten().count()
    }

    pub fn is_complete(&self) -> bool {
        matches!(&*self.state.borrow(), State::Complete(_))
    }
}

/// A random 128-bit key, hex-encoded: join tokens and member keys.
pub fn new_key() -> String {
    rand::random::<[u8; 16]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Equality that takes the same time wherever the first difference is: a key is never
/// guessed byte by byte from response times.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joiner(id: &str, hint: Option<u32>) -> Joiner {
        Joiner {
            worker_id: id.into(),
            ring_addr: format!("{id}:1"),
            nccl_id: id.as_bytes().to_vec(),
            hint,
        }
    }

    fn rank(rv: &Rendezvous, id: &str, hint: Option<u32>) -> u32 {
        rv.register(joiner(id, hint)).unwrap().rank
    }

    #[tokio::test]
    async fn releases_everyone_once_full_and_rejects_extras() {
        let rv = Arc::new(Rendezvous::new(2));
        assert_eq!(rank(&rv, "a", None), 0);
        let waiter = tokio::spawn({
            let rv = rv.clone();
            async move { rv.wait(Duration::from_secs(5)).await }
        });
        assert_eq!(rank(&rv, "b", None), 1);
        let roster = waiter.await.unwrap().unwrap();
        assert_eq!(roster.peers, ["a:1", "b:1"]);
        assert_eq!(roster.nccl_id, b"a", "rank 0's id, for every rank");
        let extra = rv.register(joiner("c", None)).unwrap_err();
        assert_eq!(extra.code(), tonic::Code::ResourceExhausted);
    }

    #[tokio::test]
    async fn a_rank_given_back_goes_to_the_next_joiner() {
        let rv = Rendezvous::new(2);
        assert_eq!(rank(&rv, "a", None), 0);
        assert!(rv.withdraw(0));
        assert_eq!(rv.joined_count(), 0);
        assert_eq!(rank(&rv, "b", None), 0);
        assert_eq!(rank(&rv, "c", None), 1);
        let roster = rv.wait(Duration::from_secs(5)).await.unwrap();
        assert_eq!(roster.peers, ["b:1", "c:1"]);
        assert_eq!(roster.nccl_id, b"b", "the new rank 0's id");
        assert!(!rv.withdraw(1), "a complete world keeps its ranks");
    }

    #[tokio::test]
    async fn a_free_hinted_rank_is_given_and_a_taken_or_absent_one_is_not() {
        let rv = Rendezvous::new(3);
        assert_eq!(rank(&rv, "c", Some(2)), 2);
        assert_eq!(rank(&rv, "x", Some(2)), 0);
        assert_eq!(rank(&rv, "b", Some(7)), 1);
        let roster = rv.wait(Duration::from_secs(5)).await.unwrap();
        assert_eq!(roster.peers, ["x:1", "b:1", "c:1"]);
    }

    #[tokio::test]
    async fn times_out_naming_the_count() {
        let rv = Rendezvous::new(3);
        rank(&rv, "a", None);
        let err = rv.wait(Duration::from_millis(50)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
        assert!(err.message().contains("1 of 3"), "{}", err.message());
    }

    #[tokio::test]
    async fn a_worker_joining_twice_is_refused_naming_its_rank() {
        let rv = Rendezvous::new(3);
        assert_eq!(rank(&rv, "a", None), 0);
        let twice = rv.register(joiner("a", Some(2))).unwrap_err();
        assert_eq!(twice.code(), tonic::Code::AlreadyExists);
        assert!(
            twice.message().contains("already joined as rank 0"),
            "{twice:?}"
        );
        assert_eq!(rv.joined_count(), 1);
    }

    #[tokio::test]
    async fn member_keys_prove_their_rank_only() {
        let rv = Rendezvous::new(2);
        let a = rv.register(joiner("a", None)).unwrap();
        let b = rv.register(joiner("b", None)).unwrap();
        assert_ne!(a.member_key, b.member_key);
        assert_eq!(rv.rank_of(&a.member_key), Some(0));
        assert_eq!(rv.rank_of(&b.member_key), Some(1));
        assert_eq!(rv.rank_of(""), None);
        assert_eq!(rv.rank_of(&new_key()), None);
    }

    #[tokio::test]
    async fn closing_answers_held_and_later_joins_and_keeps_a_complete_world() {
        let rv = Arc::new(Rendezvous::new(2));
        rank(&rv, "a", None);
        let held = tokio::spawn({
            let rv = rv.clone();
            async move { rv.wait(Duration::from_secs(30)).await }
        });
        rv.close(Status::unavailable("re-forming"));
        let err = held.await.unwrap().unwrap_err();
        assert_eq!(
            (err.code(), err.message()),
            (tonic::Code::Unavailable, "re-forming")
        );
        let later = rv.register(joiner("b", None)).unwrap_err();
        assert_eq!(later.code(), tonic::Code::Unavailable);

        let complete = Rendezvous::new(1);
        rank(&complete, "a", None);
        complete.close(Status::unavailable("too late"));
        assert!(complete.is_complete());
    }
}
