//! The worker's communicator: the TCP ring, or NCCL when the run asks for it and this worker
//! was built with the `cuda` feature.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use anyhow::Context;
use incept_common::collective::{Collective, Ring};
use incept_common::config::CollectiveBackend;
use incept_common::proto::Assignment;

/// What this worker offers in its join request as the run's NCCL unique id: a fresh one from
/// a `cuda` build that finds libnccl (the coordinator keeps rank 0's), else nothing.
pub fn nccl_id_for_join() -> Vec<u8> {
    #[cfg(feature = "cuda")]
    match incept_common::collective::nccl::NcclId::new() {
        Ok(id) => return id.to_bytes(),
        Err(error) => tracing::debug!(%error, "no NCCL id offered"),
    }
    Vec::new()
}

/// Connects this rank to its peers with the run's `cluster.backend`.
pub fn connect(
    backend: CollectiveBackend,
    assignment: &Assignment,
    peers: &[SocketAddr],
    listener: TcpListener,
    timeout: Duration,
) -> anyhow::Result<Box<dyn Collective>> {
    let rank = assignment.rank as usize;
    match backend {
        CollectiveBackend::Ring => {
            let ring =
                Ring::connect(rank, peers, listener, timeout).context("connecting the ring")?;
            Ok(Box::new(ring))
        }
        CollectiveBackend::Nccl => connect_nccl(assignment, timeout),
    }
}

/// Joins the NCCL communicator of rank 0's id on GPU `LOCAL_RANK` (or Slurm's or Open MPI's
/// local rank; 0 when none is set), the GPU this worker trains on.
#[cfg(feature = "cuda")]
fn connect_nccl(assignment: &Assignment, timeout: Duration) -> anyhow::Result<Box<dyn Collective>> {
    use incept_common::collective::nccl::{Nccl, NcclId};
    let gpu = incept_common::device::local_rank()?;
    if assignment.nccl_id.is_empty() {
        anyhow::bail!(
            "rank 0 offered no NCCL unique id (is its worker built with --features cuda, with \
             libnccl.so on LD_LIBRARY_PATH?)"
        );
    }
    let id = NcclId::from_bytes(&assignment.nccl_id)?;
    let (rank, world) = (assignment.rank as usize, assignment.world_size as usize);
    let nccl = Nccl::connect(rank, world, id, gpu, timeout)
        .with_context(|| format!("joining the NCCL communicator on GPU {gpu}"))?;
    Ok(Box::new(nccl))
}

#[cfg(not(feature = "cuda"))]
fn connect_nccl(_: &Assignment, _: Duration) -> anyhow::Result<Box<dyn Collective>> {
    anyhow::bail!(
        "cluster.backend = \"nccl\" needs a worker built with `--features cuda`; this one was \
         not (or set cluster.backend = \"ring\")"
    )
}
