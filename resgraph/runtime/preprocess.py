"""An image file -> the network's input tensor, as the spec's `preprocess` says.

    decode (Pillow; EXIF orientation applied; first frame) -> L or RGB (16-bit kept at full depth)
      -> resize -> centre crop -> [fit] -> [0, 1] -> (x - mean) / std -> [pad]   [C, H, W] float32

Geometry, by which keys are set (H, W: the input's size):
    resize: S          the shorter side to S (the longer: int(S * long / short)), then centre crop to H x W
    crop only          centre crop to H x W (zero padding where the image is smaller)
    neither            a plain resize to H x W (aspect ratio not kept)
With size variables (H, W names: the model takes every valid size), the image keeps its own size:
    resize: S          the shorter side to S, no crop        crop: C      the centre C x C
then, where that size is not one the model takes, `fit` says what happens (per axis):
    fit: pad (default) zeros at the bottom and right, after normalisation (the mean colour), up to
                       the nearest larger valid size; an image above the largest is refused
    fit: resize        a resize (the `interpolation` filter) to the nearest valid size, the larger on
                       a tie; never refused
Geometry records where the input's pixels came from, so that an output map can be taken back to
the image's own size (Geometry.to_image).

`resize: 256, crop: 224, interpolation: bilinear` with ImageNet's mean/std is torchvision's ImageNet
eval transform (Resize(256) -> CenterCrop(224) -> ToTensor() -> Normalize(mean, std)), computed
the same way: Pillow's filters, torchvision's size and crop rounding, float32 arithmetic in the same
order; tests/runtime/test_runtime.py matches its output against torchvision's own. numpy and Pillow only.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np

from ..manifest import compact, nearest

# torchvision's InterpolationMode names -> Pillow's filters (Image.Resampling values); the spec
# language lists the same names (spec.model.INTERPOLATIONS; a test keeps the two equal)
PIL_FILTERS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}
DEFAULT_INTERPOLATION = "bilinear"   # torchvision's Resize default
FITS = ("pad", "resize")             # preprocess.fit for models with size variables; first = default (the
#                                      spec language lists the same: spec.grammar.PREPROCESS["fit"])


class InputError(Exception):
    """One input that cannot be used (unreadable, not an image, wrong shape); the others go on.

    Not a ResgraphError (DataError) on purpose: it is a per-input signal, always caught by the caller
    (run's pipeline, the training data set, parity), which reports its message beside that input and
    goes on with the rest; it carries no location of its own (the caller names the file), and its
    str() is the message itself, which `run --json` prints as the input's "error"."""


class Geometry(NamedTuple):
    """Where one image's pixels went on their way to the model's input, all sizes (width, height):
    decoded at `size`, resized to `resized`, the part `box` (left, top, width, height; it may reach
    outside the resized image, where a crop pads) cut out of that, which fills the top left
    `content` of the model's `input` (the rest is padding), resized to it where the two differ.
    (A NamedTuple: one is made per image, and run's small images feel a dataclass's slower init.)"""
    size: tuple[int, int]
    resized: tuple[int, int]
    box: tuple[int, int, int, int]
    content: tuple[int, int]
    input: tuple[int, int]

    def to_image(self, labels: np.ndarray, void: int = 255) -> np.ndarray:
        """A [h, w] uint8 map over the model's input (or over an output a stride smaller) -> the same
        map over the image as decoded, [height, width], with nearest-neighbour resizes: the padding
        taken off, the crop put back where it came from (`void` outside it), the resize undone."""
        from PIL import Image
        nearest = PIL_FILTERS["nearest"]
        m = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8))
        if m.size != self.input:
            m = m.resize(self.input, nearest)
        if self.content != self.input:
            m = m.crop((0, 0, *self.content))
        left, top, bw, bh = self.box
        if (bw, bh) != self.content:
            m = m.resize((bw, bh), nearest)
        if self.box != (0, 0, *self.resized):
            canvas = Image.new("L", self.resized, void)
            canvas.paste(m, (left, top))
            m = canvas
        if m.size != self.size:
            m = m.resize(self.size, nearest)
        return np.asarray(m)


