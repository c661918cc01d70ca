//! TCP ring collectives: each rank holds one connection to the next rank and one from the
//! previous rank.
//!
//! Wire format: every message is an element count (`u64` little-endian) followed by that many
//! `f32` in host order (little-endian, checked at compile time). The count lets the receiver
//! detect ranks that call a collective with buffers of different lengths instead of silently
//! mixing data. Connection setup exchanges a handshake of `rank` and `world_size` (`u32` LE
//! each) in both directions, so a misrouted connection is rejected before any data flows.

use std::fmt::Display;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::thread;
use std::time::{Duration, Instant};

use super::ReduceOp;

const _: () = assert!(
    cfg!(target_endian = "little"),
    "the ring sends f32 in host byte order and assumes little-endian hosts"
);

/// Pause between attempts to connect to a rank whose listener is not accepting yet.
const CONNECT_RETRY: Duration = Duration::from_millis(20);
/// Pause between polls of the non-blocking listener while waiting for the previous rank.
const ACCEPT_POLL: Duration = Duration::from_millis(5);
/// Elements per broadcast message: large enough to amortise the per-message cost, small enough
/// that downstream ranks start forwarding long before the root has sent everything.
const BROADCAST_SEGMENT: usize = 64 * 1024;

/// Failure of a ring operation.
///
/// A collective that fails with anything but [`RingError::Invalid`] breaks the ring (its
/// streams are shut down so that neighbours fail fast too); build a new one at the next
/// rendezvous.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// Bad arguments (rank or root out of range, zero timeout, world too large).
    #[error("invalid ring configuration: {0}")]
    Invalid(String),
    /// The next rank's listener could not be reached before the timeout.
    #[error("rank {rank}: connecting to the next rank at {peer} failed: {source}")]
    Connect {
        rank: usize,
        peer: SocketAddr,
        source: io::Error,
    },
    /// The previous rank did not connect to this rank's listener before the timeout.
    #[error("rank {rank}: accepting the previous rank's connection on {addr} failed: {source}")]
    Accept {
        rank: usize,
        addr: SocketAddr,
        source: io::Error,
    },
    /// A peer answered with an unexpected rank or world size.
    #[error("ring handshake failed: {0}")]
    Handshake(String),
    /// Sending to or receiving from a neighbour failed, timed out, or found the peer gone.
    #[error("rank {rank}: {op} with {peer} failed: {source}")]
    Io {
        rank: usize,
        op: &'static str,
        peer: SocketAddr,
        source: io::Error,
    },
    /// A neighbour sent a message of a different length: ranks disagree on the buffer size.
    #[error(
        "rank {rank}: message from {peer} holds {got} elements but {expected} were expected \
         (do all ranks pass buffers of the same length?)"
    )]
    LengthMismatch {
        rank: usize,
        peer: SocketAddr,
        expected: u64,
        got: u64,
    },
    /// An earlier operation failed, so the streams may hold partial messages.
    #[error("rank {rank}: ring is broken by an earlier error; rebuild it")]
    Broken { rank: usize },
}

/// A connected ring of `world_size` ranks running all-reduce, broadcast and barrier.
///
/// All ranks must call the same collectives in the same order with buffers of the same length.
/// A world of one rank opens no sockets and every collective returns at once (a mean over one
/// rank is the identity).
#[derive(Debug)]
pub struct Ring {
    rank: usize,
    world_size: usize,
    /// `None` when the world is a single rank: every collective is then the identity.
    links: Option<Links>,
    /// Reused receive buffer of the reduce-scatter phase (one chunk), so steps do not allocate.
    recv_buf: Vec<f32>,
    broken: bool,
}

impl Ring {
    /// Connects this rank into the ring.
    ///
    /// Binds nothing: takes a listener the caller already bound (its address was published to
    /// peers as `peers[rank]`), connects to the next rank's address (retrying until `timeout`),
    /// accepts the previous rank's connection (until `timeout`), and verifies a handshake in
    /// both directions. `timeout` also bounds every later send and receive.
    pub fn connect(
        rank: usize,
        peers: &[SocketAddr],
        listener: TcpListener,
        timeout: Duration,
    ) -> Result<Ring, RingError> {
        let world_size = peers.len();
        validate(rank, world_size, timeout)?;
        let links = match world_size {
            1 => None,
            _ => Some(Links::establish(rank, peers, &listener, timeout)?),
        };
        Ok(Ring {
            rank,
            world_size,
            links,
            recv_buf: Vec::new(),
            broken: false,
        })
    }

