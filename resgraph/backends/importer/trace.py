"""A torch model as a flat list of resgraph ops, traced with torch.fx.

Each fx node becomes one Op: the resgraph op it is (ops/table.py), its arguments in the spec's terms
(only those that differ from the op's defaults), the Ops it reads, and the source's module path
(`layer3.4.conv2`) that names it. Nodes resgraph has no op for are all collected and refused at once,
each with its name, its kind and, where fx recorded one, the line of the model's code that made it.
"""
from __future__ import annotations

import operator
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from ...errors import Diagnostic, Loc, WeightsError

_ACTS = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.GELU: "gelu",
         nn.SiLU: "silu", nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid"}
_FUNCS = {torch.relu: "relu", nn.functional.relu: "relu", torch.sigmoid: "sigmoid", torch.tanh: "tanh",
          nn.functional.gelu: "gelu", nn.functional.silu: "silu", operator.add: "add", torch.add: "add",
          operator.mul: "mul", torch.mul: "mul", torch.cat: "concat"}
_METHODS = {"relu": "relu", "sigmoid": "sigmoid", "add": "add", "mul": "mul", "flatten": "flatten"}
_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


@dataclass
class Op:
    key: str                 # the fx node's name, unique
    op: str                  # resgraph's op
    args: dict               # spec arguments that differ from the op's defaults
    inputs: list[str]        # keys of the Ops it reads, main input first
    path: str                # the source's module path ("" for a function outside any module)
    shape: tuple = field(default=())


def trace(model: nn.Module, where: str) -> tuple[list[Op], str]:
    """The model's ops in execution order and the key of its input; a WeightsError listing every node resgraph lacks, or the
    reason fx cannot trace the model."""
    graph = _fx_graph(model, where)
    modules = dict(model.named_modules())
    ops, bad = [], []
    for n in graph.nodes:
        if n.op in ("placeholder", "output"):
            continue
        got = _map(n, modules)
        if isinstance(got, str):
            bad.append(Diagnostic(_loc(n, modules, where), f"unsupported node '{n.name}': {got}",
                                  "resgraph has no op for it; see docs/spec-language.md section 3.13"))
            continue
        op, args, parent = got
        ins = [a.name for a in _tensor_args(n)]
        ops.append(Op(n.name, op, args, ins, str(n.target) if n.op == "call_module" else parent))
    if bad:
        raise WeightsError(bad, ordered=True)
    inputs = [n.name for n in graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise WeightsError.at(where, f"the model takes {len(inputs)} inputs; resgraph import reads one image input",
                              "wrap the model in a module whose forward takes one tensor")
    return _drop_identities(ops), inputs[0]


def _fx_graph(model: nn.Module, where: str):
    import torch.fx as fx
    tracer = fx.Tracer()
    tracer.record_stack_traces = True
    try:
        return tracer.trace(model)
    except Exception as e:   # fx raises many kinds: data-dependent control flow, unsupported calls, ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError.at(where, f"the model cannot be traced with torch.fx: {type(e).__name__}: {reason}",
                              "resgraph import needs a model whose forward is the same graph for every input "
                              "(no Python control flow on tensor values); nothing was written") from None


def _tensor_args(n) -> list:
    import torch.fx as fx
    flat = []
    for a in n.args:
        flat.extend(a if isinstance(a, (list, tuple)) else [a])
    return [a for a in flat if isinstance(a, fx.Node)]


def _map(n, modules: dict):
    """(op, args, parent module path) for a node, or a string: what it is, when resgraph has no op."""
    if n.op == "call_module":
        return _map_module(modules[n.target])
    parent = _parent(n)
    if n.op == "call_function":
        if n.target in (torch.flatten,) and _flatten_ok(n):
            return "flatten", {}, parent
        if n.target in _FUNCS and (_FUNCS[n.target] != "add" or len(_tensor_args(n)) == 2):
            return _FUNCS[n.target], {}, parent
        return f"function {getattr(n.target, '__name__', n.target)}"
    if n.op == "call_method":
        if n.target in _METHODS and (n.target != "flatten" or _flatten_ok(n)):
            return _METHODS[n.target], {}, parent
        return f"method .{n.target}()"
    return f"{n.op} {n.target}"


def _parent(n) -> str:
    stack = n.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def _flatten_ok(n) -> bool:
    start = n.args[1] if len(n.args) > 1 else n.kwargs.get("start_dim", 0 if n.op == "call_function" else 0)
    end = n.args[2] if len(n.args) > 2 else n.kwargs.get("end_dim", -1)
    return start == 1 and end == -1


