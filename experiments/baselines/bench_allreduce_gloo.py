"""torch.distributed all_reduce with the Gloo backend: the baseline of `coordinator bench allreduce`.

Runs `--workers` processes on this machine (TCP rendezvous on 127.0.0.1) and times an in-place
all_reduce of float32 tensors for each size, the way incept's bench does: a warm-up of a tenth of
the iterations, a barrier, then the timed iterations; the time of a size is the slowest rank's
mean. Prints one JSON line: {"torch": version, "results": [{"bytes": .., "seconds": ..}, ...]}.

    python3 experiments/baselines/bench_allreduce_gloo.py --workers 4 --sizes 1024,67108864
"""

import argparse
import json
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def default_iters(size_bytes):
    """Same rule as incept: about 1 GiB moved per size, 5 to 500 iterations."""
    return max(5, min(500, (1 << 30) // max(size_bytes, 1)))


def rank_main(rank, world, port, sizes, iters, queue):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    results = []
    for size in sizes:
        count = iters or default_iters(size)
        data = torch.ones(size // 4, dtype=torch.float32)
        for _ in range(-(-count // 10)):
            dist.all_reduce(data)
        dist.barrier()
        started = time.perf_counter()
        for _ in range(count):
            dist.all_reduce(data)
        seconds = torch.tensor([(time.perf_counter() - started) / count], dtype=torch.float64)
        dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
        results.append({"bytes": size, "seconds": seconds.item()})
    if rank == 0:
        queue.put(results)
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--sizes", required=True, help="comma-separated sizes in bytes")
    parser.add_argument("--iters", type=int, default=0, help="0: from the size")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    context = mp.get_context("spawn")
    queue = context.Queue()
    mp.start_processes(
        rank_main,
        args=(args.workers, free_port(), sizes, args.iters, queue),
        nprocs=args.workers,
        start_method="spawn",
        join=True,
    )
    print(json.dumps({"torch": torch.__version__, "results": queue.get()}))


if __name__ == "__main__":
    main()
