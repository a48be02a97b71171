"""What `resgraph run` takes: image files, folders (recursive, sorted), .npy and .npz files, '-'
for a list of paths on standard input; and turning one of them into a sample.

A .npy file holds the network's input as it is, already preprocessed: one sample [C, H, W] (or [F]),
or a batch [N, C, H, W], which counts as N inputs named FILE[0] ... FILE[N-1] (as Polygraphy's
and trtexec's input files, it is not normalised again). A .npz file (numpy.savez) holds one sample
of every input of the model, each under its input's name: what a model with several inputs takes.
Where the model has size variables, a .npy or .npz sample's sizes must be valid ones (they are not
padded or resized: that is the image preprocess's `fit`).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..errors import DataError
from .preprocess import Geometry, InputError, Preprocess, check_sample, regular_file


@dataclass(frozen=True)
class Item:
    path: str
    index: int | None = None      # the sample's place in a batched .npy
    error: str | None = None      # known before decoding (a .npy whose header is broken, say)

    @property
    def name(self) -> str:
        """For display: a file name that is not UTF-8 shows its odd bytes as \\xNN (it cannot be printed as is)."""
        path = self.path if self.path.isascii() else os.fsencode(self.path).decode("utf-8", "backslashreplace")
        return path if self.index is None else f"{path}[{self.index}]"


def expand(args, stdin=None, sample_shape: tuple | None = None) -> list[Item]:
    """Every input named by `args`, in order: folders walked recursively in sorted order (every
    file but dot-files: a stray non-image there is reported, not silently skipped)."""
    items: list[Item] = []
    for arg in args:
        if arg == "-":
            assert stdin is not None
            raw = stdin.buffer.read() if hasattr(stdin, "buffer") else stdin.read()
            text = os.fsdecode(raw) if isinstance(raw, bytes) else raw   # any file name, UTF-8 or not
            paths = [line.strip() for line in text.splitlines() if line.strip()]
            items.extend(i for p in paths for i in _file(p, sample_shape))
        elif os.path.isdir(arg):
            for root, dirs, files in os.walk(arg):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                items.extend(i for f in sorted(files) if not f.startswith(".")
                             for i in _file(os.path.join(root, f), sample_shape))
        else:
            items.extend(_file(arg, sample_shape))
    return items


class Sample(NamedTuple):
    feeds: dict                           # input name -> one sample, float32, in the model's input order
    geometry: Geometry | None = None      # where its pixels went (an image's; a tensor's own H x W)
    key: tuple = ()                       # what samples that can share a batch share: every input's shape


TENSOR_FILES = (".npy", ".npz")


class Feeder:
    """How one model's samples are read: its preprocess (the first input's), every input's (name,
    sample shape), and whether samples keep their Geometry (what drawing a class map needs)."""

    def __init__(self, pre: Preprocess, inputs, geometry: bool = False, dtypes: dict | None = None):
        self.pre, self.inputs, self.geometry = pre, tuple(inputs), geometry
        self.names = [n for n, _ in self.inputs]
        self.dtypes = {n: (dtypes or {}).get(n, "float32") for n in self.names}   # a uint8 input: raw pixels
        self.image_input = self.names[0] if len(self.inputs) == 1 and pre.takes_images else None

    @classmethod
    def of(cls, session, geometry: bool = False) -> "Feeder":
        return cls(session.preprocess, ((t.name, t.sample_shape) for t in session.inputs), geometry,
                   {t.name: t.dtype for t in session.inputs})

    def load(self, item: Item) -> Sample:
        """One item as a Sample; InputError if it cannot be used."""
        if item.error:
            raise InputError(item.error)
        low = item.path.lower()
        if self.image_input is not None and not low.endswith(TENSOR_FILES):   # the common case, first
            x, geometry = self.pre.load_file(item.path, self.geometry)
            return Sample({self.image_input: x}, geometry, (x.shape,))
        names = self.names
        if low.endswith(".npz"):
            return _tensors(_npz(item.path, self.inputs, self.pre.sizes, self.dtypes))
        if len(self.inputs) > 1:
            raise InputError(f"this model takes {len(names)} inputs ({', '.join(names)}): give .npz files holding "
                             f"one sample of each by name (numpy.savez(FILE, {'=..., '.join(names)}=...))")
        if low.endswith(".npy"):
            return _tensors({names[0]: _npy(item, self.inputs[0][1], self.pre.sizes, self.dtypes[names[0]])})
        raise InputError(f"this model's input is {show(self.pre.shape)}, not an image: give .npy files of that shape")


def _tensors(feeds: dict) -> Sample:
    """A .npy or .npz sample; its geometry the first input's own H x W (what a class map is drawn at)."""
    x = next(iter(feeds.values()))
    key = tuple(v.shape for v in feeds.values())
    if x.ndim != 3:
        return Sample(feeds, None, key)
    wh = (x.shape[2], x.shape[1])
    return Sample(feeds, Geometry(wh, wh, (0, 0, *wh), wh, wh), key)


