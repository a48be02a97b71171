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

from ..errors import DataError, listed
from ..runtime.preprocess import InputError
from .split import scan_classes as _scan
from .split import split as _split

from .segmentation import is_segmentation_folder, segmentation_folder


@dataclass
class Data:
    train: Dataset
    val: Dataset
    classes: list[str]
    source: str


def load_data(source: str, spec, val_split: float = 0.2, seed: int = 0) -> Data:
    if source == "digits":
        return digits(spec, val_split, seed)
    if not os.path.isdir(source):
        raise DataError.at(source, "no such data folder",
                           "give a folder of class subfolders (ImageFolder layout), of images/ and masks/ "
                           "(segmentation), or 'digits'")
    if is_segmentation_folder(source):
        _image_input(spec)
        return Data(*segmentation_folder(source, spec, val_split, seed), source)
    return image_folder(source, spec, val_split, seed)


def _image_input(spec) -> None:
    if len(spec.input_shape) != 3 or spec.input_shape[0] not in (1, 3):
        raise DataError.at(spec.file, "image folders need an input of [1 or 3, H, W]; the spec's is "
                           f"{list(spec.input_shape)}",
                           "train vector models from Python with your own DataLoader")


def _normalise(x: torch.Tensor, spec) -> torch.Tensor:
    c = x.shape[1]
    mean = torch.tensor(spec.preprocess.get("mean", [0.0] * c)).view(1, c, 1, 1)
    std = torch.tensor(spec.preprocess.get("std", [1.0] * c)).view(1, c, 1, 1)
    return (x - mean) / std


class Digits(TensorDataset):
    """The digits of one split: `tensors` (the normalised images, the labels) as a TensorDataset's,
    and `images`, the same images in [0, 1] before normalisation, which augmentation transforms."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, spec, split: str, classes: list[str]):
        super().__init__(_normalise(images, spec), labels)
        self.images = images
        self.where, self.split, self.classes = "digits", split, classes   # what evaluate() and report_bad name


def digits(spec, val_split: float, seed: int) -> Data:
    """scikit-learn's 1,797 handwritten digits, 8x8, 16 grey levels; bundled, no download. For a
    larger image input ([1 or 3, H, W], H and W at least 8: a CIFAR-sized network) each digit is
    upscaled bilinearly to H x W, and to 3 channels by repeating its grey one (as a grey image file
    is fed to an RGB model)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError.at("digits", "the digits data set needs scikit-learn",
                           "pip install 'resgraph[train]' (or scikit-learn)") from None
    want = tuple(spec.input_shape)
    if len(want) != 3 or want[0] not in (1, 3) or min(want[1:]) < 8:
        raise DataError.at(spec.file, f"digits are [1, 8, 8] images; the spec's input is {list(want)}",
                           "use input: {shape: [1, 8, 8]} to train on digits (or [1 or 3, H, W], H and W at "
                           "least 8: they are upscaled to it)")
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if want[1:] != (8, 8):
        x = torch.nn.functional.interpolate(x, size=want[1:], mode="bilinear", align_corners=False).clamp_(0, 1)
    x = x.expand(-1, want[0], -1, -1).contiguous()
    y = torch.tensor(d.target, dtype=torch.long)
    tr, va = _split(len(y), d.target, val_split, seed)
    classes = [str(i) for i in range(10)]
    return Data(Digits(x[tr], y[tr], spec, "train", classes), Digits(x[va], y[va], spec, "val", classes),
                classes, "digits")


class Images(Dataset):
    """Image files, loaded lazily and preprocessed as the spec says, by the runtime's own decoder
    (runtime/preprocess.py: what `resgraph run` does to a file). A file that cannot be used (corrupt,
    empty, truncated, a decompression bomb, not a regular file) does not stop training: the item is
    (None, (path, why)), `collate` drops it from its batch, and the loop reports it."""

    def __init__(self, items: list[tuple[str, int]], spec, where: str = "", split: str = "",
                 classes: list[str] | None = None):
        from ..runtime.preprocess import Preprocess
        self.items, self.spec = items, spec
        self.c, self.h, self.w = spec.input_shape
        self.pre = Preprocess.resolve(spec.preprocess, spec.input_shape)
        self.where, self.split, self.classes = where, split, classes

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        try:
            # the runtime's decoder: the same pixels as `resgraph run`, the same refusals (InputError)
            return torch.from_numpy(np.ascontiguousarray(self.pre.file(path))), label
        except InputError as e:
            return None, (path, str(e))


