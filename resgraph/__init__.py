"""resgraph: a compiler for residual-network specs.

    >>> import resgraph
    >>> checked = resgraph.check("specs/resnet18.yaml")
    >>> checked.params, [p.at for p in checked.graph.projections]

Importing resgraph loads only the front end (PyYAML and the standard library); back ends import
torch, onnx or tensorrt when they are first used.
"""
from .compiler import Checked, check_file, check_spec, check_text
from .errors import Diagnostic, Loc, SpecError
from .spec import load_spec, parse_spec

__version__ = "0.1.0"

check = check_file


def to_torch(source, seed: int | None = None, weights: str | None = None, init: bool = True):
    """A trainable torch.nn.Module (a torch.fx.GraphModule) for a spec path, Spec, Checked or Graph.
    Imports torch on first use; see resgraph.backends.torch.to_torch."""
    from .backends.torch import to_torch as _to_torch
    return _to_torch(source, seed=seed, weights=weights, init=init)

__all__ = ["to_torch", "Checked", "Diagnostic", "Loc", "SpecError", "check", "check_file", "check_spec", "check_text",
           "load_spec", "parse_spec", "__version__"]