def _map_module(m: nn.Module):
    for kind, op in _ACTS.items():
        if type(m) is kind:
            return op, {}, ""
    if isinstance(m, nn.LeakyReLU):
        return "leaky_relu", _nondefault({"slope": m.negative_slope}, {"slope": 0.01}), ""
    if isinstance(m, nn.Conv2d):
        return _conv(m)
    if isinstance(m, nn.BatchNorm2d):
        mom = m.momentum if m.momentum is not None else 0.1
        return "bn", _nondefault({"eps": m.eps, "momentum": mom}, {"eps": 1e-5, "momentum": 0.1}), ""
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        return _pool(m)
    if isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1)):
        return "global_avgpool", {}, ""
    if isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
        return "flatten", {}, ""
    if isinstance(m, nn.Linear):
        return "linear", {"out": m.out_features, **({} if m.bias is not None else {"bias": False})}, ""
    if isinstance(m, nn.Dropout):
        return "dropout", _nondefault({"p": m.p}, {"p": 0.5}), ""
    if isinstance(m, nn.Identity):
        return "identity", {}, ""
    return f"module {type(m).__name__}" + _why(m)


def _why(m: nn.Module) -> str:
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return f" (output size {m.output_size}; only a global pool, size 1, is an op)"
    return ""


def _square(v) -> int | None:
    v = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    return v[0] if v[0] == v[1] else None


def _conv(m: nn.Conv2d):
    k, s, d = _square(m.kernel_size), _square(m.stride), _square(m.dilation)
    p = m.padding if isinstance(m.padding, str) else _square(m.padding)
    if None in (k, s, d, p) or m.padding_mode != "zeros":
        return "module Conv2d (non-square kernel, stride, dilation or padding, or non-zero padding mode)"
    args = {"out": m.out_channels, "kernel": k, "stride": s, "padding": _padding(p, k, d, "same"),
            "dilation": d, "groups": m.groups, "bias": m.bias is not None}
    return "conv", _nondefault(args, {"stride": 1, "padding": "same", "dilation": 1, "groups": 1}), ""


def _padding(p, k: int, d: int, default: str):
    """The spec's padding for torch's: 'same' where it pads d*(k-1)/2 each side (an odd kernel), unless
    that is 0 and the op's default is 'valid' (a pool)."""
    if p == "same" or (isinstance(p, int) and k % 2 == 1 and p == d * (k - 1) // 2 and (p or default == "same")):
        return "same"
    return "valid" if p in (0, "valid") else p


def _pool(m):
    k, s, p = _square(m.kernel_size), _square(m.stride or m.kernel_size), _square(m.padding)
    name = "maxpool" if isinstance(m, nn.MaxPool2d) else "avgpool"
    if None in (k, s, p) or (name == "maxpool" and _square(m.dilation) != 1) or \
            (name == "avgpool" and p and m.count_include_pad):
        return f"module {type(m).__name__} (non-square, dilated, or counting padding)"
    args = {"kernel": k, "stride": s, "padding": _padding(p, k, 1, "valid"), "ceil_mode": bool(m.ceil_mode)}
    return name, _nondefault(args, {"stride": k, "padding": "valid", "ceil_mode": False}), ""


def _nondefault(args: dict, defaults: dict) -> dict:
    return {k: v for k, v in args.items() if k not in defaults or defaults[k] != v}


def _loc(n, modules: dict, where: str) -> Loc:
    """Where the node's code is: the last frame of fx's stack trace, else the module's class."""
    frames = [f for f in _FRAME.findall(n.stack_trace or "") if "/torch/fx/" not in f[0]]
    if frames:
        return Loc(frames[-1][0], int(frames[-1][1]), 1)
    if n.op == "call_module":
        import inspect
        cls = type(modules[n.target])
        try:
            return Loc(inspect.getsourcefile(cls) or where, inspect.getsourcelines(cls)[1], 1)
        except (OSError, TypeError):
            pass
    return Loc(where, 0, 0)


def _drop_identities(ops: list[Op]) -> list[Op]:
    """Identity and dropout nodes read through: resgraph drops them at inference anyway, and a
    spec need not spell out a torchvision `nn.Identity()` placeholder."""
    alias, kept = {}, []
    for o in ops:
        o.inputs = [alias.get(i, i) for i in o.inputs]
        if o.op == "identity" or (o.op == "dropout" and o.args.get("p") == 0.0):
            alias[o.key] = o.inputs[0]
            continue
        kept.append(o)
    return kept
