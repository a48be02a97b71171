"""Training-time augmentation (`train --augment`): torchvision.transforms.v2 on each training sample,
drawn anew every epoch, on the image in [0, 1] before normalisation. The validation split keeps
the evaluation preprocess, so val_acc measures what inference will see.

  none            the evaluation preprocess, the same every epoch (the default)
  standard        inputs of at most 32 x 32 (CIFAR-sized, and the digits): RandomCrop with
                  zero padding of an eighth of the side (4 pixels at 32, He et al.'s CIFAR recipe);
                  larger ones: RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3) of the whole decoded
                  image, instead of the resize and centre crop (torchvision's ImageNet recipe);
                  then a horizontal flip with probability 1/2 (--no-flip leaves it out)
  trivialaugment  standard, then TrivialAugmentWide (one random op of random strength a sample)

Random draws come from torch's global generator, which the loop reseeds every epoch from (--seed,
epoch, rank): a resumed run draws what an uninterrupted one draws (data-loader workers are seeded
from it too).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import OptionError
from ..runtime.preprocess import InputError

AUGMENTS = ("none", "standard", "trivialaugment")
SMALL = 32   # the largest side that takes the CIFAR recipe (pad-crop) rather than RandomResizedCrop


def transform(kind: str, shape: tuple, flip: bool = True):
    """The v2 transform of `--augment kind` for [C, H, W] samples; None for none."""
    from torchvision.transforms import v2
    assert kind in AUGMENTS, kind   # --augment is checked with the rest of the recipe (recipe.settle)
    if kind == "none":
        return None
    _, h, w = shape
    if max(h, w) <= SMALL:
        steps = [v2.RandomCrop((h, w), padding=max(1, round(min(h, w) / 8)))]
    else:
        steps = [v2.RandomResizedCrop((h, w), antialias=True)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    if kind == "trivialaugment":
        steps.append(v2.TrivialAugmentWide())
    return v2.Compose(steps)


def _stats(spec, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    pre = spec.preprocess
    return (torch.tensor(pre.get("mean") or [0.0] * c, dtype=torch.float32).view(c, 1, 1),
            torch.tensor(pre.get("std") or [1.0] * c, dtype=torch.float32).view(c, 1, 1))


class AugmentedTensors(Dataset):
    """In-memory images in [0, 1] (the digits): transformed, then normalised, one sample at a time."""

    def __init__(self, base, spec, tf):
        self.base, self.tf = base, tf
        self.mean, self.std = _stats(spec, base.images.shape[1])
        self.where, self.split, self.classes = base.where, base.split, base.classes

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        x = self.tf(self.base.images[i])
        return (x - self.mean) / self.std, self.base.tensors[1][i]


class AugmentedImages(Dataset):
    """Image files decoded by the runtime's decoder (its refusals, its mode conversion) at their own
    size, in [0, 1], then transformed to the input's H x W, then normalised as the spec says."""

    def __init__(self, base, spec, tf):
        c = spec.input_shape[0]
        self.base, self.tf = base, tf
        # the spec's preprocess without its geometry or normalisation: a size-variable shape with no
        # valid sizes keeps each image's own size (Preprocess.fit_size)
        self.pre = replace(base.pre, shape=(c, "H", "W"), resize=None, crop=None, mean=None, std=None)
        self.mean, self.std = _stats(spec, c)
        self.where, self.split, self.classes = base.where, base.split, base.classes

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        path, label = self.base.items[i]
        try:
            x = torch.from_numpy(np.ascontiguousarray(self.pre.file(path)))
        except InputError as e:
            return None, (path, str(e))
        return (self.tf(x) - self.mean) / self.std, label


def augmented(data, kind: str, flip: bool, spec):
    """`data` with its training split augmented (a new Data; val as it was); `data` itself for none."""
    from .data import Data, Digits, Images
    tf = transform(kind, tuple(spec.input_shape), flip)
    if tf is None:
        return data
    if isinstance(data.train, Digits):
        train = AugmentedTensors(data.train, spec, tf)
    elif isinstance(data.train, Images):
        train = AugmentedImages(data.train, spec, tf)
    else:
        raise OptionError.at("--augment", f"{data.source} holds per-pixel masks: --augment transforms images only "
                             "(a mask would no longer match its image)", "train segmentation with --augment none")
    return Data(train, data.val, data.classes, data.source)
