"""Pairing two models' tensors, in execution order, by what they are rather than what they are called.

Tensor i of ours takes tensor i of theirs when both are the same kind of entry (weight, bias,
running_mean, running_var, num_batches_tracked), of the same shape, owned by the same kind of layer
(conv, bn, linear, layernorm, groupnorm, scale) that computes the same way where the shape does not
say it (a conv's stride, dilation and groups; a norm's eps; a group norm's groups). Names never
matter, so any spec of the source's architecture imports, whatever its ids.

Three spellings of one computation pair across kinds, their tensors reshaped on copy (`fits`):
- a pointwise conv (1x1, stride 1, dilation 1, groups 1) and a linear layer: weight [out, in, 1, 1]
  and [out, in] (ConvNeXt's nn.Linear on channels-last maps, written as a 1x1 conv on [C, H, W]);
- layer scale: our `scale` op's weight [C], a `layer_scale` or `gamma` parameter that a block holds
  itself (torchvision's CNBlock.layer_scale, (C, 1, 1); timm's ConvNeXtBlock.gamma), or timm's
  LayerScale / LayerScale2d;
- layer norms over the channels, whatever the layout: nn.LayerNorm on [N, H, W, C] and the
  channels-first LayerNorm2d of torchvision, timm and resgraph.

A spec may stop before the source does (a backbone without the classifier's head): their tensors
after our last one are then left out, as long as ours ends between two of their layers, never
inside one (`first_mismatch(..., tail=True)`). Each of our outputs is then compared with the module
of theirs that holds exactly the weights of the spec layer it ends (`counterparts`): a spec that
stops inside such a module (a stage with fewer blocks than theirs) is refused there.

Layers of ours that are to be initialised afresh (`reinit`: a new classifier head) still take their
place in the order, so that the tensors after them pair as before: one of ours that is reinitialised
pairs with whatever of theirs stands at its position as long as both are the same kind of entry
(weight, bias, ...), whatever their shapes, or with nothing where theirs has ended (a head longer than
theirs). `head_layers` finds the layers whose reinitialisation alone would make a refused pairing fit,
when they are the last of ours: what the error of a classifier imported at another number of classes
proposes. Pure functions of the two models and their ordered keys.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...ops import OPS

KINDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# a layer scale that a block holds as its own parameter (no module of its own): torchvision's
# CNBlock.layer_scale, timm's ConvNeXtBlock.gamma; the entry is the scale's weight
SCALE_ENTRIES = ("layer_scale", "gamma")


@dataclass(frozen=True)
class Mismatch:
    index: int            # position in execution order
    problem: str          # what differs, e.g. "shapes differ", "a conv vs a bn", "conv with stride 1 vs stride 2"
    ours: str | None      # our key (None: ours has ended)
    theirs: str | None    # their key (None: theirs has ended)


def first_mismatch(ours: nn.Module, our_keys, theirs: nn.Module, their_keys, tail: bool = False,
                   reinit=frozenset()) -> Mismatch | None:
    """The first position where the two ordered key lists disagree, or None if every pair fits. With
    `tail`, theirs may go on after ours has ended (those tensors are left out), but not from inside a
    layer: ours ending after a conv's weight where theirs has its bias is a mismatch (unless our last
    tensor is reinitialised: their layer is replaced anyway). Our keys in `reinit` pair by kind alone
    (reinit_problem)."""
    a_state, b_state = ours.state_dict(), theirs.state_dict()
    for i in range(max(len(our_keys), len(their_keys))):
        a = our_keys[i] if i < len(our_keys) else None
        b = their_keys[i] if i < len(their_keys) else None
        if tail and a is None:
            inside = i > 0 and their_keys[i - 1].rpartition(".")[0] == b.rpartition(".")[0]
            replaced = i > 0 and our_keys[i - 1] in reinit
            return Mismatch(i, "ours has ended inside a layer", a, b) if inside and not replaced else None
        if a in reinit:
            problem = reinit_problem(ours, a, theirs, b)
        else:
            problem = pair_problem(ours, a, a_state.get(a), theirs, b, b_state.get(b))
        if problem:
            return Mismatch(i, problem, a, b)
    return None


def reinit_problem(ours: nn.Module, a: str, theirs: nn.Module, b: str | None) -> str:
    """Why our reinitialised tensor `a` cannot stand where their `b` stands ("" if it can): only
    another kind of entry (a weight where theirs has a bias) says the order has come apart there.
    Shapes and layers may differ (that is why it is reinitialised); theirs may have ended."""
    if b is None:
        return ""
    ka, kb = entry(ours, a)[0], entry(theirs, b)[0]
    return "" if ka == kb else f"{ka} vs {kb} (reinitialised: pairs by kind of entry only)"


def head_layers(ours: nn.Module, our_keys, theirs: nn.Module, their_keys, layer_of, reinit=frozenset(),
                limit: int = 3) -> list[str] | None:
    """The layers of ours (`layer_of(key)`: the spec path of a key's layer) that, reinitialised besides
    `reinit`, would make the pairing fit, if they are at most `limit` and nothing of ours runs after the
    first of them but reinitialised tensors: a classifier's head at another number of classes (fc
    [10, 512] against [1000, 512]). None where the difference is not just a head."""
    fresh, layers = set(reinit), []
    while (m := first_mismatch(ours, our_keys, theirs, their_keys, tail=True, reinit=fresh)) is not None:
        if m.ours is None or m.ours in fresh or len(layers) == limit:
            return None
        layers.append(layer_of(m.ours))
        fresh |= {k for k in our_keys if layer_of(k) == layers[-1]}
    new = [i for i, k in enumerate(our_keys) if k in fresh and k not in reinit]
    return layers if new and all(k in fresh for k in our_keys[new[0]:]) else None


def layer_of(graph, key: str) -> str | None:
    """The spec path of the node that owns state-dict `key` of a resgraph module (the longest prefix
    of the key that is a node: an inserted Ws's layer2.0.shortcut.conv.weight is layer2.0.shortcut.conv's)."""
    parts = key.split(".")[:-1]
    while parts:
        if ".".join(parts) in graph:
            return ".".join(parts)
        parts.pop()
    return None


def pair_problem(ours: nn.Module, a: str | None, ta, theirs: nn.Module, b: str | None, tb) -> str:
    """Why tensor `a` of ours cannot take tensor `b` of theirs ("" if it can)."""
    if a is None:
        return "ours has fewer tensors"
    if b is None:
        return "ours has more tensors"
    (ka, ma, la), (kb, mb, lb) = entry(ours, a), entry(theirs, b)
    if ka != kb:
        return f"{ka} vs {kb}"
    if ka not in KINDS:
        return f"unknown kind of entry '{ka}'"
    if la != lb and {la, lb} != {"conv", "linear"}:
        return f"a {la} vs a {lb}"
    if la != lb:   # a conv and a linear: the same maps only where the conv is pointwise
        conv = ma if la == "conv" else mb
        if not _pointwise(conv):
            attrs = {k: _fmt(v) for k, v in layer_attrs(conv).items()}
            return (f"a {la} vs a {lb} (a conv pairs with a linear only as an unpadded 1x1 conv of stride 1, "
                    f"dilation 1, groups 1; this one has kernel {_fmt(tuple(conv.kernel_size))}, "
                    f"stride {attrs['stride']}, dilation {attrs['dilation']}, groups {attrs['groups']})")
    if not fits(ta.shape, tb.shape, la if la == lb else "pointwise"):
        return "shapes differ"
    xa, xb = layer_attrs(ma), layer_attrs(mb)
    if la == lb and xa != xb:
        diff = [k for k in xa if xa[k] != xb.get(k)]
        return f"{la} with " + ", ".join(f"{k} {_fmt(xa[k])} vs {k} {_fmt(xb.get(k))}" for k in diff)
    return ""


def entry(root: nn.Module, key: str) -> tuple[str, nn.Module | None, str]:
    """(kind of entry, owning module, kind of layer) of a state-dict key: a layer scale held by a
    block as its own parameter reads as the weight of a scale layer."""
    kind, module = key.rpartition(".")[2], owner(root, key)
    layer = layer_kind(module)
    if kind in SCALE_ENTRIES and (layer == "scale" or layer not in _LAYERS):
        return "weight", module, "scale"
    return kind, module, layer


def fits(a, b, layer: str) -> bool:
    """Whether tensors of shapes `a` (ours) and `b` (theirs) hold the same numbers in one layout: equal
    shapes; a layer scale's [C] and (C, 1, 1); a pointwise conv's [out, in, 1, 1] and a linear's [out, in]."""
    a, b = tuple(a), tuple(b)
    if a == b:
        return True
    if layer == "scale":
        return _squeezed(a) == _squeezed(b) and len(_squeezed(a)) == 1
    if layer == "pointwise":
        return a[:2] == b[:2] and all(d == 1 for d in a[2:] + b[2:])
    return False


