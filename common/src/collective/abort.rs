//! Aborting a communicator from another thread (a heartbeat that learns the run stopped, a
//! watchdog): the flag makes every later call fail, and shutting the sockets down wakes the
//! calls blocked in them now. [`Health`] is the aborted-or-broken bookkeeping the ring and
//! NCCL share.

use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::CollectiveError;

/// Cloneable handle that aborts one communicator; cheap to pass to other threads.
#[derive(Clone, Debug, Default)]
pub struct AbortHandle(Arc<AbortState>);

#[derive(Debug, Default)]
struct AbortState {
    aborted: AtomicBool,
    /// Clones of the communicator's sockets, shut down on abort.
    sockets: Mutex<Vec<TcpStream>>,
}

impl AbortHandle {
    /// Aborts: operations blocked now return [`super::CollectiveError::Aborted`] promptly, and
    /// so does every later one.
    pub fn abort(&self) {
        self.0.aborted.store(true, Ordering::SeqCst);
        let sockets = self.0.sockets.lock().unwrap_or_else(|e| e.into_inner());
        for socket in sockets.iter() {
            // Best effort: a socket the peer already closed may refuse; it is dead either way.
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    /// Whether [`AbortHandle::abort`] was called on this handle or any clone of it.
    pub fn is_aborted(&self) -> bool {
        self.0.aborted.load(Ordering::SeqCst)
    }

    /// Registers a socket to shut down on abort.
    pub(crate) fn watch(&self, socket: TcpStream) {
        let mut sockets = self.0.sockets.lock().unwrap_or_else(|e| e.into_inner());
        sockets.push(socket);
    }
}

/// Whether a communicator may still run operations: not aborted from elsewhere and not broken
/// by one of its own failures. In either state every later operation fails at once.
#[derive(Debug, Default)]
pub(crate) struct Health {
    abort: AbortHandle,
    broken: bool,
}

impl Health {
    /// The handle that aborts this communicator.
    pub(crate) fn abort_handle(&self) -> &AbortHandle {
        &self.abort
    }

    /// Fails at once with [`CollectiveError::Aborted`] or [`CollectiveError::Broken`].
    pub(crate) fn ready(&self, rank: usize) -> Result<(), CollectiveError> {
        if self.abort.is_aborted() {
            return Err(CollectiveError::Aborted { rank });
        }
        if self.broken {
            return Err(CollectiveError::Broken { rank });
        }
        Ok(())
    }

    /// Marks the communicator broken; true the first time, when the caller tears it down.
    pub(crate) fn mark_broken(&mut self) -> bool {
        !std::mem::replace(&mut self.broken, true)
    }

    /// `error`, or [`CollectiveError::Aborted`] when an abort caused it.
    pub(crate) fn explain(&self, rank: usize, error: CollectiveError) -> CollectiveError {
        if self.abort.is_aborted() {
            CollectiveError::Aborted { rank }
        } else {
            error
        }
    }
}
