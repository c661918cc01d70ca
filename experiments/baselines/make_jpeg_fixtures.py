#!/usr/bin/env python3
"""Writes the CMYK JPEG fixture of common/tests/data_pipeline.rs (Rust's `image` crate cannot
encode CMYK): a 40x30 image whose left half is red and right half blue, saved by PIL in CMYK.

Needs pillow: pip install -r experiments/baselines/requirements.txt
Usage: python experiments/baselines/make_jpeg_fixtures.py common/tests/fixtures
"""
import sys
from pathlib import Path

from PIL import Image


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "common/tests/fixtures")
    image = Image.new("RGB", (40, 30), (220, 30, 30))
    image.paste((30, 30, 220), (20, 0, 40, 30))
    image.convert("CMYK").save(out / "cmyk_red_blue.jpg", quality=95)
    print(out / "cmyk_red_blue.jpg")


if __name__ == "__main__":
    main()
