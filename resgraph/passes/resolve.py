"""resolve_ops: check every node against the op table and fill in default arguments.

Pre:  a Graph from `expand` (op names and argument values exactly as written, expressions evaluated).
Post: every node's op is in OPS; its args are exactly OPS[op].args with defaults filled and values
      type-checked; `from` appears only on variadic ops; OPS[op].complete has run (pool stride 0 -> kernel);
      a `project` carries its bn's eps and momentum (from `defaults: {bn: ...}` unless given);
      graph.settings.bn holds the resolved bn defaults, for the bn nodes later passes insert, and
      settings.conv_bias the conv default's bias, for the `conv` policy's Ws; with the spec,
      settings.literal_out where block definitions write a width as a number (for lint);
      every `project_from` reads the block's input through the body and is not the add's main input.
"""
from __future__ import annotations

from ..errors import Diagnostics, Loc, did_you_mean, listed
import dataclasses
from typing import Mapping

from ..ir import Graph, Settings, freeze
from ..spec.model import evaluate_located
from ..ops import OPS, USER_OPS, ArgError
from ..spec.expr import FAILED
from ..spec.grammar import ENTRY
from ..spec.model import Spec
from ..spec.layers import residuals, walk

ENTRY_KEYS = ENTRY.names   # the keys any entry may carry, beside an op's arguments


def literal_out(spec: Spec) -> Mapping[Loc, str]:
    """Where a block's definition (a `first:` included) gives an `out` as a number, not an expression."""
    return freeze({y.loc: block for e, block in walk(spec.blocks, ()) if block is not None
                   for y in (e.args.get("out"), (e.first or {}).get("out"))
                   if y is not None and isinstance(y.value, (int, float)) and not isinstance(y.value, bool)})


def alias_of(name: str) -> str | None:
    """The op that users coming from PyTorch, Keras or Ultralytics YAML call `name` (OpDef.aliases, any
    case; the table checks at import that no alias is claimed twice), or None."""
    return next((op.name for op in OPS.values() if name.lower() in op.aliases), None)


def _unknown_hint(name: str, blocks: list[str]) -> str:
    from ..ops.plugins import names
    alias = alias_of(name)
    return f"resgraph calls it '{alias}'" if alias else did_you_mean(
        name, USER_OPS + names() + blocks + ["residual"], "ops and blocks")


_BROKEN = object()   # a plugin registers the op but cannot be loaded: reported where the spec names it


def _op(name: str, loc: Loc, d: Diagnostics):
    """The op table's row for `name`: a built-in's, or one an installed plugin registers (loaded now,
    the first time a spec names it); None if nothing has it."""
    op = OPS.get(name)
    if op is not None:
        return op
    from ..errors import PluginError
    from ..ops.plugins import load
    try:
        return load(name)
    except PluginError as e:
        d.error(loc, f"op '{name}': {e.message}", e.hint, span=len(name))
        return _BROKEN


def resolve_ops(g: Graph, spec: Spec | None = None, diags: Diagnostics | None = None) -> Graph:
    """`spec` is the one `g` was expanded from (its blocks and `defaults:` are checked here); with
    `diags`, problems are recorded there instead of raised (so one run reports them all)."""
    d = diags if diags is not None else Diagnostics()
    blocks = list(spec.blocks) if spec else []
    for name in blocks:
        if name in OPS:
            d.error(spec.blocks[name].loc, f"block '{name}' has the name of an op", "rename the block")
    defaults = _defaults(spec, d) if spec else {}   # resolved, for nodes that passes insert
    nodes = list(g.input_nodes)
    for n in g.nodes[len(nodes):]:
        op = _op(n.op, n.loc, d)
        if op is _BROKEN:
            nodes.append(n)
            continue
        if op is None or (not op.user and not n.inserted):
            d.error(n.loc, f"unknown op or block '{n.op}'", _unknown_hint(n.op, blocks), span=len(n.op))
            nodes.append(n)
            continue
        args = {}
        misspelt: set[str] = set()   # required args that an unknown arg probably meant: report once
        for k, v in n.args.items():
            loc = n.argloc.get(k, n.loc)
            if k not in op.args:
                if k == "from":
                    msg, hint = f"'{n.op}' takes a single input; 'from' is for add and concat", "use 'in:' to take a different input"
                else:
                    msg = f"unknown argument '{k}' for {n.op}"
                    hint = did_you_mean(k, list(op.args) + list(ENTRY_KEYS), "arguments") or f"{n.op} takes no arguments"
                    misspelt.update(a for a in op.args if f"'{a}'" in hint)
                d.error(loc, msg, hint, span=len(k))
                continue
            if k == "from":
                args[k] = tuple(n.inputs[1:])   # expansion resolved the ids to paths
                continue
            if v is FAILED:
                continue   # reported where it failed (an expression, a missing block argument)
            if v is None:  # an explicit null: the default, if there is one
                if op.args[k].required:
                    d.error(loc, f"{n.op} needs a value for '{k}', got null", f"write {k}: ...", span=len(k))
                continue
            try:
                args[k] = op.args[k].check(k, v)
            except ArgError as e:
                d.error(loc, f"{n.op}: {e.message}", e.hint, site=n.site())
        for k, a in op.args.items():
            if k not in args and k not in n.args:
                if a.required and k not in misspelt:
                    example = "from: [input]" if k == "from" else f"{k}: ..."
                    d.error(n.loc, f"{n.op} needs '{k}'", f"write - {n.op}: {{{example}}}", span=len(n.op))
                else:
                    args[k] = a.default
            elif k not in args and not a.required:
                args[k] = a.default
        if n.op == "project":   # its bn follows defaults: {bn: ...} like every bn, unless the entry says otherwise
            for k in ("eps", "momentum"):
                if k not in n.args and k in defaults.get("bn", {}):
                    args[k] = defaults["bn"][k]
        args = op.complete(args)
        ordered = {k: args[k] for k in op.args if k in args}   # table order: stable printing and hashing
        nodes.append(n.with_(args=freeze(ordered)))
    if spec is not None:
        check_project_from(g, spec, d)
    if diags is None:
        d.raise_if_any()
    return g.replace(nodes=tuple(nodes), settings=_settings(g.settings, defaults, spec))


