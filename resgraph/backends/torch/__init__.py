"""PyTorch back end: the IR lowered to a trainable torch.fx GraphModule, initialisation, checkpoints."""
from __future__ import annotations

from ...ir import Graph
from .checkpoint import check_fits, load_checkpoint, read_checkpoint, save_checkpoint
from .init import init_weights, last_bn_of_each_residual_body, zero_residual_layers
from .lower import LOWER, lower


def to_torch(graph: Graph, seed: int | None = None, weights: str | None = None, init: bool = True,
             checkpointing: bool = False):
    """A trainable nn.Module for a checked `graph` (resgraph.to_torch takes a spec path, Spec or
    Checked and resolves it once, there).

    Parameters are initialised by the spec's `init:` policies (seeded if `seed` is given), or loaded
    from a safetensors checkpoint `weights` after checking that it fits. With `checkpointing`, each
    block runs under torch.utils.checkpoint (recompute.py): less activation memory in training, the
    same outputs, gradients and state-dict keys.
    """
    assert isinstance(graph, Graph), f"backends.torch.to_torch takes a Graph, not {type(graph).__name__}: use resgraph.to_torch"
    module = lower(graph)
    if weights is not None:
        load_checkpoint(module, weights)
    elif init:
        init_weights(module, graph, seed)
    module.meta["resgraph"]["graph"] = graph
    if checkpointing:
        from .recompute import checkpointed
        module = checkpointed(module, graph)
    return module


__all__ = ["LOWER", "lower", "to_torch", "init_weights", "last_bn_of_each_residual_body", "zero_residual_layers", "save_checkpoint",
           "load_checkpoint", "read_checkpoint", "check_fits"]
