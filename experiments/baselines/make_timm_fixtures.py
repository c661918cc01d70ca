#!/usr/bin/env python3
"""Builds the timm reference fixtures for common/tests/timm_import.rs (not run in CI).

Each fixture is a safetensors file holding pieces of timm's `inception_resnet_v2` with
deterministic random weights, under timm's own full state-dict keys (so they map onto our full
model's module paths), plus the eval-mode `input` and `output` of the piece:

    timm_irv2_stem      conv2d_1a … conv2d_4a with both max pools, input 1×3×47×47 in [-1, 1]
    timm_irv2_block35   repeat.0 (Block35, full width), input 1×320×5×5
    timm_irv2_block17   repeat_1.0 (Block17, width 1/8), input 1×136×6×6
    timm_irv2_block8    block8 (final Block8: scale 1, no ReLU, width 1/8), input 1×260×4×4
    timm_irv2_full      the whole network at width 1/16 with one block per stage (10 classes);
                        a genuine timm state dict, so its `input`/`output` (logits for
                        1×3×75×75) live in timm_irv2_full_io.safetensors

Full-width Block17 and Block8 are 4.5 MB and 8 MB of weights: those pieces, and the full
network, are narrowed by slicing every channel count by the same factor, which is exactly how
our `width` multiplier scales them (all IRv2 channel counts are multiples of 16). The forward
passes are still timm's own module code. BatchNorm running statistics and affine parameters are
randomised too, so a swapped gamma/beta or mean/var shows in the output.

Usage: python experiments/baselines/make_timm_fixtures.py [OUT_DIR]
       (default OUT_DIR: common/tests/fixtures next to this repository's root)
"""

import sys
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

NUM_CLASSES = 10
STEM = ["conv2d_1a", "conv2d_2a", "conv2d_2b", "maxpool_3a", "conv2d_3b", "conv2d_4a", "maxpool_5a"]


def build(width_divisor: int, seed: int) -> torch.nn.Module:
    """timm's IRv2 with one block per stage, channels divided by `width_divisor`, random weights."""
    model = timm.create_model("inception_resnet_v2", pretrained=False, num_classes=NUM_CLASSES)
    model.repeat = model.repeat[:1]
    model.repeat_1 = model.repeat_1[:1]
    model.repeat_2 = model.repeat_2[:1]
    torch.manual_seed(seed)
    for name, tensor in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        set_tensor(model, name, randomised(name, narrowed_shape(name, tensor.shape, width_divisor)))
    return model.eval()


def narrowed_shape(name: str, shape: torch.Size, divisor: int) -> list:
    """Divides the output and input channels, except the image channels and the classes."""
    dims = list(shape)
    keep = {0} if name.startswith("classif") else set()
    if name == "conv2d_1a.conv.weight":
        keep.add(1)
    for axis in range(min(2, len(dims))):
        if axis not in keep:
            assert dims[axis] % divisor == 0, (name, dims)
            dims[axis] //= divisor
    return dims


def randomised(name: str, shape: list) -> torch.Tensor:
    """Values of the right scale for each kind of tensor, so activations stay O(1)."""
    leaf = name.rsplit(".", 1)[1]
    if ".bn." in name:
        return {
            "weight": lambda: torch.empty(shape).uniform_(0.5, 1.5),
            "bias": lambda: torch.randn(shape) * 0.2,
            "running_mean": lambda: torch.randn(shape) * 0.2,
            "running_var": lambda: torch.empty(shape).uniform_(0.5, 2.0),
        }[leaf]()
    if leaf == "bias":
        return torch.randn(shape) * 0.1
    fan_in = 1
    for d in shape[1:]:
        fan_in *= d
    return torch.randn(shape) * (2.0 / fan_in) ** 0.5


def set_tensor(model: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    module_path, leaf = name.rsplit(".", 1)
    module = model.get_submodule(module_path)
    if leaf in module._parameters:
        setattr(module, leaf, torch.nn.Parameter(value))
    else:
        setattr(module, leaf, value)


def weights(model: torch.nn.Module, prefixes: list) -> dict:
    """The state-dict entries (num_batches_tracked included, as timm saves them) under `prefixes`."""
    return {
        k: v.contiguous()
        for k, v in model.state_dict().items()
        if any(k.startswith(p + ".") for p in prefixes)
    }


def images(seed: int, size: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.empty(1, 3, size, size).uniform_(-1.0, 1.0)


def features(seed: int, channels: int, side: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(1, channels, side, side)


@torch.no_grad()
def pieces():
    """(file stem, tensors) for every fixture."""
    full_width = build(1, seed=1)
    stem_in = images(11, 47)
    stem_out = stem_in
    for name in STEM:
        stem_out = getattr(full_width, name)(stem_out)
    yield "stem", {**weights(full_width, STEM), "input": stem_in, "output": stem_out}

    block_in = features(12, 320, 5)
    yield "block35", {
        **weights(full_width, ["repeat.0"]),
        "input": block_in,
        "output": full_width.repeat[0](block_in),
    }

    narrow = build(8, seed=2)
    block_in = features(13, 136, 6)
    yield "block17", {
        **weights(narrow, ["repeat_1.0"]),
        "input": block_in,
        "output": narrow.repeat_1[0](block_in),
    }
    block_in = features(14, 260, 4)
    yield "block8", {
        **weights(narrow, ["block8"]),
        "input": block_in,
        "output": narrow.block8(block_in),
    }

    tiny = build(16, seed=3)
    full_in = images(15, 75)
    yield "full", {k: v.contiguous() for k, v in tiny.state_dict().items()}
    yield "full_io", {"input": full_in, "output": tiny(full_in)}


def main() -> None:
    default = Path(__file__).resolve().parents[2] / "common" / "tests" / "fixtures"
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    out_dir.mkdir(parents=True, exist_ok=True)
    for stem, tensors in pieces():
        path = out_dir / f"timm_irv2_{stem}.safetensors"
        save_file(tensors, str(path))
        print(f"{path}: {len(tensors)} tensors, {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
