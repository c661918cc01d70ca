#!/usr/bin/env python3
"""Writes the data-pipeline fixtures of common/tests/data_pipeline.rs that Rust cannot make:

- cmyk_red_blue.jpg: a 40x30 CMYK JPEG (left half red, right half blue) saved by PIL (Rust's
  `image` crate cannot encode CMYK);
- devkit_meta.mat: a miniature ILSVRC-2012 devkit `data/meta.mat`, the MATLAB v5 file whose
  `synsets` struct array maps the devkit's numeric ILSVRC2012_IDs to wnids. Like the real one
  it holds leaf synsets (IDs 1..) in an order that is not the wnids' sorted order, then a
  non-leaf synset, with the same fields; written compressed, as MATLAB does.

Needs pillow, numpy and scipy: pip install -r experiments/baselines/requirements.txt
Usage: python experiments/baselines/make_data_fixtures.py common/tests/fixtures
"""
import sys
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

# (ILSVRC2012_ID, WNID, words, num_children): three leaves, then their common ancestor.
SYNSETS = [
    (1, "n01484850", "great white shark", 0),
    (2, "n01440764", "tench, Tinca tinca", 0),
    (3, "n01443537", "goldfish, Carassius auratus", 0),
    (4, "n02512053", "fish", 3),
]


def cmyk(out):
    image = Image.new("RGB", (40, 30), (220, 30, 30))
    image.paste((30, 30, 220), (20, 0, 40, 30))
    image.convert("CMYK").save(out / "cmyk_red_blue.jpg", quality=95)


def meta(out):
    fields = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("gloss", "O"),
              ("num_children", "O"), ("children", "O"), ("wordnet_height", "O"),
              ("num_train_images", "O")]
    synsets = np.zeros((len(SYNSETS), 1), dtype=fields)
    for i, (ident, wnid, words, children) in enumerate(SYNSETS):
        synsets[i, 0] = (np.array([[ident]], dtype=np.float64), wnid, words, "a fish",
                         np.array([[children]], dtype=np.float64),
                         np.arange(1, children + 1, dtype=np.float64).reshape(1, -1),
                         np.array([[0 if children == 0 else 1]], dtype=np.float64),
                         np.array([[1300 if children == 0 else 0]], dtype=np.float64))
    scipy.io.savemat(out / "devkit_meta.mat", {"synsets": synsets}, do_compression=True)


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "common/tests/fixtures")
    cmyk(out)
    meta(out)
    for name in ["cmyk_red_blue.jpg", "devkit_meta.mat"]:
        print(out / name)


if __name__ == "__main__":
    main()