    /// This process's position in the ring, `0..world_size`.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks in the ring.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// In-place all-reduce on f32 data.
    ///
    /// Chunked reduce-scatter then all-gather over `W` chunks whose sizes differ by at most one
    /// (lengths need not divide by `W`). Mean = sum then multiply by `1 / W`, applied by the
    /// chunk's owner before the all-gather, so every rank ends with bit-identical results.
    pub fn all_reduce(&mut self, data: &mut [f32], op: ReduceOp) -> Result<(), RingError> {
        let scale = (op == ReduceOp::Mean).then(|| 1.0 / self.world_size as f32);
        self.with_links(|links, recv_buf| links.all_reduce(data, scale, recv_buf))
    }

    /// Copies root's buffer into every rank's buffer (pass along the ring).
    ///
    /// Used to start every replica from rank 0's parameters. The buffer travels in segments, so
    /// forwarding is pipelined rather than store-and-forward.
    pub fn broadcast(&mut self, data: &mut [f32], root: usize) -> Result<(), RingError> {
        if root >= self.world_size {
            return Err(RingError::Invalid(format!(
                "broadcast root {root} is not a rank of a world of size {}",
                self.world_size
            )));
        }
        self.with_links(|links, _| links.broadcast(data, root))
    }

    /// Returns once every rank has called barrier (an all-reduce of one float: no rank can
    /// finish it before every other rank has contributed).
    pub fn barrier(&mut self) -> Result<(), RingError> {
        self.all_reduce(&mut [0.0], ReduceOp::Sum)
    }

    /// Runs `op` on the links, or does nothing for a single rank; breaks the ring on failure.
    fn with_links(
        &mut self,
        op: impl FnOnce(&Links, &mut Vec<f32>) -> Result<(), RingError>,
    ) -> Result<(), RingError> {
        let Some(links) = &self.links else {
            return Ok(());
        };
        if self.broken {
            return Err(RingError::Broken { rank: self.rank });
        }
        let result = links.shut_down_on_error(op(links, &mut self.recv_buf));
        self.broken = result.is_err();
        result
    }
}

/// Rejects arguments the ring cannot work with before touching any socket.
fn validate(rank: usize, world_size: usize, timeout: Duration) -> Result<(), RingError> {
    if rank >= world_size {
        return Err(RingError::Invalid(format!(
            "rank {rank} is not a rank of a world of size {world_size}"
        )));
    }
    if u32::try_from(world_size).is_err() {
        return Err(RingError::Invalid(format!(
            "world size {world_size} does not fit the u32 handshake"
        )));
    }
    if timeout.is_zero() {
        return Err(RingError::Invalid("timeout must be positive".into()));
    }
    Ok(())
}

/// One rank's two connections: it sends to `next` and receives from `prev`.
#[derive(Debug)]
struct Links {
    rank: usize,
    world_size: usize,
    timeout: Duration,
    next: TcpStream,
    next_addr: SocketAddr,
    prev: TcpStream,
    prev_addr: SocketAddr,
}

impl Links {
    /// Connects to the next rank, accepts the previous one and checks both handshakes.
    ///
    /// Sending the hello right after connecting cannot block (it fits any socket buffer), so
    /// every rank reaches its accept and the ring forms whatever order ranks start in.
    fn establish(
        rank: usize,
        peers: &[SocketAddr],
        listener: &TcpListener,
        timeout: Duration,
    ) -> Result<Links, RingError> {
        let world_size = peers.len();
        let next_rank = (rank + 1) % world_size;
        let prev_rank = (rank + world_size - 1) % world_size;
        let next_addr = peers[next_rank];
        let next = connect_within(next_addr, timeout)
            .and_then(|stream| configure(stream, timeout))
            .map_err(|source| RingError::Connect {
                rank,
                peer: next_addr,
                source,
            })?;
        let hello = encode_hello(rank, world_size);
        let fail = |op, peer, source| io_error(rank, op, peer, source, timeout);
        (&next)
            .write_all(&hello)
            .map_err(|e| fail("sending the handshake", next_addr, e))?;

        let (prev, remote) = accept_within(listener, timeout)
            .and_then(|(stream, remote)| Ok((configure(stream, timeout)?, remote)))
            .map_err(|source| RingError::Accept {
                rank,
                addr: peers[rank],
                source,
            })?;
        let theirs = read_hello(&prev).map_err(|e| fail("reading the handshake", remote, e))?;
        check_hello(rank, world_size, (prev_rank, remote), theirs)?;
        (&prev)
            .write_all(&hello)
            .map_err(|e| fail("answering the handshake", remote, e))?;

        let theirs = read_hello(&next).map_err(|e| fail("reading the handshake", next_addr, e))?;
        check_hello(rank, world_size, (next_rank, next_addr), theirs)?;
        tracing::debug!(rank, world_size, %next_addr, %remote, "ring connected");
        Ok(Links {
            rank,
            world_size,
            timeout,
            next,
            next_addr,
            prev,
            prev_addr: peers[prev_rank],
        })
    }

