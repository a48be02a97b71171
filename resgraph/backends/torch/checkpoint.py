"""Checkpoints as safetensors (no pickle): the module's state dict, keyed by the spec's paths.

Metadata (strings) records the spec's name and sha256, the resgraph version and whether the
weights are trained. Loading checks the checkpoint against the spec — names, shapes, dtypes (an
integer or bool tensor where the module holds floats is refused, never cast) and finiteness — and
lists the first mismatches otherwise. Only regular files are opened (a FIFO would block forever).
Writes are atomic (a temporary file, then a rename): a full disk leaves the previous file whole.
A path that cannot be read or written is a PathError; content that does not load or fit, a WeightsError.
"""
from __future__ import annotations

import os

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ...errors import PathError, WeightsError
from ...fileio import atomic_write, check_regular, os_error
from ...fit import check_fit, check_values


def save_checkpoint(module: torch.nn.Module, path: str, metadata: dict | None = None) -> None:
    """Write atomically: a temporary file in the same folder, then a rename."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    meta.setdefault("format", "resgraph-checkpoint-1")
    with writing(path):
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta), suffix=".safetensors")


class writing:
    """`with writing(path): ...` turns a failed write (disk full, read-only, quota, name too long,
    permissions; as OSError or as safetensors' SafetensorError "I/O error ... (os error N)") into a
    PathError naming `path`, with fileio's hint for the errno and that the previous file is whole
    (writes are atomic)."""

    def __init__(self, path: str):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, kind, e, tb):
        if e is None:
            return False
        code = e.errno if isinstance(e, OSError) else _os_error_code(e) if isinstance(e, SafetensorError) else None
        if code is None:
            return False
        raise os_error(OSError(code, os.strerror(code), self.path), doing="cannot write",
                       after="; the previous file there, if any, is left as it was") from None


def _os_error_code(e: Exception) -> int | None:
    import re
    m = re.search(r"\(os error (\d+)\)", str(e))
    return int(m.group(1)) if m else None


def read_checkpoint(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    check_regular(path)
    try:
        from safetensors import safe_open
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
        return load_file(path), meta
    except OSError as e:   # no read permission, a race with check_regular (the file went), a failing disk
        raise PathError.at(path, f"cannot read the checkpoint: {e.strerror or e}",
                           "check the path and its permissions") from None
    except (SafetensorError, ValueError, TypeError) as e:
        raise WeightsError.at(path, f"not a readable safetensors file: {e}", "resgraph checkpoints are .safetensors "
                              "files (resgraph init, train or import-weights)") from None


def load_checkpoint(module: torch.nn.Module, path: str, strict: bool = True) -> dict[str, str]:
    """Load `path` into `module` after checking names, shapes, dtypes and values; returns the metadata."""
    tensors, meta = read_checkpoint(path)
    check_fits(module, tensors, path)
    check_finite(tensors, path)
    module.load_state_dict(tensors, strict=strict)
    return meta


def _kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    if dtype.is_complex:
        return "complex"
    return "float" if dtype.is_floating_point else "integer"


def _entries(tensors: dict) -> dict:
    return {k: (tuple(v.shape), _kind(v.dtype), str(v.dtype).removeprefix("torch.")) for k, v in tensors.items()}


def check_fits(module: torch.nn.Module, tensors: dict, path: str, limit: int = 5) -> None:
    """Names, shapes and dtype kinds against the module's state dict (resgraph.fit.check_fit, the
    check compile runs too)."""
    check_fit(_entries(tensors), _entries(module.state_dict()), path, limit)


def check_finite(tensors: dict, path: str, limit: int = 5) -> None:
    """All finite, every batch-norm variance >= 0 (resgraph.fit.check_values, as compile checks)."""
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    minima = {k: float(v.min()) for k, v in tensors.items() if k.endswith("running_var") and v.numel()}
    check_values(bad, minima, path, limit)