def collate(batch):
    """DataLoader's collate for Images (and any (x, y) data set): (x, y, bad) with the unusable
    items left out, bad a list of (path, why); x and y are None when the whole batch is bad."""
    from torch.utils.data import default_collate
    good = [b for b in batch if b[0] is not None]
    bad = [b[1] for b in batch if b[0] is None]
    if not good:
        return None, None, bad
    x, y = default_collate(good)
    return x, y, bad


def report_bad(bad: dict, dataset, file=None, limit: int = 5) -> None:
    """The unusable files of `dataset` on stderr: a count and the first few, with why (as `resgraph
    run` reports inputs it skips)."""
    import sys
    if not bad:
        return
    file = file or sys.stderr
    where = getattr(dataset, "where", "") or "the data"
    split = getattr(dataset, "split", "")
    items = sorted(bad.items())
    names = "; ".join(f"{_display(p)} ({why})" for p, why in items[:limit])
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    print(f"resgraph: {where}: skipped {len(items)} of {len(dataset)} {split + ' ' if split else ''}images that "
          f"cannot be used: {names}{more}", file=file, flush=True)


def _display(path: str) -> str:
    return path if path.isascii() else os.fsencode(path).decode("utf-8", "backslashreplace")


def preprocess_image(im, spec) -> torch.Tensor:
    """PIL image -> [C, H, W] float tensor, by the runtime's transform (the same one `resgraph run` applies)."""
    from ..runtime.preprocess import Preprocess
    pre = Preprocess.resolve(spec.preprocess, spec.input_shape)
    return torch.from_numpy(np.ascontiguousarray(pre.image(im)))


def image_folder(folder: str, spec, val_split: float, seed: int) -> Data:
    _image_input(spec)
    train_dir, val_dir = os.path.join(folder, "train"), os.path.join(folder, "val")
    split = os.path.isdir(train_dir)
    if split and not os.path.isdir(val_dir):
        others = sorted(e.name for e in os.scandir(folder) if e.is_dir() and e.name not in ("train",)
                        and not e.name.startswith("."))
        raise DataError.at(folder, "the folder has train/ but no val/"
                           + (f" (it has: {listed(others)})" if others else ""),
                           f"put the held-out images in {val_dir}/<class>/ (torchvision's layout: train/ and val/), "
                           f"or move the class folders up into {folder}/ to split them by --val-split")
    if not split and os.path.isdir(val_dir):
        raise DataError.at(folder, "the folder has val/ but no train/",
                           f"put the training images in {train_dir}/<class>/ beside val/, or the class folders "
                           f"directly in {folder}/ to split them by --val-split")
    classes, items = _scan(train_dir if split else folder)
    if not items:
        raise DataError.at(folder, "no images found", f"expected {folder}/<class>/*.png (or {folder}/train/<class>/...)")
    if spec.labels is not None:
        missing = [c for c in classes if c not in spec.labels]
        if missing:
            raise DataError.at(folder, f"class folders not in the spec's labels: {listed(missing)}",
                               "name the folders after the spec's labels, or change the labels")
        classes = list(spec.labels)
    index = {c: i for i, c in enumerate(classes)}
    pairs = [(p, index[c]) for p, c in items]
    if split:
        val_classes, val_items = _scan(val_dir)
        strays = [c for c in val_classes if c not in index]
        if strays:
            raise DataError.at(val_dir, f"class folders that train/ does not have: {listed(strays)}",
                               "name val/'s class folders as train/'s (or the spec's labels), or remove those")
        val_pairs = [(p, index[c]) for p, c in val_items]
        return Data(Images(pairs, spec, folder, "train", classes), Images(val_pairs, spec, folder, "val", classes),
                    classes, folder)
    labels = np.array([y for _, y in pairs])
    tr, va = _split(len(pairs), labels, val_split, seed)
    return Data(Images([pairs[i] for i in tr], spec, folder, "train", classes),
                Images([pairs[i] for i in va], spec, folder, "val", classes), classes, folder)