def _squeezed(shape) -> tuple:
    return tuple(d for d in shape if d != 1) or (1,)


def _pointwise(conv: nn.Module) -> bool:
    """A 1x1 conv that maps each pixel's channels alone, as a linear layer maps a vector."""
    unpadded = conv.padding in ("same", "valid") or tuple(conv.padding) == (0, 0)
    return (isinstance(conv, nn.Conv2d) and tuple(conv.kernel_size) == (1, 1) and tuple(conv.stride) == (1, 1)
            and tuple(conv.dilation) == (1, 1) and conv.groups == 1 and unpadded)


def owner(root: nn.Module, key: str) -> nn.Module | None:
    prefix = key.rpartition(".")[0]
    try:
        return root.get_submodule(prefix) if prefix else root
    except AttributeError:
        return None


# the layer kinds that hold their tensors under the standard entry names: our ops' (OpDef.import_kind),
# named after the op (conv, bn, linear, layernorm, groupnorm, scale); layer_kind puts torch's modules in them
_LAYERS = tuple(dict.fromkeys(op.import_kind for op in OPS.values() if op.import_kind is not None))


def layer_kind(module: nn.Module | None) -> str:
    if module is None:
        return "?"
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):   # timm's BatchNormAct2d too
        return "bn"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.LayerNorm):       # torchvision's, timm's and resgraph's LayerNorm2d too
        return "layernorm"
    if isinstance(module, nn.GroupNorm):       # timm's GroupNorm, GroupNorm1 too
        return "groupnorm"
    if _is_scale(module):
        return "scale"
    if isinstance(module, nn.PReLU):
        return "prelu"
    return type(module).__name__


