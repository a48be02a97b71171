"""Importing a torchvision or timm model's weights into a resgraph module, by structure.

    >>> from resgraph.backends.torch.importer import import_model
    >>> module, report = import_model("timm:resnet50d", "specs/resnet50d.yaml", pretrained=True)

Both models run once on the meta device (execution_order.py) to list their tensors in the order
their forward uses them; tensor i of ours then takes tensor i of theirs when both are the same kind
of tensor, of the same shape, in the same kind of layer (matching.py). The first disagreement is an
error naming both sides: their key, shape and layer, and ours with its spec line. Nothing is copied
unless everything fits. What has no tensors (activations, pooling, padding, the order of a concat)
is invisible to that matching, so both models then run on one random input and must agree (verify).
"""
from __future__ import annotations

import torch
from torch import nn

from ...errors import Diagnostic, Loc, WeightsError
from .execution_order import Order, execution_order
from .matching import describe, first_mismatch, layer_mapping
from .sources import LIBRARIES, Source, parse_source, source_of
from .timm import timm_model
from .torchvision import torchvision_model

# each weights source's library -> the function that builds its model (random, pretrained or from a file)
BUILDERS = {"torchvision": torchvision_model, "timm": timm_model}
assert tuple(BUILDERS) == LIBRARIES, "a source library without a builder, or a builder for none"


def build(source: Source, pretrained: bool = False, weights_file: str | None = None,
          seed: int | None = None, device=None) -> nn.Module:
    """The source's model in eval mode: random (seeded), pretrained, or with `weights_file`'s state dict."""
    if source.library not in BUILDERS:
        parse_source(str(source))   # raises, naming the libraries there are
    return BUILDERS[source.library](source.name, pretrained=pretrained, weights_file=weights_file, seed=seed,
                                    device=device)


def import_model(source, spec, pretrained: bool = False, weights_file: str | None = None,
                 seed: int | None = None, verify: bool = True):
    """(module, report): `spec` (a path, Spec, Checked or Graph) as a resgraph module carrying the
    weights of `source` ("torchvision:resnet50", "timm:resnet50d" or a Source): random with `seed`,
    pretrained, or from `weights_file`. With verify (the default) both models also run on one random
    input and must agree."""
    from ... import graph_of
    from . import to_torch
    source = source if isinstance(source, Source) else parse_source(source)
    module = to_torch(graph_of(spec), init=False)   # checks the spec first: its errors come before any download
    model = build(source, pretrained=pretrained, weights_file=weights_file, seed=seed)
    return module, import_weights(module, model, name=str(source), verify=verify)


def import_torchvision(name: str, spec, pretrained: bool = False, weights_file: str | None = None,
                       seed: int | None = None, verify: bool = True):
    """(module, report): `spec` (a path, Spec, Checked or Graph) as a resgraph module carrying the
    weights of torchvision's `name`; see import_model."""
    return import_model(Source("torchvision", name), spec, pretrained=pretrained, weights_file=weights_file,
                        seed=seed, verify=verify)


@torch.no_grad()
def import_weights(module: nn.Module, model: nn.Module, name: str | None = None, verify: bool = False) -> dict:
    """Copy `model`'s tensors into `module` (from resgraph.to_torch), paired in execution order.

    Returns {"model", "source", "tensors", "params", "mapping", "keys", "unused", "max_abs_diff"}: mapping
    is our layer path -> theirs (e.g. "layer2.0.shortcut.conv" -> "layer2.0.downsample.0"), in order;
    keys, our state-dict key -> theirs (a layer scale that a block holds itself is not <layer>.weight
    there: "features1.0.layer_scale.weight" -> "features.1.0.layer_scale"); unused, their tensors that
    the eval-mode forward never touches (an auxiliary head); max_abs_diff is None unless verify.
    """
    source = source_of(model, name)
    shape = tuple(module.meta["resgraph"]["input_shape"])
    ours = execution_order(module, shape)
    theirs = _their_order(module, model, source, shape)
    keys = ours.keys + ours.unused         # every one of ours must be filled: untouched ones too
    mismatch = first_mismatch(module, keys, model, theirs.keys)
    if mismatch is not None:
        raise _mismatch_error(module, model, source, mismatch, len(keys), len(theirs.keys))
    a_state, b_state = module.state_dict(), model.state_dict()
    pairs = list(zip(keys, theirs.keys, strict=True))
    # the same numbers in our layout: a linear's [out, in] as a 1x1 conv's [out, in, 1, 1], torchvision's
    # (C, 1, 1) layer scale as [C] (matching.fits has checked that only such layouts differ)
    module.load_state_dict({a: b_state[b].detach().reshape(a_state[a].shape).to(a_state[a].device)
                            for a, b in pairs}, strict=True)
    report = {"model": source.name, "source": str(source), "tensors": len(pairs),
              "params": sum(p.numel() for p in module.parameters()), "mapping": layer_mapping(pairs),
              "keys": dict(pairs), "unused": list(theirs.unused), "max_abs_diff": None}
    if verify:
        report["max_abs_diff"] = verify_import(module, model, name=str(source))
    return report


