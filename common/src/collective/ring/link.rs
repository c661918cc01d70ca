//! One rank's two connections, how they are made (connect, accept, handshake) and the
//! messages that travel on them.

use std::io::{self, IoSlice};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use super::io::{
    HEADER_LEN, describe_header, encode_header, io_error, read_exact_by, timed_out, write_all_by,
};
use super::schedule::broadcast_segments;
use crate::collective::{CollectiveError, WireFormat};

/// Pause between attempts to connect to a rank whose listener is not accepting yet.
const CONNECT_RETRY: Duration = Duration::from_millis(20);
/// Pause between polls of the non-blocking listener while waiting for the previous rank.
const ACCEPT_POLL: Duration = Duration::from_millis(5);
/// Send and receive buffer requested for every ring socket: a few segments, so that the sender
/// rarely blocks while the neighbour is busy reducing (Linux caps it at `net.core.wmem_max`).
const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// One rank's two connections: it sends to `next` and receives from `prev`.
#[derive(Debug)]
pub(super) struct Links {
    pub(super) rank: usize,
    pub(super) world_size: usize,
    /// Deadline of every operation, counted from its start.
    pub(super) timeout: Duration,
    /// To the next rank, which receives what this rank sends.
    pub(super) next: TcpStream,
    pub(super) next_addr: SocketAddr,
    /// From the previous rank, whose messages this rank receives.
    pub(super) prev: TcpStream,
    pub(super) prev_addr: SocketAddr,
}

impl Links {
    /// Connects to the next rank, accepts the previous one and checks both handshakes.
    ///
    /// Sending the hello right after connecting cannot block (it fits any socket buffer), so
    /// every rank reaches its accept and the ring forms whatever order ranks start in.
    pub(super) fn establish(
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
            .map_err(|error| CollectiveError::Connect {
                rank,
                peer: next_addr,
                error,
            })?;
        let hello = encode_hello(rank, world_size);
        let fail = |op, peer, source| io_error(rank, op, peer, source, timeout);
        write_all_by(&next, &mut [IoSlice::new(&hello)], deadline, timeout)
            .map_err(|e| fail("sending the handshake", next_addr, e))?;

        let (prev, remote) = accept_within(listener, timeout)
            .and_then(|(stream, remote)| Ok((configure(stream)?, remote)))
            .map_err(|error| CollectiveError::Accept {
                rank,
                addr: peers[rank],
                error,
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

    /// Passes root's buffer along the ring, segment by segment.
    ///
    /// The rank just before the root does not forward, so the chain has no cycle and blocking
    /// sends cannot deadlock. Segments are [`broadcast_segments`], whose count and sizes pin the
    /// total length, so ranks with different buffer lengths get a mismatch.
    pub(super) fn broadcast(
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
    pub(super) fn send(
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
    pub(super) fn recv(
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

    /// Closes both directions so blocked calls return and neighbours see the failure at once.
    pub(super) fn shut_down(&self) {
        // Best effort: a stream the peer already closed may refuse the shutdown; either way it
        // carries no more traffic.
        let _ = self.next.shutdown(Shutdown::Both);
        let _ = self.prev.shutdown(Shutdown::Both);
    }

    pub(super) fn io_error(
        &self,
        op: &'static str,
        peer: SocketAddr,
        source: io::Error,
    ) -> CollectiveError {
        io_error(self.rank, op, peer, source, self.timeout)
    }
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
