"""What `resgraph run` takes: image files, folders (recursive, sorted), .npy files, '-' for a list
of paths on standard input; and turning one of them into a sample.

A .npy file holds the network's input as it is, already preprocessed: one sample [C, H, W] (or [F]),
or a batch [N, C, H, W], which counts as N inputs named FILE[0] ... FILE[N-1] (as Polygraphy's
and trtexec's input files, it is not normalised again).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from .preprocess import InputError, Preprocess, regular_file


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
    if len(shape) == len(sample_shape) + 1 and tuple(shape[1:]) == tuple(sample_shape) and shape[0] > 0:
        return [Item(path, i) for i in range(shape[0])]
    return [Item(path)]


def npy_shape(path: str) -> tuple[int, ...]:
    """The shape a .npy file's header states, read from the header alone and held to the file: a 1 KB
    file whose header claims 10^9 rows is refused here, before anything is allocated for its samples.
    Whatever a hostile header holds (a broken literal, a negative or absurd dimension, an object
    dtype) is an InputError about this one file."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
            if read is None:
                raise InputError(f"a .npy format {version[0]}.{version[1]} header, not 1.0 or 2.0")
            shape, _, dtype = read(f)
            offset, size = f.tell(), os.fstat(f.fileno()).st_size
    except InputError:
        raise
    except OSError as e:
        raise InputError(f"cannot read it: {e.strerror or e}") from None
    except Exception as e:  # noqa: BLE001  (numpy parses the header with ast.literal_eval: anything may come out)
        raise InputError(f"not a readable .npy file: {type(e).__name__}: {str(e)[:200]}") from None
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InputError(f"not a readable .npy file: its header states the shape {shape!r}")
    if dtype.hasobject:
        raise InputError("a .npy of Python objects: numbers expected (they would need pickle, which is never loaded)")
    need = math.prod(shape) * dtype.itemsize
    if need > size - offset:
        raise InputError(f"its header states {list(shape)} {dtype} ({need:,} bytes), but the file holds "
                         f"{size - offset:,} bytes after it: truncated or forged")
    return tuple(shape)


def load(item: Item, pre: Preprocess) -> np.ndarray:
    """One sample, [C, H, W] float32; InputError if the input cannot be used."""
    if item.error:
        raise InputError(item.error)
    if item.path.lower().endswith(".npy"):
        return _npy(item, pre.shape)
    if not pre.takes_images:
        raise InputError(f"this model's input is {list(pre.shape)}, not an image: give .npy files of that shape")
    return pre.file(item.path)


def _npy(item: Item, shape: tuple) -> np.ndarray:
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
    if tuple(a.shape) != tuple(shape):
        raise InputError(f"shape {list(a.shape)}, but the model takes {list(shape)} (or a batch [N, {', '.join(map(str, shape))}])")
    if a.dtype.kind not in "fiub":
        raise InputError(f"dtype {a.dtype}: numbers expected")
    try:
        out = np.asarray(a, dtype=np.float32)
    except (OSError, ValueError) as e:   # a file shorter than its header says
        raise InputError(f"not a readable .npy file: {e}") from None
    if not np.isfinite(out).all():
        raise InputError("holds NaN or inf")
    return out
