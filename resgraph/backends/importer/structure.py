"""Structure recovery: a chain of Ops and Units as the entries of a spec, the way a person writes one.

Units with the same body (ops, names, post, shortcut policy) are one block; the arguments that
differ between them become the block's arguments (a width that is an integer multiple of another is
written as an expression, `"$width * 4"`), and consecutive instances `P.0 … P.n-1` of one module P
become one entry with `repeat: n` and `first:` for what copy 0 does differently.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from ...errors import WeightsError
from ...ops import OPS
from .trace import Op
from .units import Unit

_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SKIP = ("from", "shortcut", "project_from")


def full(op: Op) -> dict:
    """Every argument of the op (defaults filled in), so that instances compare slot by slot."""
    return {k: v for k, v in OPS[op.op].with_defaults(**op.args).items() if k not in _SKIP}


def local(o: Op, scope: str, taken: Counter) -> str | None:
    """The op's id inside its unit: its module path below the scope, where that is a usable id."""
    name = o.path[len(scope) + 1:] if o.path.startswith(scope + ".") else ""
    return name if _ID.fullmatch(name) and taken[o.path] == 1 and name != "input" else None


@dataclass
class Block:
    name: str
    units: list[Unit]
    ids: list[str | None]                  # the body ops' ids
    slots: dict[tuple[int, str], object]   # (body index, arg) -> constant value or ("$", arg, factor)
    args: dict[str, object]                # the block's arguments and their defaults (None: required)
    values: dict[int, dict]                # id(unit) -> its argument values
    policy: str | None = None              # the shortcut policy of its Ws (None: identity shortcuts only)


def signature(u: Unit) -> tuple:
    taken = Counter(o.path for o in u.body)
    body = tuple((o.op, local(o, u.scope, taken)) for o in u.body)
    post = (u.post.op, tuple(sorted(full(u.post).items()))) if u.post else None
    return body, post


def blocks(items: list, class_of, where: str) -> dict[tuple, Block]:
    """signature -> Block, named after the class of the module that holds each unit (snake case)."""
    groups: dict[tuple, list[Unit]] = {}
    for it in items:
        if isinstance(it, Unit):
            groups.setdefault(signature(it), []).append(it)
    out, names = {}, set()
    for sig, units in groups.items():
        name = _snake(class_of(units[0].scope)) or "block"
        if name in OPS or name in ("input", "residual") or name in names:
            name = _unique(name + "_block" if name in OPS else name, names)
        names.add(name)
        out[sig] = _block(name, units, [i for _, i in sig[0]])
        out[sig].policy = _policy(units, where)
    return out


def _policy(units: list[Unit], where: str) -> str | None:
    """The block's shortcut policy: an identity shortcut fits any (no Ws where shapes agree), but two
    different Ws in copies of one body cannot come from one policy."""
    found = {u.policy for u in units} - {None}
    if "avgpool_projection" in found and all(u.ws_stride == 1 for u in units if u.policy == "projection"):
        found.discard("projection")   # at stride 1 the ResNet-D shortcut has no pool: a plain projection
    if len(found) > 1:
        raise WeightsError.at(where, f"copies of one block ({units[0].scope}, ...) have different shortcuts: "
                                     f"{', '.join(sorted(found))}", "nothing was written; write this block by hand")
    return found.pop() if found else None


def _snake(name: str) -> str:
    s = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()
    return s if _ID.fullmatch(s) else ""


def _unique(name: str, taken) -> str:
    k, new = 2, name
    while new in taken:
        new, k = f"{name}{k}", k + 1
    return new


def _block(name: str, units: list[Unit], ids: list) -> Block:
    rows = [[full(o) for o in u.body] for u in units]
    vectors = {}
    for i, args in enumerate(rows[0]):
        for k in args:
            vectors[(i, k)] = tuple(r[i][k] for r in rows)
    varying = {s: v for s, v in vectors.items() if len(set(v)) > 1}
    slots = {s: v[0] for s, v in vectors.items() if s not in varying}
    groups: dict[tuple, list] = {}
    for s, v in varying.items():
        groups.setdefault(v, []).append(s)
    last_out = max((s for s in varying if s[1] == "out"), default=None)
    names, args, base = {}, {}, {}
    for v, ss in groups.items():   # a width that is k times another: an expression, not an argument
        for w in groups:
            k = v[0] // w[0] if w[0] and all(isinstance(x, int) for x in v + w) else 0
            if w != v and k >= 2 and all(x == k * y for x, y in zip(v, w, strict=True)) and v not in base:
                base[v] = (w, k)
    for v, ss in groups.items():
        if v in base:
            continue
        kind = ss[0][1]
        arg = ("out" if last_out in ss else "width") if kind == "out" else kind
        names[v] = arg = _unique(arg, args)
        args[arg] = Counter(v).most_common(1)[0][0] if kind == "stride" else None
    for v, ss in groups.items():
        ref = ("$", names[v], 1) if v in names else ("$", names[base[v][0]], base[v][1])
        for s in ss:
            slots[s] = ref
    values = {id(u): {names[v]: v[n] for v in names} for n, u in enumerate(units)}
    return Block(name, units, ids, slots, args, values)


def entries(items: list, found: dict[tuple, Block]) -> list[tuple]:
    """The spec's top-level entries: ("op", Op, id) or ("call", Block, id, args, repeat, first)."""
    out, i = [], 0
    taken = Counter(it.path for it in items if isinstance(it, Op))
    while i < len(items):
        it = items[i]
        if isinstance(it, Op):
            ok = _ID.fullmatch(it.path) and taken[it.path] == 1 and it.path != "input"
            out.append(("op", it, it.path if ok else None))
            i += 1
            continue
        b = found[signature(it)]
        n = _run(items, i, b)
        vals = [b.values[id(u)] for u in items[i:i + n]]
        rest = vals[1] if n > 1 else vals[0]
        first = {k: v for k, v in vals[0].items() if v != rest[k]}
        parent, _, idx = it.scope.rpartition(".")
        stage = parent if idx == "0" and _ID.fullmatch(parent or "-") else None
        ident = stage or it.scope.replace(".", "_") or None
        out.append(("call", b, ident, rest, n if stage else None, first))
        i += n
    return out


def _run(items: list, i: int, b: Block) -> int:
    """How many units from i are copies P.0, P.1, … of one block whose copies after the first agree."""
    parent, _, idx = items[i].scope.rpartition(".")
    if idx != "0":
        return 1
    n = 1
    while i + n < len(items) and isinstance(items[i + n], Unit) and items[i + n].scope == f"{parent}.{n}" \
            and signature(items[i + n]) == signature(items[i]) \
            and (n == 1 or b.values[id(items[i + n])] == b.values[id(items[i + 1])]):
        n += 1
    return n
