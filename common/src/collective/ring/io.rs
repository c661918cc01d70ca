//! Framing and deadline I/O: message headers, socket reads and writes that give up at the
//! operation's deadline, and socket errors worded for the user.

use std::fmt::Display;
use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::collective::{CollectiveError, WireFormat};

/// Message header: value count (`u64`) and wire format code (`u32`).
pub(super) const HEADER_LEN: usize = 12;

pub(super) fn encode_header(count: usize, wire: WireFormat) -> [u8; HEADER_LEN] {
    let mut header = [0; HEADER_LEN];
    header[..8].copy_from_slice(&(count as u64).to_le_bytes());
    header[8..].copy_from_slice(&u32::from(wire.code()).to_le_bytes());
    header
}

/// "N values in format F", for mismatch errors.
pub(super) fn describe_header(header: &[u8; HEADER_LEN]) -> String {
    let (count, code) = header.split_at(8);
    let count = u64::from_le_bytes(count.try_into().expect("8 bytes"));
    let code = u32::from_le_bytes(code.try_into().expect("4 bytes"));
    let format = WireFormat::from_code(code)
        .map_or_else(|| format!("unknown format {code}"), |f| f.to_string());
    format!("{count} values in {format}")
}

/// Wraps a socket error with its context; stalls and closed peers get explicit wording
/// (a read timeout shows up as `WouldBlock` on Unix, whose message does not say "timed out").
pub(super) fn io_error(
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
        error: source,
    }
}

pub(super) fn timed_out(timeout: Duration, what: impl Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("timed out after {timeout:?}: {what}"),
    )
}

/// Time left before `deadline`, or a timeout error once it has passed.
pub(super) fn time_left(deadline: Instant, timeout: Duration) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(timed_out(timeout, "the operation's deadline passed"));
    }
    Ok(left)
}

/// Writes all of `parts` before `deadline` with as few system calls as possible (header and
/// payload leave in one segment, which matters with Nagle disabled).
pub(super) fn write_all_by(
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
pub(super) fn read_exact_by(
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
