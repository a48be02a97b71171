"""`resgraph graph SPEC -o net.svg|png|pdf|dot`: the checked graph as a Graphviz drawing.

    residual blocks        clusters, named after their path (layer2.0)
    skip edges             dashed and blue: every input of a node that is not its main input (the
                           shortcut into an add, a `from:` edge into a concat), and the path through an
                           inserted Ws
    inserted Ws            orange, with their kind and stride (Ws conv1x1 /2)
    edges                  the shape that flows along them
    --collapse             one node per residual block (its name, output shape and any Ws): large
                           networks stay readable

The DOT text is built here; `dot` (Graphviz) renders the other formats.
"""
from __future__ import annotations

import os
import shutil
import subprocess

from .errors import BackendError, OptionError
from .ops import fmt

FORMATS = ("dot", "svg", "png", "pdf")
WS = {"fillcolor": "#ffb347", "color": "#c05a00"}


def _q(s: str) -> str:
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _label(n, projections) -> str:
    if n.op == "input":
        return f"{n.path}\n{fmt(n.shape)}"
    what = n.op
    if n.op == "conv":
        a = n.args
        what = f"conv {a.get('kernel')}x{a.get('kernel')}, {a.get('out')}" + \
            (f" /{a['stride']}" if a.get("stride", 1) != 1 else "")
    if n.inserted:
        p = next((p for p in projections if n.path in p.nodes), None)
        return f"Ws {p.kind} /{p.stride}\n{what}" if p is not None else f"Ws\n{what}"
    name = n.path.rsplit(".", 1)[-1] if n.block else n.path
    return what if name == n.op else f"{name}\n{what}"


def _skip(src: str, dst) -> bool:
    return src != dst.inputs[0] or dst.role == "shortcut" or dst.inserted


def to_dot(graph, collapse: bool = False) -> str:
    """The graph as Graphviz DOT text."""
    nodes = {n.path: n for n in graph.nodes}
    ids = {n.path: f"n{i}" for i, n in enumerate(graph.nodes)}
    projections = graph.projections
    lines = [f"digraph {_q(graph.name)} {{", "  rankdir=TB; newrank=true;",
             '  node [shape=box, style="rounded,filled", fillcolor="#eef3fb", fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=8, color="#555555"];',
             f"  label={_q(f'{graph.name}: {len(graph.nodes) - 1} nodes, {len(projections)} Ws inserted')}; labelloc=t;"]
    group = {}        # node path -> the id it is drawn as
    if collapse:
        blocks: dict[str, list] = {}
        for n in graph.nodes:
            if n.block:
                blocks.setdefault(n.block, []).append(n)
            else:
                group[n.path] = ids[n.path]
                attrs = f"label={_q(_label(n, projections))}"
                lines.append(f"  {ids[n.path]} [{attrs}];")
        for k, (b, members) in enumerate(blocks.items()):
            bid = f"b{k}"
            ws = [p for p in projections if any(m.path in p.nodes for m in members)]
            last = members[-1]
            label = f"{b}\n{len(members)} nodes\n{fmt(last.shape)}" + "".join(f"\n+ Ws {p.kind} /{p.stride}" for p in ws)
            extra = f', fillcolor="{WS["fillcolor"]}", color="{WS["color"]}", penwidth=2' if ws else ""
            lines.append(f"  {bid} [label={_q(label)}{extra}];")
            for m in members:
                group[m.path] = bid
        seen = set()
        for n in graph.nodes:
            for i in n.inputs:
                a, b = group[i], group[n.path]
                if a == b or (a, b) in seen:
                    continue
                seen.add((a, b))
                style = ', style=dashed, color="#1f5fbf"' if _skip(i, n) else ""
                lines.append(f"  {a} -> {b} [label={_q(fmt(nodes[i].shape))}{style}];")
        lines.append("}")
        return "\n".join(lines) + "\n"

    clusters: dict[str, list] = {}
    for n in graph.nodes:
        clusters.setdefault(n.block, []).append(n)
    for b, members in clusters.items():
        indent = "  "
        if b:
            lines.append(f"  subgraph {_q('cluster_' + b)} {{")
            lines.append(f'    label={_q(b)}; style="rounded,dashed"; color="#8899aa"; fontname="Helvetica";')
            indent = "    "
        for n in members:
            attrs = f"label={_q(_label(n, projections))}"
            if n.inserted:
                attrs += f', fillcolor="{WS["fillcolor"]}", color="{WS["color"]}", penwidth=2'
            elif n.op == "add":
                attrs += ', shape=circle, label="+", fixedsize=true, width=0.4'
            lines.append(f"{indent}{ids[n.path]} [{attrs}, tooltip={_q(n.path)}];")
        if b:
            lines.append("  }")
    for n in graph.nodes:
        for i in n.inputs:
            style = ', style=dashed, color="#1f5fbf", penwidth=1.5' if _skip(i, n) else ""
            lines.append(f"  {ids[i]} -> {ids[n.path]} [label={_q(fmt(nodes[i].shape))}{style}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_drawing(graph, path: str, collapse: bool = False) -> None:
    """DOT to a .dot file as is; other formats rendered by Graphviz's `dot`; written atomically."""
    from .fileio import atomic_write, atomic_write_text
    fmt = os.path.splitext(path)[1].lstrip(".").lower()
    if fmt not in FORMATS:
        raise OptionError.at(path, f"cannot draw to a .{fmt or '?'} file", f"one of {', '.join('.' + f for f in FORMATS)}")
    text = to_dot(graph, collapse)
    if fmt == "dot":
        atomic_write_text(path, text)
        return
    dot = shutil.which("dot")
    if dot is None:
        raise BackendError.at(path, "drawing needs Graphviz's `dot`, which is not installed",
                              "apt-get install graphviz (brew install graphviz), or write the .dot file: -o net.dot")

    def render(tmp):
        r = subprocess.run([dot, f"-T{fmt}", "-o", tmp], input=text.encode(), capture_output=True, timeout=300)
        if r.returncode != 0:
            raise BackendError.at(path, f"Graphviz failed: {r.stderr.decode(errors='replace').strip()[:300]}",
                                  "write the .dot file (-o net.dot) and render it yourself")
    atomic_write(path, render, suffix="." + fmt)
