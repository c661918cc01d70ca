//! Collective communication between the data-parallel workers of one generation.
//!
//! Gradients never pass through the coordinator: every step, the workers average them among
//! themselves. The coordinator only hands each worker its rank and the listening addresses of
//! all peers; [`Ring`] then connects each rank to its successor over TCP and runs the
//! bandwidth-optimal ring algorithm (chunked reduce-scatter followed by all-gather, as Gloo's
//! `ring_chunked`), so each rank sends about `2 * (W - 1) / W` times the buffer per all-reduce,
//! whatever the world size `W`.
//!
//! Every operation is bounded by the timeout given at connection time: a dead or stalled peer
//! turns into a [`RingError`] (and a broken ring that must be rebuilt), never a hang, so the
//! worker can report the failure and re-rendezvous.

pub mod ring;

pub use ring::{Ring, RingError};

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