def show(shape) -> str:
    """[3, H, W]: a shape as the messages write it (size variables by name, unquoted)."""
    return "[" + ", ".join(map(str, shape)) + "]"


def no_inputs(args) -> DataError:
    """The error for inputs that name no file at all (empty folders, an empty list on stdin)."""
    return DataError.at(" ".join(map(str, args)), "no inputs: the folders are empty (or standard input named no files)",
                        "give image files, .npy files or folders holding them")


def _file(path: str, sample_shape) -> list[Item]:
    if not path.lower().endswith(".npy") or sample_shape is None:
        return [Item(path)]
    try:
        regular_file(path)
        shape = npy_shape(path)
    except InputError as e:
        return [Item(path, error=str(e))]
    if len(shape) == len(sample_shape) + 1 and _matches(shape[1:], sample_shape) and shape[0] > 0:
        return [Item(path, i) for i in range(shape[0])]
    return [Item(path)]


def _matches(got: tuple, want: tuple) -> bool:
    """The rank and every fixed dim of `want` (a size variable matches any length)."""
    return len(got) == len(want) and all(isinstance(d, str) or d == g for d, g in zip(want, got))


def npy_shape(path: str) -> tuple[int, ...]:
    """The shape a .npy file's header states, read from the header alone and held to the file: a 1 KB
    file whose header claims 10^9 rows is refused here, before anything is allocated for its samples.
    Whatever a hostile header holds (a broken literal, a negative or absurd dimension, an object
    dtype) is an InputError about this one file."""
    try:
        with open(path, "rb") as f:
            return _npy_header(f, os.fstat(f.fileno()).st_size)
    except OSError as e:
        raise InputError(f"cannot read it: {e.strerror or e}") from None


