"""Op plugins: ops that an installed package registers, without a fork of resgraph.

A package lists its ops under the entry-point group `resgraph.ops`, one entry per op, named as the
op is written in a spec and pointing at its OpDef (the same dataclass as the built-ins' rows):

    [project.entry-points."resgraph.ops"]
    eca = "resgraph_eca.op:ECA"

The OpDef states what every row states (arguments, shape rule, counts, the facts) and, beside them,
its state-dict tensors (`weights`) and its two lowerings as "module:function" strings (`torch`,
`onnx`), imported only by the back end that lowers it. So `check` reads the OpDef's module alone,
which imports resgraph.ops and nothing heavier, and stays torch-free.

A plugin is loaded only when a spec names an op the table does not have: the entry points are read
then (package metadata, no imports), the named one is imported, checked against the table's rules
and added to OPS for the rest of the process. Anything wrong with a plugin is a PluginError that
names the plugin (its distribution and entry point) and what to do.
"""
from __future__ import annotations

import dataclasses
import importlib
import re
from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points

from ..errors import PluginError
from .table import BUILTIN, OPS, OpDef

GROUP = "resgraph.ops"
_REF = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
_NAME = re.compile(r"[a-z][a-z0-9_]*")


def _dist(ep: EntryPoint) -> str:
    return ep.dist.name if ep.dist is not None else "?"


def _who(ep: EntryPoint) -> str:
    return f"plugin {_dist(ep)} (entry point {ep.name} = {ep.value})"


@lru_cache(maxsize=1)
def registered() -> dict[str, EntryPoint]:
    """Every op name under the `resgraph.ops` group -> its entry point, read from package metadata
    (nothing is imported). Names a built-in op has, or that two packages claim, are refused here,
    the first time any plugin is looked for: a spec's `relu` must mean one thing."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        if ep.name in BUILTIN or any(ep.name in op.aliases for n, op in OPS.items() if n in BUILTIN):
            raise PluginError.at(_dist(ep), f"{_who(ep)} registers op '{ep.name}', a name resgraph's own ops already "
                                 "use", f"rename the op in {_dist(ep)}'s entry points, or uninstall it: "
                                 f"pip uninstall {_dist(ep)}")
        if ep.name in found and found[ep.name].value != ep.value:
            raise PluginError.at(_dist(ep), f"op '{ep.name}' is registered twice: by {_who(found[ep.name])} and by "
                                 f"{_who(ep)}", "uninstall one of the two packages")
        if not _NAME.fullmatch(ep.name):
            raise PluginError.at(_dist(ep), f"{_who(ep)}: '{ep.name}' is not an op name",
                                 "op names are lower case letters, digits and _, starting with a letter")
        found[ep.name] = ep
    return found


def names() -> list[str]:
    """The ops installed plugins offer (for "did you mean" hints); [] when none, or when they clash."""
    try:
        return sorted(registered())
    except PluginError:
        return []


def load(name: str) -> OpDef | None:
    """The op `name` from its plugin, added to OPS; None if no plugin registers it."""
    if name in OPS:
        return OPS[name]
    ep = registered().get(name)
    if ep is None:
        return None
    try:
        op = ep.load()
    except Exception as e:   # the plugin's own code: any failure is the plugin's, reported as such
        raise PluginError.at(_dist(ep), f"{_who(ep)} failed to load: {type(e).__name__}: {e}",
                             f"fix {_dist(ep)} or uninstall it (pip uninstall {_dist(ep)})") from e
    op = _checked(op, ep)
    OPS[name] = op
    return op


def _checked(op, ep: EntryPoint) -> OpDef:
    """The plugin's OpDef, marked with its distribution, if it keeps the rules a built-in row keeps
    (OpDef.__post_init__ asserted those at its construction) and those of a plugin op."""
    problem = None
    if not isinstance(op, OpDef):
        problem = f"points at a {type(op).__name__}, not a resgraph.ops.OpDef"
    elif op.name != ep.name:
        problem = f"is registered as '{ep.name}' but its OpDef is named '{op.name}'"
    elif not op.user:
        problem = "is not a user op (user=False): a spec could never name it"
    elif op.init not in (None, "module"):
        problem = f"has init policy {op.init!r}: a plugin's module initialises itself: use 'module' (or None)"
    elif op.zeroable or op.bn_folds_into:
        problem = "sets zeroable or bn_folds_into: those rewrite a built-in op's weights; use False"
    elif op.weights is None and op.init is not None:
        problem = "has an init policy but no `weights` (its state-dict tensors)"
    elif not (_REF.fullmatch(op.torch) and _REF.fullmatch(op.onnx)):
        problem = f"needs its lowerings as 'module:function' strings: torch={op.torch!r}, onnx={op.onnx!r}"
    elif op.import_kind is not None:
        problem = "sets import_kind: weight import pairs built-in kinds only; use None"
    if problem:
        raise PluginError.at(_dist(ep), f"{_who(ep)} {problem}", f"see docs/spec-language.md#op-plugins; or "
                             f"uninstall it (pip uninstall {_dist(ep)})")
    return dataclasses.replace(op, plugin=_dist(ep))


def lowering(op: OpDef, column: str):
    """The function of a plugin op's `torch` or `onnx` lowering, imported now (the first time a back
    end lowers the op)."""
    assert op.plugin and column in ("torch", "onnx"), (op.name, column)
    ref = getattr(op, column)
    module, _, attr = ref.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except Exception as e:
        raise PluginError.at(op.plugin, f"plugin {op.plugin}'s {column} lowering of op '{op.name}' ({ref}) failed "
                             f"to load: {type(e).__name__}: {e}",
                             f"fix {op.plugin} or uninstall it (pip uninstall {op.plugin})") from e
    if not callable(fn):
        raise PluginError.at(op.plugin, f"plugin {op.plugin}'s {column} lowering of op '{op.name}' ({ref}) is a "
                             f"{type(fn).__name__}, not a function", f"fix {op.plugin}")
    return fn
