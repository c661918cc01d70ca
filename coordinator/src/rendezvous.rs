//! Rank assignment: joins are collected until the world is complete, then every waiting worker
//! is released with the same peer list and rank 0's NCCL unique id (like torchrun's c10d
//! store).

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

pub struct Rendezvous {
    world_size: usize,
    /// The roster as ranks join.
    joining: Mutex<Roster>,
    complete: watch::Sender<Option<Arc<Roster>>>,
}

impl Rendezvous {
    pub fn new(world_size: usize) -> Self {
        Self {
            world_size,
            joining: Mutex::new(Roster {
                peers: Vec::with_capacity(world_size),
                nccl_id: Vec::new(),
            }),
            complete: watch::channel(None).0,
        }
    }

    /// Registers a worker's ring address (and NCCL id, kept from rank 0) and returns its rank;
    /// `Err` once the run is full.
    pub fn register(&self, ring_addr: String, nccl_id: Vec<u8>) -> Result<u32, Status> {
        let mut roster = self.joining.lock().expect("rendezvous lock");
        if roster.peers.len() == self.world_size {
            return Err(Status::resource_exhausted(format!(
                "the run is full: all {} ranks have joined",
                self.world_size
            )));
        }
        if roster.peers.is_empty() {
            roster.nccl_id = nccl_id;
        }
        roster.peers.push(ring_addr);
        if roster.peers.len() == self.world_size {
            self.complete.send_replace(Some(Arc::new(roster.clone())));
        }
        Ok(roster.peers.len() as u32 - 1)
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

    pub fn joined_count(&self) -> usize {
        self.joining.lock().expect("rendezvous lock").peers.len()
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
        assert_eq!(rv.register("a:1".into(), vec![7; 128]).unwrap(), 0);
        let waiter = tokio::spawn({
            let rv = rv.clone();
            async move { rv.wait(Duration::from_secs(5)).await }
        });
        assert_eq!(rv.register("b:2".into(), vec![9; 128]).unwrap(), 1);
        let roster = waiter.await.unwrap().unwrap();
        assert_eq!(roster.peers, ["a:1", "b:2"]);
        assert_eq!(roster.nccl_id, [7; 128], "rank 0's id, for every rank");
        let extra = rv.register("c:3".into(), Vec::new()).unwrap_err();
        assert_eq!(extra.code(), tonic::Code::ResourceExhausted);
    }

    #[tokio::test]
    async fn times_out_naming_the_count() {
        let rv = Rendezvous::new(3);
        rv.register("a:1".into(), Vec::new()).unwrap();
        let err = rv.wait(Duration::from_millis(50)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
        assert!(err.message().contains("1 of 3"), "{}", err.message());
    }
}
