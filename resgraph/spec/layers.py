"""The layers of a spec, typed: entries (an op, a block call, an inline residual), blocks, and the
residual sections of both, each still located; and the parser of those sections, which model.py's
spec parser extends with the top-level ones (name, input, vars, preprocess, ...).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import Diagnostics, Loc
from . import expr as ex
from .grammar import BLOCK, ENTRY, ID_PATTERN, RESIDUAL, SPEC
from .yamlsrc import Y

ID_RE = re.compile(ID_PATTERN + r"\Z")


@dataclass(frozen=True)
class Entry:
    """One item of a `layers` list: an op, a block call, or an inline `residual`."""
    kind: str
    loc: Loc                          # where the op/block name is written
    args: dict[str, Y]                # arguments, located (excludes id/in/repeat/first)
    id: Y | None = None
    in_: Y | None = None
    repeat: Y | None = None
    first: dict[str, Y] | None = None
    residual: Residual | None = None   # for kind == "residual"


@dataclass(frozen=True)
class Residual:
    """a[l+2] = post(body(a[l]) + shortcut(a[l]))"""
    layers: tuple[Entry, ...]
    post: Entry | None
    shortcut: str | None
    loc: Loc
    project_from: Y | None = None      # an id of the body (pre-activation blocks); expansion resolves it


@dataclass(frozen=True)
class Block:
    name: str
    loc: Loc
    args: dict[str, Y | None]          # None = required
    layers: tuple[Entry, ...] = ()
    residual: Residual | None = None


class LayersParser:
    """The `layers` and `blocks` sections. A mixin: the helpers it calls (keys, choice, mapping, const)
    and its state (self.d, self.file) are the spec parser's (model.py)."""

    def blocks(self, y) -> dict:
        out = {}
        y = self.mapping(y, "blocks")
        if y is None:
            return out
        for name, b in y.value.items():
            kloc = y.keylocs[name]
            if not ID_RE.match(name):
                self.d.error(kloc, f"invalid block name '{name}'", "use letters, digits and '_'")
                continue
            if name in SPEC["blocks"].reserved:
                self.d.error(kloc, f"'{name}' is reserved and cannot name a block", "choose another name")
                continue
            b = self.mapping(b, f"block '{name}'")
            if b is None:
                continue
            self.keys(b, BLOCK, f"block '{name}'")
            args = {}
            a = self.mapping(b.value.get("args"), f"args of block '{name}'")
            if a is not None:
                for an, av in a.value.items():
                    if an in BLOCK["args"].reserved or not ID_RE.match(an):
                        self.d.error(a.keylocs[an], f"'{an}' cannot be a block argument",
                                     "id, in, repeat, first and from are keys every entry has")
                        continue
                    args[an] = None if av.value is None else av
            if sum(k in b.value for k in BLOCK.one_of) != 1:
                self.d.error(kloc, f"block '{name}' needs exactly one body: 'layers' or 'residual'",
                             "layers: a plain sub-graph; residual: body + add with the input + post")
                continue
            if "layers" in b.value:
                body = self.entries(b.value["layers"], f"block '{name}'")
                if b.value["layers"].is_list and not b.value["layers"].value:
                    self.d.error(b.value["layers"].loc, f"block '{name}' has no layers", "add at least one layer")
                out[name] = Block(name, kloc, args, layers=body)
            else:
                r = self.residual(b.value["residual"], b.keylocs["residual"])
                if r is not None:
                    out[name] = Block(name, kloc, args, residual=r)
        return out

    def residual(self, y, loc: Loc) -> Residual | None:
        y = self.mapping(y, "residual")
        if y is None:
            return None
        self.keys(y, RESIDUAL)
        if "layers" not in y.value:
            return None
        body = self.entries(y.value["layers"], "residual")
        if y.value["layers"].is_list and not y.value["layers"].value:
            self.d.error(y.value["layers"].loc, "residual body is empty", "with an empty body the block is just 2x its input")
        post = None
        if "post" in y.value and y.value["post"].value is not None:
            post = self.entry(y.value["post"], allow_keys=False)
        policy = self.choice(y.value["shortcut"], RESIDUAL["shortcut"]) if "shortcut" in y.value else None
        pf = y.value.get("project_from")
        if pf is not None and (not isinstance(pf.value, str) or pf.value == "input"):
            self.d.error(pf.loc, f"project_from names an entry of the body by its id, got {str(pf.plain())[:40]!r}",
                         "e.g. layers: [bn: {id: pre}, relu, ...] with project_from: pre (the input itself is "
                         "the default)")
            pf = None
        return Residual(body, post, policy, loc, pf)

    def entries(self, y: Y, what: str) -> tuple[Entry, ...]:
        if not y.is_list:
            self.d.error(y.loc, f"{what} must be a list, got {kind_of(y)}", "write one '- op' per line")
            return ()
        return tuple(e for e in (self.entry(item) for item in y.value) if e is not None)

    def entry(self, y: Y, allow_keys: bool = True) -> Entry | None:
        if isinstance(y.value, str):
            if y.value == "residual":
                self.d.error(y.loc, "a residual entry needs its body", "write - residual: {layers: [...], post: relu}")
                return None
            return Entry(y.value, y.loc, {})
        if not y.is_map:
            self.d.error(y.loc, f"a layer must be an op name or 'op: {{args}}', got {kind_of(y)}", "e.g. - relu  or  - conv: {out: 64, kernel: 3}")
            return None
        if not y.value:
            self.d.error(y.loc, "an empty mapping is not a layer", "e.g. - relu  or  - conv: {out: 64, kernel: 3}")
            return None
        if len(y.value) != 1:
            keys = list(y.value)
            hint = "an entry is one op with its arguments nested under it: - conv: {out: 64, kernel: 3, id: stem}"
            if any(k in ENTRY for k in keys[1:]):
                hint = f"'{keys[1]}' belongs inside the arguments of '{keys[0]}': indent it under the op, or write - {keys[0]}: {{..., {keys[1]}: ...}}"
            self.d.error(y.loc, f"a layer must have exactly one op, found {len(keys)} keys: {', '.join(keys)}", hint)
            return None
        (kind, body), = y.value.items()
        kloc = y.keylocs[kind]
        if body.value is None:
            body = Y({}, body.loc, {})
        if not body.is_map:
            self.d.error(body.loc, f"arguments of '{kind}' must be a mapping, got {kind_of(body)}",
                         f"e.g. - {kind}: {{out: 64}}; a bare '- {kind}' takes no arguments")
            return None
        args = dict(body.value)
        common = {k: args.pop(k) for k in ENTRY.names if k in args}
        if common and not allow_keys:
            self.d.error(kloc, "'post' takes one op without id, in, repeat or first", "e.g. post: relu")
        first = None
        if "first" in common:
            f = self.mapping(common["first"], "first")
            first = dict(f.value) if f is not None else None
        for key in ("id", "in"):
            v = common.get(key)
            if v is not None and (not isinstance(v.value, str) or (key == "id" and not ID_RE.match(v.value))):
                shown = repr(v.plain())
                what = "an id must be a name" if key == "id" else "a reference must be an id"
                self.d.error(v.loc, f"{what}, got {shown if len(shown) <= 40 else shown[:37] + '...'}",
                             "ids are letters, digits and '_' (dots are reserved for paths); in: takes one id")
                common.pop(key)
            elif key == "id" and v is not None and v.value in ("input",):
                self.d.error(v.loc, "'input' is reserved for the network's (or block's) input", "choose another id")
                common.pop(key)
        residual = None
        if kind == "residual":
            rargs = Y({k: a for k, a in args.items()}, body.loc, {k: body.keylocs[k] for k in args})
            residual = self.residual(rargs, kloc)
            if residual is None:
                return None
            args = {}
            if first is not None:
                self.d.error(common["first"].loc, "'first' needs a block with arguments", "define the block under blocks: with args")
        return Entry(kind, kloc, args, common.get("id"), common.get("in"), common.get("repeat"), first, residual)