def _npy_header(f, size: int, what: str = ".npy file") -> tuple[int, ...]:
    """npy_shape on an open file (or .npz member) of `size` bytes, left just past the header."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
        if read is None:
            raise InputError(f"a .npy format {version[0]}.{version[1]} header, not 1.0 or 2.0")
        shape, _, dtype = read(f)
        offset = f.tell()
    except (InputError, OSError):
        raise
    except Exception as e:  # noqa: BLE001  (numpy parses the header with ast.literal_eval: anything may come out)
        raise InputError(f"not a readable {what}: {type(e).__name__}: {str(e)[:200]}") from None
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InputError(f"not a readable {what}: its header states the shape {shape!r}")
    if dtype.hasobject:
        raise InputError("a .npy of Python objects: numbers expected (they would need pickle, which is never loaded)")
    need = math.prod(shape) * dtype.itemsize
    if need > size - offset:
        raise InputError(f"its header states {list(shape)} {dtype} ({need:,} bytes), but the {what} holds "
                         f"{size - offset:,} bytes after it: truncated or forged")
    return tuple(shape)


def load(item: Item, pre: Preprocess) -> np.ndarray:
    """One sample of a one-input model, [C, H, W] float32; InputError if the input cannot be used."""
    if item.error:
        raise InputError(item.error)
    if item.path.lower().endswith(".npy"):
        return _npy(item, pre.shape, pre.sizes)
    if not pre.takes_images:
        raise InputError(f"this model's input is {show(pre.shape)}, not an image: give .npy files of that shape")
    return pre.file(item.path)


def _npy(item: Item, shape: tuple, sizes: dict | None = None, dtype: str = "float32") -> np.ndarray:
    regular_file(item.path)
    npy_shape(item.path)   # the header held to the file before numpy maps anything
    try:
        a = np.load(item.path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise InputError("no such file") from None
    except (OSError, ValueError, EOFError, SyntaxError, TypeError) as e:
        raise InputError(f"not a readable .npy file: {e}") from None
    if not isinstance(a, np.ndarray):
        raise InputError("an .npz archive, not one array: save one with numpy.save") from None
    if item.index is not None:
        a = a[item.index]
    if not _matches(a.shape, shape):
        raise InputError(f"shape {list(a.shape)}, but the model takes {show(shape)} (or a batch [N, {show(shape)[1:]})")
    check_sample(a.shape, shape, sizes)
    return _numbers(a, ".npy file", dtype)


def _numbers(a, what: str, dtype: str = "float32") -> np.ndarray:
    """An array as samples in the input's dtype: numbers, readable, finite; a uint8 input (raw pixels,
    normalised in the model) takes uint8 only, never floats that may be normalised already."""
    if a.dtype.kind not in "fiub":
        raise InputError(f"dtype {a.dtype}: numbers expected")
    if dtype == "uint8" and a.dtype != np.uint8:
        raise InputError(f"{a.dtype} values, but this model takes uint8 raw pixels (it scales and normalises "
                         "them itself): save the image's pixels as uint8, without normalising them")
    try:
        out = np.asarray(a, dtype=dtype)
    except (OSError, ValueError) as e:   # a file shorter than its header says
        raise InputError(f"not a readable {what}: {e}") from None
    if not np.isfinite(out).all():
        raise InputError("holds NaN or inf")
    return out


def _npz(path: str, inputs: tuple, sizes: dict | None, dtypes: dict | None = None) -> dict:
    """One sample of every input from a .npz file (numpy.savez: one member NAME.npy per input), each
    member's header checked against its input's shape before its data is read, so that what is
    allocated is bounded by the model's own sample size."""
    import zipfile
    regular_file(path)
    names = [n for n, _ in inputs]
    try:
        with zipfile.ZipFile(path) as z:
            members = {(i.filename[:-4] if i.filename.endswith(".npy") else i.filename): i for i in z.infolist()}
            _npz_names(list(members), names)
            seen: dict = {}
            return {name: _npz_member(z, members[name], name, want, sizes, seen, (dtypes or {}).get(name, "float32"))
                    for name, want in inputs}
    except InputError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, NotImplementedError) as e:
        raise InputError(f"not a readable .npz file: {type(e).__name__}: {str(e)[:200]}") from None


def _npz_names(held: list[str], names: list[str]) -> None:
    from ..errors import did_you_mean
    unknown = [m for m in held if m not in names]
    if unknown:
        raise InputError(f"holds '{unknown[0]}', which is not an input of this model (it takes {', '.join(names)}): "
                         + did_you_mean(unknown[0], names, "inputs"))
    missing = [n for n in names if n not in held]
    if missing:
        raise InputError(f"holds no {', '.join(missing)}: the model takes {', '.join(names)}, one sample of each by name")


def _npz_member(z, info, name: str, want: tuple, sizes: dict | None, seen: dict, dtype: str = "float32") -> np.ndarray:
    where = f"member {name}"
    with z.open(info) as f:
        got = _npy_header(f, info.file_size, f".npz {where}")
    if not _matches(got, want):
        raise InputError(f"{name} has shape {list(got)}, but the model takes {show(want)} (one sample per .npz)")
    try:
        check_sample(got, want, sizes, seen)
    except InputError as e:
        raise InputError(f"{name}: {e}") from None
    with z.open(info) as f:
        a = np.lib.format.read_array(f, allow_pickle=False)
    return _numbers(a, f".npz {where}", dtype)
