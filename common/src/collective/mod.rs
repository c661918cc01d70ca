//! Collective communication between the data-parallel workers of one generation.
//!
//! Gradients never pass through the coordinator: every step, the workers average them among
//! themselves through a [`Collective`]. The coordinator only hands each worker its rank and the
//! listening addresses of all peers; [`Ring`] then connects each rank to its successor over TCP
//! and runs the bandwidth-optimal ring algorithm (chunked reduce-scatter followed by all-gather,
//! as Gloo's `ring_chunked`), so each rank sends about `2 * (W - 1) / W` times the buffer per
//! all-reduce, whatever the world size `W`. With the `cuda` feature, `nccl::Nccl` does the same
//! on GPUs. [`GradientBuckets`] cuts the flat gradient into fixed-size buckets so that packing one
//! overlaps reducing the previous one.
//!
//! Every operation has a deadline: a dead or stalled peer turns into a [`CollectiveError`] (and a
//! broken communicator that must be rebuilt), never a hang, so the worker can report the failure
//! and re-rendezvous. [`AbortHandle::abort`] ends a blocked operation from another thread.

mod abort;
pub mod bucket;
pub mod device;
#[cfg(feature = "cuda")]
pub mod nccl;
pub mod ring;
pub mod traced;
pub mod wire;

use std::io;
use std::net::SocketAddr;

pub use abort::AbortHandle;
use abort::Health;
pub use bucket::GradientBuckets;
pub use device::{HostBuffer, TrainDevice};
pub use ring::Ring;
pub use traced::Traced;
pub use wire::WireFormat;

/// Bytes of an NCCL unique id (`ncclUniqueId`), as the coordinator checks and hands it out.
pub const NCCL_ID_BYTES: usize = 128;

/// Reduction applied by all-reduce.
///
/// Data parallelism averages gradients ([`ReduceOp::Mean`]); sums serve counters such as the
/// number of correct predictions in distributed evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// Element-wise sum over all ranks.
    Sum,
    /// Element-wise sum over all ranks, multiplied by `1 / world_size`.
    Mean,
}

/// The operations data-parallel training needs from its communicator.
///
/// All ranks must call the same operations in the same order with buffers of the same length.
/// Every call is bounded by the communicator's deadline; after any error but
/// [`CollectiveError::Invalid`] the communicator is broken and later calls fail at once.
pub trait Collective: Send {
    /// This process's rank, `0..world_size`.
    fn rank(&self) -> usize;

    /// Number of ranks.
    fn world_size(&self) -> usize;

    /// In-place all-reduce of `data`, sent between ranks in the `wire` format (reduced in f32).
    /// Every rank ends with bit-identical values.
    fn all_reduce(
        &mut self,
        data: &mut [f32],
        op: ReduceOp,
        wire: WireFormat,
    ) -> Result<(), CollectiveError>;

    /// Copies `root`'s buffer into every rank's buffer, bit for bit.
    fn broadcast(&mut self, data: &mut [f32], root: usize) -> Result<(), CollectiveError>;

    /// Returns once every rank has called barrier (an all-reduce of one value: no rank can finish
    /// it before every other rank has contributed).
    fn barrier(&mut self) -> Result<(), CollectiveError> {
        self.all_reduce(&mut [0.0], ReduceOp::Sum, WireFormat::F32)
    }

    /// A handle that aborts this communicator from any thread.
    fn abort_handle(&self) -> AbortHandle;

    /// The NCCL communicator behind this collective, which reduces GPU memory in place.
    #[cfg(feature = "cuda")]
    fn as_nccl(&mut self) -> Option<&mut nccl::Nccl> {
        None
    }
}

/// Failure of a collective operation.
#[derive(Debug, thiserror::Error)]
pub enum CollectiveError {
    /// Bad arguments (rank or root out of range, zero timeout, world too large).
    #[error("invalid collective call: {0}")]
    Invalid(String),
    /// The next rank's listener could not be reached before the deadline.
    #[error("rank {rank}: connecting to the next rank at {peer} failed: {error}")]
    Connect {
        /// Rank that tried to connect.
        rank: usize,
        /// Listening address of the next rank.
        peer: SocketAddr,
        /// The OS error, or a timeout (part of the message, so not a separate cause).
        error: io::Error,
    },
    /// The previous rank did not connect to this rank's listener before the deadline.
    #[error("rank {rank}: accepting the previous rank's connection on {addr} failed: {error}")]
    Accept {
        /// Rank that was waiting for the connection.
        rank: usize,
        /// This rank's own listening address.
        addr: SocketAddr,
        /// The OS error, or a timeout (part of the message, so not a separate cause).
        error: io::Error,
    },
    /// A peer answered with an unexpected rank or world size.
    #[error("ring handshake failed: {0}")]
    Handshake(String),
    /// Sending to or receiving from a neighbour failed, passed the deadline, or found the peer
    /// gone.
    #[error("rank {rank}: {op} with {peer} failed: {error}")]
    Io {
        /// Rank that failed.
        rank: usize,
        /// What the rank was doing, e.g. `"sending"` or `"reading the handshake"`.
        op: &'static str,
        /// Address of the neighbour involved.
        peer: SocketAddr,
        /// The OS error, or a timeout (part of the message, so not a separate cause).
        error: io::Error,
    },
    /// A neighbour sent a message of another length or wire format: ranks disagree on the call.
    #[error(
        "rank {rank}: message from {peer} holds {got} but {expected} was expected \
         (do all ranks pass buffers of the same length and wire format?)"
    )]
    Mismatch {
        /// Rank that received the message.
        rank: usize,
        /// Address of the neighbour that sent it.
        peer: SocketAddr,
        /// Value count and wire format this rank expected.
        expected: String,
        /// Value count and wire format the message header announced.
        got: String,
    },
    /// [`AbortHandle::abort`] was called.
    #[error("rank {rank}: the collective was aborted")]
    Aborted {
        /// Rank whose operation was aborted.
        rank: usize,
    },
    /// An earlier operation failed, so the communicator may hold partial messages.
    #[error("rank {rank}: the communicator is broken by an earlier error; rebuild it")]
    Broken {
        /// Rank whose communicator is broken.
        rank: usize,
    },
    /// NCCL reported an error (synchronously or through `ncclCommGetAsyncError`).
    #[cfg(feature = "cuda")]
    #[error("rank {rank}: NCCL: {message}")]
    Nccl {
        /// Rank that failed.
        rank: usize,
        /// NCCL's error string.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_not_repeated() {
        let error = CollectiveError::Io {
            rank: 1,
            op: "receiving",
            peer: "127.0.0.1:9".parse().unwrap(),
            error: io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed the connection",
            ),
        };
        let text = format!("{:#}", anyhow::Error::from(error));
        assert_eq!(
            text.matches("the peer closed the connection").count(),
            1,
            "{text}"
        );
    }
}
