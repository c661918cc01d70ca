//! NCCL collectives on NVIDIA GPUs (feature `cuda`), through cudarc's NCCL bindings.
//!
//! Rank 0 creates an [`NcclId`] (128 bytes) and the coordinator hands it to every rank in the
//! assignment; each rank then joins the communicator on its GPU. Operations are enqueued on a
//! stream of their own and waited for by polling: the wait watches the stream, NCCL's
//! asynchronous error (`ncclCommGetAsyncError`), the deadline and the [`AbortHandle`], and
//! aborts the communicator (`ncclCommAbort`) on any of them, so a dead peer never hangs a rank.
//!
//! [`Nccl::all_reduce_device`] reduces a buffer already on the GPU in place: training hands it
//! each gradient bucket's own allocation (see `collective::device`). The [`Collective`] methods
//! take host buffers (the initial broadcast, the loss, evaluation counts) and stage them through
//! a device buffer the communicator keeps. NCCL reduces in the buffer's own type, so only the
//! f32 wire format is offered: compression is for the TCP ring.
//!
//! cudarc loads `libnccl.so` (and a few versioned names, but not `libnccl.so.2`, the name NCCL's
//! packages and PyTorch's wheels ship): a folder on `LD_LIBRARY_PATH` needs a `libnccl.so` link.

use std::ffi::CStr;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtrMut};
use cudarc::nccl::sys;

use super::{
    AbortHandle, Collective, CollectiveError, Health, NCCL_ID_BYTES, ReduceOp, WireFormat,
};

/// Pause between polls of a running operation: short against a collective's duration, long
/// enough not to spin a core.
const POLL: Duration = Duration::from_micros(50);

/// The unique id ([`NCCL_ID_BYTES`] bytes) every rank of one communicator joins with.
#[derive(Clone, Copy)]
pub struct NcclId(sys::ncclUniqueId);

impl NcclId {
    /// Creates a fresh id (on rank 0; needs libnccl, not a GPU).
    pub fn new() -> Result<NcclId, CollectiveError> {
        check_libraries()?;
        let mut id = std::mem::MaybeUninit::uninit();
        // SAFETY: ncclGetUniqueId writes the whole id on success.
        let id = unsafe {
            nccl_result(sys::ncclGetUniqueId(id.as_mut_ptr()), 0, "ncclGetUniqueId")?;
            id.assume_init()
        };
        Ok(NcclId(id))
    }

    /// The id as handed out by the coordinator.
    pub fn from_bytes(bytes: &[u8]) -> Result<NcclId, CollectiveError> {
        let bytes: &[u8; NCCL_ID_BYTES] = bytes.try_into().map_err(|_| {
            CollectiveError::Invalid(format!(
                "an NCCL unique id has {NCCL_ID_BYTES} bytes, the assignment holds {}",
                bytes.len()
            ))
        })?;
        Ok(NcclId(sys::ncclUniqueId {
            internal: bytes.map(|b| b as std::ffi::c_char),
        }))
    }

    /// The id as the coordinator hands it out.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.internal.iter().map(|&c| c as u8).collect()
    }
}

/// A joined NCCL communicator on one GPU.
pub struct Nccl {
    rank: usize,
    world_size: usize,
    timeout: Duration,
    comm: sys::ncclComm_t,
    stream: Arc<CudaStream>,
    /// Device copy of host buffers passed to the [`Collective`] methods; grows as needed.
    staging: Option<CudaSlice<f32>>,
    health: Health,
}

// SAFETY: an NCCL communicator may be used from any thread as long as calls do not overlap;
// `Nccl` is only reached through `&mut self` (or moved), so they never do.
unsafe impl Send for Nccl {}

/// The raw communicator handle, moved to the thread that initialises it.
struct SendComm(sys::ncclComm_t);
// SAFETY: the handle is only used by one thread at a time (see `Nccl`).
unsafe impl Send for SendComm {}

