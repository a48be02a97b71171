"""What calibration and the accuracy gate read: inputs as `resgraph run` reads them, and labelled sets.

Calibration inputs (`--calibrate INPUT...`): image files, folders (recursive, sorted), .npy files
(one sample, or a batch that counts as N inputs) or '-' for paths on stdin, each decoded and
preprocessed exactly as `run` does (runtime/inputs.py's Feeder); or `digits`, scikit-learn's digits
(the train split `resgraph train` uses). The selection is deterministic: every input found, in
`run`'s order; where more are found than asked for, a sorted sample drawn with the seed. Its sha256
(of the ordered names) goes into the manifest.

Labelled sets for the gate (`--eval`): `digits` (the held-out split, as `resgraph eval` measures
it), or a folder of class folders (DIR/<class>/*.png, or DIR/val/<class>/...), matched to the
model's labels by name (without labels: by sorted order, one folder per output class).

Nothing here imports torch.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import DataError, listed

DIGITS = "digits"
DEFAULT_SAMPLES = 512        # TensorRT's guidance: about 500 images cover ImageNet's ranges
CALIBRATION_BATCH = 8


@dataclass(frozen=True)
class Samples:
    """Inputs chosen for calibration or the gate: the names and how to decode them (files), or the
    arrays (digits). `labels`: class indices where the set is labelled."""
    description: str
    names: tuple[str, ...]
    items: tuple = ()                 # runtime.inputs.Item, decoded lazily
    arrays: np.ndarray | None = None  # digits: [N, 1, 8, 8], preprocessed
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.names)

    @property
    def sha256(self) -> str:
        return hashlib.sha256("\n".join(self.names).encode("utf-8", "backslashreplace")).hexdigest()

    def batches(self, feeder, batch: int = CALIBRATION_BATCH) -> Iterator[np.ndarray]:
        """[n, *shape] float32 batches of the first input, n <= batch; consecutive inputs of one shape
        share a batch. An input that cannot be used is a DataError naming it: calibration does not
        skip inputs silently (the gate's figures would then describe another set)."""
        if self.arrays is not None:
            for i in range(0, len(self.arrays), batch):
                yield self.arrays[i:i + batch]
            return
        from ..runtime.preprocess import InputError
        pending: list[np.ndarray] = []
        for item in self.items:
            try:
                x = next(iter(feeder.load(item).feeds.values()))
            except InputError as e:
                raise DataError.at(item.name, f"cannot read this input: {e}",
                                   "remove it from the set or fix it (calibration reads inputs as `resgraph run` "
                                   "does: `resgraph run FOLDER INPUT` shows the same error)") from None
            if pending and (len(pending) == batch or pending[0].shape != x.shape):
                yield np.stack(pending)
                pending = []
            pending.append(x)
        if pending:
            yield np.stack(pending)


def _digits(manifest, split: str) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits, normalised as the model's preprocess says; the split `resgraph train`
    makes (val_split 0.2, seed 0)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError.at(DIGITS, "the digits data set needs scikit-learn", "pip install scikit-learn") from None
    from ..training.split import split as train_split
    shape = tuple(manifest.input.sample_shape)
    if shape != (1, 8, 8):
        raise DataError.at(DIGITS, f"digits are [1, 8, 8] images; this model's input is {list(shape)}",
                           "calibrate with images or .npy files of the model's input")
    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    pre = manifest.preprocess
    mean = np.array(pre.get("mean") or [0.0], np.float32).reshape(1, -1, 1, 1)
    std = np.array(pre.get("std") or [1.0], np.float32).reshape(1, -1, 1, 1)
    x = (x - mean) / std
    tr, va = train_split(len(d.target), d.target, 0.2, 0)
    idx = tr if split == "train" else va
    return np.ascontiguousarray(x[idx], np.float32), d.target[idx].astype(np.int64)


def calibration_set(sources: tuple[str, ...], manifest, samples: int | None, seed: int, stdin=None) -> Samples:
    """The calibration inputs `sources` name, `samples` of them (None: all, at most DEFAULT_SAMPLES).
    DataError: none found, or fewer than `samples` asked for."""
    from ..runtime.inputs import expand
    if not sources:
        raise DataError.at("--calibrate", "no calibration inputs given",
                           "give images, folders or .npy files the model takes (or digits): --calibrate DIR")
    if DIGITS in sources:
        if len(sources) > 1:
            raise DataError.at("--calibrate", "digits and other inputs together", "give digits alone, or files")
        x, _ = _digits(manifest, "train")
        names = tuple(f"digits[{i}]" for i in range(len(x)))
        chosen = _choose(len(x), samples, seed, "digits (train split)")
        return Samples(f"digits, {len(chosen):,} of {len(x):,} (train split), seed {seed}",
                       tuple(names[i] for i in chosen), arrays=x[chosen])
    items = expand(sources, stdin, manifest.input.sample_shape)
    if not items:
        raise DataError.at(" ".join(sources)[:200], "no calibration inputs found (empty folders?)",
                           "give images, folders of images or .npy files the model takes")
    chosen = _choose(len(items), samples, seed, " ".join(sources)[:200])
    under = f"inputs under {listed(list(sources))}"
    what = f"{len(chosen):,} of {len(items):,} {under}, seed {seed}" if len(chosen) < len(items) else \
        f"{len(items):,} {under}"
    picked = tuple(items[i] for i in chosen)
    return Samples(what, tuple(i.name for i in picked), items=picked)


def _choose(n: int, samples: int | None, seed: int, where: str) -> np.ndarray:
    """Indices of the inputs to use, ascending: all (up to DEFAULT_SAMPLES), or `samples` of them."""
    if samples is not None and samples > n:
        raise DataError.at(where, f"{samples:,} calibration samples asked for, {n:,} found",
                           f"add inputs, or ask for fewer: --calibration-samples {n}")
    want = min(n, DEFAULT_SAMPLES) if samples is None else samples
    if want == n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, want, replace=False))


