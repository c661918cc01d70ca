//! Aborting a communicator from another thread (a heartbeat that learns the run stopped, a
//! watchdog): the flag makes every later call fail, and shutting the sockets down wakes the
//! calls blocked in them now.

use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

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

    pub fn is_aborted(&self) -> bool {
        self.0.aborted.load(Ordering::SeqCst)
    }

    /// Registers a socket to shut down on abort.
    pub(crate) fn watch(&self, socket: TcpStream) {
        let mut sockets = self.0.sockets.lock().unwrap_or_else(|e| e.into_inner());
        sockets.push(socket);
    }
}
