"""PyTorch back end: the IR lowered to a trainable torch.fx GraphModule, initialisation, checkpoints."""
from __future__ import annotations

from ...ir import Graph
from .checkpoint import check_fits, load_checkpoint, read_checkpoint, save_checkpoint
from .init import init_weights, last_bn_of_each_residual_body, zero_residual_layers
from .lower import LOWER, lower


def to_torch(source, seed: int | None = None, weights: str | None = None, init: bool = True):
    """A trainable nn.Module for `source` (a spec path, Spec, Checked or Graph).

    Parameters are initialised by the spec's `init:` policies (seeded if `seed` is given), or loaded
    from a safetensors checkpoint `weights` after checking that it fits.
    """
    graph = _graph(source)
    module = lower(graph)
    if weights is not None:
        load_checkpoint(module, weights)
    elif init:
        init_weights(module, graph, seed)
    module.meta["resgraph"]["graph"] = graph
    return module


def _graph(source) -> Graph:
    from ...frontend import Checked, check_file, check_spec
    from ...spec import Spec
    if isinstance(source, Graph):
        return source
    if isinstance(source, Checked):
        return source.graph
    if isinstance(source, Spec):
        return check_spec(source).graph
    return check_file(str(source)).graph


__all__ = ["LOWER", "lower", "to_torch", "init_weights", "last_bn_of_each_residual_body", "zero_residual_layers", "save_checkpoint",
           "load_checkpoint", "read_checkpoint", "check_fits"]
