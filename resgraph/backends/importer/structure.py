"""Structure recovery: a chain of Ops and Units as the entries of a spec, the way a person writes one.

Units with the same body (ops, names, post, shortcut policy) are one block; the arguments that
differ between them become the block's arguments (a width that is an integer multiple of another is
written as an expression, `"$width * 4"`), and consecutive instances `P.0 … P.n-1` of one module P
become one entry with `repeat: n` and `first:` for what copy 0 does differently.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

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
    steps: dict = field(default_factory=dict)   # arg -> step: a rate that is step * k in the block's k-th copy
    var: dict = field(default_factory=dict)     # arg -> the spec variable that holds its step (spec_text)
    order: dict = field(default_factory=dict)   # id(unit) -> k: its place among all the network's units


def signature(u: Unit) -> tuple:
    taken = Counter(o.path for o in u.body)
    body = tuple((o.op, local(o, u.scope, taken), e) for o, e in zip(u.body, u.edges, strict=True))
    post = (u.post.op, tuple(sorted(full(u.post).items()))) if u.post else None
    return body, post, u.plain


def blocks(items: list, class_of, where: str) -> dict[tuple, Block]:
    """signature -> Block, named after the class of the module that holds each unit (snake case)."""
    groups: dict[tuple, list[Unit]] = {}
    for it in items:
        if isinstance(it, Unit):
            groups.setdefault(signature(it), []).append(it)
    out, names = {}, set()
    order = {id(u): k for k, u in enumerate(it for it in items if isinstance(it, Unit))}
    for sig, units in groups.items():
        name = _snake(class_of(units[0].scope)) or "block"
        if name in OPS or name in ("input", "residual") or name in names:
            name = _unique(name + "_block" if name in OPS else name, names)
        names.add(name)
        out[sig] = _block(name, units, _referenced(units[0], [i for _, i, _ in sig[0]]), order)
        out[sig].policy = _policy(units, where)
    taken = set()
    for b in out.values():   # the spec variables that hold the stepped rates
        for a in b.steps:
            b.var[a] = _unique(f"{a}_step", taken)
            taken.add(b.var[a])
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


def _referenced(u: Unit, ids: list) -> list:
    """The body ids, with one made for each op that a later op reads other than as its previous
    op (an `in:` or `from:` target): its path below the unit's scope, dots as underscores."""
    wanted = {p for i, e in enumerate(u.edges) for n, p in enumerate(e) if p >= 0 and (n or p != i - 1)}
    ids, taken = list(ids), set(ids)
    for p in sorted(wanted - {i for i, x in enumerate(ids) if x}):
        o = u.body[p]
        name = o.path[len(u.scope) + 1:].replace(".", "_") if o.path.startswith(u.scope + ".") else ""
        ids[p] = _unique(name if _ID.fullmatch(name) and name != "input" else f"{o.op}_at_{p}", taken)
        taken.add(ids[p])
    return ids


def _snake(name: str) -> str:
    s = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()
    return s if _ID.fullmatch(s) else ""


def _unique(name: str, taken) -> str:
    k, new = 2, name
    while new in taken:
        new, k = f"{name}{k}", k + 1
    return new


def _block(name: str, units: list[Unit], ids: list, place: dict) -> Block:
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
    order = list(groups)
    for n, v in enumerate(order):   # a width that is k times, or a k-th of, an earlier one: an expression
        base.update({v: r for r in [_based(v, [w for w in order[:n] if w not in base])] if r})
    for v, ss in groups.items():
        if v in base:
            continue
        kind = ss[0][1]
        arg = ("out" if last_out in ss else "width") if kind == "out" else kind
        names[v] = arg = _unique(arg, args)
        args[arg] = Counter(v).most_common(1)[0][0] if kind == "stride" else None
    for v, ss in groups.items():
        ref = ("$", names[v], 1) if v in names else ("$", names[base[v][0]], *base[v][1:])
        for s in ss:
            slots[s] = ref
    ks = [place[id(u)] for u in units]
    steps = {names[v]: step for v in names if (step := _step(v, ks))}
    values = {id(u): {names[v]: v[n] for v in names if names[v] not in steps} for n, u in enumerate(units)}
    return Block(name, units, ids, slots, args, values, steps=steps, order=place)


