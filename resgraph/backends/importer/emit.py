"""The recovered structure as spec YAML text: flow mappings one entry a line, arguments that equal
their default (the op's, or the spec's `defaults:`) left out, ids only where the source's name
differs from nothing (top level) or from what resgraph would name the entry anyway (inside a block).
"""
from __future__ import annotations

from collections import Counter

from ...ops import OPS
from .structure import _ID, Block, full
from .units import Unit


def spec_text(name: str, source: str, shape: tuple, items: list, found: dict, entries: list,
              io: dict | None = None) -> str:
    """The spec. `io`: the source's tensor names where it has them (an ONNX file's): "input", "output",
    and "outputs" [(name, the id of the entry it is the output of)] where it has several."""
    ops = [o for it in items for o in (it.body + ([it.post] if it.post else []) if isinstance(it, Unit) else [it])]
    defaults = _defaults(ops)
    policies = Counter(b.policy for b in found.values() for _ in b.units if b.policy)
    policy = policies.most_common(1)[0][0] if policies else None
    lines = ["resgraph: 1", f"name: {name}", f"description: imported from {source} by resgraph import"]
    lines += _io_lines(shape, io or {})
    if policy:
        lines.append(f"shortcut: {policy}")
    if steps := {b.var[a]: b.steps[a] for b in found.values() for a in b.steps}:
        lines.append(f"vars: {_flow(steps)}")
    if defaults:
        lines += ["defaults:", *(f"  {op}: {_flow(args)}" for op, args in defaults.items())]
    if found:
        lines.append("blocks:")
        for b in found.values():
            lines += _block_lines(b, defaults, policy)
    lines.append("layers:")
    for e in entries:
        lines.append("  - " + (_op_entry(e[1], full(e[1]), defaults, e[2], e[-1]) if e[0] == "op" else _call(*e[1:])))
    return "\n".join(lines) + "\n"


def _io_lines(shape: tuple, io: dict) -> list[str]:
    """`input:` (with the source's input name where it is one), and `output:` or `outputs:`."""
    named = lambda n: n if n and _ID.fullmatch(n) and n != "input" else None  # noqa: E731
    inp = {**({"name": named(io.get("input"))} if named(io.get("input")) else {}), "shape": list(shape)}
    lines = [f"input: {_flow(inp)}"]
    if io.get("outputs"):
        lines += ["outputs:", *(f"  - {{name: {n}, from: {ref}}}" for n, ref in io["outputs"])]
    elif named(io.get("output")) and io["output"] != "output":
        lines.append(f"output: {{name: {io['output']}}}")
    return lines


_SHARED = ("bias", "eps", "momentum")   # the arguments a spec's `defaults:` sets when every instance agrees


def _defaults(ops: list) -> dict:
    """op -> the _SHARED arguments that most instances of the op give one value other than the op's default
    (`conv: {bias: false}` under a trunk of conv + bn; torchvision MobileNet's `bn: {eps: 0.001, momentum: 0.01}`)."""
    out = {}
    for kind in dict.fromkeys(o.op for o in ops):
        rows = [full(o) for o in ops if o.op == kind]
        base = OPS[kind].with_defaults()
        common = {k: Counter(r[k] for r in rows).most_common(1)[0] for k in _SHARED if k in rows[0]}
        if changed := {k: v for k, (v, n) in common.items() if v != base.get(k) and 2 * n > len(rows)}:
            out[kind] = changed
    return out


def _block_lines(b: Block, defaults: dict, policy: str | None) -> list[str]:
    u = b.units[0]
    lines = [f"  {b.name}:"]
    if b.args:
        lines.append(f"    args: {_flow(b.args)}")
    lines += ["    layers:"] if u.plain else ["    residual:", "      layers:"]
    pad = "      - " if u.plain else "        - "
    auto = Counter()
    read = {p for e in u.edges for p in e[1:]} | {e[0] for i, e in enumerate(u.edges) if e and e[0] != i - 1}
    for i, o in enumerate(u.body):
        auto[o.op] += 1
        slots = {k: v for (j, k), v in b.slots.items() if j == i}
        args = {k: (_ref(slots[k]) if isinstance(slots[k], tuple) and slots[k][:1] == ("$",) else slots[k])
                for k in full(o)}
        ident = b.ids[i] if b.ids[i] != f"{o.op}{auto[o.op]}" or i in read else None   # `in:`/`from:` need ids
        lines.append(pad + _op_entry(o, args, defaults, ident, _edges(u.edges[i], i, b.ids)))
    if u.post and u.plain:
        lines.append(pad + _op_entry(u.post, full(u.post), defaults, None))
    elif u.post:
        lines.append("      post: " + _op_entry(u.post, full(u.post), defaults, None))
    if b.policy and b.policy != policy:
        lines.append(f"      shortcut: {b.policy}")
    return lines


def _edges(edges: tuple, i: int, ids: list) -> dict:
    """`in:` where the op's main input is not the op before it, `from:` for its other inputs."""
    refs = [(n, p) for n, p in enumerate(edges) if n or p != i - 1]
    name = {n: "input" if p < 0 else ids[p] for n, p in refs}
    assert None not in name.values(), (edges, ids)   # structure._referenced gave every read op an id
    return {**({"in": name[0]} if 0 in name else {}), **({"from": [name[n] for n in name if n]} if len(edges) > 1 else {})}


def _ref(v: tuple) -> str:
    return f"${v[1]}" if v[2] == 1 else f"${v[1]} {v[3] if len(v) > 3 else '*'} {v[2]}"


def _op_entry(o, args: dict, defaults: dict, ident: str | None, edges: dict | None = None) -> str:
    """`conv: {id: conv1, out: 64, kernel: 7, stride: 2}`, `mul: {in: bn3, from: [se_gate]}`, or a bare `relu`."""
    kept = {**({"id": ident} if ident else {}), **(edges or {})}
    plain = {k: v for k, v in args.items() if not (isinstance(v, str) and v.startswith("$"))}
    for k, v in args.items():
        others = {**defaults.get(o.op, {}), **{x: y for x, y in plain.items() if x != k}}
        if isinstance(v, str) and v.startswith("$") or OPS[o.op].with_defaults(**others).get(k) != v:
            kept[k] = v
    return f"{o.op}: {_flow(kept)}" if kept else o.op


def _call(b: Block, ident, args: dict, repeat, first: dict, edges: dict) -> str:
    kept = {**({"id": ident} if ident else {}), **edges}
    kept.update({k: v for k, v in args.items() if b.args.get(k) != v})
    if repeat:
        kept["repeat"] = repeat
    if first:
        kept["first"] = first
    return f"{b.name}: {_flow(kept)}" if kept else b.name


def _flow(d: dict) -> str:
    return "{" + ", ".join(f"{k}: {_value(v)}" for k, v in d.items()) + "}"


def _value(v) -> str:
    if isinstance(v, dict):
        return _flow(v)
    if isinstance(v, (list, tuple)):   # a tuple: [height, width] (kernel: [1, 7])
        return "[" + ", ".join(map(_value, v)) + "]"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        text = repr(v)
        if "e" in text:
            mant, exp = text.split("e")
            text = f"{mant if '.' in mant else mant + '.0'}e{int(exp):+d}"
        return text
    if isinstance(v, str) and (" " in v or v in ("yes", "no", "on", "off", "true", "false", "null")):
        return f'"{v}"'
    return str(v)
