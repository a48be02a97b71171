"""Dense targets for `resgraph train`: a folder of images and their masks, for a network whose output
is a [C, H, W] map of class scores (a U-Net), trained with per-pixel cross-entropy.

Layout (the common one of VOC's JPEGImages/SegmentationClass and most segmentation sets):

    DIR/images/<name>.<png|jpg|...>    the inputs
    DIR/masks/<name>.png               per pixel, the class index (an 8-bit grey or palette PNG;
                                       a palette PNG's indices, not its colours); 255 = ignore
or DIR/train/{images,masks} and DIR/val/{images,masks}; without train/ and val/, --val-split holds
out images with a fixed seed.

An image goes through the runtime's transform (what `resgraph run` does to it); its mask through the
same geometry (resize, centre crop) with nearest-neighbour resampling, so that each target pixel is
the class of the input pixel it lands on. The classes are the spec's `labels` (one per output
channel, required). A mask with a class beyond them, or of another size than its image, is skipped
and reported like an unreadable image.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError, listed
from ..runtime.preprocess import InputError, Preprocess
from .split import IMAGE_EXTENSIONS

IGNORE = 255   # a mask's "not labelled" value (VOC's border): no loss, not counted in the accuracy


def is_segmentation_folder(folder: str) -> bool:
    base = os.path.join(folder, "train") if os.path.isdir(os.path.join(folder, "train")) else folder
    return os.path.isdir(os.path.join(base, "images")) and os.path.isdir(os.path.join(base, "masks"))


class Masks(Dataset):
    """(image [C, H, W] float32, mask [H, W] int64) pairs, loaded lazily; an unusable pair is
    (None, (path, why)), which `collate` drops and the loop reports."""

    def __init__(self, pairs: list[tuple[str, str]], spec, where: str, split: str, classes: list[str]):
        self.pairs, self.where, self.split, self.classes = pairs, where, split, classes
        self.pre = Preprocess.resolve(spec.preprocess, spec.input_shape)
        _, h, w = spec.input_shape
        # the image's geometry, nearest-neighbour, no normalisation: class indices stay integers
        self.geometry = Preprocess(shape=(1, h, w), resize=self.pre.resize, crop=self.pre.crop, interpolation="nearest")

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i):
        image, mask = self.pairs[i]
        try:
            x = self.pre.file(image)
            y = self.mask(mask, image)
        except InputError as e:
            return None, (image, str(e))
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)

    def mask(self, path: str, image: str) -> np.ndarray:
        from PIL import Image
        im = _decode(path)
        if im.mode not in ("L", "P"):
            raise InputError(f"its mask {os.path.basename(path)} is {im.mode}, not an 8-bit grey or palette PNG of "
                             "class indices")
        with Image.open(image) as src:
            size = src.size
        if im.size != size:
            raise InputError(f"its mask {os.path.basename(path)} is {im.size[0]}x{im.size[1]}, the image "
                             f"{size[0]}x{size[1]}")
        indices = Image.fromarray(np.asarray(im, dtype=np.uint8), "L")   # a palette's indices, not its colours
        y = np.rint(self.geometry.image(indices)[0] * 255).astype(np.int64)
        bad = np.unique(y[(y >= len(self.classes)) & (y != IGNORE)])
        if bad.size:
            raise InputError(f"its mask {os.path.basename(path)} holds class {int(bad[0])}, but the spec has "
                             f"{len(self.classes)} labels (0 to {len(self.classes) - 1}; {IGNORE} = ignore)")
        return y


def _decode(path: str):
    """A mask file, decoded with the runtime's refusals (not a regular file, a decompression bomb,
    corrupt data): InputError, so that the pair is skipped and reported."""
    from PIL import Image

    from ..runtime.preprocess import regular_file
    regular_file(path)
    try:
        with Image.open(path) as im:
            if Image.MAX_IMAGE_PIXELS and im.width * im.height > Image.MAX_IMAGE_PIXELS:
                raise InputError(f"its mask is {im.width} x {im.height} pixels, over Pillow's decompression-bomb limit")
            im.load()
            return im
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001  (Pillow raises what its decoders do)
        raise InputError(f"cannot decode its mask {os.path.basename(path)}: {type(e).__name__}: {e}") from None


def _pairs(folder: str) -> list[tuple[str, str]]:
    """(image, mask) for each image in folder/images; a missing mask is an error naming it."""
    images_dir, masks_dir = os.path.join(folder, "images"), os.path.join(folder, "masks")
    images = sorted(f for f in os.listdir(images_dir) if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
    if not images:
        raise DataError.at(images_dir, "no images found", f"put the inputs in {images_dir}/ and their masks in {masks_dir}/")
    masks = {os.path.splitext(f)[0]: f for f in os.listdir(masks_dir) if f.lower().endswith(".png")}
    missing = [f for f in images if os.path.splitext(f)[0] not in masks]
    if missing:
        raise DataError.at(masks_dir, f"no mask for {len(missing)} image(s): {listed(missing[:5])}",
                           f"give each image a PNG of the same name in {masks_dir}/ (e.g. {os.path.splitext(missing[0])[0]}.png)")
    return [(os.path.join(images_dir, f), os.path.join(masks_dir, masks[os.path.splitext(f)[0]])) for f in images]


def segmentation_folder(folder: str, spec, val_split: float, seed: int) -> tuple[Masks, Masks, list[str]]:
    """(train, val, classes) of a segmentation folder (the module's docstring)."""
    from .split import split as _split
    if spec.labels is None:
        raise DataError.at(spec.file, "dense training needs the spec's labels: one class name per output channel",
                           "add labels: [background, foreground] (as many as the output's channels)")
    classes = list(spec.labels)
    if os.path.isdir(os.path.join(folder, "train")):
        val = os.path.join(folder, "val")
        if not (os.path.isdir(os.path.join(val, "images")) and os.path.isdir(os.path.join(val, "masks"))):
            raise DataError.at(folder, "the folder has train/ but no val/images and val/masks",
                               f"put the held-out pairs in {val}/images and {val}/masks, or images/ and masks/ "
                               f"directly in {folder}/ to split them by --val-split")
        return (Masks(_pairs(os.path.join(folder, "train")), spec, folder, "train", classes),
                Masks(_pairs(val), spec, folder, "val", classes), classes)
    pairs = _pairs(folder)
    tr, va = _split(len(pairs), np.zeros(len(pairs), dtype=np.int64), val_split, seed)
    return (Masks([pairs[i] for i in tr], spec, folder, "train", classes),
            Masks([pairs[i] for i in va], spec, folder, "val", classes), classes)


def counts(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(correct, counted) of a batch: samples for a classifier, labelled pixels for a dense output."""
    if y.dim() == 1:
        return (logits.argmax(1) == y).sum().item(), len(y)
    keep = y != IGNORE
    return ((logits.argmax(1) == y) & keep).sum().item(), keep.sum().item()
