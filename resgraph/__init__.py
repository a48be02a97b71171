"""resgraph: a compiler for residual-network specs.

    >>> import resgraph
    >>> checked = resgraph.check("specs/resnet18.yaml")
    >>> checked.params, [p.at for p in checked.graph.projections]
    >>> resgraph.check("specs/cifar_resnet20_a.yaml", vars={"n": 9}).params   # ResNet-56

Importing resgraph loads nothing but this file: the front end (PyYAML and the standard library)
loads on first use of its names, and back ends import torch, onnx or tensorrt when they are first
used. So the runtime (resgraph.runtime), which reads only compiled folders, runs without the
front end.
"""
from __future__ import annotations

from .version import __version__

_LAZY = {"Checked": "frontend", "check_file": "frontend", "check_spec": "frontend", "check_text": "frontend",
         "check": "frontend", "Diagnostic": "errors", "Loc": "errors", "SpecError": "errors",
         "ResgraphError": "errors", "WeightsError": "errors", "DataError": "errors", "DownloadError": "errors",
         "PathError": "errors", "ArtifactError": "errors", "BackendError": "errors", "OptionError": "errors",
         "PluginError": "errors",
         "load_spec": "spec", "parse_spec": "spec"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        value = getattr(module, "check_file" if name == "check" else name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'resgraph' has no attribute {name!r}")


def graph_of(source, vars: dict | None = None):
    """The checked Graph of a spec path, Spec, Checked or Graph: the one place the public API's
    `source` arguments are resolved (to_torch, import_model). `vars` ({"n": 9}) overrides a spec
    path's `vars:`; the other sources are built already, and take none."""
    import os

    from .frontend import Checked, check_file, check_spec
    from .ir import Graph
    from .spec import Spec
    if vars and not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"vars= applies to a spec path, not a {type(source).__name__}: "
                        "give the path, or check it with resgraph.check(path, vars=...) first")
    if isinstance(source, Graph):
        return source
    if isinstance(source, Checked):
        return source.graph
    if isinstance(source, Spec):
        return check_spec(source).graph
    return check_file(str(source), vars=vars).graph


def to_torch(source, seed: int | None = None, weights: str | None = None, init: bool = True,
             vars: dict | None = None, checkpointing: bool = False):
    """A trainable torch.nn.Module (a torch.fx.GraphModule) for a spec path, Spec, Checked or Graph;
    `vars` ({"n": 9}) overrides a spec path's `vars:` as `resgraph check --var n=9` does;
    `checkpointing` runs each block under torch.utils.checkpoint (less activation memory, the same
    gradients and state-dict keys).
    Imports torch on first use; see resgraph.backends.torch.to_torch."""
    from .backends.torch import to_torch as _to_torch
    return _to_torch(graph_of(source, vars), seed=seed, weights=weights, init=init, checkpointing=checkpointing)


__all__ = ["to_torch", "graph_of", "Checked", "Diagnostic", "Loc", "ResgraphError", "SpecError", "WeightsError", "DataError",
           "DownloadError", "PathError", "ArtifactError", "BackendError", "OptionError", "PluginError", "check", "check_file",
           "check_spec", "check_text", "load_spec", "parse_spec", "__version__"]
