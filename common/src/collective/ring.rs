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

use std::fmt::Display;
use std::io::{self, IoSlice, Read, Write};
use std::marker::PhantomData;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::{AbortHandle, Collective, CollectiveError, ReduceOp, WireFormat};

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
/// Values per pipelined all-reduce segment (512 KiB of f32): small enough that a step's chunk of
/// a large bucket spans several segments in flight, large enough that the per-message header,
/// system calls and thread hand-offs stay a small fraction of the transfer.
const SEGMENT_VALUES: usize = 128 * 1024;
/// Send and receive buffer requested for every ring socket: a few segments, so that the sender
/// rarely blocks while the neighbour is busy reducing (Linux caps it at `net.core.wmem_max`).
const SOCKET_BUFFER_BYTES: usize = 4 << 20;
/// Message header: value count (`u64`) and wire format code (`u32`).
const HEADER_LEN: usize = 12;

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
    abort: AbortHandle,
    /// Reused encode/decode buffers (one segment each), so steps do not allocate.
    scratch: Scratch,
    broken: bool,
}

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
        let abort = AbortHandle::default();
        let links = match world_size {
            1 => None,
            _ => {
                let links = Links::establish(rank, peers, &listener, timeout)?;
                for stream in [&links.next, &links.prev] {
                    let clone = stream.try_clone().map_err(|source| CollectiveError::Io {
                        rank,
                        op: "cloning a socket for abort",
                        peer: links.next_addr,
                        source,
                    })?;
                    abort.watch(clone);
                }
                Some(links)
            }
        };
        Ok(Ring {
            rank,
            world_size,
            timeout,
            links,
            abort,
            scratch: Scratch::default(),
            broken: false,
        })
    }

    /// Runs `op` on the links before the operation's deadline, or does nothing for a single
    /// rank; breaks the ring on failure (after an abort, the failure is reported as such).
    fn run(
        &mut self,
        op: impl FnOnce(&Links, Instant, &mut Scratch) -> Result<(), CollectiveError>,
    ) -> Result<(), CollectiveError> {
        let rank = self.rank;
        if self.abort.is_aborted() {
            self.broken = true;
            return Err(CollectiveError::Aborted { rank });
        }
        let Some(links) = &self.links else {
            return Ok(());
        };
        if self.broken {
            return Err(CollectiveError::Broken { rank });
        }
        let deadline = Instant::now() + self.timeout;
        let result = op(links, deadline, &mut self.scratch);
        if result.is_err() {
            links.shut_down();
            self.broken = true;
        }
        result.map_err(|error| match self.abort.is_aborted() {
            true => CollectiveError::Aborted { rank },
            false => error,
        })
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
        self.abort.clone()
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

/// Which ranges of the buffer one rank sends and receives at each all-reduce unit.
///
/// Step `g` of `2 (W - 1)` sends chunk `rank - g` and receives chunk `rank - g - 1` (mod `W`):
/// the first `W - 1` steps reduce, the rest gather. Every chunk is cut into the same number of
/// segments, so unit `(g, s)` of the sender is unit `(g - 1, s)` of the receiver.
struct Schedule {
    rank: usize,
    world: usize,
    len: usize,
    segments: usize,
}

impl Schedule {
    fn new(rank: usize, world: usize, len: usize) -> Self {
        let segments = len.div_ceil(world).div_ceil(SEGMENT_VALUES).max(1);
        Schedule {
            rank,
            world,
            len,
            segments,
        }
    }

    fn steps(&self) -> usize {
        2 * (self.world - 1)
    }

    /// Units completed once unit `(step, segment)` is (the progress counters count units).
    fn units_through(&self, step: usize, segment: usize) -> usize {
        step * self.segments + segment + 1
    }

    fn sent(&self, step: usize, segment: usize) -> Range<usize> {
        self.range((self.rank + 2 * self.world - step) % self.world, segment)
    }

    fn received(&self, step: usize, segment: usize) -> Range<usize> {
        self.range(
            (self.rank + 2 * self.world - step - 1) % self.world,
            segment,
        )
    }

    fn is_reduce(&self, step: usize) -> bool {
        step < self.world - 1
    }

    fn range(&self, chunk_index: usize, segment: usize) -> Range<usize> {
        let chunk = chunk(self.len, self.world, chunk_index);
        let part = self::chunk(chunk.len(), self.segments, segment);
        chunk.start + part.start..chunk.start + part.end
    }
}

/// How far each side of a pipelined all-reduce has come, and whether either side failed.
#[derive(Default)]
struct Pipeline {
    /// Units the receiving side has reduced (or gathered) into the buffer.
    received: Progress,
    /// Units the sending side has handed to the kernel.
    sent: Progress,
    failed: AtomicBool,
}

#[derive(Default)]
struct Progress {
    done: Mutex<usize>,
    changed: Condvar,
}

impl Progress {
    fn advance(&self) {
        *self.done.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.changed.notify_all();
    }

    fn wake(&self) {
        let _done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        self.changed.notify_all();
    }
}

impl Pipeline {
    /// Marks the operation failed and wakes the other side; true for the first failure (whose
    /// error is the one reported; the other side's is a consequence).
    fn fail(&self) -> bool {
        let first = !self.failed.swap(true, Ordering::SeqCst);
        self.received.wake();
        self.sent.wake();
        first
    }

    /// Blocks until `progress` has completed `units`, the other side fails, or the deadline.
    fn wait(&self, progress: &Progress, units: usize, deadline: Instant) -> Result<(), Stalled> {
        let mut done = progress.done.lock().unwrap_or_else(|e| e.into_inner());
        while *done < units {
            if self.failed.load(Ordering::SeqCst) {
                return Err(Stalled::OtherSideFailed);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Stalled::Deadline);
            }
            done = progress
                .changed
                .wait_timeout(done, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }
}

/// Why one side of the pipeline stopped waiting for the other.
enum Stalled {
    OtherSideFailed,
    Deadline,
}

/// The all-reduce buffer, shared by the receiving side (which writes the ranges it receives)
/// and the sending thread (which reads the ranges it sends).
///
/// The [`Pipeline`] counters order every access: the sender reads a range only after the
/// receiver finished writing it, and the receiver overwrites a range only after the sender
/// finished reading it, so no range is ever read and written at once.
struct SharedBuffer<'a> {
    ptr: *mut f32,
    len: usize,
    _data: PhantomData<&'a mut [f32]>,
}

// SAFETY: the buffer is only reached through `read` and `write`, whose callers follow the
// pipeline's ordering (see the type's doc), so sharing it between the two sides is sound.
unsafe impl Send for SharedBuffer<'_> {}
unsafe impl Sync for SharedBuffer<'_> {}

impl<'a> SharedBuffer<'a> {
    fn new(data: &'a mut [f32]) -> Self {
        SharedBuffer {
            ptr: data.as_mut_ptr(),
            len: data.len(),
            _data: PhantomData,
        }
    }

    /// # Safety
    /// No one writes `range` while the returned slice lives.
    unsafe fn read(&self, range: Range<usize>) -> &[f32] {
        assert!(range.start <= range.end && range.end <= self.len);
        // SAFETY: in bounds (checked), and the caller guarantees no concurrent writer.
        unsafe { std::slice::from_raw_parts(self.ptr.add(range.start), range.len()) }
    }

    /// # Safety
    /// No one else reads or writes `range` while the returned slice lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn write(&self, range: Range<usize>) -> &mut [f32] {
        assert!(range.start <= range.end && range.end <= self.len);
        // SAFETY: in bounds (checked), and the caller guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(range.start), range.len()) }
    }
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
    ) -> Result<Links, CollectiveError> {
        let deadline = Instant::now() + timeout;
        let world_size = peers.len();
        let next_rank = (rank + 1) % world_size;
        let prev_rank = (rank + world_size - 1) % world_size;
        let next_addr = peers[next_rank];
        let next = connect_within(next_addr, timeout)
            .and_then(configure)
            .map_err(|source| CollectiveError::Connect {
                rank,
                peer: next_addr,
                source,
            })?;
        let hello = encode_hello(rank, world_size);
        let fail = |op, peer, source| io_error(rank, op, peer, source, timeout);
        write_all_by(&next, &mut [IoSlice::new(&hello)], deadline, timeout)
            .map_err(|e| fail("sending the handshake", next_addr, e))?;

        let (prev, remote) = accept_within(listener, timeout)
            .and_then(|(stream, remote)| Ok((configure(stream)?, remote)))
            .map_err(|source| CollectiveError::Accept {
                rank,
                addr: peers[rank],
                source,
            })?;
        let theirs = read_hello(&prev, deadline, timeout)
            .map_err(|e| fail("reading the handshake", remote, e))?;
        check_hello(rank, world_size, (prev_rank, remote), theirs)?;
        write_all_by(&prev, &mut [IoSlice::new(&hello)], deadline, timeout)
            .map_err(|e| fail("answering the handshake", remote, e))?;

        let theirs = read_hello(&next, deadline, timeout)
            .map_err(|e| fail("reading the handshake", next_addr, e))?;
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

    /// Pipelined ring all-reduce (see the module doc): this thread receives and reduces, a
    /// scoped thread sends.
    fn all_reduce(
        &self,
        data: &mut [f32],
        scale: Option<f32>,
        wire: WireFormat,
        deadline: Instant,
        scratch: &mut Scratch,
    ) -> Result<(), CollectiveError> {
        let schedule = Schedule::new(self.rank, self.world_size, data.len());
        let segment_bytes =
            data.len().div_ceil(self.world_size).min(SEGMENT_VALUES + 1) * wire.bytes_per_value();
        scratch.send.resize(segment_bytes, 0);
        scratch.recv.resize(segment_bytes, 0);
        let Scratch { send, recv } = scratch;
        let buffer = SharedBuffer::new(data);
        let pipeline = Pipeline::default();
        let (buffer, pipeline, schedule) = (&buffer, &pipeline, &schedule);
        thread::scope(|scope| {
            let sender = scope.spawn(move || {
                self.send_all(schedule, buffer, pipeline, wire, deadline, send)
                    .map_err(|error| (pipeline.fail(), error))
            });
            let received = self
                .receive_all(schedule, buffer, pipeline, (scale, wire), deadline, recv)
                .map_err(|error| {
                    let first = pipeline.fail();
                    self.shut_down();
                    (first, error)
                });
            let sent = sender
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            match (received, sent) {
                (Ok(()), Ok(())) => Ok(()),
                (Err((_, error)), Ok(())) | (Ok(()), Err((_, error))) => Err(error),
                (Err((true, error)), Err(_)) | (Err(_), Err((_, error))) => Err(error),
            }
        })
    }

    /// The sending side: each unit waits until the receiving side has reduced it (the first
    /// step sends this rank's own values), then goes out in the wire format.
    fn send_all(
        &self,
        schedule: &Schedule,
        buffer: &SharedBuffer<'_>,
        pipeline: &Pipeline,
        wire: WireFormat,
        deadline: Instant,
        encoded: &mut [u8],
    ) -> Result<(), CollectiveError> {
        for step in 0..schedule.steps() {
            for segment in 0..schedule.segments {
                if step > 0 {
                    let units = schedule.units_through(step - 1, segment);
                    pipeline
                        .wait(&pipeline.received, units, deadline)
                        .map_err(|stalled| self.stalled(stalled, "waiting to send"))?;
                }
                // SAFETY: the receiving side finished writing this range (waited above) and
                // does not write it again before `sent` passes this unit.
                let values = unsafe { buffer.read(schedule.sent(step, segment)) };
                let payload = match wire {
                    WireFormat::F32 => bytemuck::cast_slice(values),
                    _ => {
                        let bytes = &mut encoded[..values.len() * wire.bytes_per_value()];
                        wire.encode(values, bytes);
                        bytes
                    }
                };
                self.send(values.len(), wire, payload, deadline)?;
                pipeline.sent.advance();
            }
        }
        Ok(())
    }

    /// The receiving side: reduce-scatter adds incoming segments (and the last step finalises
    /// the owned chunk: mean scaling, wire rounding); all-gather overwrites, after the sending
    /// side is done with what it overwrites.
    fn receive_all(
        &self,
        schedule: &Schedule,
        buffer: &SharedBuffer<'_>,
        pipeline: &Pipeline,
        (scale, wire): (Option<f32>, WireFormat),
        deadline: Instant,
        encoded: &mut [u8],
    ) -> Result<(), CollectiveError> {
        let world = self.world_size;
        for step in 0..schedule.steps() {
            for segment in 0..schedule.segments {
                let range = schedule.received(step, segment);
                if !schedule.is_reduce(step) {
                    let units = schedule.units_through(step + 1 - world, segment);
                    pipeline
                        .wait(&pipeline.sent, units, deadline)
                        .map_err(|stalled| self.stalled(stalled, "waiting to receive"))?;
                }
                // SAFETY: the sending side reads this range only before `sent` passes the
                // unit waited for above (all-gather) or after `received` passes this unit.
                let values = unsafe { buffer.write(range) };
                let bytes = values.len() * wire.bytes_per_value();
                if schedule.is_reduce(step) {
                    self.recv(values.len(), wire, &mut encoded[..bytes], deadline)?;
                    wire.add_decoded(&encoded[..bytes], values);
                    if step == world - 2 {
                        if let Some(scale) = scale {
                            values.iter_mut().for_each(|v| *v *= scale);
                        }
                        wire.round_in_place(values);
                    }
                } else if wire == WireFormat::F32 {
                    self.recv(
                        values.len(),
                        wire,
                        bytemuck::cast_slice_mut(values),
                        deadline,
                    )?;
                } else {
                    self.recv(values.len(), wire, &mut encoded[..bytes], deadline)?;
                    wire.decode(&encoded[..bytes], values);
                }
                pipeline.received.advance();
            }
        }
        Ok(())
    }

    /// Passes root's buffer along the ring, segment by segment.
    ///
    /// The rank just before the root does not forward, so the chain has no cycle and blocking
    /// sends cannot deadlock. Segments are [`broadcast_segments`], whose count and sizes pin the
    /// total length, so ranks with different buffer lengths get a mismatch.
    fn broadcast(
        &self,
        data: &mut [f32],
        root: usize,
        deadline: Instant,
    ) -> Result<(), CollectiveError> {
        let world = self.world_size;
        let forwards = (self.rank + 1) % world != root;
        for segment in broadcast_segments(data.len()) {
            let segment = &mut data[segment];
            let count = segment.len();
            if self.rank != root {
                let bytes = bytemuck::cast_slice_mut(segment);
                self.recv(count, WireFormat::F32, bytes, deadline)?;
            }
            if forwards {
                let bytes = bytemuck::cast_slice(segment);
                self.send(count, WireFormat::F32, bytes, deadline)?;
            }
        }
        Ok(())
    }

    /// Sends one message of `count` values encoded in `payload` to the next rank.
    fn send(
        &self,
        count: usize,
        wire: WireFormat,
        payload: &[u8],
        deadline: Instant,
    ) -> Result<(), CollectiveError> {
        let header = encode_header(count, wire);
        let mut parts = [IoSlice::new(&header), IoSlice::new(payload)];
        write_all_by(&self.next, &mut parts, deadline, self.timeout)
            .map_err(|e| self.io_error("sending", self.next_addr, e))
    }

    /// Receives one message from the previous rank into `payload`, checking that it holds
    /// `count` values in the `wire` format.
    fn recv(
        &self,
        count: usize,
        wire: WireFormat,
        payload: &mut [u8],
        deadline: Instant,
    ) -> Result<(), CollectiveError> {
        let read_error = |e| self.io_error("receiving", self.prev_addr, e);
        let mut header = [0; HEADER_LEN];
        read_exact_by(&self.prev, &mut header, deadline, self.timeout).map_err(read_error)?;
        let expected = encode_header(count, wire);
        if header != expected {
            return Err(CollectiveError::Mismatch {
                rank: self.rank,
                peer: self.prev_addr,
                expected: describe_header(&expected),
                got: describe_header(&header),
            });
        }
        read_exact_by(&self.prev, payload, deadline, self.timeout).map_err(read_error)
    }

    /// The error of a side that stopped waiting: its deadline passed (reported against the
    /// previous rank, whose data never came), or the other side failed first.
    fn stalled(&self, stalled: Stalled, op: &'static str) -> CollectiveError {
        match stalled {
            Stalled::OtherSideFailed => CollectiveError::Broken { rank: self.rank },
            Stalled::Deadline => self.io_error(
                op,
                self.prev_addr,
                timed_out(self.timeout, "the pipeline made no progress"),
            ),
        }
    }

    /// Closes both directions so blocked calls return and neighbours see the failure at once.
    fn shut_down(&self) {
        // Best effort: a stream the peer already closed may refuse the shutdown; either way it
        // carries no more traffic.
        let _ = self.next.shutdown(Shutdown::Both);
        let _ = self.prev.shutdown(Shutdown::Both);
    }

    fn io_error(&self, op: &'static str, peer: SocketAddr, source: io::Error) -> CollectiveError {
        io_error(self.rank, op, peer, source, self.timeout)
    }
}

