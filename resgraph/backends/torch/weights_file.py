"""A library's state dict read from a file (--weights-file): the way to import published weights on a
machine without internet. A .pth as torchvision or timm publish it (read with weights_only: a file
that needs arbitrary pickled objects is refused), or a .safetensors file.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ...errors import WeightsError
from ...fileio import check_regular
from .sources import Source

_WRAPPERS = ("state_dict", "model")   # training checkpoints often wrap the state dict in one of these
_DDP_PREFIX = "module."               # and DistributedDataParallel prefixes every key with this


def load_weights_file(model: nn.Module, path: str, source: Source,
                      rename: Callable[[str], str] | None = None) -> None:
    """Load `path` into `model` (strict: every key, every shape). `rename` maps legacy key names."""
    check_regular(str(path), "weights", "check the path")
    state = read_state_dict(str(path), source)
    if rename is not None:
        state = {rename(k): v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise WeightsError.at(str(path), f"the weights file does not fit {source.who}: {_summary(e)}",
                              f"was it saved from another model? It must be a state dict of {source}") from None


def read_state_dict(path: str, source: Source) -> dict[str, torch.Tensor]:
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - refused pickle, truncated zip, not a checkpoint: all the user's
        raise WeightsError.at(path, f"not a readable PyTorch weights file: {_first_line(e)}",
                              f"expected a state dict saved with torch.save (a .pth as {source.library or 'its library'} "
                              f"publishes for {source.name}) or a .safetensors file") from None
    for wrapper in _WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise WeightsError.at(path, f"the weights file holds a {type(state).__name__}, not a state dict",
                              "save model.state_dict(), not the model")
    if state and all(isinstance(k, str) and k.startswith(_DDP_PREFIX) for k in state):
        state = {k[len(_DDP_PREFIX):]: v for k, v in state.items()}
    return state


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _summary(e: Exception, limit: int = 600) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + " ..."