def labelled_set(source: str, manifest) -> Samples:
    """A labelled set for the gate: digits (held-out split) or DIR of class folders."""
    if source == DIGITS:
        x, y = _digits(manifest, "val")
        return Samples("digits (held-out split)", tuple(f"digits[{i}]" for i in range(len(x))), arrays=x, labels=y)
    from ..runtime.inputs import Item
    from ..training.split import scan_classes
    if not os.path.isdir(source):
        raise DataError.at(source, "not a folder of class folders", "give DIR/<class>/*.png (or digits)")
    root = os.path.join(source, "val") if os.path.isdir(os.path.join(source, "val")) else source
    classes, items = scan_classes(root)
    if not items:
        raise DataError.at(root, "no labelled images found", f"expected {root}/<class>/*.png")
    index = _class_index(classes, manifest, root)
    return Samples(f"{len(items):,} images in {len(classes)} class folders under {root}",
                   tuple(p for p, _ in items), items=tuple(Item(p) for p, _ in items),
                   labels=np.array([index[c] for _, c in items], np.int64))


def _class_index(classes: list[str], manifest, where: str) -> dict[str, int]:
    """Class folder -> output index: by the model's labels, else by sorted order (one folder per class)."""
    out = manifest.output.sample_shape
    if len(out) != 1:
        raise DataError.at(where, f"the model's output is {list(out)}, not a vector of class scores: top-1 needs one",
                           "gate on top-1 agreement and SQNR instead: leave out --eval")
    if manifest.labels is not None:
        missing = [c for c in classes if c not in manifest.labels]
        if missing:
            raise DataError.at(where, f"class folders that are not the model's labels: {listed(missing)}",
                               f"name them after the labels ({listed(list(manifest.labels))})")
        return {c: manifest.labels.index(c) for c in classes}
    if len(classes) != out[0]:
        raise DataError.at(where, f"{len(classes)} class folders for {out[0]} output classes (the model has no labels "
                           "to match them by name)", f"give one folder per class, {out[0]} in all, in class order")
    return {c: i for i, c in enumerate(classes)}
