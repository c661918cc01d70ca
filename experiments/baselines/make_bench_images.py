#!/usr/bin/env python3
"""Builds a small ImageNet-like JPEG set for `coordinator bench data` from real photographs.

No data set can be downloaded, so the images come from photographs that PyPI packages ship:
scikit-learn's china.jpg and flower.jpg and scikit-image's colour and grey photographs (not its
synthetic test patterns), one fake class (wnid) per photograph. Each class gets `--per-photo`
random crops, rescaled (up where needed) to 500x375 or 375x500 like most ImageNet images and
saved as baseline JPEG, quality 90, in the ILSVRC-2012 layout:

    DIR/train/n00000001/n00000001_0.JPEG ...
    DIR/val/n00000001/ILSVRC2012_val_00000001.JPEG ...   (2 per class)

The grey photographs stay single-channel JPEGs, and one more class holds Fashion-MNIST digits
(28x28, from Debian's dataset-fashion-mnist) upscaled bicubically to 500x375 in grey. The first
class also gets 4 CMYK JPEGs. The same seed gives the same files.

Needs pillow, numpy, scikit-learn and scikit-image (the photographs are read straight from their
package folders): pip install -r experiments/baselines/requirements.txt

Usage: python experiments/baselines/make_bench_images.py --out DIR [--per-photo N] [--seed S]
"""
import argparse
import gzip
import importlib.util
import random
import struct
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SKLEARN_PHOTOS = ["china.jpg", "flower.jpg"]
SKIMAGE_PHOTOS = ["astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png",
                  "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png",
                  "moon.png", "motorcycle_left.png", "retina.jpg", "rocket.jpg"]
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
LANDSCAPE, PORTRAIT = (500, 375), (375, 500)
VAL_PER_CLASS, CMYK_COUNT, QUALITY = 2, 4, 90


def package_dir(name: str) -> Path:
    """A package's folder, found without importing it."""
    return Path(importlib.util.find_spec(name).origin).parent


def photos() -> list[tuple[str, Image.Image]]:
    found = [(package_dir("sklearn") / "datasets" / "images" / n) for n in SKLEARN_PHOTOS]
    found += [package_dir("skimage") / "data" / n for n in SKIMAGE_PHOTOS]
    loaded = []
    for path in sorted(found, key=lambda p: p.name):
        image = Image.open(path)
        loaded.append((path.stem, image.convert("L" if image.mode == "L" else "RGB")))
    return loaded


def fashion_mnist(count: int, rng: random.Random) -> list[Image.Image]:
    with gzip.open(FASHION_MNIST, "rb") as f:
        magic, total, rows, cols = struct.unpack(">4I", f.read(16))
        assert magic == 0x803, f"{FASHION_MNIST}: bad IDX magic {magic:#x}"
        pixels = np.frombuffer(f.read(total * rows * cols), np.uint8).reshape(total, rows, cols)
    picks = rng.sample(range(total), count)
    return [Image.fromarray(pixels[i]).resize(LANDSCAPE, Image.BICUBIC) for i in picks]


def random_crop(photo: Image.Image, rng: random.Random) -> Image.Image:
    """A 4:3 (70%) or 3:4 crop covering 35-100% of the largest such crop, at 500x375/375x500."""
    size = LANDSCAPE if rng.random() < 0.7 else PORTRAIT
    width, height = photo.size
    scale = min(width / size[0], height / size[1]) * rng.uniform(0.35, 1.0) ** 0.5
    crop_w, crop_h = round(size[0] * scale), round(size[1] * scale)
    left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
    return photo.resize(size, Image.BICUBIC, box=(left, top, left + crop_w, top + crop_h))


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--per-photo", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        sys.exit(f"{args.out} exists and is not empty; remove it first")

    rng = random.Random(args.seed)
    sources = photos()
    classes = [(name, [random_crop(photo, rng) for _ in range(args.per_photo + VAL_PER_CLASS)])
               for name, photo in sources]
    classes.append(("fashion_mnist", fashion_mnist(args.per_photo + VAL_PER_CLASS, rng)))
    cmyk = [random_crop(sources[0][1], rng).convert("CMYK") for _ in range(CMYK_COUNT)]

    written, val_index = [], 0
    for number, (name, images) in enumerate(classes, start=1):
        wnid = f"n{number:08d}"
        train = images[VAL_PER_CLASS:] + (cmyk if number == 1 else [])
        val = images[:VAL_PER_CLASS]
        names = {"train": [f"{wnid}_{k}.JPEG" for k in range(len(train))],
                 "val": [f"ILSVRC2012_val_{val_index + k + 1:08d}.JPEG" for k in range(len(val))]}
        for split, batch in (("train", train), ("val", val)):
            folder = args.out / split / wnid
            folder.mkdir(parents=True)
            for image, file_name in zip(batch, names[split]):
                image.save(folder / file_name, "JPEG", quality=QUALITY)
                written.append((split, image.mode, image.size, (folder / file_name).stat().st_size))
        val_index += len(val)
        print(f"{wnid}  {name}  ({images[0].mode})", file=sys.stderr)

    sizes = np.array([size for *_, size, _ in written])
    total = sum(b for *_, b in written)
    count = {key: sum(key in (split, mode) for split, mode, *_ in written)
             for key in ("train", "val", "RGB", "L", "CMYK")}
    print(f"{args.out}: {len(classes)} classes, {count['train']} train + {count['val']} val "
          f"images ({count['RGB']} RGB, {count['L']} grey, {count['CMYK']} CMYK), "
          f"mean {sizes[:, 0].mean():.0f}x{sizes[:, 1].mean():.0f} px, "
          f"mean {total / len(written) / 1024:.1f} KiB, total {total} bytes")

if __name__ == "__main__":
    main()