fn encode_header(count: usize, wire: WireFormat) -> [u8; HEADER_LEN] {
    let mut header = [0; HEADER_LEN];
    header[..8].copy_from_slice(&(count as u64).to_le_bytes());
    header[8..].copy_from_slice(&u32::from(wire.code()).to_le_bytes());
    header
}

/// "N values in format F", for mismatch errors.
fn describe_header(header: &[u8; HEADER_LEN]) -> String {
    let (count, code) = header.split_at(8);
    let count = u64::from_le_bytes(count.try_into().expect("8 bytes"));
    let code = u32::from_le_bytes(code.try_into().expect("4 bytes"));
    let format = WireFormat::from_code(code)
        .map_or_else(|| format!("unknown format {code}"), |f| f.to_string());
    format!("{count} values in {format}")
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

/// Disables Nagle (every message is needed at once by a rank waiting for it) and asks for
/// socket buffers of [`SOCKET_BUFFER_BYTES`].
fn configure(stream: TcpStream) -> io::Result<TcpStream> {
    stream.set_nodelay(true)?;
    let socket = socket2::SockRef::from(&stream);
    socket.set_send_buffer_size(SOCKET_BUFFER_BYTES)?;
    socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES)?;
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
fn read_hello(stream: &TcpStream, deadline: Instant, timeout: Duration) -> io::Result<(u32, u32)> {
    let mut hello = [0; 8];
    read_exact_by(stream, &mut hello, deadline, timeout)?;
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
) -> Result<(), CollectiveError> {
    if their_rank as usize == expected_rank && their_world as usize == world_size {
        return Ok(());
    }
    Err(CollectiveError::Handshake(format!(
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
) -> CollectiveError {
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
    CollectiveError::Io {
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

/// Time left before `deadline`, or a timeout error once it has passed.
fn time_left(deadline: Instant, timeout: Duration) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(timed_out(timeout, "the operation's deadline passed"));
    }
    Ok(left)
}

/// Writes all of `parts` before `deadline` with as few system calls as possible (header and
/// payload leave in one segment, which matters with Nagle disabled).
fn write_all_by(
    mut stream: &TcpStream,
    mut parts: &mut [IoSlice<'_>],
    deadline: Instant,
    timeout: Duration,
) -> io::Result<()> {
    while !parts.is_empty() {
        stream.set_write_timeout(Some(time_left(deadline, timeout)?))?;
        match stream.write_vectored(parts) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => IoSlice::advance_slices(&mut parts, written),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Fills `buf` before `deadline`.
fn read_exact_by(
    mut stream: &TcpStream,
    mut buf: &mut [u8],
    deadline: Instant,
    timeout: Duration,
) -> io::Result<()> {
    while !buf.is_empty() {
        stream.set_read_timeout(Some(time_left(deadline, timeout)?))?;
        match stream.read(buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(read) => buf = &mut buf[read..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Barrier;

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
        assert!(*elapsed < Duration::from_secs(1), "abort took {elapsed:?}");
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
