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

/// What a joined worker brought.
#[derive(Clone, Debug)]
struct Member {
    ring_addr: String,
    nccl_id: Vec<u8>,
}

pub struct Rendezvous {
    world_size: usize,
    /// Each rank's joined worker, while the world fills up.
    joining: Mutex<Vec<Option<Member>>>,
    complete: watch::Sender<Option<Arc<Roster>>>,
}

impl Rendezvous {
    pub fn new(world_size: usize) -> Self {
        Self {
            world_size,
            joining: Mutex::new(vec![None; world_size]),
            complete: watch::channel(None).0,
        }
    }

    /// Registers a worker's ring address (and NCCL id, kept from rank 0) and returns its rank:
    /// `hint` (the worker's task index under its scheduler) when that rank is free, else the
    /// lowest free one; `Err` once the run is full.
    pub fn register(
        &self,
        ring_addr: String,
        nccl_id: Vec<u8>,
        hint: Option<u32>,
    ) -> Result<u32, Status> {
        let mut slots = self.slots();
        let hinted = hint
            .map(|rank| rank as usize)
            .filter(|&rank| slots.get(rank).is_some_and(Option::is_none));
        let Some(rank) = hinted.or_else(|| slots.iter().position(Option::is_none)) else {
            return Err(Status::resource_exhausted(format!(
                "the run is full: all {} ranks have joined",
                self.world_size
            )));
        };
        slots[rank] = Some(Member { ring_addr, nccl_id });
        if slots.iter().all(Option::is_some) {
            let joined: Vec<Member> = slots.iter().flatten().cloned().collect();
            let nccl_id = joined[0].nccl_id.clone();
            let peers = joined.into_iter().map(|member| member.ring_addr).collect();
            self.complete
                .send_replace(Some(Arc::new(Roster { peers, nccl_id })));
        }
        Ok(rank as u32)
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

    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Option<Member>>> {
        self.joining.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until every rank has joined.
    pub async fn wait(&self, timeout: Duration) -> Result<Arc<Roster>, Status> {
        let mut rx = self.complete.subscribe();
        match tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await {
            Ok(Ok(roster)) => Ok(roster.clone().expect("waited for Some")),
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
        self.complete.borrow().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn releases_everyone_once_full_and_rejects_extras() {
        let rv = Arc::new(Rendezvous::new(2));
        assert_eq!(rv.register("a:1".into(), vec![7; 128], None).unwrap(), 0);
        let waiter = tokio::spawn({
            let rv = rv.clone();
            async move { rv.wait(Duration::from_secs(5)).await }
        });
        assert_eq!(rv.register("b:2".into(), vec![9; 128], None).unwrap(), 1);
        let roster = waiter.await.unwrap().unwrap();
        assert_eq!(roster.peers, ["a:1", "b:2"]);
        assert_eq!(roster.nccl_id, [7; 128], "rank 0's id, for every rank");
        let extra = rv.register("c:3".into(), Vec::new(), None).unwrap_err();
        assert_eq!(extra.code(), tonic::Code::ResourceExhausted);
    }

    #[tokio::test]
    async fn a_rank_given_back_goes_to_the_next_joiner() {
        let rv = Rendezvous::new(2);
        assert_eq!(rv.register("a:1".into(), vec![7; 128], None).unwrap(), 0);
        assert!(rv.withdraw(0));
        assert_eq!(rv.joined_count(), 0);
        assert_eq!(rv.register("b:2".into(), vec![9; 128], None).unwrap(), 0);
        assert_eq!(rv.register("c:3".into(), Vec::new(), None).unwrap(), 1);
        let roster = rv.wait(Duration::from_secs(5)).await.unwrap();
        assert_eq!(roster.peers, ["b:2", "c:3"]);
        assert_eq!(roster.nccl_id, [9; 128], "the new rank 0's id");
        assert!(!rv.withdraw(1), "a complete world keeps its ranks");
    }

    #[tokio::test]
    async fn a_free_hinted_rank_is_given_and_a_taken_or_absent_one_is_not() {
        let rv = Rendezvous::new(3);
        assert_eq!(rv.register("c:3".into(), Vec::new(), Some(2)).unwrap(), 2);
        assert_eq!(rv.register("x:9".into(), Vec::new(), Some(2)).unwrap(), 0);
        assert_eq!(rv.register("b:2".into(), Vec::new(), Some(7)).unwrap(), 1);
        let roster = rv.wait(Duration::from_secs(5)).await.unwrap();
        assert_eq!(roster.peers, ["x:9", "b:2", "c:3"]);
    }

    #[tokio::test]
    async fn times_out_naming_the_count() {
        let rv = Rendezvous::new(3);
        rv.register("a:1".into(), Vec::new(), None).unwrap();
        let err = rv.wait(Duration::from_millis(50)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
        assert!(err.message().contains("1 of 3"), "{}", err.message());
    }
}
