"""The order in which a model uses its state-dict tensors: what weight import pairs by.

Registration order (the state dict's) is how a model's author happened to write `__init__`; a
shortcut registered before its block's body, or a head declared before the stem, runs elsewhere.
Execution order is what two models of one architecture share. So the model runs once, on the meta
device (shapes only: no memory, no arithmetic), and each module that owns tensors is stamped when
one of its tensors is first used by an op, or else when it is first called. Stamping the use rather
than the call puts a tensor that its parent reads directly (nn.MultiheadAttention's out_proj.weight)
where it is used. A module that is never touched (an auxiliary classifier that only runs in
training) is left out, and listed as unused.

Models that cannot run on the meta device (data-dependent control flow) run once for real instead.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves


@dataclass(frozen=True)
class Order:
    keys: tuple[str, ...]     # state-dict keys, in execution order (a module's own keys in state-dict order)
    unused: tuple[str, ...]   # state-dict keys of modules that the eval-mode forward never touched


class _Uses(TorchFunctionMode):
    """Calls `touch(owner)` for every tensor with a known owner that an op reads."""

    def __init__(self, owner_of: dict[int, str], touch):
        super().__init__()
        self.owner_of, self.touch = owner_of, touch

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for a in tree_leaves((args, kwargs)):
            if isinstance(a, torch.Tensor) and id(a) in self.owner_of:
                self.touch(self.owner_of[id(a)])
        return func(*args, **kwargs)


def execution_order(model: nn.Module, input_shape) -> Order:
    """`model`'s state-dict keys in the order its eval-mode forward uses them, on one input of
    `input_shape` (without the batch). Raises what the model's forward raises if it cannot run it."""
    state = model.state_dict(keep_vars=True)
    training = model.training
    model.eval()
    try:
        try:
            stamps = _stamps(model, _on_meta(model), input_shape, torch.device("meta"))
        except (RuntimeError, NotImplementedError, ValueError, TypeError):
            # data-dependent control flow (.item(), nonzero) needs real values: run once for real
            stamps = _stamps(model, _tensors(model), input_shape, _device(model))
    finally:
        model.train(training)
    owner = {k: k.rpartition(".")[0] for k in state}
    keys = sorted((k for k in state if owner[k] in stamps), key=lambda k: stamps[owner[k]])  # stable sort
    return Order(tuple(keys), tuple(k for k in state if owner[k] not in stamps))


def _stamps(model: nn.Module, tensors: dict[str, torch.Tensor], input_shape, device) -> dict[str, int]:
    """Module name -> when it was first touched: the first use of one of its tensors, else its first call."""
    clock = itertools.count()
    used: dict[str, int] = {}
    called: dict[str, int] = {}
    owner_of = {id(t): k.rpartition(".")[0] for k, t in tensors.items()}
    owners = set(owner_of.values())

    def on_call(name):
        def hook(_module, _args):   # returns None: a pre-hook's return value would replace the input
            called.setdefault(name, next(clock))
        return hook
    hooks = [m.register_forward_pre_hook(on_call(name)) for name, m in model.named_modules() if name in owners]
    x = torch.zeros(1, *input_shape, device=device)
    try:
        with torch.no_grad(), _Uses(owner_of, lambda name: used.setdefault(name, next(clock))):
            functional_call(model, tensors, (x,), strict=False)
    finally:
        for h in hooks:
            h.remove()
    return {name: used.get(name, called.get(name)) for name in used.keys() | called.keys()}


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by every name it has (tied ones too; non-persistent buffers too)."""
    return {**dict(model.named_parameters(remove_duplicate=False)),
            **dict(model.named_buffers(remove_duplicate=False))}


def _on_meta(model: nn.Module) -> dict[str, torch.Tensor]:
    """Meta stand-ins for the model's tensors; tied tensors stay tied (one stand-in each)."""
    meta: dict[int, torch.Tensor] = {}
    return {k: meta.setdefault(id(t), torch.empty_like(t, device="meta")) for k, t in _tensors(model).items()}


def _device(model: nn.Module) -> torch.device:
    t = next(itertools.chain(model.parameters(), model.buffers()), None)
    return t.device if t is not None else torch.device("cpu")
