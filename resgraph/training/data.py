"""Datasets for `resgraph train`: scikit-learn's bundled digits, or ImageFolder-style class folders.

Both apply the spec's `preprocess` (resize the shorter side, centre-crop, scale to [0, 1],
normalise by mean/std), so the network sees at training time exactly what inference will feed it:
image files go through the runtime's own transform (runtime/preprocess.py).

ImageFolder layout (as torchvision's):  DIR/train/<class>/*.png and DIR/val/<class>/*.png, or
DIR/<class>/*.png, split into train/val by --val-split with a fixed seed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from ..errors import SpecError
from .split import split as _split

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class Data:
    train: Dataset
    val: Dataset
    classes: list[str]
    source: str


_error = SpecError.at   # an error about a file or option: no line to point at


def load_data(source: str, spec, val_split: float = 0.2, seed: int = 0) -> Data:
    if source == "digits":
        return digits(spec, val_split, seed)
    if not os.path.isdir(source):
        raise _error(source, "no such data folder", "give a folder of class subfolders (ImageFolder layout) or 'digits'")
    return image_folder(source, spec, val_split, seed)


def _normalise(x: torch.Tensor, spec) -> torch.Tensor:
    c = x.shape[1]
    mean = torch.tensor(spec.preprocess.get("mean", [0.0] * c)).view(1, c, 1, 1)
    std = torch.tensor(spec.preprocess.get("std", [1.0] * c)).view(1, c, 1, 1)
    return (x - mean) / std


def digits(spec, val_split: float, seed: int) -> Data:
    """scikit-learn's 1,797 handwritten digits, 8x8, 16 grey levels; bundled, no download."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise _error("digits", "the digits data set needs scikit-learn",
                     "pip install 'resgraph[train]' (or scikit-learn)") from None
    want = tuple(spec.input_shape)
    if want != (1, 8, 8):
        raise _error(spec.file, f"digits are [1, 8, 8] images; the spec's input is {list(want)}",
                     "use input: {shape: [1, 8, 8]} to train on digits")
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = _normalise(x, spec)
    y = torch.tensor(d.target, dtype=torch.long)
    tr, va = _split(len(y), d.target, val_split, seed)
    classes = [str(i) for i in range(10)]
    return Data(TensorDataset(x[tr], y[tr]), TensorDataset(x[va], y[va]), classes, "digits")


class Images(Dataset):
    """Image files, loaded lazily with Pillow and preprocessed as the spec says."""

    def __init__(self, items: list[tuple[str, int]], spec):
        self.items, self.spec = items, spec
        self.c, self.h, self.w = spec.input_shape

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        from PIL import Image
        path, label = self.items[i]
        with Image.open(path) as im:
            x = preprocess_image(im, self.spec)
        return x, label


def preprocess_image(im, spec) -> torch.Tensor:
    """PIL image -> [C, H, W] float tensor, by the runtime's transform (the same one `resgraph run` applies)."""
    from ..runtime.preprocess import Preprocess
    pre = Preprocess.resolve(spec.preprocess, spec.input_shape)
    return torch.from_numpy(np.ascontiguousarray(pre.image(im)))


def _scan(folder: str) -> tuple[list[str], list[tuple[str, str]]]:
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    items = []
    for c in classes:
        for root, _, files in os.walk(os.path.join(folder, c)):
            for f in sorted(files):
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    items.append((os.path.join(root, f), c))
    return classes, items


def image_folder(folder: str, spec, val_split: float, seed: int) -> Data:
    if len(spec.input_shape) != 3 or spec.input_shape[0] not in (1, 3):
        raise _error(spec.file, f"image folders need an input of [1 or 3, H, W]; the spec's is {list(spec.input_shape)}",
                     "train vector models from Python with your own DataLoader")
    split = os.path.isdir(os.path.join(folder, "train"))
    classes, items = _scan(os.path.join(folder, "train") if split else folder)
    if not items:
        raise _error(folder, "no images found", f"expected {folder}/<class>/*.png (or {folder}/train/<class>/...)")
    if spec.labels is not None:
        missing = [c for c in classes if c not in spec.labels]
        if missing:
            raise _error(folder, f"class folders not in the spec's labels: {', '.join(missing[:5])}",
                         "name the folders after the spec's labels, or change the labels")
        classes = list(spec.labels)
    index = {c: i for i, c in enumerate(classes)}
    pairs = [(p, index[c]) for p, c in items]
    if split:
        _, val_items = _scan(os.path.join(folder, "val"))
        val_pairs = [(p, index[c]) for p, c in val_items if c in index]
        return Data(Images(pairs, spec), Images(val_pairs, spec), classes, folder)
    labels = np.array([y for _, y in pairs])
    tr, va = _split(len(pairs), labels, val_split, seed)
    return Data(Images([pairs[i] for i in tr], spec), Images([pairs[i] for i in va], spec), classes, folder)
