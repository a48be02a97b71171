"""`resgraph import`: a model back to an editable spec, with its weights in the spec's layout.

    >>> from resgraph.backends.importer import import_model, write
    >>> imported = import_model("torchvision:resnet50")
    >>> write(imported, "resnet50.yaml", "resnet50.safetensors")

The model is traced with torch.fx (trace.py); its residual adds become units (units.py); units with
the same body become one block, their differences its arguments, and consecutive copies one entry
with `repeat` and `first` (structure.py); emit.py writes the YAML. The written spec is then checked
like any other, and must give the model's parameter count; the weights are imported by structure
(backends/torch/importer.py) and both models must agree on one random input. Nothing is written
unless all of that holds.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch
from torch import nn

from ...errors import OptionError, WeightsError
from .emit import spec_text
from .structure import blocks, entries
from .trace import trace
from .units import chain

SOURCES = ("torchvision:NAME", "timm:NAME", "module:pkg.mod:factory", "FILE.onnx")


@dataclass
class Imported:
    text: str          # the spec's YAML
    checked: object    # the written spec, checked (frontend.Checked)
    model: object      # the source model: an nn.Module in eval mode, or an onnx ModelProto
    source: str
    module: nn.Module  # the spec's torch module carrying the model's weights
    report: dict       # import_weights' report (max_abs_diff: the verify)


def load_source(source: str, seed: int = 0) -> nn.Module:
    """The model SOURCE names, randomly initialised with `seed` for the libraries' models (no download);
    for module:pkg.mod:factory, whatever the user's factory returns (this runs the user's code)."""
    from ..torch.importer import build
    from ..torch.sources import parse_source
    if source.startswith("module:"):
        return _user_model(source)
    if not source.startswith(("torchvision:", "timm:")):
        raise OptionError.at(source, f"unknown model source '{source}'", "write " + ", ".join(SOURCES))
    return build(parse_source(source), seed=seed)


def _user_model(source: str) -> nn.Module:
    mod, _, factory = source[len("module:"):].rpartition(":")
    if not mod or not factory:
        raise OptionError.at(source, "a module source is module:pkg.mod:factory", "e.g. module:mynet.models:build")
    try:
        model = getattr(importlib.import_module(mod), factory)()
    except (ImportError, AttributeError) as e:
        raise OptionError.at(source, f"cannot load {mod}:{factory}: {e}",
                             "the module must be importable (on PYTHONPATH) and define the factory") from None
    if not isinstance(model, nn.Module):
        raise OptionError.at(source, f"{factory}() returned a {type(model).__name__}, not a torch.nn.Module",
                             "the factory must return the model")
    return model.eval()


def import_model(source, name: str | None = None, input_shape: tuple | None = None, seed: int = 0) -> Imported:
    """The spec and weights for `source` (a SOURCES string, an .onnx file, or an nn.Module, which is put
    in eval mode: traced and compared as inference runs it), verified; writes nothing."""
    if isinstance(source, str) and source.endswith(".onnx"):
        from .onnx_import import import_onnx
        text, checked, model, module, report = import_onnx(source, name, input_shape)
        return Imported(text, checked, model, source, module, report)
    model = source.eval() if isinstance(source, nn.Module) else load_source(source, seed)   # as inference runs it
    where = source if isinstance(source, str) else type(model).__name__
    name = name or (where.rpartition(":")[2] if isinstance(source, str) else where)
    ops, start = trace(model, where)
    items = chain(ops, start, where)
    modules = dict(model.named_modules())
    found = blocks(items, lambda scope: type(modules[scope]).__name__ if scope in modules else "", where)
    input_shape = tuple(input_shape or (3, 224, 224))
    text = spec_text(name, where, input_shape, items, found, entries(items, found, where))
    return _verified(text, model, where, name, input_shape)


def _verified(text: str, model: nn.Module, where: str, name: str, shape: tuple) -> Imported:
    from ...frontend import check_text
    from ..torch import to_torch
    from ..torch.importer import import_weights
    checked = check_text(text, f"{name}.yaml")
    theirs = sum(p.numel() for p in model.parameters())
    if checked.params != theirs:
        raise WeightsError.at(where, f"the written spec has {checked.params:,} parameters, the model {theirs:,}",
                              "a part of the model that resgraph import does not rebuild; nothing was written")
    module = to_torch(checked.graph, init=False)
    with torch.no_grad():
        report = import_weights(module, model, name=where if ":" in where else None, verify=True, shape=shape)
    return Imported(text, checked, model, where, module, report)


def write(imported: Imported, output: str, weights_out: str | None = None) -> None:
    """Write the spec (and the weights in its layout), each atomically."""
    from ...fileio import atomic_write_text
    from ...version import __version__
    from ..torch import save_checkpoint
    if weights_out:
        c = imported.checked
        save_checkpoint(imported.module, weights_out, {"spec": c.spec.name, "spec_sha256": c.spec.sha256,
                                                       "untrained": "false", "source": imported.source,
                                                       "resgraph_version": __version__})
    atomic_write_text(output, imported.text)
