#!/usr/bin/env python3
"""Checks a whole full-size network against timm's, end to end through the CLI (not run in CI).

For ARCH (inception_v3, inception_v4 or inception_resnet_v2: timm's model name and our --arch
are the same), this builds timm's model with deterministic random weights, 1000 classes and no
auxiliary head (timm's v3 has `aux_logits=False`, so its state dict holds no `AuxLogits.*`),
then:

    1. saves its state dict as DIR/timm.safetensors and random images, float32 N×3×299×299 in
       [-1, 1], as DIR/input.npy;
    2. runs `coordinator models import --arch ARCH --from DIR/timm.safetensors
       --out DIR/incept.safetensors --num-classes 1000`;
    3. runs `coordinator predict --weights DIR/incept.safetensors --arch ARCH DIR/input.npy
       --logits-out DIR/logits.npy`, adding `--set model.avg_pool_count_pad=true` for
       inception_v3 only: timm's v3 counts the zero padding in its in-block 3×3 average pools
       (F.avg_pool2d's default), while our default follows TF-slim; timm's v4 and IRv2 pools
       already exclude it (count_include_pad=False), as ours do;
    4. runs timm's eval-mode forward on the same images and compares the logits.

The weights follow make_timm_fixtures.py (its `randomised` is reused): He-scaled convolution and
classifier weights, and BatchNorm running statistics and affine parameters randomised too, so a
swapped gamma/beta or mean/var shows in the output.

It prints the largest absolute difference, the relative difference
max|ours - timm| / max|timm| (over the whole logits tensor: the pass criterion, < 1e-4), the
largest elementwise relative difference |ours - timm| / (|timm| + 1e-6) for information, whether
the argmax agrees for every image, and wall-clock seconds for timm's forward and for each
coordinator command (the latter include process start-up and weight loading). Exit status 0 on
PASS, 1 on FAIL or when a coordinator command fails, 2 on a usage error (e.g. no binary).

Usage: python3 experiments/baselines/check_timm_parity.py ARCH [--batch N] [--seed S]
           [--coordinator PATH] [--keep DIR]
       (default coordinator: target/release/coordinator under this repository's root, else
        target/debug/coordinator; --keep DIR keeps the files there instead of a temporary
        directory)
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_timm_fixtures import randomised, set_tensor  # noqa: E402

ARCHS = ["inception_v3", "inception_v4", "inception_resnet_v2"]
NUM_CLASSES = 1000
IMAGE_SIZE = 299
TARGET = 1e-4  # printed as "1e-4" below
REPO_ROOT = Path(__file__).resolve().parents[2]


def coordinator_path(given: str | None) -> Path:
    """The coordinator binary: --coordinator if given, else release, else debug build."""
    if given is not None:
        candidates = [Path(given)]
    else:
        candidates = [REPO_ROOT / "target" / kind / "coordinator" for kind in ("release", "debug")]
    for path in candidates:
        if path.is_file():
            return path
    tried = ", ".join(str(p) for p in candidates)
    print(
        f"error: no coordinator binary (tried {tried}); "
        "run `cargo build --release --bin coordinator` first, or pass --coordinator PATH",
        file=sys.stderr,
    )
    sys.exit(2)


def build(arch: str, seed: int) -> torch.nn.Module:
    """timm's full-size `arch`, 1000 classes, no aux head, deterministic random weights, eval."""
    kwargs = {"aux_logits": False} if arch == "inception_v3" else {}
    model = timm.create_model(arch, pretrained=False, num_classes=NUM_CLASSES, **kwargs)
    torch.manual_seed(seed)
    for name, tensor in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        set_tensor(model, name, randomised(name, list(tensor.shape)))
    model.eval()
    aux = [k for k in model.state_dict() if "AuxLogits" in k]
    assert not aux, f"timm's {arch} still has an aux head: {aux[:3]}"
    return model


def images(seed: int, batch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed + 1)
    return torch.empty(batch, 3, IMAGE_SIZE, IMAGE_SIZE).uniform_(-1.0, 1.0, generator=generator)


