"""Write examples/digits/samples/*.png: 4 held-out images of each digit from scikit-learn's digits.

The held-out split is the one `resgraph train --data digits` keeps out (split seed 0, 20%), so the
shipped weights never saw these images. A file's name carries its true label, for the reader to
check `resgraph run`'s answers against: 0042_digit-7.png is sample 42, a 7. Pixels: the 16 grey
levels (0..16) scaled to 0..255 and rounded; the spec's preprocess divides by 255, within 1/510 of
the v / 16 that training used.

    python examples/digits/make_samples.py        (needs scikit-learn and Pillow: the [train] extra)
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from resgraph.training.split import split   # resgraph train's split (numpy only)

PER_DIGIT = 4
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "samples")


def to_png_pixels(image: np.ndarray) -> np.ndarray:
    """8x8 digits of 0..16 -> uint8 0..255."""
    return np.round(image * 255.0 / 16.0).astype(np.uint8)


def main() -> None:
    d = load_digits()
    _, val = split(len(d.target), d.target, val_split=0.2, seed=0)
    os.makedirs(OUT, exist_ok=True)
    for digit in range(10):
        for i in [i for i in val if d.target[i] == digit][:PER_DIGIT]:
            Image.fromarray(to_png_pixels(d.images[i]), mode="L").save(os.path.join(OUT, f"{i:04d}_digit-{digit}.png"))
    print(f"wrote {10 * PER_DIGIT} images to {OUT}")


if __name__ == "__main__":
    main()
