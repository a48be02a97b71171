"""An image file -> the network's input tensor, as the spec's `preprocess` says.

    decode (Pillow; EXIF orientation applied; first frame) -> L or RGB (16-bit kept at full depth)
      -> resize -> centre crop -> [0, 1] -> (x - mean) / std          [C, H, W] float32

Geometry, by which keys are set (H, W: the input's size):
    resize: S          the shorter side to S (the longer: int(S * long / short)), then centre crop to H x W
    crop only          centre crop to H x W (zero padding where the image is smaller)
    neither            a plain resize to H x W (aspect ratio not kept)

`resize: 256, crop: 224, interpolation: bilinear` with ImageNet's mean/std is torchvision's ImageNet
eval transform (Resize(256) -> CenterCrop(224) -> ToTensor() -> Normalize(mean, std)), computed
the same way: Pillow's filters, torchvision's size and crop rounding, float32 arithmetic in the same
order; tests/runtime/test_runtime.py matches its output against torchvision's own. numpy and Pillow only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# torchvision's InterpolationMode names -> Pillow's filters (Image.Resampling values); the spec
# language lists the same names (spec.model.INTERPOLATIONS; a test keeps the two equal)
PIL_FILTERS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}
DEFAULT_INTERPOLATION = "bilinear"   # torchvision's Resize default


class InputError(Exception):
    """One input that cannot be used (unreadable, not an image, wrong shape); the others go on.

    Not a ResgraphError (DataError) on purpose: it is a per-input signal, always caught by the caller
    (run's pipeline, the training data set, parity), which reports its message beside that input and
    goes on with the rest; it carries no location of its own (the caller names the file), and its
    str() is the message itself, which `run --json` prints as the input's "error"."""


@dataclass(frozen=True)
class Preprocess:
    shape: tuple[int, ...]                 # the sample's shape: (C, H, W) or (F,)
    resize: int | None = None
    crop: int | None = None
    interpolation: str = DEFAULT_INTERPOLATION
    mean: tuple[float, ...] | None = None  # None: 0 for every channel
    std: tuple[float, ...] | None = None   # None: 1

    @classmethod
    def resolve(cls, pre: dict, shape) -> "Preprocess":
        """From a spec's `preprocess` mapping (already checked by the front end), defaults filled in."""
        get = pre.get
        return cls(tuple(shape), get("resize"), get("crop"), get("interpolation", DEFAULT_INTERPOLATION),
                   tuple(get("mean")) if get("mean") is not None else None,
                   tuple(get("std")) if get("std") is not None else None)

    def to_json(self) -> dict:
        return {"resize": self.resize, "crop": self.crop, "interpolation": self.interpolation,
                "mean": list(self.mean) if self.mean is not None else None,
                "std": list(self.std) if self.std is not None else None}

    @classmethod
    def from_json(cls, d: dict, shape) -> "Preprocess":
        return cls.resolve({k: v for k, v in d.items() if v is not None}, shape)

    @property
    def takes_images(self) -> bool:
        return len(self.shape) == 3 and self.shape[0] in (1, 3)

    def describe(self) -> str:
        if not self.takes_images:
            return f"none (the input is {list(self.shape)}: give .npy files)"
        c, h, w = self.shape
        geo = (f"resize shorter side to {self.resize}, centre crop {h}x{w}" if self.resize
               else f"centre crop {h}x{w}" if self.crop else f"resize to {h}x{w}")
        norm = f", mean {list(self.mean)}" if self.mean else ""
        norm += f", std {list(self.std)}" if self.std else ""
        return f"{'RGB' if c == 3 else 'L'}, {geo} ({self.interpolation}), scale to [0, 1]{norm}"

    # -- the transform --------------------------------------------------------------------------
    def image(self, im) -> np.ndarray:
        """A Pillow image -> [C, H, W] float32."""
        assert self.takes_images, self.shape
        c, h, w = self.shape
        im, scale = _to_mode(im, "L" if c == 1 else "RGB")
        flt = PIL_FILTERS[self.interpolation]
        if self.resize:
            iw, ih = im.size
            short, long = (iw, ih) if iw <= ih else (ih, iw)
            new_long = int(self.resize * long / short)          # torchvision's rounding
            size = (self.resize, new_long) if iw <= ih else (new_long, self.resize)
            im = im.resize(size, flt)
        if self.resize or self.crop:
            im = _centre_crop(im, h, w)
        elif im.size != (w, h):
            im = im.resize((w, h), flt)
        a = np.asarray(im, dtype=np.float32)
        if scale != 1.0:
            a = a / np.float32(scale)                            # ToTensor: float32 x / 255
        if a.ndim == 2:
            a = a[None] if c == 1 else np.broadcast_to(a, (3, *a.shape))
        else:
            a = a.transpose(2, 0, 1)
        return self.normalise(a)

    def normalise(self, a: np.ndarray) -> np.ndarray:
        """(x - mean) / std per channel, in float32 and in that order (as torchvision's Normalize)."""
        mean, std = self._stats
        if mean is not None:
            a = a - mean
        if std is not None:
            a = a / std
        return a

    @property
    def _stats(self):
        """mean and std as float32 [C, 1, 1] arrays, made once (a frozen dataclass caches by hand)."""
        try:
            return self.__dict__["_stats_cache"]
        except KeyError:
            c = self.shape[0]
            stats = tuple(None if v is None else np.asarray(v, dtype=np.float32).reshape(c, *[1] * (len(self.shape) - 1))
                          for v in (self.mean, self.std))
            self.__dict__["_stats_cache"] = stats
            return stats

    def file(self, path: str) -> np.ndarray:
        """Decode an image file and transform it; InputError for anything a user's file can do wrong."""
        from PIL import Image, ImageOps, UnidentifiedImageError
        regular_file(path)
        try:
            with Image.open(path) as im:                       # at the first frame (GIF, TIFF, WebP)
                limit = Image.MAX_IMAGE_PIXELS
                if limit and im.width * im.height > limit:    # Pillow only warns up to twice its limit
                    raise InputError(f"refused: {im.width} x {im.height} = {im.width * im.height:,} pixels, over "
                                     f"Pillow's decompression-bomb limit of {limit:,}")
                if "exif" in im.info or im.format in ("TIFF", "MPO"):
                    im = ImageOps.exif_transpose(im)             # phones store rotation in EXIF (TIFF: in its tags)
                im.load()
                x = self.image(im)
        except InputError:
            raise
        except UnidentifiedImageError:
            raise InputError("not an image Pillow can read (JPEG, PNG, BMP, GIF, TIFF, WebP)") from None
        except Image.DecompressionBombError as e:
            raise InputError(f"refused: {e}") from None
        except FileNotFoundError:
            raise InputError("no such file") from None
        except IsADirectoryError:
            raise InputError("a folder, not a file") from None
        except PermissionError:
            raise InputError("permission denied") from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:   # truncated or corrupt data
            raise InputError(f"cannot decode the image: {e}") from None
        except Exception as e:  # noqa: BLE001  (Pillow's decoders raise what their formats do: struct, zlib...)
            raise InputError(f"cannot decode the image: {type(e).__name__}: {e}") from None
        if not np.isfinite(x).all():                           # a float TIFF can hold them
            raise InputError("holds NaN or inf")
        return x


def _to_mode(im, mode: str):
    """(an image in `mode`, or in 'F' for deeper than 8 bits; the scale that maps it to [0, 1])."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit greyscale (PNG, TIFF): Pillow's convert('L') would clip at 255, not scale
        a = np.asarray(im).astype(np.float32)
        from PIL import Image
        return Image.fromarray(np.clip(a, 0, 65535)), 65535.0   # float32 -> mode F
    if im.mode == "F":
        return im, 1.0                                           # float images: already [0, 1]
    if im.mode in ("P", "PA") and "transparency" in im.info or im.mode == "PA":
        im = im.convert("RGBA")                                  # palette transparency, as Pillow asks
    if im.mode != mode:
        im = im.convert(mode)
    return im, 255.0


def _centre_crop(im, h: int, w: int):
    """torchvision's CenterCrop: top = round((H_img - h) / 2); zero padding where the image is smaller
    (Pillow's crop fills outside the image with 0, at the offsets torchvision pads by)."""
    iw, ih = im.size
    if (iw, ih) == (w, h):
        return im
    left = -((w - iw) // 2) if w > iw else int(round((iw - w) / 2.0))
    top = -((h - ih) // 2) if h > ih else int(round((ih - h) / 2.0))
    return im.crop((left, top, left + w, top + h))


def regular_file(path: str) -> None:
    """InputError unless `path` is a regular file: reading a pipe blocks until someone writes to it,
    and a device (/dev/zero, /dev/urandom) never ends."""
    import os
    import stat
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError("no such file") from None
    except OSError as e:
        raise InputError(f"cannot read it: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError("a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise InputError("not a regular file (a pipe or a device): give a file")
    if st.st_size == 0:
        raise InputError("an empty file")