def _their_order(module: nn.Module, model: nn.Module, source: Source, shape) -> Order:
    try:
        return execution_order(model, shape)
    except Exception as e:  # noqa: BLE001 - whatever their forward raises on this input is the finding
        raise WeightsError([Diagnostic(spec_loc(module, None),
                                       f"{source.who} cannot run on the spec's input {list(shape)}: "
                                       f"{type(e).__name__}: {_summary(e, 300)}",
                                       f"the spec's input differs from what {source.who} accepts")]) from None


def _mismatch_error(module, model, source: Source, m, n_ours: int, n_theirs: int) -> WeightsError:
    a_state, b_state = module.state_dict(), model.state_dict()
    ours = describe(module, m.ours, a_state.get(m.ours))
    theirs = describe(model, m.theirs, b_state.get(m.theirs))
    return WeightsError([Diagnostic(
        spec_loc(module, m.ours if m.ours is not None else _last(module)),
        f"cannot import {source.who} weights: tensor {m.index} in execution order differs ({m.problem}): "
        f"ours is {ours}, {source.whose} is {theirs}",
        f"the spec's architecture differs from {source.who} here ({n_ours} tensors here, {n_theirs} in "
        f"{source.who}), or runs these layers in another order: tensors are paired in the order the "
        "forward uses them (an inserted Ws runs after its block's body; for a model that computes the "
        "shortcut first, write it as a `project` before the body)")])


def _last(module: nn.Module) -> str | None:
    return next(reversed(module.state_dict()), None)


def spec_loc(module: nn.Module, key: str | None) -> Loc:
    """The spec line of the node that owns `key` in a resgraph module (the spec file alone if unknown).
    The spec file is the input node's; an explicit `project` owns <path>.conv and <path>.bn."""
    meta = getattr(module, "meta", {}).get("resgraph", {})
    graph = meta.get("graph")
    if graph is None:
        return Loc(meta.get("name") or "<module>", 0, 0)
    parts = key.split(".")[:-1] if key is not None else []
    while parts:
        path = ".".join(parts)
        if path in graph:
            return graph[path].loc
        parts.pop()
    return Loc(graph.nodes[0].loc.file, 0, 0)


@torch.no_grad()
def verify_import(module: nn.Module, model: nn.Module, name: str | None = None, seed: int = 0) -> float:
    """Run both (in eval mode) on one random input of the spec's shape; WeightsError unless they agree.
    Returns the largest absolute difference of the outputs."""
    source = source_of(model, name)
    shape = tuple(module.meta["resgraph"]["input_shape"])
    modes = [(m, m.training) for m in (module, model)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        x = torch.randn(1, *shape)
    try:
        module.eval(), model.eval()
        try:
            ours = module(x.to(_device(module)))
            theirs = model(x.to(_device(model)))
        except RuntimeError as e:
            raise WeightsError([Diagnostic(spec_loc(module, None),
                                           f"after importing {source.who} weights, running {source.who} on the "
                                           f"spec's input {list(shape)} failed: {_summary(e, 300)}",
                                           f"the spec's input differs from what {source.who} accepts")]) from None
    finally:
        for m, training in modes:
            m.train(training)
    if not isinstance(theirs, torch.Tensor):
        raise WeightsError([Diagnostic(spec_loc(module, None),
                                       f"{source.who} returns a {type(theirs).__name__}, not a tensor, so its "
                                       "outputs cannot be compared with the spec's",
                                       "import a classification model (its eval-mode forward returns the logits), "
                                       "or pass verify=False")])
    ours, theirs = ours.float().cpu(), theirs.float().cpu()
    if ours.shape != theirs.shape:
        raise WeightsError([Diagnostic(spec_loc(module, None),
                                       f"after importing {source.who} weights, the outputs differ in shape: "
                                       f"ours {list(ours.shape[1:])}, {source.whose} {list(theirs.shape[1:])}",
                                       f"the spec's architecture differs from {source.who}")])
    diff = (ours - theirs).abs().max().item()
    scale = theirs.abs().max().item()
    # relative: randomly initialised models can have outputs of 1e-9 (mobilenet_v2), where any absolute
    # floor would pass everything. 1e-3 is loose enough for TF32 and differing kernels; a wrong layer is far off
    if not diff <= 1e-3 * scale:
        raise WeightsError([Diagnostic(spec_loc(module, None),
                                       f"the weights of {source.who} were imported, but the outputs differ: "
                                       f"largest difference {diff:.3g} on outputs up to {scale:.3g}",
                                       f"the spec's architecture differs from {source.who} in something without "
                                       "weights (an activation, a pooling, a stride, padding, the order of a "
                                       "concat or add)")])
    return diff


def _device(m: nn.Module) -> torch.device:
    p = next(m.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _summary(e: Exception, limit: int = 600) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + " ..."


__all__ = ["BUILDERS", "build", "import_model", "import_torchvision", "import_weights", "spec_loc", "verify_import"]
