"""The train/validation split of `resgraph train` (numpy only: examples/digits/make_samples.py picks
held-out images with it without importing torch)."""
from __future__ import annotations

import numpy as np


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
