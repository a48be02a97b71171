"""insert_shortcuts: the Ws rule of He et al. (2015), as a compiler pass.

A residual block computes a[l+2] = g(z[l+2] + Ws·a[l]). Ws is the identity when z and a have the
same shape; where they differ, the add's policy decides what Ws is. The main input (the body)
fixes the target shape; for every other input of shape [C1, H1, W1] -> [C2, H2, W2]:

    s = the smallest integer with ceil(H1 / s) = H2 and ceil(W1 / s) = W2
    projection          Ws = bn(conv1x1(a, stride s, C1 -> C2, bias false))      kind conv1x1
    conv                Ws = conv1x1(a, stride s, C1 -> C2, bias per defaults)   kind conv1x1 (no bn)
    zeropad             Ws = pad_channels(a[:, :, ::s, ::s], C2 - C1)  (C2 >= C1)  kind zeropad
    avgpool_projection  Ws = bn(conv1x1(avgpool(a, s, ceil_mode), C1 -> C2))      kind avgpool_conv1x1
    vectors [F1]->[F2]  Ws = linear(F1 -> F2, bias false), or zero padding         kind linear | zeropad

With `project_from: p` on the add (a residual's `project_from:`), a Ws reads p instead of a[l]:
pre-activation blocks (He et al. 2016) project the bn-relu'd input, while an identity shortcut
still carries a[l] itself.

Pre:  shapes inferred; args resolved (graph.settings: the default policy and the bn defaults).
Post: every add's inputs all have the add's shape; each inserted node sits right before its add
      (right after the node it reads, with project_from: where pre-activation code computes it, so
      that weights import in execution order), is marked `inserted`, and is named `<add-path>.shortcut[...]`; graph.projections lists them.
"""
from __future__ import annotations

from ..errors import Diagnostics
from ..ir import Graph, Node, Projection, freeze
from ..ops import OPS, fmt


