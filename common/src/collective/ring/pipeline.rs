//! The pipelined all-reduce: this thread receives and reduces while a scoped thread sends,
//! each side waiting on the other's progress over a buffer they share.

use std::marker::PhantomData;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::thread;
use std::time::Instant;

use super::Scratch;
use super::io::timed_out;
use super::link::Links;
use super::schedule::{SEGMENT_VALUES, Schedule};
use crate::collective::{CollectiveError, WireFormat};

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
pub(super) enum Stalled {
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

impl Links {
    /// Pipelined ring all-reduce (see the module doc): this thread receives and reduces, a
    /// scoped thread sends.
    pub(super) fn all_reduce(
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
}