    /// Ring all-reduce: `W - 1` reduce-scatter steps leave rank `r` owning the full sum of
    /// chunk `r + 1`; `W - 1` all-gather steps then pass the owned chunks around.
    fn all_reduce(
        &self,
        data: &mut [f32],
        scale: Option<f32>,
        recv_buf: &mut Vec<f32>,
    ) -> Result<(), RingError> {
        let (rank, world) = (self.rank, self.world_size);
        let len = data.len();
        // Offsets keep the index non-negative before wrapping around the ring.
        let chunk_at = |index: usize| chunk(len, world, index % world);
        recv_buf.resize(len.div_ceil(world), 0.0);

        for step in 0..world - 1 {
            let send = chunk_at(rank + world - step);
            let recv = chunk_at(rank + world - step - 1);
            let incoming = &mut recv_buf[..recv.len()];
            self.exchange(&data[send], incoming)?;
            add_into(&mut data[recv], incoming);
        }
        if let Some(scale) = scale {
            data[chunk_at(rank + 1)]
                .iter_mut()
                .for_each(|x| *x *= scale);
        }
        for step in 0..world - 1 {
            let send = chunk_at(rank + world + 1 - step);
            let recv = chunk_at(rank + world - step);
            let (outgoing, incoming) = split_disjoint(data, send, recv);
            self.exchange(outgoing, incoming)?;
        }
        Ok(())
    }

    /// Passes root's buffer along the ring, segment by segment.
    ///
    /// The rank just before the root does not forward, so the chain has no cycle and blocking
    /// sends cannot deadlock. Segments are [`broadcast_segments`], whose count and sizes pin the
    /// total length, so ranks with different buffer lengths get a length mismatch.
    fn broadcast(&self, data: &mut [f32], root: usize) -> Result<(), RingError> {
        let world = self.world_size;
        let forwards = (self.rank + 1) % world != root;
        for segment in broadcast_segments(data.len()) {
            let segment = &mut data[segment];
            if self.rank != root {
                self.recv(segment)?;
            }
            if forwards {
                self.send(segment)?;
            }
        }
        Ok(())
    }

    /// Sends `outgoing` to the next rank while receiving `incoming` from the previous one.
    ///
    /// Both directions carry a full chunk: sending first and receiving after would deadlock
    /// once chunks outgrow the socket buffers, since every rank would be blocked in its send.
    fn exchange(&self, outgoing: &[f32], incoming: &mut [f32]) -> Result<(), RingError> {
        thread::scope(|scope| {
            let sender = scope.spawn(|| self.shut_down_on_error(self.send(outgoing)));
            let received = self.shut_down_on_error(self.recv(incoming));
            let sent = sender
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            received.and(sent)
        })
    }

    /// Sends one length-prefixed message to the next rank.
    fn send(&self, data: &[f32]) -> Result<(), RingError> {
        let header = (data.len() as u64).to_le_bytes();
        let mut parts = [
            IoSlice::new(&header),
            IoSlice::new(bytemuck::cast_slice(data)),
        ];
        write_all_vectored(&self.next, &mut parts)
            .map_err(|e| self.io_error("sending", self.next_addr, e))
    }

    /// Receives one length-prefixed message from the previous rank into `buf`, which must be
    /// exactly as long as the message.
    fn recv(&self, buf: &mut [f32]) -> Result<(), RingError> {
        let read_error = |e| self.io_error("receiving", self.prev_addr, e);
        let mut header = [0; 8];
        (&self.prev).read_exact(&mut header).map_err(read_error)?;
        let got = u64::from_le_bytes(header);
        let expected = buf.len() as u64;
        if got != expected {
            return Err(RingError::LengthMismatch {
                rank: self.rank,
                peer: self.prev_addr,
                expected,
                got,
            });
        }
        (&self.prev)
            .read_exact(bytemuck::cast_slice_mut(buf))
            .map_err(read_error)
    }

