"""A torch model as a flat list of resgraph ops, traced with torch.fx.

Each fx node becomes one Op: the resgraph op it is (ops/table.py), its arguments in the spec's terms
(only those that differ from the op's defaults), the Ops it reads, and the source's module path
(`layer3.4.conv2`) that names it. Nodes resgraph has no op for are all collected and refused at once,
each with its name, its kind and, where fx recorded one, the line of the model's code that made it.

Only exact equivalents are mapped. ConvNeXt's channels-last stretches (permute(0, 2, 3, 1), layer
norm over the last dim, nn.Linear, GELU, permute(0, 3, 1, 2)) read as layernorm, 1x1 conv and gelu
on [C, H, W], the permutes dropping out; a parameter a block reads itself (get_attr: a LayerNorm2d's
weight and bias, a layer scale's gamma) goes to the op that reads it, and a product with a
per-channel one is `scale`. An op whose meaning depends on the layout (a pool, a flatten, a concat's
dim) is refused on any other.
"""
from __future__ import annotations

import operator
import os
import re
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn

from ...errors import Diagnostic, Loc, WeightsError
from ...ops import pads
from .geometry import conv_args, functional_pool, pool_args
from .geometry import nondefault as _nondefault

_ACTS = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.GELU: "gelu",
         nn.SiLU: "silu", nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid", nn.Mish: "mish"}
F = nn.functional
# functions and methods that are one of resgraph's ops as they are (in-place forms too, where nothing
# reads their input after them: see _inplace_ok); add and mul only of two tensors (_two_tensors)
_FUNCS = {torch.relu: "relu", F.relu: "relu", torch.relu_: "relu", F.relu_: "relu", F.relu6: "relu6",
          torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.tanh: "tanh", F.tanh: "tanh", F.gelu: "gelu",
          F.silu: "silu", F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid", F.mish: "mish", operator.add: "add",
          torch.add: "add", operator.iadd: "add", operator.mul: "mul", torch.mul: "mul", operator.imul: "mul",
          torch.cat: "concat", torch.concat: "concat"}
_METHODS = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid", "tanh": "tanh",
            "tanh_": "tanh", "add": "add", "add_": "add", "mul": "mul", "mul_": "mul", "flatten": "flatten"}
_INPLACE = {torch.relu_, F.relu_, operator.iadd, operator.imul, "relu_", "sigmoid_", "tanh_", "add_", "mul_"}
_LAYOUTS = {"chw": "an [N, C, H, W] map", "hwc": "a channels-last [N, H, W, C] map", "vec": "[N, F] vectors"}
_PERMUTES = {(0, 2, 3, 1): "hwc", (0, 3, 1, 2): "chw"}   # to channels-last and back: the layout after it
_TORCH = os.path.dirname(torch.__file__) + os.sep   # frames in torch's own code (fx, overrides) are not the model's
_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


@dataclass
class Op:
    key: str                 # the fx node's name, unique
    op: str                  # resgraph's op
    args: dict               # spec arguments that differ from the op's defaults
    inputs: list[str]        # keys of the Ops it reads, main input first
    path: str                # the source's module path ("" for a function outside any module)
    shape: tuple = field(default=())


@dataclass
class _Trace:
    """What mapping a node needs of the nodes before it. A layout is "chw" (an [N, C, H, W] map),
    "hwc" (the same map permuted channels-last, as ConvNeXt runs its nn.Linear and layer norms) or
    "vec" ([N, F]); resgraph's maps are [C, H, W], so an op on a channels-last map is its channels-first
    equivalent and the permutes themselves read through."""
    model: nn.Module
    modules: dict
    nodes: list
    layout: dict = field(default_factory=dict)   # node name -> its output's layout
    params: dict = field(default_factory=dict)   # node name -> (target, tensor): a get_attr, or a reshape of one


