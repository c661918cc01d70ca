#!/usr/bin/env python3
"""The PyTorch side of `coordinator bench step`: one training step of timm's model, eager, on the
CPU or a CUDA GPU (`--device cuda`: GPU 0 of the visible ones, timed with a device sync).

Same work as incept's step: forward, cross-entropy with label smoothing 0.1, backward, and a
TF-semantics RMSProp step (timm's RMSpropTF: decay 0.9, momentum 0.9, eps 1.0, weight decay
4e-5). Prints one JSON line: median step time, images/s, peak RSS.

Needs torch and timm: pip install -r experiments/baselines/requirements.txt
"""
import argparse
import json
import resource
import statistics
import time

import timm
import torch
from timm.optim import RMSpropTF


def peak_rss_mib():
    """This process's peak resident set: VmHWM, which starts anew at exec (ru_maxrss keeps the
    parent's peak from before the fork, so under `coordinator bench step` it reported incept's)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="inception_resnet_v2")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=75)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu")
    args = parser.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    # timm names BN-Inception differently and has no Inception-ResNet-v1.
    model = timm.create_model(args.arch, pretrained=False, num_classes=1000).to(device)
    model.train()
    optimizer = RMSpropTF(model.parameters(), lr=0.045, alpha=0.9, eps=1.0, momentum=0.9,
                          weight_decay=4e-5)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    images = (torch.rand(args.batch, 3, args.image_size, args.image_size) * 2 - 1).to(device)
    labels = torch.randint(0, 1000, (args.batch,)).to(device)

    times = []
    for step in range(args.warmup + args.steps):
        sync()
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(images), labels)
        loss.backward()
        optimizer.step()
        sync()
        elapsed = time.perf_counter() - started
        if step >= args.warmup:
            times.append(elapsed)

    median = statistics.median(times)
    print(json.dumps({
        "torch": torch.__version__.split("+")[0] + ("" if device.type == "cpu" else " cuda"),
        "median_step_ms": median * 1e3,
        "images_per_sec": args.batch / median,
        "peak_rss_mib": peak_rss_mib(),
    }))


if __name__ == "__main__":
    main()