def find_stride(src: tuple, dst: tuple) -> int | None:
    """Smallest s >= 1 with ceil(src_i / s) == dst_i on both spatial axes, or None."""
    (h1, w1), (h2, w2) = src[1:], dst[1:]
    for s in range(1, max(h1, w1) + 1):
        if -(-h1 // s) == h2 and -(-w1 // s) == w2:
            return s
    return None


def _node(path, op, loc, inputs, block, **args) -> Node:
    return Node(path, op, freeze(OPS[op].with_defaults(**args)), inputs, loc, inserted=True, block=block, role="shortcut")


def can_join(d: Diagnostics, n: Node, shapes: dict, default_policy: str) -> bool:
    """Whether insert_shortcuts can bring every input of the add `n` to its main input's shape; where it
    cannot, the reason is recorded in `d`. infer_shapes asks it at each add, so that a join that fails
    is reported in graph order, before the errors it would cause further down, and those are skipped."""
    policy = n.args.get("shortcut") or default_policy
    target, ok = shapes[n.inputs[0]], True
    for edge in n.inputs[1:]:
        read = n.args.get("project_from") or edge
        if shapes[edge] != target and shapes.get(read) is not None:
            ok &= _ws(d, n, n.path, read, shapes[read], target, policy, {}, False) is not None
    return ok


def insert_shortcuts(g: Graph) -> Graph:
    d = Diagnostics()
    default_policy = g.settings.shortcut
    # a Ws bn follows the spec's `defaults: {bn: ...}` like every bn; a Ws conv stays 1x1 and bias-free
    bn_args = dict(g.settings.bn)
    conv_bias = g.settings.conv_bias
    shapes = {n.path: n.shape for n in g.nodes}
    out: list[Node] = []
    projections: list[Projection] = []
    for n in g.nodes:
        if n.op != "add":
            out.append(n)
            continue
        policy = n.args.get("shortcut") or default_policy
        target = shapes[n.inputs[0]]
        ins = list(n.inputs)
        many = len(ins) > 2
        for j, edge in enumerate(n.inputs[1:], start=1):
            if shapes[edge] == target:
                continue
            edge = n.args.get("project_from") or edge   # what the Ws reads
            src = shapes[edge]
            base = f"{n.path}.shortcut{j if many else ''}"
            eq = f"add {n.path}: {n.inputs[0]} {fmt(target)} + {edge} {fmt(src)}"
            made = _ws(d, n, base, edge, src, target, policy, bn_args, conv_bias)
            if made is None:
                continue
            nodes, kind, stride = made
            shaped, params = [], 0
            for m in nodes:
                a, in_shapes = dict(m.args), [shapes[i] for i in m.inputs]
                m = m.with_(shape=tuple(OPS[m.op].shape(a, in_shapes)))
                params += OPS[m.op].params(a, in_shapes, m.shape)
                shapes[m.path] = m.shape
                shaped.append(m)
            assert shaped[-1].shape == target, (eq, shaped[-1].shape)
            if n.args.get("project_from"):   # where pre-activation code computes it: right after its input
                at = next(i for i, m in enumerate(out) if m.path == edge) + 1
                out[at:at] = shaped
            else:
                out.extend(shaped)
            ins[j] = shaped[-1].path
            projections.append(Projection(n.path, kind, src, target, stride, params, edge,
                                          tuple(m.path for m in shaped), bn=any(m.op == "bn" for m in shaped)))
        out.append(n.with_(inputs=tuple(ins)))
    d.raise_if_any(ordered=True)   # graph order, as infer_shapes (which reports these first, through can_join)
    return g.replace(nodes=tuple(out), projections=tuple(projections))


def _ws(d: Diagnostics, n: Node, base: str, edge: str, src, dst, policy: str, bn_args: dict, conv_bias: bool):
    loc, blk = n.loc, n.block
    where = f"the add at '{n.path}' joins the main input {n.inputs[0]} {fmt(dst)} and {edge} {fmt(src)}"
    if policy == "error":
        d.error(loc, f"shapes differ and the shortcut policy is 'error': {where}",
                "make the shapes equal, or set shortcut: projection (learned Ws) or zeropad on this block")
        return None
    if len(src) != len(dst):
        d.error(loc, f"rank mismatch: {where}", "a feature map and a vector cannot be added; flatten (or pool) first")
        return None
    if len(src) == 1:
        f1, f2 = src[0], dst[0]
        if policy == "zeropad":
            if f2 < f1:
                d.error(loc, f"zeropad would shrink {f1} features to {f2}: {where}",
                        "zero padding only adds features; use shortcut: projection")
                return None
            return [_node(base, "zeropad", loc, (edge,), blk, out=f2, stride=1)], "zeropad", 1
        return [_node(base, "linear", loc, (edge,), blk, out=f2, bias=False)], "linear", 1
    (c1, h1, w1), (c2, h2, w2) = src, dst
    if h2 > h1 or w2 > w1:
        d.error(loc, f"the shortcut would need upsampling: {where}",
                f"a stride only shrinks; upsample {edge} (upsample: {{scale: ...}}) or take the skip from a larger map")
        return None
    s = find_stride(src, dst)
    if s is None:
        eqs = f"ceil({h1} / s) = {h2}" + ("" if (h1, h2) == (w1, w2) else f" and ceil({w1} / s) = {w2}")
        d.error(loc, f"no integer stride maps {fmt(src)} to {fmt(dst)}: {where}",
                f"no integer s solves {eqs}; check the strides and paddings in the body "
                "('same' padding keeps ceil(H / stride))")
        return None
    if policy == "zeropad":
        if c2 < c1:
            d.error(loc, f"zeropad would shrink channels {c1} -> {c2}: {where}",
                    "zero padding only adds channels; use shortcut: projection")
            return None
        return [_node(base, "zeropad", loc, (edge,), blk, out=c2, stride=s)], "zeropad", s
    nodes, x = [], edge
    kind = "conv1x1"
    if policy == "avgpool_projection":
        kind = "avgpool_conv1x1"
        if s > 1:
            nodes.append(_node(f"{base}.pool", "avgpool", loc, (x,), blk, kernel=s, stride=s, padding="valid",
                               ceil_mode=True))
            x = nodes[-1].path
        conv_stride = 1
    else:
        conv_stride = s
    if policy == "conv":   # pre-activation ResNets' shortcut: the conv alone, at <add>.shortcut
        return [_node(base, "conv", loc, (x,), blk, out=c2, kernel=1, stride=s, padding="valid",
                      bias=conv_bias)], kind, s
    nodes.append(_node(f"{base}.conv", "conv", loc, (x,), blk, out=c2, kernel=1, stride=conv_stride,
                       padding="valid", bias=False))
    nodes.append(_node(f"{base}.bn", "bn", loc, (nodes[-1].path,), blk, **bn_args))
    return nodes, kind, s