@dataclass(frozen=True)
class Preprocess:
    shape: tuple                           # the sample's shape: (C, H, W) or (F,); H, W may be size variables
    resize: int | None = None
    crop: int | None = None
    interpolation: str = DEFAULT_INTERPOLATION
    mean: tuple[float, ...] | None = None  # None: 0 for every channel
    std: tuple[float, ...] | None = None   # None: 1
    fit: str = FITS[0]                     # where the model has size variables: pad | resize
    sizes: dict | None = field(default=None, compare=False)   # size variable -> its SizeRange (the manifest's)
    raw: str | None = None                 # nchw | nhwc: a uint8 model's raw pixels in that layout, after
    #                                        the resize and crop (its graph scales and normalises); None: float32 [C, H, W]

    @classmethod
    def resolve(cls, pre: dict, shape, sizes: dict | None = None) -> "Preprocess":
        """From a spec's `preprocess` mapping (already checked by the front end), defaults filled in;
        `sizes`: the size variables' valid sizes (manifest.sizes) where the shape names them."""
        get = pre.get
        return cls(tuple(shape), get("resize"), get("crop"), get("interpolation", DEFAULT_INTERPOLATION),
                   tuple(get("mean")) if get("mean") is not None else None,
                   tuple(get("std")) if get("std") is not None else None, get("fit", FITS[0]), sizes or None)

    def to_json(self) -> dict:
        return {"resize": self.resize, "crop": self.crop, "interpolation": self.interpolation,
                "mean": list(self.mean) if self.mean is not None else None,
                "std": list(self.std) if self.std is not None else None, "fit": self.fit}

    @classmethod
    def from_json(cls, d: dict, shape, sizes: dict | None = None, raw: str | None = None) -> "Preprocess":
        """A manifest's preprocess (one written before `fit` existed reads as fit: pad); `raw`: the
        layout of a uint8 input's raw pixels (shape stays [C, H, W])."""
        pre = cls.resolve({k: v for k, v in d.items() if v is not None}, shape, sizes)
        return replace(pre, raw=raw) if raw else pre

    @property
    def takes_images(self) -> bool:
        return len(self.shape) == 3 and self.shape[0] in (1, 3)

    def __post_init__(self):
        """What every image asks, worked out once (plain attributes: a frozen dataclass sets them so):
        `dynamic`, whether the shape names size variables; `_plan`, (the centre crop's (width,
        height) or None, the fixed input size (width, height), or None where size variables decide
        it): a fixed-size input's own size where `resize` or `crop` is set; with size variables,
        crop x crop where `crop` is set."""
        dynamic = any(isinstance(v, str) for v in self.shape)
        if dynamic or not self.takes_images:
            plan = ((self.crop, self.crop) if self.crop else None, None)
        else:
            wh = (self.shape[2], self.shape[1])
            plan = (wh if self.resize or self.crop else None, wh)
        object.__setattr__(self, "dynamic", dynamic)
        object.__setattr__(self, "_plan", plan)

    def describe(self) -> str:
        if not self.takes_images:
            return f"none (the input is {list(self.shape)}: give .npy files)"
        c, h, w = self.shape
        if self.dynamic:
            geo = ", ".join([*([f"resize shorter side to {self.resize}"] if self.resize else []),
                             *([f"centre crop {self.crop}x{self.crop}"] if self.crop else []),
                             "padded bottom/right to a valid size" if self.fit == "pad" else "resized to a valid size"])
        else:
            geo = (f"resize shorter side to {self.resize}, centre crop {h}x{w}" if self.resize
                   else f"centre crop {h}x{w}" if self.crop else f"resize to {h}x{w}")
        norm = f", mean {list(self.mean)}" if self.mean else ""
        norm += f", std {list(self.std)}" if self.std else ""
        return f"{'RGB' if c == 3 else 'L'}, {geo} ({self.interpolation}), scale to [0, 1]{norm}"

    # -- the transform --------------------------------------------------------------------------
    def image(self, im) -> np.ndarray:
        """A Pillow image -> [C, H, W] float32."""
        return self.transform(im, False)[0]

    def transform(self, im, geometry: bool = True) -> tuple[np.ndarray, Geometry | None]:
        """A Pillow image -> ([C, H, W] float32, where its pixels went: with `geometry`, else None)."""
        assert self.takes_images, self.shape
        c = self.shape[0]
        crop, fixed = self._plan
        im, scale = _to_mode(im, "L" if c == 1 else "RGB")
        size = resized = im.size
        flt = PIL_FILTERS[self.interpolation]
        if self.resize:
            im = im.resize(_shorter_side_to(size, self.resize), flt)
            resized = im.size
        box, content = None, resized
        if crop is not None and crop != resized:
            left, top = _crop_offsets(resized, crop)
            im = im.crop((left, top, left + crop[0], top + crop[1]))   # torchvision's CenterCrop
            box, content = (left, top, *crop), crop
        target = fixed or self.fit_size(*content)
        if target != content and (fixed or self.fit == "resize"):
            im = im.resize(target, flt)
            content = target
        if self.raw:
            return self._raw(im, scale), Geometry(size, resized, box or (0, 0, *resized), content, target) \
                if geometry else None
        a = np.asarray(im, dtype=np.float32)
        if scale != 1.0:
            a = a / np.float32(scale)                            # ToTensor: float32 x / 255
        if a.ndim == 2:
            a = a[None] if c == 1 else np.broadcast_to(a, (3, *a.shape))
        else:
            a = a.transpose(2, 0, 1)
        a = self.normalise(a)
        if content != target:                                    # fit: pad, after normalisation
            a = np.pad(a, ((0, 0), (0, target[1] - content[1]), (0, target[0] - content[0])))
        return a, Geometry(size, resized, box or (0, 0, *resized), content, target) if geometry else None

    def _raw(self, im, scale: float) -> np.ndarray:
        """A uint8 model's sample: the pixels as they are (16-bit ones scaled to 8), in its layout."""
        a = np.asarray(im) if scale == 255.0 else \
            np.clip(np.rint(np.asarray(im, dtype=np.float32) * (255.0 / scale)), 0, 255)
        a = np.asarray(a, dtype=np.uint8)
        a = a[..., None] if a.ndim == 2 else a
        if a.shape[2] != self.shape[0]:                           # a grey image for an RGB model
            a = np.broadcast_to(a, (*a.shape[:2], self.shape[0]))
        return np.ascontiguousarray(a if self.raw == "nhwc" else a.transpose(2, 0, 1))

    def fit_size(self, w: int, h: int) -> tuple[int, int]:
        """The model's input size (width, height) for an image of w x h after resize and crop: the
        input's own where it is fixed; with size variables, each axis's valid size as `fit` says (a
        variable that sizes both axes takes the larger need). InputError where fit: pad cannot."""
        _, dh, dw = self.shape
        if not self.dynamic:
            return dw, dh
        need: dict = {}
        for d, n in ((dh, h), (dw, w)):
            need[d] = max(need.get(d, 0), n)
        got = {d: self._fit_axis(d, n, "height" if d == dh else "width") for d, n in need.items()}
        return got[dw], got[dh]

    def _fit_axis(self, d, n: int, side: str) -> int:
        if isinstance(d, str) and not (self.sizes and d in self.sizes):
            return n                 # no valid sizes given (a Preprocess made without a manifest): as it is
        allowed = (d,) if isinstance(d, int) else self.sizes[d].valid
        i = bisect.bisect_left(allowed, n)
        if i < len(allowed) and allowed[i] == n:
            return n
        if self.fit == "resize":
            below, above = allowed[max(i - 1, 0)], allowed[min(i, len(allowed) - 1)]
            return above if above - n <= n - below else below
        if i < len(allowed):
            return allowed[i]
        near = " or ".join(map(str, nearest(allowed, n)))
        raise InputError(f"{side} {n} (after preprocess) is above every size the model takes "
                         f"({d} = {compact(allowed)}): the nearest valid sizes are {near}; fit: pad never shrinks "
                         "an image (preprocess.fit: resize or resize: S in the spec does)")

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
        return self.load_file(path, False)[0]

    def load_file(self, path: str, geometry: bool = True) -> tuple[np.ndarray, Geometry | None]:
        """file(), with where the image's pixels went (a Geometry; None without `geometry`, which
        keeps a run that draws no class map from holding one per image)."""
        regular_file(path)
        return self._decode(path, geometry)

    def load_bytes(self, data: bytes) -> np.ndarray:
        """An encoded image's bytes (a served request's) transformed as file() transforms a file."""
        import io
        return self._decode(io.BytesIO(data), False)[0]

    def _decode(self, source, geometry: bool) -> tuple[np.ndarray, Geometry | None]:
        """A path or a binary file object: decoded with Pillow's bounds, oriented, transformed;
        InputError for anything a user's file can do wrong."""
        from PIL import Image, ImageOps, UnidentifiedImageError
        try:
            with Image.open(source) as im:                     # at the first frame (GIF, TIFF, WebP)
                limit = Image.MAX_IMAGE_PIXELS
                if limit and im.width * im.height > limit:    # Pillow only warns up to twice its limit
                    raise InputError(f"refused: {im.width} x {im.height} = {im.width * im.height:,} pixels, over "
                                     f"Pillow's decompression-bomb limit of {limit:,}")
                if "exif" in im.info or im.format in ("TIFF", "MPO"):
                    im = ImageOps.exif_transpose(im)             # phones store rotation in EXIF (TIFF: in its tags)
                im.load()
                x, geo = self.transform(im, geometry)
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
        return x, geo


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


