"""torchvision's weights in a resgraph module: import a torchvision model's state dict by structure.

    >>> from resgraph.backends.torch.torchvision import import_torchvision
    >>> module, report = import_torchvision("resnet50", "specs/resnet50.yaml", weights_file="resnet50-11ad3fa6.pth")

Entries are matched by position, not by name: both state dicts list their tensors in the order their
modules were built, which for a spec written in the natural order (stem, stages, head; in a block,
body then shortcut) is torchvision's order. Entry i of ours takes entry i of torchvision's when both
are the same kind of tensor (weight, bias, running_mean, running_var, num_batches_tracked) of the
same shape, owned by the same kind of layer (conv, bn, linear) with the same stride and dilation.
So any spec with torchvision's architecture imports, whatever its ids; the first disagreement is an
error naming both sides. What has no parameters (activations, pooling, the order of a concat) is
invisible to that matching: `import_torchvision` therefore also runs both models on one random input
and compares the outputs (verify=True).

torchvision is optional (pip install 'resgraph[torchvision]'); it is imported on first use.
"""
from __future__ import annotations

import os
import re
import socket

import torch
from torch import nn

from ...errors import Diagnostic, Loc, SpecError, did_you_mean

SUPPORTED: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                              "wide_resnet50_2", "resnext50_32x4d", "densenet121")

_KINDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_WHERE = "torchvision"   # the Loc of errors that are not about a file

# torchvision's published DenseNet checkpoints use the pre-1.0 names norm.1, conv.2, ...; its loader
# renames them (torchvision.models.densenet._load_state_dict), and so do we for --weights-file
_DENSENET_LEGACY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
                              r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def _error(message: str, hint: str = "", where: Loc | None = None) -> SpecError:
    return SpecError([Diagnostic(where or Loc(_WHERE, 0, 0), message, hint)])


def _torchvision_models():
    try:
        from torchvision import models
    except ImportError as e:
        raise _error(f"torchvision is not installed ({e})",
                     "install it with: pip install 'resgraph[torchvision]'") from None
    return models


def _check_name(name: str) -> None:
    if name not in SUPPORTED:
        raise _error(f"unknown torchvision model '{name}'", did_you_mean(str(name), SUPPORTED, "models"))


# --- the torchvision side -----------------------------------------------------------------------

def torchvision_model(name: str, pretrained: bool = False, weights_file: str | None = None,
                      seed: int | None = None) -> nn.Module:
    """torchvision.models.<name>, randomly initialised (seeded if `seed` is given), or with torchvision's
    published weights (pretrained=True: downloads, needs internet unless already in torch.hub's cache),
    or with the state dict in `weights_file` (a .pth as torchvision publishes it, or a .safetensors)."""
    _check_name(name)
    if pretrained and weights_file is not None:
        raise _error("give either pretrained weights or a weights file, not both",
                     "pretrained downloads torchvision's published weights; a weights file is one you have")
    models = _torchvision_models()
    builder = getattr(models, name)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        if pretrained:
            model = _pretrained(models, name)
        else:
            model = builder(weights=None)
    if weights_file is not None:
        _load_weights_file(model, name, weights_file)
    model._resgraph_torchvision_name = name
    return model.eval()


def _pretrained(models, name: str) -> nn.Module:
    weights = models.get_model_weights(name).DEFAULT
    old = socket.getdefaulttimeout()
    if old is None:
        socket.setdefaulttimeout(60)   # urllib waits forever by default; a dead network must not hang us
    try:
        return getattr(models, name)(weights=weights)
    except (OSError, ValueError) as e:   # URLError, timeouts, refused connections; truncated downloads
        raise _error(f"could not download torchvision's pretrained {name} weights ({weights}): {e}",
                     f"this needs internet access. Download {weights.url} on a machine that has it, "
                     f"then pass the file with --weights-file (weights_file=)") from None
    except RuntimeError as e:            # torch.hub's hash check, or an unreadable cached file
        raise _error(f"torchvision's pretrained {name} weights could not be loaded: {e}",
                     f"delete the cached file under {os.path.join(torch.hub.get_dir(), 'checkpoints')} "
                     "and retry, or pass a downloaded .pth with --weights-file") from None
    finally:
        socket.setdefaulttimeout(old)


