"""Human-readable output: diagnostics like a compiler, the summary table. Uses rich, imported here only."""
from __future__ import annotations

import os
import stat

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .errors import Diagnostic


def console(stderr: bool = False) -> Console:
    c = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not c.is_terminal:   # piped or redirected: don't squeeze tables into 80 columns
        c = Console(stderr=stderr, highlight=False, soft_wrap=True, width=200)
    return c


_SOURCES: dict[str, list[str]] = {}


def remember_source(file: str, text: str) -> None:
    """Source text for a name that is not a file on disk (standard input)."""
    _SOURCES[file] = text.splitlines()


def _line(file: str, n: int) -> str | None:
    if n <= 0:          # an error about a whole file (weights, data): nothing to show, nothing to read
        return None
    if file not in _SOURCES:
        try:
            if not stat.S_ISREG(os.stat(file).st_mode):   # a FIFO or a device would block
                raise OSError(file)
            with open(file, encoding="utf-8", errors="replace") as f:
                _SOURCES[file] = f.read(4 << 20).splitlines()
        except OSError:
            _SOURCES[file] = []
    lines = _SOURCES[file]
    return lines[n - 1] if 0 < n <= len(lines) else None


def escape(s: str) -> str:
    """`s` with every character that is not printable written as Python writes it in a string
    literal (\\t, \\x1b, \\u202e): a spec's ids and text reach the terminal, and a bidi override
    (U+202A-U+202E, U+2066-U+2069) or an escape sequence must not rearrange or restyle what the
    reader sees. Printable text, accented or not, is unchanged."""
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


def diagnostic(d: Diagnostic) -> Text:
    """FILE:LINE:COL: error: message, the source line with a caret under the place, and the hint.
    What comes from the spec is escaped (see `escape`); `--json` leaves that to JSON."""
    colour = "red" if d.severity == "error" else "yellow"
    t = Text()
    where = str(d.loc) if d.loc.line > 0 else d.loc.file   # artifacts (weights, data) have no lines
    t.append(f"{escape(where)}: ", style="bold")
    t.append(f"{d.severity}: ", style=f"bold {colour}")
    t.append(escape(d.message) + "\n", style="bold")
    src = _line(d.loc.file, d.loc.line)
    if src is not None:
        src = src.expandtabs(1)
        col, span = max(d.loc.col - 1, 0), d.span
        if not src.isprintable():   # escapes widen the line: the caret moves with them
            span = max(len(escape(src[col:col + span])), 1) if col < len(src) else span
            col = len(escape(src[:col])) + max(col - len(src), 0)
            src = escape(src)
        if len(src) > 160:
            src = src[:157] + "..."
        num = str(d.loc.line)
        t.append(f" {num} | ", style="blue")
        t.append(src + "\n")
        t.append(" " * len(num) + "  | ", style="blue")
        t.append(" " * min(col, 160) + "^" + "~" * max(span - 1, 0) + "\n", style=f"bold {colour}")
    if d.hint:
        t.append("  hint: ", style="bold cyan")
        t.append(escape(d.hint))
    t.rstrip()
    return t


def human_int(n: int) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)


def summary_table(checked, depth: int | None = None) -> Table:
    g = checked.graph
    title = f"{g.name}  ({os.path.basename(checked.spec.file)})"
    if checked.spec.sizes:   # a size-variable spec shown at one size (cli/spec.py's at_size)
        title += "  at " + ", ".join(f"{name} {'x'.join(map(str, g[p].shape[1:]))}" for name, p in g.inputs
                                     if len(g[p].shape) == 3)
    t = Table(title=title, title_justify="left", header_style="bold", show_footer=True, box=None, pad_edge=False)
    t.add_column("Layer (path)", footer="Total")
    t.add_column("Op")
    t.add_column("Output shape")
    t.add_column("Params", justify="right", footer=f"{checked.params:,}")
    t.add_column("MACs", justify="right", footer=f"{checked.macs:,}")
    t.add_column("Connected to")
    rows = _rows(g, depth)
    for r in rows:
        style = "yellow" if r["inserted"] else None
        t.add_row(r["path"], r["op"], r["shape"], f"{r['params']:,}" if r["params"] else "-",
                  f"{r['macs']:,}" if r["macs"] else "-", r["conn"], style=style)
    return t