def _crop_offsets(size: tuple[int, int], crop: tuple[int, int]) -> tuple[int, int]:
    """(left, top) of torchvision's CenterCrop: top = round((H_img - h) / 2); negative where the image
    is smaller than the crop, where Pillow's crop fills with 0 (at the offsets torchvision pads by)."""
    (iw, ih), (w, h) = size, crop
    left = -((w - iw) // 2) if w > iw else int(round((iw - w) / 2.0))
    top = -((h - ih) // 2) if h > ih else int(round((ih - h) / 2.0))
    return left, top


def _shorter_side_to(size: tuple[int, int], s: int) -> tuple[int, int]:
    """torchvision's Resize(s): the shorter side to s, the longer to int(s * long / short)."""
    iw, ih = size
    short, long = (iw, ih) if iw <= ih else (ih, iw)
    new_long = int(s * long / short)
    return (s, new_long) if iw <= ih else (new_long, s)


def check_sample(got: tuple, want: tuple, sizes: dict | None, seen: dict | None = None) -> None:
    """InputError unless an array of shape `got` is one sample of `want`: its rank and fixed dims,
    and each size variable one valid size (the same wherever it appears; `seen` carries them across
    the inputs of one sample)."""
    seen = {} if seen is None else seen
    if len(got) != len(want) or any(isinstance(d, int) and d != g for d, g in zip(want, got)):
        raise InputError(f"shape {list(got)}, but the model takes {list(want)}")
    for d, g in zip(want, got):
        if not isinstance(d, str):
            continue
        if seen.setdefault(d, g) != g:
            raise InputError(f"{d} is {g} here but {seen[d]} elsewhere in this sample: every {d} is one size")
        valid = sizes[d].valid
        i = bisect.bisect_left(valid, g)
        if i == len(valid) or valid[i] != g:
            raise InputError(f"{d} = {g} is not a size the model takes ({compact(valid)}): the nearest valid sizes "
                             f"are {' or '.join(map(str, nearest(valid, g)))}")


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
