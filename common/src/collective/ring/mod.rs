//! TCP ring collectives: each rank holds one connection to the next rank and one from the
//! previous rank.
//!
//! All-reduce is Gloo's `ring_chunked`: the buffer is cut into `W` chunks, `W - 1` reduce-scatter
//! steps leave each rank owning the full sum of one chunk, `W - 1` all-gather steps pass the
//! owned chunks around. Each chunk is further cut into segments that are pipelined: a sender
//! thread forwards segment `s` of a step as soon as the receiving side has reduced it, so several
//! segments are in flight on each link and reduction overlaps transfer. Sockets have large
//! buffers and Nagle disabled; the only buffers are two per-ring scratch vectors that are reused.
//!
//! Wire format: every message is a 12-byte header, the value count (`u64` LE) and the
//! [`WireFormat`] code (`u32` LE), then the values (f32 in host order, checked little-endian at
//! compile time, or 16-bit halves). The header lets the receiver detect ranks that call a
//! collective with buffers of different lengths or formats instead of silently mixing data.
//! Connection setup exchanges a handshake of `rank` and `world_size` (`u32` LE each) in both
//! directions, so a misrouted connection is rejected before any data flows.
//!
//! One file per job: [`schedule`] (who sends what at each step), [`pipeline`] (the two threads
//! of an all-reduce and the buffer they share), [`link`] (connections, handshake, messages) and
//! [`io`] (framing and deadline I/O).

mod io;
mod link;
mod pipeline;
mod schedule;

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use self::link::Links;
use super::{AbortHandle, Collective, CollectiveError, Health, ReduceOp, WireFormat};

const _: () = assert!(
    cfg!(target_endian = "little"),
    "the ring sends f32 in host byte order and assumes little-endian hosts"
);

/// A connected ring of `world_size` ranks running all-reduce, broadcast and barrier.
///
/// A world of one rank opens no sockets and every collective returns at once (a mean over one
/// rank is the identity, and a wire format never rounds a value that is not sent).
#[derive(Debug)]
pub struct Ring {
    rank: usize,
    world_size: usize,
    /// Deadline of every operation, counted from its start.
    timeout: Duration,
    /// `None` when the world is a single rank: every collective is then the identity.
    links: Option<Links>,
    health: Health,
    /// Reused encode/decode buffers (one segment each), so steps do not allocate.
    scratch: Scratch,
}

/// The encode and decode buffers of one ring, reused by every operation.
#[derive(Debug, Default)]
struct Scratch {
    send: Vec<u8>,
    recv: Vec<u8>,
}

impl Ring {
    /// Connects this rank into the ring.
    ///
    /// Binds nothing: takes a listener the caller already bound (its address was published to
    /// peers as `peers[rank]`), connects to the next rank's address (retrying until `timeout`),
    /// accepts the previous rank's connection (until `timeout`), and verifies a handshake in
    /// both directions. `timeout` is also the deadline of every later operation.
    pub fn connect(
        rank: usize,
        peers: &[SocketAddr],
        listener: TcpListener,
        timeout: Duration,
    ) -> Result<Ring, CollectiveError> {
        let world_size = peers.len();
        validate(rank, world_size, timeout)?;
        let health = Health::default();
        let links = match world_size {
            1 => None,
            _ => {
                let links = Links::establish(rank, peers, &listener, timeout)?;
                for stream in [&links.next, &links.prev] {
                    let clone = stream.try_clone().map_err(|error| CollectiveError::Io {
                        rank,
                        op: "cloning a socket for abort",
                        peer: links.next_addr,
                        error,
                    })?;
                    health.abort_handle().watch(clone);
                }
                Some(links)
            }
        };
        Ok(Ring {
            rank,
            world_size,
            timeout,
            links,
            health,
            scratch: Scratch::default(),
        })
    }

    /// Runs `op` on the links before the operation's deadline, or does nothing for a single
    /// rank; breaks the ring on failure (after an abort, the failure is reported as such).
    fn run(
        &mut self,
        op: impl FnOnce(&Links, Instant, &mut Scratch) -> Result<(), CollectiveError>,
    ) -> Result<(), CollectiveError> {
        let rank = self.rank;
        self.health.ready(rank)?;
        let Some(links) = &self.links else {
            return Ok(());
        };
        let deadline = Instant::now() + self.timeout;
        let result = op(links, deadline, &mut self.scratch);
        if result.is_err() {
            links.shut_down();
            self.health.mark_broken();
        }
        result.map_err(|error| self.health.explain(rank, error))
    }
}