def _step(v: tuple, ks: list) -> float | None:
    """The step of a float argument that is step * k in the network's k-th block (k counts every
    block, in execution order): the stochastic-depth rate of torchvision's ConvNeXt and EfficientNet
    (p = 0.1 * k / 17). None where the argument is anything else."""
    if len(v) < 3 or not all(type(x) is float for x in v) or not any(ks):
        return None
    step = next(x / k for x, k in zip(v, ks, strict=True) if k)
    ok = step > 0 and all(abs(x - k * step) <= 1e-9 * max(abs(x), step) for x, k in zip(v, ks, strict=True))
    return step if ok else None


def _based(v: tuple, roots: list) -> tuple | None:
    """(root, k, "*") where v is k times a root in every copy, (root, k, "//") where a root is k times v;
    the first root (in body order) that fits, else None. Roots are vectors not based on another."""
    if not all(isinstance(x, int) and x > 0 for x in v):
        return None
    for r in (r for r in roots if all(isinstance(x, int) and x > 0 for x in r)):
        for big, small, op in ((v, r, "*"), (r, v, "//")):
            k = big[0] // small[0]
            if k >= 2 and all(x == k * y for x, y in zip(big, small, strict=True)):
                return r, k, op
    return None


def entries(items: list, found: dict[tuple, Block], where: str = "model", taps=None):
    """The spec's top-level entries: ("op", Op, id, edges) or ("call", Block, id, args, repeat, first, edges),
    edges being the entry's `in:`/`from:` (wire). With `taps` (keys of the model's outputs): (the entries,
    the id of the entry each tap is the output of), for `outputs:`."""
    out, i = [], 0
    taken = Counter(it.path for it in items if isinstance(it, Op))
    while i < len(items):
        it = items[i]
        if isinstance(it, Op):
            ok = _ID.fullmatch(it.path) and taken[it.path] == 1 and it.path != "input"
            out.append(("op", it, it.path if ok else None))
            i += 1
            continue
        n = _run(items, i, found)
        b0, b = found[signature(it)], found[signature(items[i + n - 1])]
        vals0 = b0.values[id(it)]
        rest = b.values[id(items[i + n - 1])]
        first = {**({"block": b0.name} if b0 is not b else {}), **{k: v for k, v in vals0.items() if rest.get(k) != v}}
        mine = [u for u in items[i:i + n] if any(u is x for x in b.units)]
        rest = {**rest, **_stepped(b, mine, n > 1, int(b0 is not b))}
        first.update(_stepped(b0, [it], False) if b0 is not b else {})
        parent, _, idx = it.scope.rpartition(".")
        sibling = n == 1 and i + 1 < len(items) and _scope(items[i + 1]).startswith(parent + ".")
        stage = re.sub(r"\W", "_", parent) if re.fullmatch(r"(.*\D)?0", idx) and parent and not sibling else None
        ident = stage or re.sub(r"\W", "_", it.scope) or None
        out.append(("call", b, ident, rest, n if stage else None, first))
        i += n
    out, edges, tapped = wire(items, out, where, taps or ())
    listed = [(*e, w) for e, w in zip(out, edges, strict=True)]
    return listed if taps is None else (listed, tapped)


def _stepped(b: Block, copies: list, repeat: bool, offset: int = 0) -> dict:
    """The call's value of each stepped argument: `"$p_step * (5 + $copy)"` over a repeat whose copy 0
    is the block's copy 5 (`offset`: the repeat's copies before the first of this block), `"$p_step * 5"`
    for one call."""
    if not copies or not b.steps:
        return {}
    k = b.order[id(copies[0])] - offset
    return {a: f"${b.var[a]} * ({k} + $copy)" if repeat else f"${b.var[a]} * {k}" for a in b.steps}