    /// Shuts the links down if `result` failed, so that the other direction of an exchange
    /// stops at once instead of waiting out its timeout on a ring that is broken anyway.
    fn shut_down_on_error(&self, result: Result<(), RingError>) -> Result<(), RingError> {
        if result.is_err() {
            self.shut_down();
        }
        result
    }

    /// Closes both directions so blocked calls return and neighbours see the failure at once.
    fn shut_down(&self) {
        // Best effort: a stream the peer already closed may refuse the shutdown; either way it
        // carries no more traffic.
        let _ = self.next.shutdown(Shutdown::Both);
        let _ = self.prev.shutdown(Shutdown::Both);
    }

    fn io_error(&self, op: &'static str, peer: SocketAddr, source: io::Error) -> RingError {
        io_error(self.rank, op, peer, source, self.timeout)
    }
}

/// Range of chunk `index` when `len` elements are split into `world` chunks whose sizes
/// differ by at most one (the first `len % world` chunks hold one extra element).
fn chunk(len: usize, world: usize, index: usize) -> Range<usize> {
    let (base, extra) = (len / world, len % world);
    let start = index * base + index.min(extra);
    start..start + base + usize::from(index < extra)
}

/// Ranges of the broadcast messages: full segments, then a shorter (possibly empty) tail.
///
/// The tail is always sent, even when empty, so that two different lengths never produce the
/// same sequence of message sizes.
fn broadcast_segments(len: usize) -> impl Iterator<Item = Range<usize>> {
    (0..=len / BROADCAST_SEGMENT).map(move |i| {
        let start = i * BROADCAST_SEGMENT;
        start..(start + BROADCAST_SEGMENT).min(len)
    })
}

/// Borrows two non-overlapping ranges of `data`: `send` shared and `recv` mutable.
fn split_disjoint(
    data: &mut [f32],
    send: Range<usize>,
    recv: Range<usize>,
) -> (&[f32], &mut [f32]) {
    if send.end <= recv.start {
        let (low, high) = data.split_at_mut(recv.start);
        (&low[send], &mut high[..recv.len()])
    } else {
        let (low, high) = data.split_at_mut(send.start);
        (&high[..send.len()], &mut low[recv])
    }
}

fn add_into(acc: &mut [f32], incoming: &[f32]) {
    acc.iter_mut().zip(incoming).for_each(|(a, b)| *a += *b);
}

/// Connects to `addr`, retrying refused attempts (the peer may still be starting) until
/// `timeout` has passed.
fn connect_within(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let last = last_error.map_or_else(String::new, |e: io::Error| format!(" ({e})"));
            return Err(timed_out(timeout, format_args!("no connection{last}")));
        }
        match TcpStream::connect_timeout(&addr, left) {
            Ok(stream) => return Ok(stream),
            Err(e) => {
                last_error = Some(e);
                thread::sleep(CONNECT_RETRY.min(left));
            }
        }
    }
}

/// Accepts one connection, giving up after `timeout` (std's `accept` has no timeout, so the
/// listener is polled in non-blocking mode).
fn accept_within(listener: &TcpListener, timeout: Duration) -> io::Result<(TcpStream, SocketAddr)> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((stream, remote)) => {
                stream.set_nonblocking(false)?;
                return Ok((stream, remote));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(timed_out(timeout, "the previous rank never connected"));
                }
                thread::sleep(ACCEPT_POLL);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Disables Nagle (ring steps are latency-bound request/response exchanges) and bounds every
/// read and write by `timeout`, so a dead peer yields an error instead of a hang.
fn configure(stream: TcpStream, timeout: Duration) -> io::Result<TcpStream> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

fn encode_hello(rank: usize, world_size: usize) -> [u8; 8] {
    // Both fit: `validate` checked world_size (and so rank) against u32.
    let mut hello = [0; 8];
    hello[..4].copy_from_slice(&(rank as u32).to_le_bytes());
    hello[4..].copy_from_slice(&(world_size as u32).to_le_bytes());
    hello
}

/// Reads a peer's handshake: `(rank, world_size)`.
fn read_hello(mut stream: &TcpStream) -> io::Result<(u32, u32)> {
    let mut hello = [0; 8];
    stream.read_exact(&mut hello)?;
    let [r0, r1, r2, r3, w0, w1, w2, w3] = hello;
    Ok((
        u32::from_le_bytes([r0, r1, r2, r3]),
        u32::from_le_bytes([w0, w1, w2, w3]),
    ))
}