impl Nccl {
    /// Joins the communicator `id` as `rank` of `world_size` on GPU `ordinal`. `timeout` bounds
    /// the join (every rank must arrive) and every later operation.
    pub fn connect(
        rank: usize,
        world_size: usize,
        id: NcclId,
        ordinal: usize,
        timeout: Duration,
    ) -> Result<Nccl, CollectiveError> {
        if rank >= world_size || i32::try_from(world_size).is_err() || timeout.is_zero() {
            return Err(CollectiveError::Invalid(format!(
                "NCCL rank {rank} of a world of {world_size} with timeout {timeout:?}"
            )));
        }
        check_libraries()?;
        let driver = |e: cudarc::driver::DriverError| CollectiveError::Nccl {
            rank,
            message: format!("CUDA device {ordinal}: {e}"),
        };
        let context = CudaContext::new(ordinal).map_err(driver)?;
        let stream = context.new_stream().map_err(driver)?;
        // ncclCommInitRank blocks until every rank has joined and has no timeout of its own:
        // it runs on a helper thread, and a rank that gives up leaves that thread behind
        // (the process is about to report the failure and exit or re-rendezvous).
        let (done, joined) = mpsc::channel();
        thread::spawn(move || {
            let mut comm = std::ptr::null_mut();
            // SAFETY: `comm` receives the handle; rank and size were checked above.
            let status = unsafe {
                context.bind_to_thread().ok();
                sys::ncclCommInitRank(&mut comm, world_size as i32, id.0, rank as i32)
            };
            let _ = done.send((status, SendComm(comm)));
        });
        let (status, comm) = joined
            .recv_timeout(timeout)
            .map_err(|_| CollectiveError::Nccl {
                rank,
                message: format!("not every rank joined the communicator within {timeout:?}"),
            })?;
        nccl_result(status, rank, "ncclCommInitRank")?;
        Ok(Nccl {
            rank,
            world_size,
            timeout,
            comm: comm.0,
            stream,
            staging: None,
            health: Health::default(),
        })
    }

    /// In-place all-reduce of `len` f32 values at device address `ptr`.
    ///
    /// # Safety
    /// `ptr` must point to `len` f32 values on this communicator's GPU that nothing else uses
    /// until the call returns.
    pub unsafe fn all_reduce_device(
        &mut self,
        ptr: cudarc::driver::sys::CUdeviceptr,
        len: usize,
        op: ReduceOp,
    ) -> Result<(), CollectiveError> {
        self.ready()?;
        let op = match op {
            ReduceOp::Sum => sys::ncclRedOp_t::ncclSum,
            ReduceOp::Mean => sys::ncclRedOp_t::ncclAvg,
        };
        let buffer = ptr as *mut std::ffi::c_void;
        // SAFETY: the caller vouches for the buffer; the stream belongs to this communicator.
        let status = unsafe {
            sys::ncclAllReduce(
                buffer,
                buffer,
                len,
                sys::ncclDataType_t::ncclFloat32,
                op,
                self.comm,
                self.stream.cu_stream() as sys::cudaStream_t,
            )
        };
        self.check(status, "ncclAllReduce")?;
        self.wait()
    }

    /// Fails at once when aborted or broken.
    fn ready(&mut self) -> Result<(), CollectiveError> {
        let ready = self.health.ready(self.rank);
        if let Err(CollectiveError::Aborted { .. }) = ready {
            self.fail();
        }
        ready
    }

    /// Waits for the stream's work, polling NCCL's asynchronous error, the abort flag and the
    /// deadline; aborts the communicator on any of them.
    fn wait(&mut self) -> Result<(), CollectiveError> {
        let rank = self.rank;
        let deadline = Instant::now() + self.timeout;
        let event = self
            .stream
            .record_event(None)
            .map_err(|e| self.driver_error(e))?;
        loop {
            match event.try_is_complete() {
                Ok(true) => return self.async_error(),
                Ok(false) => {}
                Err(e) => return Err(self.driver_error(e)),
            }
            self.async_error()?;
            if self.health.abort_handle().is_aborted() {
                self.fail();
                return Err(CollectiveError::Aborted { rank });
            }
            if Instant::now() >= deadline {
                self.fail();
                return Err(CollectiveError::Nccl {
                    rank,
                    message: format!(
                        "the operation did not finish within {:?}; communicator aborted",
                        self.timeout
                    ),
                });
            }
            thread::sleep(POLL);
        }
    }

    fn async_error(&mut self) -> Result<(), CollectiveError> {
        let mut status = sys::ncclResult_t::ncclSuccess;
        // SAFETY: a live communicator and a valid out pointer.
        let call = unsafe { sys::ncclCommGetAsyncError(self.comm, &mut status) };
        self.check(call, "ncclCommGetAsyncError")?;
        match status {
            sys::ncclResult_t::ncclSuccess | sys::ncclResult_t::ncclInProgress => Ok(()),
            error => {
                self.fail();
                nccl_result(error, self.rank, "an NCCL operation (asynchronous error)")
            }
        }
    }

    fn check(&mut self, status: sys::ncclResult_t, call: &str) -> Result<(), CollectiveError> {
        let result = nccl_result(status, self.rank, call);
        if result.is_err() {
            self.fail();
        }
        result
    }

    /// Aborts the communicator once: kernels in flight are cancelled, later calls fail.
    fn fail(&mut self) {
        if self.health.mark_broken() {
            // SAFETY: the communicator is live (not yet aborted or destroyed).
            unsafe { sys::ncclCommAbort(self.comm) };
        }
    }

    fn driver_error(&mut self, error: cudarc::driver::DriverError) -> CollectiveError {
        self.fail();
        CollectiveError::Nccl {
            rank: self.rank,
            message: format!("CUDA: {error}"),
        }
    }