def _rows(g, depth):
    from .ops import fmt   # here, not at the top: the runtime's commands render without the front end
    from .ops.count import node_macs, node_params
    from .ops.shapes import hw
    """One row per node; with `depth`, nodes whose paths share the first `depth` parts become one row."""
    rows, prev = [], None
    via_ws = {p.nodes[-1]: p.edge for p in g.projections}
    names = {p: n for n, p in g.inputs}
    name = lambda i: names.get(i, i)  # noqa: E731
    for n in g.nodes:
        # "connected to": the edges that are not simply the previous row (skip edges, `in:` jumps)
        edges = [i for k, i in enumerate(n.inputs) if k > 0 or i != prev]
        conn = ", ".join(f"{name(via_ws[i])} (via Ws)" if i in via_ws else name(i) for i in edges)
        if not n.inserted:   # Ws rows sit beside the body, not in its chain
            prev = n.path
        op = n.op
        if n.op in ("conv", "conv_transpose"):
            (kh, kw), st = hw(n.args["kernel"]), n.args["stride"]
            stride = "x".join(map(str, st)) if isinstance(st, tuple) else str(st)
            op = f"{n.op} {kh}x{kw}" + (f"{'/' if n.op == 'conv' else 'x'}{stride}" if st != 1 else "")
        if n.inserted:
            op += "  (Ws)"
        path = name(n.path)
        rows.append({"path": path, "key": ".".join(path.split(".")[:depth]) if depth else path, "op": op,
                     "shape": fmt(n.shape), "params": node_params(n, g), "macs": node_macs(n, g), "conn": conn,
                     "inserted": n.inserted, "add": n.op == "add", "inputs": n.inputs})
    if not depth:
        for r in rows:
            r["path"] = ("+ " if r["inserted"] else "") + r["path"]
        return rows
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["key"], []).append(r)
    key_of = {r["path"]: r["key"] for r in rows} | {p: n for n, p in g.inputs}
    out, prev_key = [], None
    for key, members in groups.items():
        # "connected to", in the names of this table's rows (what a spec refers to: layer1.0, enc2),
        # not the nodes inside them (layer1.0.post): edges from outside the row but the main chain
        external = []
        for m in members:
            for j, i in enumerate(m["inputs"]):
                k = key_of[i]
                shown = f"{k} (via Ws)" if m["inserted"] else k
                chain = k == prev_key and j == 0 and not m["inserted"]   # the row above, as main input
                if k != key and not chain and shown not in external:
                    external.append(shown)
        prev_key = key
        if len(members) == 1:
            out.append({**members[0], "conn": ", ".join(external)})
            continue
        kind = "residual" if any(m["add"] and m["path"] == key for m in members) else "block"
        ws = " + Ws" if any(m["inserted"] for m in members) else ""
        out.append({"path": key, "op": f"{kind}{ws} ({len(members)} nodes)", "shape": members[-1]["shape"],
                    "params": sum(m["params"] for m in members), "macs": sum(m["macs"] for m in members),
                    "conn": ", ".join(external), "inserted": False})
    return out


def totals_text(checked) -> Text:
    g = checked.graph
    act = sum(_prod(n.shape) for n in g.nodes) * 4
    ws = sum(p.params for p in g.projections)
    t = Text()
    t.append(f"Params: {checked.params:,} ({checked.params * 4 / 2**20:.2f} MiB fp32)   ")
    t.append(f"MACs: {checked.macs:,} ({human_int(checked.macs)})   ")
    t.append(f"Activations: {act / 2**20:.2f} MiB per sample (fp32)\n")
    t.append(f"Inserted shortcut projections (Ws): {len(g.projections)}, {ws:,} params", style="yellow")
    return t


def _prod(shape):
    out = 1
    for s in shape:
        out *= s
    return out


def ok_text(path, checked) -> Text:
    """`check`'s report of a sound spec: its I/O, totals, and each inserted Ws."""
    from .ops import fmt
    g, sz = checked.graph, checked.sizes
    t = Text()
    t.append("ok ", style="bold green")
    ins, outs = checked.io_shapes()
    ins = ", ".join(f"{name} {fmt(s)}" for (name, _), s in zip(g.inputs, ins))
    outs = ", ".join(f"{name} {fmt(s)}" for (name, _), s in zip(g.outputs, outs))
    t.append(f"{escape(str(path))}: {g.name}  {ins} -> {outs}\n")
    macs = checked.macs if sz is None else sz.macs
    at = "" if sz is None else " at " + "x".join(str(sz.macs_at.get(v, v)) for v in sz.input_shape[1:])
    t.append(f"   params {checked.params:,}   MACs {macs:,} ({human_int(macs)}){at}   "
             f"{len(g.nodes) - len(g.inputs)} nodes   {len(g.projections)} projection{'s' * (len(g.projections) != 1)} inserted\n")
    if sz is not None:
        from .passes.sizes import compact
        for name, valid in sz.valid.items():
            t.append(f"   {name}: {compact(valid)}\n", style="cyan")
    if sz is not None and g.projections:   # its shapes are the reference graph's: say at which size
        at = ", ".join(f"{name} {'x'.join(map(str, g[p].shape[1:]))}" for name, p in g.inputs if len(g[p].shape) == 3)
        t.append(f"   Ws shapes at {at} (the reference size check uses: the largest that checks):\n", style="yellow")
    for p in g.projections:
        kind = p.kind + ("" if p.bn or p.kind != "conv1x1" else " (no bn)")
        t.append(f"   Ws at {p.at}: {kind} {fmt(p.from_shape)} -> {fmt(p.to_shape)}, stride {p.stride}, "
                 f"{p.params:,} params\n", style="yellow")
    t.rstrip()
    return t