/// Checks that the peer at `addr` is `expected_rank` of the same world size.
fn check_hello(
    rank: usize,
    world_size: usize,
    (expected_rank, addr): (usize, SocketAddr),
    (their_rank, their_world): (u32, u32),
) -> Result<(), RingError> {
    if their_rank as usize == expected_rank && their_world as usize == world_size {
        return Ok(());
    }
    Err(RingError::Handshake(format!(
        "rank {rank} of {world_size} expected rank {expected_rank} of {world_size} at {addr}, \
         but the peer says it is rank {their_rank} of {their_world}"
    )))
}

/// Wraps a socket error with its context; stalls and closed peers get explicit wording
/// (a read timeout shows up as `WouldBlock` on Unix, whose message does not say "timed out").
fn io_error(
    rank: usize,
    op: &'static str,
    peer: SocketAddr,
    source: io::Error,
    timeout: Duration,
) -> RingError {
    let source = match source.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            timed_out(timeout, "the peer stopped responding")
        }
        io::ErrorKind::UnexpectedEof => io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the peer closed the connection",
        ),
        _ => source,
    };
    RingError::Io {
        rank,
        op,
        peer,
        source,
    }
}

fn timed_out(timeout: Duration, what: impl Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("timed out after {timeout:?}: {what}"),
    )
}

/// Writes all of `parts` with as few system calls as possible (header and payload leave in one
/// segment, which matters with Nagle disabled).
fn write_all_vectored(mut stream: &TcpStream, mut parts: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut parts, 0);
    while !parts.is_empty() {
        match stream.write_vectored(parts) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => IoSlice::advance_slices(&mut parts, written),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(2);

    /// Binds one listener per rank on 127.0.0.1, then runs `body` on a thread per rank with
    /// its connected ring; returns the results in rank order.
    fn with_ring<T: Send>(
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
    fn chunks_cover_the_buffer_with_sizes_within_one() {
        for (len, world) in [(0, 3), (2, 4), (7, 3), (1001, 4), (12, 4)] {
            let chunks: Vec<_> = (0..world).map(|c| chunk(len, world, c)).collect();
            assert_eq!(chunks[0].start, 0);
            assert_eq!(chunks[world - 1].end, len);
            assert!(chunks.windows(2).all(|w| w[0].end == w[1].start));
            let sizes: Vec<_> = chunks.iter().map(|c| c.len()).collect();
            assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
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
                        ring.all_reduce(&mut data, op).expect("all_reduce");
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
            ring.all_reduce(&mut data, ReduceOp::Sum).unwrap();
            ring.all_reduce(&mut data, ReduceOp::Mean).unwrap();
            ring.broadcast(&mut data, 0).unwrap();
            ring.barrier().unwrap();
            let bad_root = ring.broadcast(&mut data, 1).unwrap_err();
            (data, bad_root)
        });
        let (data, bad_root) = &results[0];
        assert_eq!(*data, sample(0, 9));
        assert!(matches!(bad_root, RingError::Invalid(_)), "{bad_root}");
    }

    #[test]
    fn dead_peer_fails_all_reduce_within_the_timeout() {
        let results = with_ring(3, TIMEOUT, |mut ring| {
            if ring.rank() == 1 {
                return None;
            }
            let start = Instant::now();
            let error = ring
                .all_reduce(&mut sample(0, 1001), ReduceOp::Mean)
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
            assert!(matches!(again, RingError::Broken { .. }), "{again}");
        }
    }

    #[test]
    fn stalled_peer_times_out() {
        let timeout = Duration::from_millis(300);
        let results = with_ring(2, timeout, |mut ring| {
            if ring.rank() == 1 {
                thread::sleep(timeout * 3);
                return None;
            }
            Some(ring.barrier().unwrap_err())
        });
        let error = results[0].as_ref().unwrap().to_string();
        assert!(error.contains("timed out"), "{error}");
    }

    #[test]
    fn different_lengths_are_a_length_mismatch() {
        let results = with_ring(2, TIMEOUT, |mut ring| {
            let mut data = sample(0, 10 + 2 * ring.rank());
            ring.all_reduce(&mut data, ReduceOp::Sum).unwrap_err()
        });
        let mismatches = results
            .iter()
            .filter(|e| matches!(e, RingError::LengthMismatch { .. }))
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
        assert!(matches!(error, RingError::Connect { .. }), "{error}");
        assert!(error.to_string().contains("timed out"), "{error}");
    }
}