    /// Copies `data` into the staging buffer, runs `op` on its device pointer, copies back.
    fn staged(
        &mut self,
        data: &mut [f32],
        op: impl FnOnce(&mut Self, cudarc::driver::sys::CUdeviceptr) -> Result<(), CollectiveError>,
    ) -> Result<(), CollectiveError> {
        self.ready()?;
        if data.is_empty() {
            return Ok(());
        }
        if self.staging.as_ref().is_none_or(|s| s.len() < data.len()) {
            let fresh = self.stream.alloc_zeros::<f32>(data.len());
            self.staging = Some(fresh.map_err(|e| self.driver_error(e))?);
        }
        let mut staging = self.staging.take().expect("allocated above");
        let result = (|| {
            let mut view = staging.slice_mut(..data.len());
            self.stream
                .memcpy_htod(&*data, &mut view)
                .map_err(|e| self.driver_error(e))?;
            let ptr = {
                let (ptr, _record) = view.device_ptr_mut(&self.stream);
                ptr
            };
            // `op` waits (with its deadline) before the copy back is queued: a copy into pageable
            // host memory blocks, with no deadline, until the stream gets to it.
            op(self, ptr)?;
            self.stream
                .memcpy_dtoh(&view, data)
                .map_err(|e| self.driver_error(e))?;
            self.wait()
        })();
        self.staging = Some(staging);
        result
    }
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce(
        &mut self,
        data: &mut [f32],
        op: ReduceOp,
        wire: WireFormat,
    ) -> Result<(), CollectiveError> {
        if wire != WireFormat::F32 {
            return Err(CollectiveError::Invalid(format!(
                "NCCL reduces in the buffer's type, so it takes f32 only, not {wire} \
                 (set cluster.gradient_wire = \"f32\")"
            )));
        }
        let len = data.len();
        // SAFETY: the staging buffer holds `len` values and is used by nothing else.
        self.staged(data, |nccl, ptr| unsafe {
            nccl.all_reduce_device(ptr, len, op)
        })
    }

    fn broadcast(&mut self, data: &mut [f32], root: usize) -> Result<(), CollectiveError> {
        if root >= self.world_size {
            return Err(CollectiveError::Invalid(format!(
                "broadcast root {root} is not a rank of a world of size {}",
                self.world_size
            )));
        }
        let len = data.len();
        self.staged(data, |nccl, ptr| {
            let buffer = ptr as *mut std::ffi::c_void;
            // SAFETY: the staging buffer holds `len` values; the stream is the communicator's.
            let status = unsafe {
                sys::ncclBroadcast(
                    buffer,
                    buffer,
                    len,
                    sys::ncclDataType_t::ncclFloat32,
                    root as i32,
                    nccl.comm,
                    nccl.stream.cu_stream() as sys::cudaStream_t,
                )
            };
            nccl.check(status, "ncclBroadcast")?;
            nccl.wait()
        })
    }

    fn abort_handle(&self) -> AbortHandle {
        self.health.abort_handle().clone()
    }

    fn as_nccl(&mut self) -> Option<&mut Nccl> {
        Some(self)
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        if self.health.mark_broken() {
            // SAFETY: the communicator is live and no operation is running (`&mut self`).
            unsafe { sys::ncclCommDestroy(self.comm) };
        }
    }
}

/// Loads libcuda and libnccl up front: cudarc panics when a library is missing, and the
/// `libnccl.so` name trips up most installations.
fn check_libraries() -> Result<(), CollectiveError> {
    // SAFETY: probing loads and unloads the libraries; nothing of them is called.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(CollectiveError::Invalid(
            "no CUDA driver (libcuda.so) found: NCCL needs an NVIDIA GPU and its driver".into(),
        ));
    }
    // SAFETY: as above.
    if !unsafe { sys::is_culib_present() } {
        return Err(CollectiveError::Invalid(
            "libnccl.so not found: put a folder holding libnccl.so on LD_LIBRARY_PATH \
             (NCCL and PyTorch's nvidia-nccl wheel ship libnccl.so.2 only: add a libnccl.so \
             link to it)"
                .into(),
        ));
    }
    Ok(())
}

/// `Ok` for success, else the error with NCCL's own description.
fn nccl_result(status: sys::ncclResult_t, rank: usize, call: &str) -> Result<(), CollectiveError> {
    match status {
        sys::ncclResult_t::ncclSuccess => Ok(()),
        error => {
            // SAFETY: ncclGetErrorString returns a static NUL-terminated string.
            let text = unsafe { CStr::from_ptr(sys::ncclGetErrorString(error)) };
            Err(CollectiveError::Nccl {
                rank,
                message: format!("{call} failed: {} ({error:?})", text.to_string_lossy()),
            })
        }
    }
}