def _is_scale(module: nn.Module) -> bool:
    """resgraph's Scale; timm's LayerScale, LayerScale2d (a per-channel factor, `gamma`)."""
    from .modules import Scale
    return isinstance(module, Scale) or type(module).__name__ in ("LayerScale", "LayerScale2d")


def layer_attrs(module: nn.Module | None) -> dict:
    """What a tensor's shape does not say about its layer but the computation depends on. (Padding is
    left out: 'same' padding is spelt many ways; the verify step compares outputs.)"""
    if isinstance(module, nn.modules.conv._ConvNd):
        return {"stride": tuple(module.stride), "dilation": tuple(module.dilation), "groups": module.groups}
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return {"eps": module.eps}
    if isinstance(module, nn.LayerNorm):
        return {"eps": module.eps}
    if isinstance(module, nn.GroupNorm):
        return {"groups": module.num_groups, "eps": module.eps}
    return {}


def describe(root: nn.Module, key: str | None, t: torch.Tensor | None) -> str:
    """'layer2.0.conv1.weight [128, 64, 3, 3] of a conv', for messages."""
    if key is None or t is None:
        return "nothing (it has no more tensors)"
    return f"{key} {list(t.shape)} of a {entry(root, key)[2]}"


def layer_mapping(pairs) -> dict[str, str]:
    """Our layer path -> theirs, in order (e.g. layer2.0.shortcut.conv -> layer2.0.downsample.0; a layer
    scale that a block holds itself maps to the block: features1.0.layer_scale -> features.1.0)."""
    mapping: dict[str, str] = {}
    for a, b in pairs:
        mapping.setdefault(a.rpartition(".")[0], b.rpartition(".")[0])
    return mapping


@dataclass(frozen=True)
class Counterpart:
    """What one of our outputs is compared with after an import."""
    output: str                  # our output's name
    path: str                    # its node
    group: str | None = None     # the spec layer or block that the output ends and whose weights located theirs
    module: str | None = None    # their module that computes the same tensor ("": their model's own output)
    cut: tuple[str, ...] = ()    # their tensors inside `module` that are left out: the spec stops inside it
    at: str = "output"           # "input": `path`'s and `module`'s inputs are compared (before a reinitialised layer)


def counterparts(graph, pairs, their_keys, left_out) -> list[Counterpart]:
    """Our outputs' counterparts in their model. `pairs`: (our key, their key) in execution order;
    `their_keys`: every tensor their forward uses; `left_out`: those of them that have no place in ours.
    One output and nothing left out: their model's own output. Otherwise each output's node ends one
    or more spec groups (layer2.3.post ends layer2.3 and layer2); the outermost that holds weights
    names, through the pairs, the smallest module of theirs holding them all. That module is the
    counterpart if it holds nothing else; if it holds left-out tensors, the spec stops inside it
    (`cut`); if it holds other paired ones, the next group inward is tried. None found: module None."""
    if len(graph.outputs) == 1 and not left_out:
        return [Counterpart(graph.output_name, graph.output, module="")]
    images, left = dict(pairs), set(left_out)
    return [_counterpart(graph, name, path, images, their_keys, left) for name, path in graph.outputs]


def _counterpart(graph, name: str, path: str, images: dict, their_keys, left: set) -> Counterpart:
    for group in _groups_ended(graph, path):
        mine = {b for a, b in images.items() if a.startswith(group + ".")}
        if not mine:
            continue
        module = _common_module(mine)
        inside = [k for k in their_keys if not module or k.startswith(module + ".")]
        cut = tuple(k for k in inside if k in left) if module else ()   # their model itself is no module to stop in
        if cut or set(inside) == mine:
            return Counterpart(name, path, group, module, cut)
    return Counterpart(name, path)


def _groups_ended(graph, path: str) -> list[str]:
    """The spec groups (a layer, a block instance, a repeated layer) whose last node is `path`,
    outermost first: layer2.3.post ends layer2, layer2.3 and itself."""
    parts = path.split(".")
    prefixes = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return [p for p in prefixes
            if [n.path for n in graph.nodes if n.path == p or n.path.startswith(p + ".")][-1] == path]


def _common_module(keys) -> str:
    """The innermost module holding every one of `keys` ("" for the model itself)."""
    owners = [k.split(".")[:-1] for k in keys]
    common = []
    for parts in zip(*owners):
        if len(set(parts)) > 1:
            break
        common.append(parts[0])
    return ".".join(common)


def _fmt(v) -> str:
    return str(v[0] if isinstance(v, tuple) and len(set(v)) == 1 else v)
