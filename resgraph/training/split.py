"""The train/validation split of `resgraph train`, and the class folders it reads (numpy only:
examples/digits/make_samples.py picks held-out images with it, and quantize's accuracy gate reads
class folders with it, without importing torch)."""
from __future__ import annotations

import os

import numpy as np

from ..errors import PathError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def split(n: int, labels: np.ndarray, val_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified, seeded split: the same held-out set on every run. (train, val) indices."""
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        val.extend(idx[: int(round(len(idx) * val_split))])
    val = np.sort(np.array(val, dtype=np.int64))
    train = np.setdiff1d(np.arange(n), val)
    return train, val


def scan_classes(folder: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Class folders and their image files (by extension; dot-files and dot-folders left out, as
    `resgraph run` leaves them: macOS's ._name.png are not images)."""
    try:
        classes = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    except OSError as e:
        raise PathError.at(folder, f"cannot read the data folder: {e.strerror}",
                           "check the path and its permissions") from None
    items = []
    for c in classes:
        for root, dirs, files in os.walk(os.path.join(folder, c)):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for f in sorted(files):
                if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."):
                    items.append((os.path.join(root, f), c))
    return classes, items
