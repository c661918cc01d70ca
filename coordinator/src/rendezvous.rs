//! Rank assignment: joins are collected until the world is complete, then every waiting worker
//! is released with the same peer list (like torchrun's c10d store).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tonic::Status;

/// Ring listener addresses by rank, published once every rank has joined.
pub type Peers = Arc<Vec<String>>;

pub struct Rendezvous {
    world_size: usize,
    joined: Mutex<Vec<String>>,
    complete: watch::Sender<Option<Peers>>,
}

impl Rendezvous {
    pub fn new(world_size: usize) -> Self {
        Self {
            world_size,
            joined: Mutex::new(Vec::with_capacity(world_size)),
            complete: watch::channel(None).0,
        }
    }

    /// Registers a worker's ring address and returns its rank; `Err` once the run is full.
    pub fn register(&self, ring_addr: String) -> Result<u32, Status> {
        let mut joined = self.joined.lock().expect("rendezvous lock");
        if joined.len() == self.world_size {
            return Err(Status::resource_exhausted(format!(
                "the run is full: all {} ranks have joined",
                self.world_size
            )));
        }
        joined.push(ring_addr);
        if joined.len() == self.world_size {
            self.complete.send_replace(Some(Arc::new(joined.clone())));
        }
        Ok(joined.len() as u32 - 1)
    }

    /// Waits until every rank has joined.
    pub async fn wait(&self, timeout: Duration) -> Result<Peers, Status> {
        let mut rx = self.complete.subscribe();
        match tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await {
            Ok(Ok(peers)) => Ok(peers.clone().expect("waited for Some")),
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
        self.joined.lock().expect("rendezvous lock").len()
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
        assert_eq!(rv.register("a:1".into()).unwrap(), 0);
        let waiter = tokio::spawn({
            let rv = rv.clone();
            async move { rv.wait(Duration::from_secs(5)).await }
        });
        assert_eq!(rv.register("b:2".into()).unwrap(), 1);
        let peers = waiter.await.unwrap().unwrap();
        assert_eq!(*peers, vec!["a:1".to_string(), "b:2".to_string()]);
        let extra = rv.register("c:3".into()).unwrap_err();
        assert_eq!(extra.code(), tonic::Code::ResourceExhausted);
    }

    #[tokio::test]
    async fn times_out_naming_the_count() {
        let rv = Rendezvous::new(3);
        rv.register("a:1".into()).unwrap();
        let err = rv.wait(Duration::from_millis(50)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
        assert!(err.message().contains("1 of 3"), "{}", err.message());
    }
}
