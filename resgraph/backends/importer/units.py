"""Residual units found in a traced op list: every two-input add whose inputs fork from one op.

A unit is the body (the add's main input back to the fork), the shortcut (the other input back to
the fork: nothing, or a Ws that one of resgraph's shortcut policies inserts) and an optional post op
(the activation right after the add, inside the same module). A body is a small DAG: each op reads the
fork or earlier body ops (a squeeze-and-excitation gate reads the map it scales), and `edges` records
which, as positions in the body (-1: the fork). What lies outside every unit must be a chain;
anything else is refused, naming the node.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ...errors import WeightsError
from .trace import Op


@dataclass
class Unit:
    scope: str            # the module path that holds the body ("layer3.4")
    body: list[Op]
    post: Op | None
    policy: str | None    # the shortcut policy that rebuilds its Ws; None: an identity shortcut
    fork: str             # the key of the op both branches read
    out: str              # the key of its output (the post's, else the add's)
    ws_stride: int = 1    # the stride of its Ws conv (1 where it has none)
    edges: tuple = ()     # per body op, the body positions it reads (-1: the fork), main input first
    plain: bool = False   # the shortcut runs before the body (torchvision's RegNet: proj(x) + f(x)): the body
                          # then holds the shortcut's ops, the body's and the add, written as plain layers


def chain(ops: list[Op], start: str, where: str) -> list:
    """The model as a list of Ops and Units in execution order. Each reads the outputs of earlier items
    (a squeeze-and-excitation gate or a concat reads more than the previous one's); nothing outside a
    unit reads inside it."""
    index = {o.key: i for i, o in enumerate(ops)}
    index[start] = -1
    units = {}
    for j, o in enumerate(ops):
        if o.op == "add" and len(o.inputs) == 2:
            u = _unit(ops, index, j, where)
            units[index[u.fork] + 1] = (u, index[u.out])
    items, i, seen = [], 0, {start}
    while i < len(ops):
        item, end = units.get(i, (ops[i], i))
        reads = [item.fork] if isinstance(item, Unit) else item.inputs
        if not set(reads) <= seen:
            key = item.body[0].key if isinstance(item, Unit) else item.key
            raise _refuse(where, key, "reads a layer inside a residual unit from outside it (a branch resgraph "
                                      "import cannot rebuild)")
        items.append(item)
        seen.add(item.out if isinstance(item, Unit) else item.key)
        i = end + 1
    return regions(items, start, where)


def regions(items: list, start: str, where: str) -> list:
    """Runs of two or more top-level ops inside one module at the depth where the residual units live
    (MobileNet's `features.1`, an InvertedResidual without a shortcut; a stem's conv, bn and act) become
    plain units, so that they are blocks too, as long as they read only the value before them and
    nothing after them reads inside them."""
    depths = Counter(u.scope.count(".") + 1 for u in items if isinstance(u, Unit))
    if not depths:
        return items
    d = depths.most_common(1)[0][0]
    def key(it) -> str | None:
        """The module at depth d an op runs in: its own path's prefix, or its path itself where the module
        applies a functional op in its forward (torchvision's BasicConv2d: conv, bn, then F.relu)."""
        parts = it.path.split(".") if isinstance(it, Op) and it.path else []
        return ".".join(parts[:d]) if len(parts) >= d else None
    out, i, prev = [], 0, start
    while i < len(items):
        j = i + 1
        while key(items[i]) and j < len(items) and key(items[j]) == key(items[i]):
            j += 1
        run = items[i:j]
        if len(run) >= 2 and _closed(run, prev, items[j:]):
            run = [Unit(key(run[0]), run, None, None, prev, run[-1].key, 1, _edges(run, prev, where), True)]
        out += run
        prev = run[-1].out if isinstance(run[-1], Unit) else run[-1].key
        i = j
    return out


def _closed(run: list[Op], fork: str, after: list) -> bool:
    """The run reads nothing from before it but `fork`, and nothing after it reads inside it but its output."""
    keys = {o.key for o in run}
    reads_after = {k for it in after for k in ([it.fork] if isinstance(it, Unit) else it.inputs)}
    return all(set(o.inputs) <= keys | {fork} for o in run) and not (reads_after & (keys - {run[-1].key}))


def _ancestors(ops: list[Op], index: dict, key: str, low: int) -> set[int]:
    seen, todo = set(), [key]
    while todo:
        i = index[todo.pop()]
        if i > low and i not in seen:
            seen.add(i)
            todo.extend(ops[i].inputs if i >= 0 else [])
    return seen


def _unit(ops: list[Op], index: dict, j: int, where: str) -> Unit:
    add = ops[j]
    a, b = (_ancestors(ops, index, k, -2) | {index[k]} for k in add.inputs)
    fork = max(a & b)
    main, side = (_ancestors(ops, index, k, fork) for k in add.inputs)
    if len(side) > len(main):
        main, side = side, main
    if main & side or main | side != set(range(fork + 1, j)) or not main:
        raise _refuse(where, add.key, "joins paths that are not a residual body and its shortcut")
    body = [ops[i] for i in sorted(main)]
    fork_key = next(k for k, i in index.items() if i == fork)
    if body[-1].key not in add.inputs:
        raise _refuse(where, add.key, "adds a body whose output is not its last op")
    edges = _edges(body, fork_key, where)
    scope = _common([o.path for o in body])   # the add's own module where it holds the body (torchvision's
    scope = add.path if add.path and (scope + ".").startswith(add.path + ".") else scope   # InvertedResidual)
    post = ops[j + 1] if j + 1 < len(ops) else None
    if post is None or post.inputs != [add.key] or post.op == "add" or _users(ops, add.key) != 1 \
            or not (post.path + ".").startswith(scope + ".") or not scope:
        post = None
    side_ops = [ops[i] for i in sorted(side)]
    stride = max([o.args.get("stride", 1) for o in side_ops if o.op in ("conv", "avgpool")], default=1)
    if side and max(side) < min(main):   # weights pair in execution order: keep the shortcut first
        body = side_ops + body + [add]
        return Unit(scope, body, post, None, fork_key, (post or add).key, 1, _edges(body, fork_key, where), True)
    return Unit(scope, body, post, _policy(side_ops, where, add.key), fork_key, (post or add).key, stride, edges)


def _edges(body: list[Op], fork: str, where: str) -> tuple:
    """Each body op's inputs as body positions (-1: the fork). A mul reads its operands earliest first,
    so that a gate scales the map it was computed from (`mul: {in: input, from: [gate]}`); a plain
    unit's closing add reads the body's output first (`add: {from: [proj]}`)."""
    at = {fork: -1, **{o.key: i for i, o in enumerate(body)}}
    edges = []
    for o in body:
        if not all(k in at for k in o.inputs):
            raise _refuse(where, o.key, "reads from outside its residual body (a skip across the unit)")
        pos = [at[k] for k in o.inputs]
        if o.op == "add" and len(body) - 2 in pos:   # the add after the body reads the body's output first
            pos = [len(body) - 2, *(p for p in pos if p != len(body) - 2)]
        edges.append(tuple(sorted(pos)) if o.op == "mul" else tuple(pos))
    return tuple(edges)


def _users(ops: list[Op], key: str) -> int:
    return sum(key in o.inputs for o in ops)


def _common(paths: list[str]) -> str:
    parts = [p.split(".")[:-1] for p in paths]
    common = []
    for level in zip(*parts, strict=False):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    return ".".join(common)


def _policy(side: list[Op], where: str, key: str) -> str | None:
    """The shortcut policy whose inserted Ws is exactly `side` (torchvision's `downsample`)."""
    kinds = [o.op for o in side]
    conv = next((o for o in side if o.op == "conv"), None)
    one = conv is not None and conv.args.get("kernel") == 1 and conv.args.get("groups", 1) == 1 \
        and conv.args.get("padding", "same") in ("same", "valid", 0)
    if not side:
        return None
    if kinds == ["zeropad"]:   # option A: every s-th pixel, zero channels (ONNX: Slice + Pad, onnx_patterns.py)
        return "zeropad"
    if one and kinds == ["conv"]:   # with a bias where the spec's convs have one (a folded projection)
        return "conv"
    if kinds == ["linear"] and side[0].args.get("bias") is False:
        return "projection"   # on vectors: a bias-free linear
    one = one and conv.args.get("bias") is False
    if one and kinds == ["conv", "bn"]:
        return "projection"
    pool = side[0]
    if one and kinds == ["avgpool", "conv", "bn"] and pool.args.get("ceil_mode") and "stride" not in conv.args:
        return "avgpool_projection"
    raise _refuse(where, key, f"has a shortcut ({', '.join(kinds)}) that no shortcut policy inserts")


def _refuse(where: str, key: str, why: str) -> WeightsError:
    return WeightsError.at(where, f"node '{key}' {why}", "nothing was written; write this part of the spec by hand")
