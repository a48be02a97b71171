"""Resumable trainer state in safetensors: optimizer tensors, with the rest as JSON metadata.

Optimizer state dicts are nested ({'state': {i: {name: tensor|number}}, 'param_groups': [...]});
safetensors holds flat tensors and string metadata, so tensors go under "state.<i>.<name>" and
everything else (param groups, scheduler, epoch, numbers in the state) into one JSON string.
"""
from __future__ import annotations

import json

import torch
from safetensors.torch import load_file, save_file

from ..fileio import atomic_write


def save_trainer_state(path: str, optimizer, scheduler, epoch: int, extra: dict | None = None) -> None:
    opt = optimizer.state_dict()
    tensors, numbers = {}, {}
    for i, st in opt["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{i}.{name}"] = v.detach().cpu().contiguous()
            else:
                numbers[f"{i}.{name}"] = v
    meta = {"epoch": epoch, "param_groups": opt["param_groups"], "numbers": numbers,
            "scheduler": scheduler.state_dict() if scheduler is not None else None, "extra": extra or {}}
    atomic_write(path, lambda tmp: save_file(tensors or {"_empty": torch.zeros(0)}, tmp,
                                             metadata={"trainer": json.dumps(meta)}), suffix=".safetensors")


def load_trainer_state(path: str, optimizer, scheduler, device) -> dict:
    """Restore optimizer and scheduler; returns the metadata (epoch = the last finished epoch)."""
    from safetensors import safe_open
    with safe_open(path, framework="pt") as f:
        meta = json.loads((f.metadata() or {})["trainer"])
    tensors = load_file(path, device=str(device))
    state: dict = {}
    for key, v in tensors.items():
        if key == "_empty":
            continue
        _, i, name = key.split(".", 2)
        state.setdefault(int(i), {})[name] = v
    for key, v in meta["numbers"].items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    if scheduler is not None and meta.get("scheduler") is not None:
        scheduler.load_state_dict(meta["scheduler"])
    return meta