def trace(model: nn.Module, where: str) -> tuple[list[Op], str]:
    """The model's ops in execution order and the key of its input; a WeightsError listing every node resgraph lacks, or the
    reason fx cannot trace the model."""
    graph = _fx_graph(model, where)
    t = _Trace(model, dict(model.named_modules()), list(graph.nodes))
    ops, bad = [], []
    for n in graph.nodes:
        if n.op == "placeholder":
            t.layout[n.name] = "chw"
            continue
        got = _param(n, t) or _map(n, t)
        if got is True:
            continue
        if isinstance(got, str):   # its users are mapped as if it had kept its input's layout
            t.layout[n.name] = next((t.layout[a.name] for a in _tensor_args(n) if a.name in t.layout), "chw")
            bad.append(Diagnostic(_loc(n, t.modules, where), f"unsupported node '{n.name}': {got}",
                                  "resgraph has no op for it; see docs/spec-language.md section 3.13"))
            continue
        if n.op == "output":
            continue
        op, args, path, t.layout[n.name] = got
        ops.append(Op(n.name, op, args, [a.name for a in _tensor_args(n) if a.name not in t.params], path))
    if bad:
        raise WeightsError(bad, ordered=True)
    inputs = [n.name for n in graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise WeightsError.at(where, f"the model takes {len(inputs)} inputs; resgraph import reads one image input",
                              "wrap the model in a module whose forward takes one tensor")
    return _drop_identities(ops), inputs[0]


class _Tracer(fx.Tracer):
    """torch.fx's tracer, keeping timm's DropPath whole: its forward returns its input untouched in
    eval mode, so traced through it would vanish, and with it the spec's drop_path."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return _is_timm_drop_path(m) or super().is_leaf_module(m, qualname)


def _is_timm_drop_path(m: nn.Module) -> bool:
    return type(m).__name__ == "DropPath" and type(m).__module__.startswith("timm.")


def _fx_graph(model: nn.Module, where: str):
    tracer = _Tracer()
    tracer.record_stack_traces = True
    try:
        return tracer.trace(model)
    except Exception as e:   # fx raises many kinds: data-dependent control flow, unsupported calls, ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError.at(where, f"the model cannot be traced with torch.fx: {type(e).__name__}: {reason}",
                              "resgraph import needs a model whose forward is the same graph for every input "
                              "(no Python control flow on tensor values); nothing was written") from None


def _tensor_args(n) -> list:
    flat = []
    for a in n.args:
        flat.extend(a if isinstance(a, (list, tuple)) else [a])
    return [a for a in flat if isinstance(a, fx.Node)]


def _param(n, t: _Trace):
    """True where the node is a parameter (a get_attr, or a reshape of one) for the op that reads it
    to take (a layer norm's weight, a layer scale's factor); None otherwise."""
    if n.op == "get_attr":
        t.params[n.name] = (n.target, _attr(t.model, n.target))
        return True
    if n.op == "call_method" and n.target in ("reshape", "view") and n.args and n.args[0].name in t.params \
            and all(isinstance(a, int) for a in n.args[1:]) and len(n.args) > 1 and not n.kwargs:
        target, tensor = t.params[n.args[0].name]
        t.params[n.name] = (target, tensor.reshape(*n.args[1:]))
        return True
    return None


def _attr(model: nn.Module, target: str):
    obj = model
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _map(n, t: _Trace):
    """(op, args, path, layout after) for a node, or a string: what it is, when resgraph has no op."""
    ins = [a for a in _tensor_args(n) if a.name not in t.params]
    lays = {t.layout.get(a.name) for a in ins}
    if len(lays) > 1:
        return f"{_name(n)} joins a channels-last map and a channels-first one"
    lay = lays.pop() if lays else "chw"
    if n.op == "output":
        return True if lay != "hwc" else "the model's output is a channels-last map (resgraph's are [C, H, W])"
    inplace = n.op != "call_module" and (n.target in _INPLACE or n.kwargs.get("inplace") is True)
    if inplace and not _inplace_ok(n, t):
        return f"in-place {_name(n)} whose input is read again after it"
    if n.op == "call_module":
        got = _in_layout(_map_module(t.modules[n.target]), lay)
        return got if isinstance(got, str) else (*got[:2], n.target, got[2])
    params = [a for a in [*_tensor_args(n), *n.kwargs.values()] if isinstance(a, fx.Node) and a.name in t.params]
    got = _map_call(n, t, lay, params)
    if isinstance(got, str):
        return got
    op, args, path = got[:3]
    return op, args, path or _parent(n), got[3] if len(got) > 3 else lay


def _name(n) -> str:
    if n.op == "call_method":
        return f"method .{n.target}()"
    return f"function {getattr(n.target, '__name__', n.target)}" if n.op == "call_function" else f"{n.op} {n.target}"


def _inplace_ok(n, t: _Trace) -> bool:
    """An in-place op is its out-of-place twin only where nothing reads its input after it."""
    x = n.args[0]
    after = t.nodes[t.nodes.index(n) + 1:]
    return not any(u in after for u in x.users if u is not n)


def _map_call(n, t: _Trace, lay: str, params: list):
    """A call_function or call_method node: (op, args, path[, layout after]) or what it is."""
    target = n.target
    name = _METHODS.get(target) if n.op == "call_method" else _FUNCS.get(target)
    if params:
        return _with_param(n, t, lay, name, params)
    if target == "permute" or target is torch.permute:
        return _permute(n, lay)
    if name in ("add", "mul"):
        return (name, {}, "") if _two_tensors(n) else f"{_name(n)} that is not of two tensors"
    if name == "concat":
        dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
        if not _channel_dim(dim, lay):
            return f"{_name(n)} along dim {dim}, not the channels"
        return ("identity" if len(_tensor_args(n)) == 1 else "concat", {}, "")   # cat([x]) is x (DenseNet)
    if name == "flatten" or target is torch.flatten:
        return ("flatten", {}, "", "vec") if _flatten_ok(n) and lay != "hwc" else f"{_name(n)} (not from dim 1)"
    if name == "gelu" and n.kwargs.get("approximate", "none") != "none":
        return "function gelu with the tanh approximation (resgraph's gelu is exact)"
    if name is not None:
        return (name, {}, "") if not _extra_args(n) else f"{_name(n)} with arguments {_extra_args(n)}"
    return _map_named(n, lay)


def _extra_args(n) -> dict:
    """An activation's arguments beyond its input that change what it computes (inplace does not)."""
    return {k: v for k, v in n.kwargs.items() if k not in ("inplace", "approximate")}


def _two_tensors(n) -> bool:
    return len(n.args) == 2 and all(isinstance(a, fx.Node) for a in n.args) and \
        all(k == "out" and v is None for k, v in n.kwargs.items())


def _channel_dim(dim, lay: str) -> bool:
    return dim in ((1, -3) if lay == "chw" else (3, -1) if lay == "hwc" else (1, -1))


def _permute(n, lay: str):
    dims = n.args[1] if len(n.args) == 2 and isinstance(n.args[1], (list, tuple)) else n.args[1:]
    dims = tuple(n.kwargs.get("dims", dims))
    after = _PERMUTES.get(dims)
    if after is None or (after == "hwc") != (lay == "chw"):
        return f"{_name(n)} to dims {dims} of {_LAYOUTS[lay]} (only to channels-last and back)"
    return "identity", {}, "", after


def _map_named(n, lay: str):
    """Functions and methods with arguments of their own: a mean or adaptive pool to 1 x 1, a layer
    norm, torchvision's stochastic_depth, dropout, leaky_relu."""
    target, rest = n.target, list(n.args[1:])
    kw = dict(n.kwargs)
    if target == "mean" or target is torch.mean:
        dims = rest[0] if rest else kw.get("dim")
        keep = rest[1] if len(rest) > 1 else kw.get("keepdim", False)
        spatial = {2, 3} if lay == "chw" else {1, 2}
        ok = isinstance(dims, (list, tuple)) and {d % 4 for d in dims} == spatial and len(dims) == 2
        return ("global_avgpool", {}, "") if ok and keep and lay != "vec" else f"{_name(n)} (not over H and W, kept)"
    if target is F.adaptive_avg_pool2d:
        size = rest[0] if rest else kw.get("output_size")
        ok = size in (1, (1, 1), [1, 1]) and lay == "chw"
        return ("global_avgpool", {}, "") if ok else f"{_name(n)} to {size} (only a global pool, size 1, is an op)"
    if target in (F.max_pool2d, F.avg_pool2d) and lay == "chw":
        r = functional_pool(target.__name__, rest, kw)
        return (*r, "") if isinstance(r, tuple) else f"{_name(n)} ({r})"
    if target is F.dropout:
        p = rest[0] if rest else kw.get("p", 0.5)
        return "dropout", _nondefault({"p": p}, {"p": 0.5}), ""
    if target is F.leaky_relu:
        slope = rest[0] if rest else kw.get("negative_slope", 0.01)
        return "leaky_relu", _nondefault({"slope": slope}, {"slope": 0.01}), ""
    if getattr(target, "__module__", "") == "torchvision.ops.stochastic_depth":
        p = rest[0] if rest else kw.get("p")
        mode = rest[1] if len(rest) > 1 else kw.get("mode")
        return ("drop_path", {"p": p}, "") if mode == "row" else \
            f"{_name(n)} in mode {mode!r} (resgraph's drop_path drops each sample alone: mode 'row')"
    return _name(n)


def _with_param(n, t: _Trace, lay: str, name: str | None, params: list):
    """An op that reads a parameter: a layer norm's weight and bias (F.layer_norm, as torchvision's and
    timm's LayerNorm2d call it), or a per-channel factor (a layer scale: `gamma * x`)."""
    if n.target is F.layer_norm:
        return _layer_norm(n, t, lay)
    if name == "mul" and len(params) == 1 and len(n.args) == 2:
        target, tensor = t.params[params[0].name]
        c = tensor.numel()
        at = -3 if lay == "chw" else -1   # where the channels are: the factor broadcasts along them alone
        if c > 1 and tensor.dim() >= -at and tensor.shape[at] == c:
            return "scale", {}, _owner(t, target)
        return f"{_name(n)} by parameter {target} of shape {list(tensor.shape)} (not one factor per channel)"
    return f"{_name(n)} reading parameter {t.params[params[0].name][0]}"


def _layer_norm(n, t: _Trace, lay: str):
    shape = n.args[1] if len(n.args) > 1 else n.kwargs.get("normalized_shape")
    w, b = (n.kwargs.get(k, n.args[i] if len(n.args) > i else None) for k, i in (("weight", 2), ("bias", 3)))
    eps = n.kwargs.get("eps", n.args[4] if len(n.args) > 4 else 1e-5)
    targets = [t.params[a.name][0] if a is not None and a.name in t.params else None for a in (w, b)]
    owner = targets[0].rpartition(".")[0] if targets[0] else ""
    if len(tuple(shape)) != 1 or lay == "chw" or targets != [f"{owner}.weight", f"{owner}.bias"]:
        return f"{_name(n)} over {tuple(shape)} of {_LAYOUTS[lay]} (only over the channels, with a weight and bias)"
    return "layernorm", _nondefault({"eps": eps}, {"eps": 1e-5}), owner


def _owner(t: _Trace, target: str) -> str:
    """A parameter's path in the spec: the module that holds it where that holds nothing else (timm's
    LayerScale), else the parameter's own path (torchvision's CNBlock.layer_scale, timm's gamma)."""
    owner = target.rpartition(".")[0]
    m = t.modules.get(owner)
    return owner if m is not None and owner and len(list(m.parameters())) == 1 else target


def _in_layout(got, lay: str):
    """A module's op on a map of layout `lay`: (op, args, layout after) or what it is. nn.Linear on a
    channels-last map is a 1x1 conv; a layer norm runs over the channels only channels-last or on vectors."""
    if isinstance(got, str):
        return got
    op, args, _ = got
    if op == "linear" and lay != "vec":
        if lay == "chw":
            return "module Linear on a [N, C, H, W] map (over its width)"
        return "conv", {"out": args["out"], "kernel": 1, "bias": args.get("bias", True)}, lay
    if op == "layernorm" and lay == "chw":
        return "module LayerNorm over the last dim of a [N, C, H, W] map (over its width)"
    if op in ("conv", "bn", "groupnorm", "maxpool", "avgpool", "global_avgpool", "flatten") and lay != "chw":
        return f"module for {op} on {_LAYOUTS[lay]} (resgraph runs it on [C, H, W])"
    return op, args, "vec" if op == "flatten" else lay


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
            exact = getattr(m, "approximate", "none") == "none"
            return (op, {}, "") if exact else "module GELU with the tanh approximation (resgraph's gelu is exact)"
    if isinstance(m, nn.LeakyReLU):
        return "leaky_relu", _nondefault({"slope": m.negative_slope}, {"slope": 0.01}), ""
    if isinstance(m, nn.PReLU) and m.num_parameters > 1:   # one slope per channel (a shared one is not an op)
        return "prelu", {}, ""
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
    return _map_norm(m)


def _map_norm(m: nn.Module):
    """Layer and group norms with a weight and bias (a layer norm over one dim: the channels, once
    _in_layout has seen the map is channels-last); timm's DropPath (rescaling by 1 / (1 - p), as resgraph's)."""
    affine = getattr(m, "weight", None) is not None and getattr(m, "bias", None) is not None
    if type(m) is nn.LayerNorm and len(m.normalized_shape) == 1 and affine:
        return "layernorm", _nondefault({"eps": m.eps}, {"eps": 1e-5}), ""
    if type(m) is nn.GroupNorm and affine:
        return "groupnorm", {"groups": m.num_groups, **_nondefault({"eps": m.eps}, {"eps": 1e-5})}, ""
    if _is_timm_drop_path(m) and m.scale_by_keep:
        return "drop_path", {"p": float(m.drop_prob)}, ""
    return f"module {type(m).__name__}" + _why(m)


def _why(m: nn.Module) -> str:
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return f" (output size {m.output_size}; only a global pool, size 1, is an op)"
    return ""


def _square(v) -> int | None:
    v = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    return v[0] if v[0] == v[1] else None


def _conv(m: nn.Conv2d):
    """Any kernel, stride, dilation and symmetric padding per axis (Inception's 1x7, padding (0, 3));
    torch's padding='same' is the spec's (extra padding at the end), 'valid' pads nothing."""
    if m.padding_mode != "zeros":
        return "module Conv2d (a padding mode other than zeros)"
    k = tuple(m.kernel_size)
    if m.padding == "same":
        begin_end = [pads("same", kk, dd) for kk, dd in zip(k, m.dilation)]
    else:
        begin_end = [(0, 0)] * 2 if m.padding == "valid" else [(p, p) for p in m.padding]
    args = conv_args(m.out_channels, k, m.stride, m.dilation, begin_end, m.groups, m.bias is not None)
    return ("conv", args, "") if args is not None else "module Conv2d (its padding has no spec form)"


def _pool(m):
    name = "maxpool" if isinstance(m, nn.MaxPool2d) else "avgpool"
    p = m.padding if isinstance(m.padding, (tuple, list)) else (m.padding, m.padding)
    if (name == "maxpool" and _square(m.dilation) != 1) or (name == "avgpool" and any(p) and m.count_include_pad):
        return f"module {type(m).__name__} (dilated, or counting padding)"
    args = pool_args(m.kernel_size, m.stride or m.kernel_size, p)
    return name, {**args, **({"ceil_mode": True} if m.ceil_mode else {})}, ""


def _loc(n, modules: dict, where: str) -> Loc:
    """Where the node's code is: the last frame of fx's stack trace, else the module's class."""
    frames = [f for f in _FRAME.findall(n.stack_trace or "") if not f[0].startswith(_TORCH)]
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
