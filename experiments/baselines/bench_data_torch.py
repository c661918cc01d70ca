#!/usr/bin/env python3
"""The PIL + torchvision side of `coordinator bench data`: images/s of the input pipeline.

Per image, the standard torchvision training transform: decode with PIL and convert to RGB,
RandomResizedCrop(image_size, scale=(0.05, 1.0), ratio=(3/4, 4/3)) with bilinear antialiasing,
RandomHorizontalFlip, ToTensor and Normalize(0.5, 0.5), so values land in [-1, 1]. The JPEG
bytes are read into memory beforehand, so this measures CPU work, not the disk.

Like DataLoader workers, T worker processes (one torch thread each) each take every T-th file of
DIR/train/*/*.JPEG (see make_bench_images.py), run one untimed warm-up pass over it, then
`--passes` timed passes; the time is the wall time from the common start until the last worker
is done. Prints one JSON line on stdout; progress goes to stderr.

Needs torch, torchvision and pillow: pip install -r experiments/baselines/requirements.txt

Usage: python experiments/baselines/bench_data_torch.py --path DIR --threads T
                                                        [--image-size 299] [--passes 3]
"""
import argparse
import io
import json
import multiprocessing
import sys
import threading
import time
from pathlib import Path

import PIL
import torch
import torchvision
from PIL import Image
from torchvision import transforms


def worker(rank, files, args, barrier, results):
    """Puts None on `results` when done, or the error (breaking the barrier if still before it)."""
    try:
        torch.set_num_threads(1)
        torch.manual_seed(rank)
        transform = transforms.Compose([
            transforms.RandomResizedCrop(args.image_size, scale=(0.05, 1.0),
                                         ratio=(3 / 4, 4 / 3), antialias=True),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize([0.5] * 3, [0.5] * 3),
        ])
        data = [path.read_bytes() for path in files]

        def one_pass():
            for jpeg in data:
                tensor = transform(Image.open(io.BytesIO(jpeg)).convert("RGB"))
            return tensor

        tensor = one_pass()
        assert tensor.shape == (3, args.image_size, args.image_size), tensor.shape
        assert -1 <= tensor.min() and tensor.max() <= 1
        barrier.wait()
        for _ in range(args.passes):
            one_pass()
        results.put(None)
    except threading.BrokenBarrierError:
        results.put(None)  # another worker failed and says so
    except BaseException as error:
        barrier.abort()
        results.put(f"worker {rank}: {error!r}")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", type=Path, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--image-size", type=int, default=299)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()

    files = sorted(args.path.glob("train/*/*.JPEG"))
    if len(files) < args.threads:
        sys.exit(f"{args.path}/train/*/*.JPEG: {len(files)} files for {args.threads} workers")
    print(f"{len(files)} files, {args.threads} workers, 1 warm-up + {args.passes} timed passes",
          file=sys.stderr)

    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(args.threads + 1), context.Queue()
    workers = [context.Process(target=worker,
                               args=(rank, files[rank::args.threads], args, barrier, results))
               for rank in range(args.threads)]
    for process in workers:
        process.start()
    try:
        barrier.wait()  # every worker has its bytes in memory and has done its warm-up pass
    except threading.BrokenBarrierError:
        pass  # a worker failed: its error is on `results`
    started = time.perf_counter()
    errors = [error for error in (results.get() for _ in workers) if error]
    seconds = time.perf_counter() - started
    for process in workers:
        process.join()
    if errors:
        sys.exit("\n".join(errors))

    images = len(files) * args.passes
    print(json.dumps({
        "pillow": PIL.__version__,
        "torchvision": torchvision.__version__.split("+")[0],
        "torch": torch.__version__.split("+")[0],
        "threads": args.threads,
        "images": images,
        "seconds": seconds,
        "images_per_sec": images / seconds,
        "images_per_sec_per_thread": images / seconds / args.threads,
    }))


if __name__ == "__main__":
    main()