def walk(blocks: dict[str, Block], layers: tuple[Entry, ...]):
    """(entry, the name of the block whose definition holds it, or None at top level) for every entry
    of a spec, those of residual bodies and posts included."""
    def entries(es, block):
        for e in es:
            yield e, block
            if e.residual is not None:
                yield from entries(_inside(e.residual), block)

    for name, b in blocks.items():
        yield from entries(_inside(b.residual) if b.residual is not None else b.layers, name)
    yield from entries(layers, None)


def residuals(blocks: dict[str, Block], layers: tuple[Entry, ...]):
    """Every residual section of a spec: the blocks' bodies, and the inline ones wherever they are."""
    yield from (b.residual for b in blocks.values() if b.residual is not None)
    yield from (e.residual for e, _ in walk(blocks, layers) if e.residual is not None)


def _inside(r: Residual) -> tuple[Entry, ...]:
    return r.layers + ((r.post,) if r.post is not None else ())


def evaluate_located(y: Y, env: dict, diags: Diagnostics, failed=None):
    """y's value, with an expression ("$out * 4") evaluated in env. On error, report it at the
    offending character and return `failed`; an expression over a value that already failed
    returns `failed` without a second report."""
    if ex.is_expr(y.value):
        try:
            return ex.evaluate(y.value, env)
        except ex.ExprError as e:
            if not any(v is ex.FAILED and f"${k}" in y.value for k, v in env.items()):
                diags.error(_shift(y.loc, e.offset), e.message, e.hint)
            return failed
    if isinstance(y.value, list):   # a list argument (split's sizes, kernel: [1, 7]): each item evaluated
        items = [evaluate_located(v, env, diags, failed) if isinstance(v, Y) else v for v in y.value]
        return failed if any(v is failed for v in items) else items
    return y.value


def kind_of(y: Y) -> str:
    v = y.value
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    if v is None:
        return "nothing"
    return f"{type(v).__name__} {v!r}"


def _shift(loc: Loc, offset: int) -> Loc:
    return Loc(loc.file, loc.line, loc.col + offset)
