"""The same weights in a resgraph network and its torchvision namesake, paired by structure.

resgraph's own importer (resgraph.backends.torch.importer.import_weights) runs both models (on the meta
device where only the pairing is wanted) to list their tensors in the order their forward uses them, and
pairs tensor i with tensor i only where both are the same kind of tensor, of the same shape, in the same
kind of layer; the first disagreement ends the benchmark with a message naming both sides.  Its mapping
(our state-dict key -> torchvision's: `layer1.0.shortcut.conv.weight` -> `layer1.0.downsample.0.weight`)
then carries tensors either way, and verify_import runs both models on one random input, which must agree.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

from _common import ROOT, resgraph


@contextlib.contextmanager
def ending(prog: str):
    """A ResgraphError (a mismatch, say) inside ends the benchmark `prog` with its message."""
    try:
        yield
    except resgraph.ResgraphError as e:
        raise SystemExit(f"{prog}: {e}") from None


def torchvision_model(name: str, prog: str, seed: int | None = None, device=None):
    """torchvision.models.get_model(name, weights=None) in eval mode (seeded if `seed` is given, leaving
    the caller's random state as it was), tagged so that the importer's messages name it."""
    from resgraph.backends.torch.torchvision import torchvision_model as build
    with ending(prog):
        return build(name, seed=seed, device=device)


def import_torchvision(rg, tv, prog: str) -> dict:
    """Copy torchvision model tv's tensors into the resgraph module rg, paired by structure (import_weights;
    verify is left to the caller's own parity check).  Returns import_weights' report."""
    from resgraph.backends.torch.importer import import_weights
    with ending(prog):
        return import_weights(rg, tv)


def structural_keys(spec, name: str, prog: str) -> dict[str, str]:
    """Our state-dict key -> torchvision's, for specs/<name>.yaml and torchvision.models.<name>: both built
    on the meta device (no memory, no values) and paired by import_weights with all its checks."""
    import torch
    with torch.device("meta"):
        module = resgraph.to_torch(str(spec), init=False)
    return import_torchvision(module, torchvision_model(name, prog, device="meta"), prog)["keys"]


def renamed(keys: dict[str, str]) -> list[tuple[str, str]]:
    """The pairs whose names differ (resgraph's, torchvision's)."""
    return [(a, b) for a, b in keys.items() if a != b]


def checkpoint_into_torchvision(spec: str, weights: Path, name: str, prog: str):
    """(torchvision's model `name` holding resgraph checkpoint `weights` of `spec`, the key mapping).

    The checkpoint loads into resgraph's module first (resgraph checks names, shapes, dtypes and values),
    its tensors go over by structural_keys, and verify_import checks that both models give the same outputs."""
    from resgraph.backends.torch.importer import verify_import
    with ending(prog):
        module = resgraph.to_torch(str(ROOT / spec), weights=str(weights))
    keys = structural_keys(ROOT / spec, name, prog)
    tv = torchvision_model(name, prog)
    ours, theirs = module.state_dict(), tv.state_dict()
    tv.load_state_dict({b: ours[a].reshape(theirs[b].shape).to(theirs[b].dtype) for a, b in keys.items()},
                       strict=True)
    with ending(prog):
        verify_import(module, tv)
    return tv.eval(), keys


def calibrate_bn(tv, seed: int = 0) -> int:
    """Give every batch norm random affine parameters and the running statistics of one random batch.

    A fresh init has weight 1, bias 0, mean 0, var 1: folded, every conv bias is zero (the dynamo exporter's
    optimiser then drops them all) and a wrongly folded bn could hardly show.  Statistics measured on a
    batch (train-mode forward, cumulative averages) keep the activations at a trained network's scale,
    where arbitrary random statistics would blow them up over 50 blocks."""
    import torch
    from torch import nn
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in tv.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in bns:
            m.weight.uniform_(0.5, 1.5, generator=g)
            m.bias.normal_(0.0, 0.1, generator=g)
            m.reset_running_stats()
            m.momentum = None
        tv.train()
        tv(torch.randn(4, 3, 224, 224, generator=g))
        for m in bns:
            m.momentum = 0.1
    tv.eval()
    return len(bns)


def save_as_checkpoint(tv, keys: dict[str, str], path: Path, note: str) -> None:
    """Write tv's tensors back over the resgraph checkpoint `path` under resgraph's names (keys: ours ->
    theirs), in its shapes and dtypes, keeping its metadata plus {"bench": note}."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    ours = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata() or {})
    meta["bench"] = note
    sd = tv.state_dict()
    save_file({a: sd[b].reshape(ours[a].shape).to(ours[a].dtype).contiguous() for a, b in keys.items()},
              str(path), metadata=meta)
