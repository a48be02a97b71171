"""The network's outputs: which node each name under `outputs:` stands for."""
from __future__ import annotations

from ..errors import Diagnostics, did_you_mean
from ..spec.model import Spec
from .graph import Node


def output_paths(spec: Spec, nodes: list[Node], ids: dict[str, str], last: str, d: Diagnostics) -> tuple[tuple[str, str], ...]:
    """(name, path) of each output: `from:` is a top-level id (or `id.i`) or any node's dotted
    path; without outputs:, the last entry's tensor."""
    decls = spec.outputs or ()
    if not decls or decls[0].ref is None:
        return (((decls[0].name if decls else spec.output_name), last),)
    paths = {n.path for n in nodes}
    inputs = {n.path for n in nodes if n.op == "input"} | {i.name for i in spec.inputs}
    out = []
    for o in decls:
        path = ids.get(o.ref, o.ref if o.ref in paths else None)
        if path is not None and (path in inputs or o.ref in inputs or o.ref == "input"):
            d.error(o.loc, f"output '{o.name}' is the input '{o.ref}' itself: no layer feeds it",
                    "name an entry's id or path: from: layer2", span=len(o.ref))
        elif path is None and o.ref == "input":
            d.error(o.loc, f"output '{o.name}' is the input itself: no layer feeds it",
                    "name an entry's id or path: from: layer2", span=len(o.ref))
        elif path is None:
            hint = did_you_mean(o.ref, [k for k in ids if k not in inputs] + sorted(paths - inputs), "ids and paths")
            d.error(o.loc, f"output '{o.name}': unknown id or path '{o.ref}'",
                    hint or "name a top-level id (from: layer2) or a node's path (from: layer3.1.conv2)",
                    span=len(o.ref))
        out.append((o.name, path if path is not None and path not in inputs else last))
    return tuple(out)