def wire(items: list, out: list[tuple], where: str, taps=()) -> tuple:
    """Each entry's `in:` (where its main input is not the entry before it) and `from:` (its other
    inputs), naming the entries they read; an entry that is read this way gets an id if it has none.
    A mul reads its operands earliest first, so a gate scales the map it was computed from."""
    at, k = {}, 0
    for j, e in enumerate(out):   # item key -> (entry index, is it the entry's output)
        n = (e[4] or 1) if e[0] == "call" else 1
        for m, it in enumerate(items[k:k + n]):
            at[it.out if isinstance(it, Unit) else it.key] = (j, m == n - 1)
        k += n
    wires, ids = [], [e[2] for e in out]
    taken = set(ids)
    for j, it in enumerate(_firsts(items, out)):
        reads = [it.fork] if isinstance(it, Unit) else list(it.inputs)
        pos = [at.get(r, (-1, True)) for r in reads]
        if not all(last for _, last in pos):
            raise WeightsError.at(where, f"'{it.scope if isinstance(it, Unit) else it.key}' reads a copy inside a "
                                         "repeat other than its last", "nothing was written; write this part by hand")
        pos = [p for p, _ in pos]
        pos = sorted(pos) if not isinstance(it, Unit) and it.op == "mul" else pos
        for p in [p for n, p in enumerate(pos) if (n or p != j - 1) and p >= 0 and not ids[p]]:
            name = re.sub(r"\W", "_", _key_path(items, out, p))
            ids[p] = _unique(name if _ID.fullmatch(name) and name != "input" else f"{getattr(out[p][1], 'name', None) or out[p][1].op}_{p}", taken)
            taken.add(ids[p])
        wires.append(pos)
    tapped = []
    for key in taps:   # the model's outputs: each the output of an entry, which then needs an id
        p, last = at.get(key, (None, False))
        if p is None or not last:
            raise WeightsError.at(where, f"the model's output '{key}' is not the output of a layer or a stage "
                                         "(a copy inside a repeat other than its last?)",
                                  "nothing was written; write the spec's outputs: by hand")
        if not ids[p]:
            name = re.sub(r"\W", "_", _key_path(items, out, p))
            ids[p] = _unique(name if _ID.fullmatch(name) and name != "input" else f"out_{p}", taken)
            taken.add(ids[p])
        tapped.append(ids[p])
    edges = [{**({"in": _name(p[0], ids)} if p[0] != j - 1 else {}),
              **({"from": [_name(x, ids) for x in p[1:]]} if len(p) > 1 else {})} for j, p in enumerate(wires)]
    return [(*e[:2], ids[j], *e[3:]) for j, e in enumerate(out)], edges, tapped


def _name(p: int, ids: list) -> str:
    return "input" if p < 0 else ids[p]


def _firsts(items: list, out: list[tuple]) -> list:
    """The first item of each entry."""
    firsts, k = [], 0
    for e in out:
        firsts.append(items[k])
        k += (e[4] or 1) if e[0] == "call" else 1
    return firsts


def _key_path(items: list, out: list[tuple], p: int) -> str:
    it = _firsts(items, out)[p]
    return it.scope if isinstance(it, Unit) else it.path


def _scope(it) -> str:
    return it.scope if isinstance(it, Unit) else it.path


def _kind(name: str) -> str:
    return re.sub(r"\d+$", "", name)


def _run(items: list, i: int, found: dict) -> int:
    """How many units from i are copies P.0, P.1, … (or torchvision RegNet's P.P-0, P.P-1, …) of one
    block whose copies after the first agree; copy 0 may be another block (`first: {block: ...}`)."""
    parent, _, idx = items[i].scope.rpartition(".")
    m = re.fullmatch(r"(.*\D)?0", idx)
    if not m:
        return 1
    n, sig = 1, None
    while i + n < len(items) and isinstance(items[i + n], Unit) and items[i + n].scope == f"{parent}.{m[1] or ''}{n}":
        u, sig = items[i + n], sig or signature(items[i + 1])
        if signature(u) != sig or found[sig].values[id(u)] != found[sig].values[id(items[i + 1])]:
            break
        if n == 1 and _kind(found[sig].name) != _kind(found[signature(items[i])].name):
            return 1   # copy 0 may be another block of the same module class only (a stage's first block)
        n += 1
    return n
