"""resolve_ops: check every node against the op table and fill in default arguments.

Pre:  a Graph from `expand` (op names and argument values exactly as written, expressions evaluated).
Post: every node's op is in OPS; its args are exactly OPS[op].args with defaults filled and values
      type-checked; `from` appears only on variadic ops; OPS[op].complete has run (pool stride 0 -> kernel);
      a `project` carries its bn's eps and momentum (from `defaults: {bn: ...}` unless given);
      graph.settings.bn holds the resolved bn defaults, for the bn nodes later passes insert, and
      settings.conv_bias the conv default's bias, for the `conv` policy's Ws.
"""
from __future__ import annotations

from ..errors import Diagnostics, did_you_mean
import dataclasses

from ..ir import Graph, freeze
from ..spec.model import evaluate_located
from ..ops import OPS, USER_OPS, ArgError
from ..spec.expr import FAILED
from ..spec.grammar import ENTRY
from ..spec.model import Spec

ENTRY_KEYS = ENTRY.names   # the keys any entry may carry, beside an op's arguments


def alias_of(name: str) -> str | None:
    """The op that users coming from PyTorch, Keras or Ultralytics YAML call `name` (OpDef.aliases, any
    case; the table checks at import that no alias is claimed twice), or None."""
    return next((op.name for op in OPS.values() if name.lower() in op.aliases), None)


def _unknown_hint(name: str, blocks: list[str]) -> str:
    alias = alias_of(name)
    return f"resgraph calls it '{alias}'" if alias else did_you_mean(name, USER_OPS + blocks + ["residual"],
                                                                      "ops and blocks")


def resolve_ops(g: Graph, spec: Spec | None = None, diags: Diagnostics | None = None) -> Graph:
    """`spec` is the one `g` was expanded from (its blocks and `defaults:` are checked here); with
    `diags`, problems are recorded there instead of raised (so one run reports them all)."""
    d = diags if diags is not None else Diagnostics()
    blocks = list(spec.blocks) if spec else []
    for name in blocks:
        if name in OPS:
            d.error(spec.blocks[name].loc, f"block '{name}' has the name of an op", "rename the block")
    defaults: dict[str, dict] = {}   # resolved, for nodes that passes insert (a Ws bn follows defaults: {bn: ...})
    for op, args in (spec.defaults.items() if spec else ()):
        if op not in OPS or not OPS[op].user:
            loc = next(iter(args.values())).loc if args else spec.root_loc
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
    nodes = [g.nodes[0]]
    for n in g.nodes[1:]:
        op = OPS.get(n.op)
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
    if diags is None:
        d.raise_if_any()
    settings = dataclasses.replace(g.settings, bn=freeze(defaults.get("bn", {})),
                                   conv_bias=defaults.get("conv", {}).get("bias", OPS["conv"].args["bias"].default))
    return g.replace(nodes=tuple(nodes), settings=settings)