impl Collective for Ring {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    /// Chunks sizes differ by at most one (lengths need not divide by `W`). Mean = sum then
    /// multiply by `1 / W`, applied (and rounded to the wire format) by the chunk's owner before
    /// the all-gather, so every rank ends with bit-identical results.
    fn all_reduce(
        &mut self,
        data: &mut [f32],
        op: ReduceOp,
        wire: WireFormat,
    ) -> Result<(), CollectiveError> {
        let scale = (op == ReduceOp::Mean).then(|| 1.0 / self.world_size as f32);
        self.run(|links, deadline, scratch| links.all_reduce(data, scale, wire, deadline, scratch))
    }

    /// Passes the buffer along the ring in segments, so forwarding is pipelined rather than
    /// store-and-forward.
    fn broadcast(&mut self, data: &mut [f32], root: usize) -> Result<(), CollectiveError> {
        if root >= self.world_size {
            return Err(CollectiveError::Invalid(format!(
                "broadcast root {root} is not a rank of a world of size {}",
                self.world_size
            )));
        }
        self.run(|links, deadline, _| links.broadcast(data, root, deadline))
    }

    fn abort_handle(&self) -> AbortHandle {
        self.health.abort_handle().clone()
    }
}

/// Rejects arguments the ring cannot work with before touching any socket.
fn validate(rank: usize, world_size: usize, timeout: Duration) -> Result<(), CollectiveError> {
    if rank >= world_size {
        return Err(CollectiveError::Invalid(format!(
            "rank {rank} is not a rank of a world of size {world_size}"
        )));
    }
    if u32::try_from(world_size).is_err() {
        return Err(CollectiveError::Invalid(format!(
            "world size {world_size} does not fit the u32 handshake"
        )));
    }
    if timeout.is_zero() {
        return Err(CollectiveError::Invalid("timeout must be positive".into()));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Barrier;
    use std::thread;

    use super::schedule::{BROADCAST_SEGMENT, SEGMENT_VALUES};
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(2);

    /// Binds one listener per rank on 127.0.0.1, then runs `body` on a thread per rank with
    /// its connected ring; returns the results in rank order.
    pub(crate) fn with_ring<T: Send>(
        world: usize,
        timeout: Duration,
        body: impl Fn(Ring) -> T + Sync,
    ) -> Vec<T> {
        let listeners: Vec<_> = (0..world)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let peers: Vec<_> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        thread::scope(|scope| {
            let handles: Vec<_> = listeners
                .into_iter()
                .enumerate()
                .map(|(rank, listener)| {
                    let (peers, body) = (&peers, &body);
                    scope.spawn(move || {
                        body(Ring::connect(rank, peers, listener, timeout).expect("connect"))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    /// Positive values distinct per rank and position (no cancellation in the sums).
    fn sample(rank: usize, len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| 1.0 + ((rank * 7919 + i * 104_729) % 1000) as f32 / 1000.0)
            .collect()
    }

    fn reference(world: usize, len: usize, op: ReduceOp) -> Vec<f64> {
        let inputs: Vec<_> = (0..world).map(|rank| sample(rank, len)).collect();
        let divisor = if op == ReduceOp::Mean {
            world as f64
        } else {
            1.0
        };
        (0..len)
            .map(|i| inputs.iter().map(|x| f64::from(x[i])).sum::<f64>() / divisor)
            .collect()
    }

    fn assert_close(got: &[f32], want: &[f64], context: &str) {
        assert_eq!(got.len(), want.len(), "{context}");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let error = (f64::from(g) - w).abs();
            assert!(
                error <= 1e-6 * w.abs(),
                "{context}: [{i}] got {g}, want {w}"
            );
        }
    }

    #[test]
    fn all_reduce_matches_serial_reference() {
        for world in [2, 3, 4] {
            // Includes a length below the world size and one far beyond the socket buffers,
            // which deadlocks unless sends and receives overlap.
            let lens = [1, world - 1, 7, 1001, 1_000_003];
            let results = with_ring(world, TIMEOUT, |mut ring| {
                let rank = ring.rank();
                let mut outputs = Vec::new();
                for len in lens {
                    for op in [ReduceOp::Sum, ReduceOp::Mean] {
                        let mut data = sample(rank, len);
                        ring.all_reduce(&mut data, op, WireFormat::F32)
                            .expect("all_reduce");
                        outputs.push((len, op, data));
                    }
                }
                outputs
            });
            for (rank, outputs) in results.iter().enumerate() {
                for (len, op, data) in outputs {
                    let context = format!("world {world}, rank {rank}, len {len}, {op:?}");
                    assert_close(data, &reference(world, *len, *op), &context);
                }
            }
            assert!(results.windows(2).all(|w| w[0] == w[1]), "replicas differ");
        }
    }

    #[test]
    fn compressed_formats_agree_on_every_rank_and_stay_close() {
        // Relative precision of one rounding, and roundings on the way: one per hop of the
        // partial sum, one of the final value.
        for (wire, epsilon) in [
            (WireFormat::F16, 2f64.powi(-11)),
            (WireFormat::Bf16, 2f64.powi(-8)),
        ] {
            let world = 3;
            let lens = [7, 3 * SEGMENT_VALUES + 5];
            let results = with_ring(world, TIMEOUT, |mut ring| {
                let rank = ring.rank();
                lens.map(|len| {
                    let mut data = sample(rank, len);
                    ring.all_reduce(&mut data, ReduceOp::Mean, wire)
                        .expect("all_reduce");
                    data
                })
            });
            assert!(
                results.windows(2).all(|w| w[0] == w[1]),
                "{wire}: replicas differ"
            );
            for (data, len) in results[0].iter().zip(lens) {
                let want = reference(world, len, ReduceOp::Mean);
                for (i, (&g, w)) in data.iter().zip(want).enumerate() {
                    let error = (f64::from(g) - w).abs();
                    assert!(
                        error <= world as f64 * epsilon * w,
                        "{wire} [{i}]: {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn different_wire_formats_are_a_mismatch() {
        let results = with_ring(2, TIMEOUT, |mut ring| {
            let wire = [WireFormat::F32, WireFormat::Bf16][ring.rank()];
            ring.all_reduce(&mut sample(0, 100), ReduceOp::Sum, wire)
                .unwrap_err()
        });
        let text: Vec<_> = results.iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|e| e.contains("values in bf16") && e.contains("values in f32")),
            "{text:?}"
        );
    }

    #[test]
    fn abort_from_another_thread_unblocks_a_waiting_operation() {
        let long = Duration::from_secs(20);
        let rank_0_done = Barrier::new(2);
        let results = with_ring(2, long, |mut ring| {
            if ring.rank() == 1 {
                // Never joins the operation; leaves once rank 0 is done.
                rank_0_done.wait();
                return None;
            }
            let handle = ring.abort_handle();
            let aborter = thread::spawn(move || {
                thread::sleep(Duration::from_millis(200));
                handle.abort();
            });
            let start = Instant::now();
            let error = ring
                .all_reduce(&mut sample(0, 1000), ReduceOp::Sum, WireFormat::F32)
                .unwrap_err();
            let elapsed = start.elapsed();
            aborter.join().unwrap();
            let again = ring.barrier().unwrap_err();
            rank_0_done.wait();
            Some((error, elapsed, again))
        });
        let (error, elapsed, again) = results[0].as_ref().unwrap();
        assert!(
            matches!(error, CollectiveError::Aborted { rank: 0 }),
            "{error}"
        );
        // Unblocked by the abort, not by the deadline (a loaded machine may be slow to switch).
        assert!(*elapsed < long / 2, "abort took {elapsed:?}");
        assert!(matches!(again, CollectiveError::Aborted { .. }), "{again}");
    }

    #[test]
    fn broadcast_copies_a_nonzero_root() {
        for (world, root) in [(2, 1), (4, 2)] {
            let lens = [0, 5, BROADCAST_SEGMENT, 2 * BROADCAST_SEGMENT + 3];
            let results = with_ring(world, TIMEOUT, |mut ring| {
                let rank = ring.rank();
                lens.map(|len| {
                    let mut data = sample(rank, len);
                    ring.broadcast(&mut data, root).expect("broadcast");
                    data
                })
            });
            for data in results {
                assert_eq!(data, lens.map(|len| sample(root, len)));
            }
        }
    }

    #[test]
    fn barrier_waits_for_the_slowest_rank() {
        let start = Instant::now();
        let slowest = Duration::from_millis(200);
        let waited = with_ring(3, TIMEOUT, |mut ring| {
            thread::sleep(slowest * ring.rank() as u32 / 2);
            ring.barrier().expect("barrier");
            start.elapsed()
        });
        assert!(waited.iter().all(|&w| w >= slowest), "{waited:?}");
    }

    #[test]
    fn world_of_one_is_the_identity() {
        let results = with_ring(1, TIMEOUT, |mut ring| {
            assert_eq!((ring.rank(), ring.world_size()), (0, 1));
            let mut data = sample(0, 9);
            ring.all_reduce(&mut data, ReduceOp::Sum, WireFormat::F32)
                .unwrap();
            ring.all_reduce(&mut data, ReduceOp::Mean, WireFormat::F32)
                .unwrap();
            ring.broadcast(&mut data, 0).unwrap();
            ring.barrier().unwrap();
            let bad_root = ring.broadcast(&mut data, 1).unwrap_err();
            (data, bad_root)
        });
        let (data, bad_root) = &results[0];
        assert_eq!(*data, sample(0, 9));
        assert!(
            matches!(bad_root, CollectiveError::Invalid(_)),
            "{bad_root}"
        );
    }

    #[test]
    fn dead_peer_fails_all_reduce_within_the_timeout() {
        let results = with_ring(3, TIMEOUT, |mut ring| {
            if ring.rank() == 1 {
                return None;
            }
            let start = Instant::now();
            let error = ring
                .all_reduce(&mut sample(0, 1001), ReduceOp::Mean, WireFormat::F32)
                .unwrap_err();
            let elapsed = start.elapsed();
            let again = ring.barrier().unwrap_err();
            Some((error, elapsed, again))
        });
        for (error, elapsed, again) in results.into_iter().flatten() {
            assert!(
                elapsed < TIMEOUT + Duration::from_millis(500),
                "{elapsed:?}: {error}"
            );
            assert!(matches!(again, CollectiveError::Broken { .. }), "{again}");
        }
    }

    #[test]
    fn stalled_peer_times_out() {
        let timeout = Duration::from_millis(300);
        let rank_0_done = Barrier::new(2);
        let results = with_ring(2, timeout, |mut ring| {
            if ring.rank() == 1 {
                // Stalls: connected, but silent until rank 0 has timed out.
                rank_0_done.wait();
                return None;
            }
            let error = ring.barrier().unwrap_err();
            rank_0_done.wait();
            Some(error)
        });
        let error = results[0].as_ref().unwrap().to_string();
        assert!(error.contains("timed out"), "{error}");
    }

    #[test]
    fn different_lengths_are_a_mismatch() {
        let results = with_ring(2, TIMEOUT, |mut ring| {
            let mut data = sample(0, 10 + 2 * ring.rank());
            ring.all_reduce(&mut data, ReduceOp::Sum, WireFormat::F32)
                .unwrap_err()
        });
        let mismatches = results
            .iter()
            .filter(|e| matches!(e, CollectiveError::Mismatch { .. }))
            .count();
        assert!(mismatches >= 1, "{results:?}");
    }

    #[test]
    fn misrouted_peer_fails_the_handshake() {
        // Both processes claim rank 0 and connect to each other.
        let listeners = [(); 2].map(|_| TcpListener::bind("127.0.0.1:0").unwrap());
        let addrs = listeners.each_ref().map(|l| l.local_addr().unwrap());
        let errors = thread::scope(|scope| {
            let handles = listeners.map(|listener| {
                scope.spawn(move || {
                    let own = listener.local_addr().unwrap();
                    let other = addrs.into_iter().find(|&a| a != own).unwrap();
                    Ring::connect(0, &[own, other], listener, TIMEOUT).unwrap_err()
                })
            });
            handles.map(|h| h.join().unwrap().to_string())
        });
        for error in errors {
            assert!(error.contains("expected rank 1 of 2"), "{error}");
            assert!(error.contains("rank 0 of 2"), "{error}");
        }
    }

    #[test]
    fn unreachable_next_rank_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let own = listener.local_addr().unwrap();
        let timeout = Duration::from_millis(200);
        let error = Ring::connect(0, &[own, closed], listener, timeout).unwrap_err();
        assert!(matches!(error, CollectiveError::Connect { .. }), "{error}");
        assert!(error.to_string().contains("timed out"), "{error}");
    }
}