def _load_weights_file(model: nn.Module, name: str, path: str) -> None:
    where = Loc(str(path), 0, 0)
    if not os.path.isfile(path):
        raise _error("no such weights file", "check the path", where)
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - refused pickle, truncated zip, not a checkpoint: all the user's
        raise _error(f"not a readable PyTorch weights file: {_first_line(e)}",
                     f"expected a state dict saved with torch.save (a .pth as torchvision publishes for {name}) "
                     "or a .safetensors file", where) from None
    for wrapper in ("state_dict", "model"):   # training checkpoints often wrap the state dict
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise _error(f"not a state dict: the file holds a {type(state).__name__}, not a mapping of names to tensors",
                     "save the weights with torch.save(model.state_dict(), path)", where)
    if any(k.startswith("module.") for k in state) and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}   # saved from DataParallel / DDP
    if name.startswith("densenet"):
        state = {_densenet_key(k): v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise _error(f"the weights file does not fit torchvision's {name}: {_summary(e)}",
                     f"was it saved from another model? It must be a state dict of torchvision.models.{name}",
                     where) from None


def _densenet_key(key: str) -> str:
    m = _DENSENET_LEGACY.match(key)
    return m.group(1) + m.group(2) if m else key


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _summary(e: Exception, limit: int = 600) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + " ..."


# --- structural matching ------------------------------------------------------------------------

def _layer_kind(module: nn.Module) -> str:
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "bn"
    if isinstance(module, nn.Linear):
        return "linear"
    return type(module).__name__


def _layer_attrs(module: nn.Module) -> dict:
    """What a tensor's shape does not say about its layer but the computation depends on."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return {"stride": tuple(module.stride), "dilation": tuple(module.dilation)}
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return {"eps": module.eps}
    return {}


def _owner(root: nn.Module, key: str) -> tuple[str, nn.Module | None]:
    prefix = key.rpartition(".")[0]
    try:
        return prefix, root.get_submodule(prefix) if prefix else root
    except AttributeError:
        return prefix, None


def _describe(key: str, t: torch.Tensor | None) -> str:
    return f"{key} {list(t.shape)}" if t is not None else "nothing (its state dict has ended)"


def _fmt(v) -> str:
    return str(v[0] if isinstance(v, tuple) and len(set(v)) == 1 else v)


def _spec_loc(module: nn.Module, key: str | None) -> Loc:
    """The spec line of the node that owns `key` in a resgraph module (the spec file alone if unknown)."""
    meta = getattr(module, "meta", {}).get("resgraph", {})
    graph = meta.get("graph")
    spec = graph.meta.get("spec") if graph is not None else None
    file = getattr(spec, "file", None) or meta.get("name") or "<module>"
    if graph is None or key is None:
        return Loc(file, 0, 0)
    parts = key.split(".")[:-1]
    while parts:   # an explicit `project` owns <path>.conv and <path>.bn: fall back to <path>
        path = ".".join(parts)
        if path in graph:
            return graph[path].loc
        parts.pop()
    return Loc(file, 0, 0)


def _tv_name(tv_model: nn.Module, name: str | None) -> str:
    return name or getattr(tv_model, "_resgraph_torchvision_name", None) or type(tv_model).__name__


@torch.no_grad()
def import_weights(module: nn.Module, tv_model: nn.Module, name: str | None = None, verify: bool = False) -> dict:
    """Copy tv_model's state dict into `module` (from resgraph.to_torch), pairing entries by position.

    Each pair must agree in kind (weight, bias, running_mean, ...), shape, and the kind of layer that
    owns it (conv, bn, linear; a conv's stride and dilation, a bn's eps); both must have the same number
    of entries. The first disagreement raises SpecError naming both sides. Nothing is copied unless
    everything matches. With verify=True, both models then run on one random input and must agree.

    Returns {"model", "tensors", "params", "mapping", "max_abs_diff"}: mapping is our layer path ->
    torchvision's (e.g. "layer2.0.shortcut.conv" -> "layer2.0.downsample.0"), in order; max_abs_diff
    is None unless verify.
    """
    name = _tv_name(tv_model, name)
    ours = module.state_dict()
    theirs = tv_model.state_dict()
    ok, tk = list(ours), list(theirs)
    for i in range(max(len(ok), len(tk))):
        a = ok[i] if i < len(ok) else None
        b = tk[i] if i < len(tk) else None
        problem = _pair_problem(module, tv_model, a, ours.get(a), b, theirs.get(b))
        if problem:
            a_txt = _describe(a, ours.get(a))
            b_txt = _describe(b, theirs.get(b))
            raise SpecError([Diagnostic(
                _spec_loc(module, a if a is not None else (ok[-1] if ok else None)),
                f"cannot import torchvision's {name} weights: state-dict entry {i} differs ({problem}): "
                f"ours is {a_txt}, torchvision's is {b_txt}",
                f"the spec's architecture differs from torchvision's {name} here (or its layers are written "
                f"in another order); weights are matched by position ({len(ok)} entries here, {len(tk)} in "
                f"torchvision's {name})")])
    new = {a: theirs[b].detach().to(ours[a].device) for a, b in zip(ok, tk, strict=True)}
    module.load_state_dict(new, strict=True)
    mapping: dict[str, str] = {}
    for a, b in zip(ok, tk, strict=True):
        mapping.setdefault(a.rpartition(".")[0], b.rpartition(".")[0])
    report = {"model": name, "tensors": len(ok),
              "params": sum(p.numel() for p in module.parameters()),
              "mapping": mapping, "max_abs_diff": None}
    if verify:
        report["max_abs_diff"] = verify_import(module, tv_model, name)
    return report


def _pair_problem(module, tv_model, a, ta, b, tb) -> str:
    if a is None:
        return "ours has fewer entries"
    if b is None:
        return "ours has more entries"
    ka, kb = a.rpartition(".")[2], b.rpartition(".")[2]
    if ka != kb:
        return f"{ka} vs {kb}"
    if ka not in _KINDS:
        return f"unknown kind of entry '{ka}'"
    (_, ma), (_, mb) = _owner(module, a), _owner(tv_model, b)
    la, lb = (_layer_kind(ma) if ma is not None else "?"), (_layer_kind(mb) if mb is not None else "?")
    if la != lb:
        return f"a {la} vs a {lb}"
    if tuple(ta.shape) != tuple(tb.shape):
        return "shapes differ"
    if ma is None or mb is None:
        return ""
    xa, xb = _layer_attrs(ma), _layer_attrs(mb)
    if xa != xb:
        diff = [k for k in xa if xa[k] != xb.get(k)]
        return f"{la} with " + ", ".join(f"{k} {_fmt(xa[k])} vs {k} {_fmt(xb.get(k))}" for k in diff)
    return ""


@torch.no_grad()
def verify_import(module: nn.Module, tv_model: nn.Module, name: str | None = None, seed: int = 0) -> float:
    """Run both (in eval mode) on one random input of the spec's shape; SpecError unless they agree.
    Returns the largest absolute difference of the outputs."""
    name = _tv_name(tv_model, name)
    shape = tuple(module.meta["resgraph"]["input_shape"])
    modes = [(m, m.training) for m in (module, tv_model)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        x = torch.randn(1, *shape)
    try:
        module.eval(), tv_model.eval()
        try:
            ours = module(x.to(_device(module)))
            theirs = tv_model(x.to(_device(tv_model)))
        except RuntimeError as e:
            raise _error(f"after importing torchvision's {name} weights, running torchvision's model on the "
                         f"spec's input {list(shape)} failed: {_summary(e, 300)}",
                         f"the spec's input differs from what torchvision's {name} accepts",
                         _spec_loc(module, None)) from None
    finally:
        for m, training in modes:
            m.train(training)
    ours, theirs = ours.float().cpu(), theirs.float().cpu()
    if ours.shape != theirs.shape:
        raise _error(f"after importing torchvision's {name} weights, the outputs differ in shape: "
                     f"ours {list(ours.shape[1:])}, torchvision's {list(theirs.shape[1:])}",
                     f"the spec's architecture differs from torchvision's {name}", _spec_loc(module, None))
    diff = (ours - theirs).abs().max().item()
    scale = max(1.0, theirs.abs().max().item())
    if not diff <= 1e-3 * scale:   # loose enough for TF32 and differing kernels; a wrong layer is far off
        raise _error(f"the weights of torchvision's {name} were imported, but the outputs differ: largest "
                     f"difference {diff:.3g} on logits up to {scale:.3g}",
                     f"the spec's architecture differs from torchvision's {name} in something without weights "
                     "(an activation, a pooling, a stride, padding, the order of a concat or add)",
                     _spec_loc(module, None))
    return diff


def _device(m: nn.Module) -> torch.device:
    p = next(m.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


# --- both ---------------------------------------------------------------------------------------

def import_torchvision(name: str, spec, pretrained: bool = False, weights_file: str | None = None,
                       seed: int | None = None, verify: bool = True):
    """(module, report): `spec` (a path, Spec, Checked or Graph) as a resgraph module carrying the
    weights of torchvision's `name` (random with `seed`, pretrained, or from `weights_file`).
    With verify (the default) both models are also run on one random input and must agree."""
    from . import to_torch
    _check_name(name)
    module = to_torch(spec, init=False)        # checks the spec first: its errors come before any download
    tv_model = torchvision_model(name, pretrained=pretrained, weights_file=weights_file, seed=seed)
    report = import_weights(module, tv_model, name=name, verify=verify)
    return module, report


__all__ = ["SUPPORTED", "import_torchvision", "import_weights", "torchvision_model", "verify_import"]