def _defaults(spec: Spec, d: Diagnostics) -> dict[str, dict]:
    """The spec's `defaults:`, op by op, values checked (a Ws's bn follows defaults: {bn: ...}); an
    unknown op is reported here, an unknown or bad argument on every node that receives it."""
    defaults: dict[str, dict] = {}
    for op, args in spec.defaults.items():
        loc = next(iter(args.values())).loc if args else spec.root_loc
        row = _op(op, loc, d)
        if row is _BROKEN:
            continue
        if row is None or not row.user:
            d.error(loc, f"defaults for unknown op '{op}'", did_you_mean(op, USER_OPS, "ops"))
            continue
        defaults[op] = {}
        for k, y in args.items():
            if k not in OPS[op].args:
                continue   # reported on every node that receives it
            v = evaluate_located(y, spec.vars, d, failed=FAILED)
            try:
                if v is not FAILED and v is not None:
                    defaults[op][k] = OPS[op].args[k].check(k, v)
            except ArgError:
                pass       # reported on every node that receives it
    return defaults


def _settings(settings: Settings, defaults: dict, spec: Spec | None) -> Settings:
    """The resolved bn defaults and the conv default's bias; with the spec, its literal widths."""
    settings = dataclasses.replace(settings, bn=freeze(defaults.get("bn", {})),
                                   conv_bias=defaults.get("conv", {}).get("bias", OPS["conv"].args["bias"].default))
    return settings if spec is None else dataclasses.replace(settings, literal_out=literal_out(spec))


def check_project_from(g: Graph, spec: Spec, d: Diagnostics) -> None:
    """A Ws that reads `project_from: p` instead of the input it stands for must still carry that input
    past some layers: p is computed from the block's input (not a tensor argument from outside it), and
    p is not the add's main input (the body's last entry), or the add would sum the body and a
    projection of itself, and the block's input would not reach it at all."""
    written = _project_froms(spec)
    index = {n.path: i for i, n in enumerate(g.nodes)}
    for n in g.nodes:
        p = n.args.get("project_from") if n.op == "add" else None
        y, valid = written.get(n.argloc.get("project_from", n.loc), (None, ()))
        if not p or y is None or not isinstance(y.value, str):
            continue
        what, out, name = ("the body's last entry", "the body's output", "the block's input") if n.role == "add" \
            else ("the add's main input", "that input", "the input it stands for")
        if p == n.inputs[0]:
            msg = f"project_from '{y.value}' is {what}: a Ws reading it would add {out} to a projection of " \
                  f"itself, and {name} would not reach the add"
        elif n.role == "add" and not _computed_from(g, index, p, n.inputs[1]):
            msg = f"project_from '{y.value}' is not computed from the block's input: a Ws reading it would " \
                  "leave the block's input off its shortcut"
        else:
            continue
        d.error(y.loc, msg, _valid_hint(valid, n.role == "add"), span=len(y.value), site=n.site())


def _project_froms(spec: Spec) -> dict:
    """Where each project_from is written (for a residual: where the residual is, the location of its
    add) -> (the value as written, the ids a residual's may name: its body's, but the last)."""
    out = {r.loc: (r.project_from, tuple(e.id.value for e in r.layers[:-1] if e.id is not None))
           for r in residuals(spec.blocks, spec.layers) if r.project_from is not None}
    for e, _ in walk(spec.blocks, spec.layers):
        for args in (e.args, e.first or {}):
            if e.kind == "add" and "project_from" in args:
                out[args["project_from"].loc] = (args["project_from"], ())
    return out


def _computed_from(g: Graph, index: dict, path: str, source: str) -> bool:
    """Whether `path` is `source` or computed from it: a walk back through inputs that stops at nodes
    made before `source` (expansion makes nodes in order), so it covers one block's body."""
    todo, seen, first = [path], set(), index.get(source, -1)
    while todo:
        p = todo.pop()
        if p == source:
            return True
        if p not in seen and index.get(p, -1) > first:
            seen.add(p)
            todo.extend(g[p].inputs)
    return False


def _valid_hint(valid: tuple, residual: bool) -> str:
    if not residual:
        return "name an entry between the input the Ws stands for and the add (its pre-activation), or leave " \
               "project_from out"
    if valid:
        return f"name an earlier entry of the body, the pre-activation the Ws reads: {listed(valid)}; or leave " \
               "project_from out (the Ws then reads the block's input)"
    return "give an earlier entry of the body an id (layers: [bn: {id: pre}, relu, ...], project_from: pre), " \
           "or leave project_from out (the Ws then reads the block's input)"
