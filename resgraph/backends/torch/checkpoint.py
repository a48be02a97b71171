"""Checkpoints as safetensors (no pickle): the module's state dict, keyed by the spec's paths.

Metadata (strings) records the spec's name and sha256, the resgraph version and whether the
weights are trained. Loading checks the checkpoint against the spec — names and shapes — and
lists the first mismatches otherwise.
"""
from __future__ import annotations

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ...errors import SpecError
from ...fileio import atomic_write


def save_checkpoint(module: torch.nn.Module, path: str, metadata: dict | None = None) -> None:
    """Write atomically: a temporary file in the same folder, then a rename."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    meta.setdefault("format", "resgraph-checkpoint-1")
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta), suffix=".safetensors")


def read_checkpoint(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        from safetensors import safe_open
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
        return load_file(path), meta
    except FileNotFoundError:
        raise _error(path, "no such checkpoint file", "check the path") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise _error(path, f"not a readable safetensors file: {e}",
                     "resgraph checkpoints are .safetensors files (resgraph init, train or import-weights)") from None


def load_checkpoint(module: torch.nn.Module, path: str, strict: bool = True) -> dict[str, str]:
    """Load `path` into `module` after checking names and shapes; returns the checkpoint's metadata."""
    tensors, meta = read_checkpoint(path)
    check_fits(module, tensors, path)
    module.load_state_dict(tensors, strict=strict)
    return meta


def check_fits(module: torch.nn.Module, tensors: dict, path: str, limit: int = 5) -> None:
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in tensors.items()}
    missing = [k for k in want if k not in have]
    unexpected = [k for k in have if k not in want]
    wrong = [f"{k}: checkpoint {list(have[k])}, spec {list(want[k])}" for k in want if k in have and have[k] != want[k]]
    if not (missing or unexpected or wrong):
        return
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong)):
        if items:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            parts.append(f"{label} ({len(items)}): " + "; ".join(items[:limit]) + more)
    raise _error(path, "the checkpoint does not fit the spec: " + " | ".join(parts),
                 "was it made for another spec (or another version of this one)? "
                 "Rebuild it with resgraph init / train / import-weights for this spec")


_error = SpecError.at   # an error about a file or option: no line to point at