def run(cmd: list) -> float:
    """Runs `cmd` (stdout passed through), returns its wall seconds; exits 1 if it fails."""
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [str(c) for c in cmd], check=True, stderr=subprocess.PIPE, text=True
        )
    except subprocess.CalledProcessError as err:
        print(f"command failed with exit status {err.returncode}; its stderr:", file=sys.stderr)
        print(err.stderr, file=sys.stderr, end="")
        sys.exit(1)
    seconds = time.perf_counter() - start
    if done.stderr:
        print(done.stderr, file=sys.stderr, end="")
    return seconds


def check(args: argparse.Namespace, coordinator: Path, work: Path) -> int:
    print(f"timm {timm.__version__}, torch {torch.__version__}; files in {work}")
    model = build(args.arch, args.seed)
    inputs = images(args.seed, args.batch)
    input_path, timm_path = work / "input.npy", work / "timm.safetensors"
    incept_path, logits_path = work / "incept.safetensors", work / "logits.npy"
    np.save(input_path, inputs.numpy())
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(timm_path))

    import_s = run([
        coordinator, "models", "import", "--arch", args.arch, "--from", timm_path,
        "--out", incept_path, "--num-classes", NUM_CLASSES,
    ])
    knobs = ["--set", "model.avg_pool_count_pad=true"] if args.arch == "inception_v3" else []
    predict_s = run([
        coordinator, "predict", "--weights", incept_path, "--arch", args.arch, *knobs,
        input_path, "--logits-out", logits_path,
    ])

    with torch.no_grad():
        start = time.perf_counter()
        expected = model(inputs)
        timm_s = time.perf_counter() - start
    expected = expected.numpy().astype(np.float64)
    ours = np.load(logits_path)
    if ours.shape != expected.shape:
        print(f"FAIL: our logits are {ours.dtype} {list(ours.shape)}, timm's {list(expected.shape)}")
        return 1
    ours = ours.astype(np.float64)

    diff = np.abs(ours - expected)
    max_abs = float(diff.max())
    rel = max_abs / float(np.abs(expected).max())
    rel_elem = float((diff / (np.abs(expected) + 1e-6)).max())
    argmax_ok = bool((ours.argmax(axis=1) == expected.argmax(axis=1)).all())
    print(f"arch {args.arch}, batch {args.batch}, seed {args.seed}")
    print(f"  timm logits: max |timm| {np.abs(expected).max():.4g}, std {expected.std():.4g}")
    print(f"  max |ours - timm|                          {max_abs:.3e}")
    print(f"  relative: max|ours - timm| / max|timm|     {rel:.3e}")
    print(f"  max elementwise |ours - timm|/(|timm|+1e-6) {rel_elem:.3e} (information only)")
    print(f"  argmax agrees for every sample: {'yes' if argmax_ok else 'NO'}")
    print(f"  timm forward {timm_s:.2f} s; incept import {import_s:.2f} s, "
          f"predict {predict_s:.2f} s (whole processes)")
    passed = rel < TARGET  # False for NaN too
    print("PASS" if passed else "FAIL (target < 1e-4)")
    return 0 if passed else 1


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Compare our full network's logits with timm's (see the module docstring)."
    )
    parser.add_argument("arch", choices=ARCHS)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--coordinator", help="coordinator binary (default: target/release, "
                        "else target/debug, under the repository root)")
    parser.add_argument("--keep", metavar="DIR", help="write the files here and keep them")
    args = parser.parse_args()
    if args.batch < 1:
        parser.error("--batch must be at least 1")

    coordinator = coordinator_path(args.coordinator)
    if args.keep is not None:
        work = Path(args.keep)
        work.mkdir(parents=True, exist_ok=True)
        sys.exit(check(args, coordinator, work))
    with tempfile.TemporaryDirectory(prefix="timm_parity_") as tmp:
        status = check(args, coordinator, Path(tmp))
    sys.exit(status)


if __name__ == "__main__":
    main()
