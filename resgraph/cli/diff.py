"""The diff command: two specs compared block by block (resgraph.diff), and with --carry-weights a
checkpoint of A carried over to B (resgraph.carry). The table is rendered here, in summary's style."""
from __future__ import annotations

import json
import sys

import click

from ..errors import ResgraphError
from .common import Requires, check_requires, fail_internal, print_diagnostics, var_option


def fmt(shape) -> str:
    """[C, H, W] as check writes it (the op table imported only when diff runs: `run` and `bench`
    load every command module and must stay off the front end)."""
    from ..ops import fmt as ops_fmt
    return ops_fmt(shape)

RULES = (
    Requires("output", "weights_a", "-o writes B's weights carried from A's", "add --carry-weights WA.safetensors"),
    Requires("weights_a", "output", "--carry-weights needs a file to write B's weights to", "add -o WB.safetensors"),
)


@click.command("diff")
@click.argument("a", type=click.Path())
@click.argument("b", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--depth", type=click.IntRange(1, 16), default=None,
              help="Group by the first DEPTH parts of each path (layer3 at 1) instead of by block instance.")
@click.option("--carry-weights", "weights_a", type=click.Path(dir_okay=False), default=None,
              help="A's checkpoint (.safetensors): copy every layer B has unchanged, initialise the rest.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="With --carry-weights: the .safetensors file to write B's weights to.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the layers B's init: initialises.")
@var_option()
def diff(a, b, as_json, depth, weights_a, output, seed):
    """Compare spec A with spec B (two versions of one network, same input): every block or layer
    added, removed or changed, with its output shape, params and MACs deltas and the inserted Ws that
    appear or vanish; totals at the end (check's). Where B does not check, its first broken edge.

    With --carry-weights WA -o WB: write B's weights, every layer that is unchanged (same path, op
    and tensor shapes) copied from WA (which must fit A), the rest initialised by B's init: policies
    and listed."""
    try:
        check_requires(RULES, {"output": output, "weights_a": weights_a})
        d, report = compare(a, b, depth, weights_a, output, seed)
    except ResgraphError as e:
        if as_json:
            click.echo(json.dumps({"errors": [x.to_json() for x in e.diagnostics]}))
        else:
            print_diagnostics(e.diagnostics, e.diagnostics[0].loc.file)
        sys.exit(1)
    except OSError as e:
        from ..fileio import os_error
        err = os_error(e)
        print_diagnostics(err.diagnostics, err.file)
        sys.exit(1)
    except Exception as e:  # noqa: BLE001
        fail_internal(e)
    if as_json:
        click.echo(json.dumps(d.to_json() | ({"carry": report} if report else {})))
        return
    from ..render import console
    out = console()
    out.print(diff_table(d))
    out.print(totals_line(d))
    if report:
        for line in carry_lines(weights_a, report):
            out.print(line)


def compare(a, b, depth, weights_a, output, seed):
    """The diff of A and B, and with `weights_a` the carry's report (None without)."""
    from ..diff import check_b, diff_checked
    from .spec import checked
    ca = checked(a)
    cb = check_b(lambda: checked(b))
    d = diff_checked(ca, cb, depth)
    if weights_a is None:
        return d, None
    from ..carry import carry_weights
    return d, carry_weights(ca, cb, weights_a, output, seed)


def _signed(n: int) -> str:
    return f"{n:+,}" if n else "0"


def diff_table(d):
    """One row per block or layer that differs; under it, its nodes that changed for a reason of
    their own (an argument, the op, an edge; added or removed ones), and its Ws changes."""
    import os

    from rich.table import Table

    from ..render import escape
    n = len(d.entries)
    name = lambda c: f"{escape(c.graph.name)} ({escape(os.path.basename(c.spec.file))})"  # noqa: E731
    title = (f"{name(d.a)} -> {name(d.b)}: {n} block{'s' * (n != 1)} or layer{'s' * (n != 1)} "
             f"differ{'s' * (n == 1)}, {d.unchanged} alike")
    t = Table(title=title, title_justify="left", header_style="bold", show_footer=True, box=None, pad_edge=False)
    t.add_column("Block / layer (path)", footer="Total")
    t.add_column("Change")
    t.add_column("Output shape A -> B")
    t.add_column("Params A -> B", justify="right", footer=f"{d.params[0]:,} -> {d.params[1]:,}")
    t.add_column("Params delta", justify="right", footer=_signed(d.params[1] - d.params[0]))
    t.add_column("MACs delta", justify="right", footer=_signed(d.macs[1] - d.macs[0]))
    shape = lambda s: fmt(s) if s is not None else "-"  # noqa: E731
    for e in d.entries:
        style = {"added": "green", "removed": "red"}.get(e.status)
        n = e.size[1] if e.status == "added" else e.size[0] if e.status == "removed" else None
        change = e.status + (f" ({n} node{'s' * (n != 1)})" if n and n > 1 else "")
        lines = node_lines(e) if e.status == "changed" else []
        if e.status == "changed" and (not lines or e.size == (1, 1)):   # a lone layer: its reasons inline
            change += ": " + (lines[0][1] if lines else "new input shapes")
            lines = []
        t.add_row(escape(e.path), escape(change), f"{shape(e.shape_a)} -> {shape(e.shape_b)}",
                  f"{e.params[0]:,} -> {e.params[1]:,}", _signed(e.params_delta), _signed(e.macs_delta), style=style)
        for w in e.ws:
            p = w.b or w.a
            at = "" if w.at == e.path else " at " + (w.at[len(e.path) + 1:] if w.at.startswith(e.path + ".") else w.at)
            t.add_row("  " + {"appears": "+ Ws", "vanishes": "- Ws", "changes": "~ Ws"}[w.status] + escape(at), escape(ws_text(w)),
                      f"{fmt(p.from_shape)} -> {fmt(p.to_shape)}",
                      f"{w.a.params if w.a else 0:,} -> {w.b.params if w.b else 0:,}", "", "", style="yellow")
        for path, what in lines:
            t.add_row(f"  {escape(path)}", escape(what), "", "", "", "", style="dim")
    return t


def ws_text(w) -> str:
    """A Ws change in a few words: 'appears: conv1x1 + bn', 'zeropad -> conv1x1 + bn'."""
    kind = lambda p: p.kind + (" + bn" if p.bn and p.kind != "zeropad" else "")  # noqa: E731
    if w.status == "appears":
        return f"appears: {kind(w.b)}"
    if w.status == "vanishes":
        return f"vanishes: {kind(w.a)}"
    return f"changes: {kind(w.a)} -> {kind(w.b)}" if kind(w.a) != kind(w.b) else \
        f"changes: was {fmt(w.a.from_shape)} -> {fmt(w.a.to_shape)}"


def node_lines(e) -> list[tuple[str, str]]:
    """(node, what changed) for the nodes of a changed entry that differ for a reason of their own
    (an argument, the op, an edge; added or removed); those that only see new shapes are left out."""
    lines = []
    for n in e.nodes:
        if n.inserted:   # its Ws row says it
            continue
        own = [r for r in n.reasons if not r.startswith("input ")]
        name = n.path[len(e.path) + 1:] if n.path.startswith(e.path + ".") else n.path
        if n.status in ("added", "removed"):
            lines.append((("+ " if n.status == "added" else "- ") + name, f"{n.status}: {n.op}"))
        elif own:
            lines.append((name, ", ".join(own)))
    return lines


def totals_line(d):
    from rich.text import Text

    from ..render import human_int
    (pa, pb), (ma, mb) = d.params, d.macs
    wa, wb = len(d.a.graph.projections), len(d.b.graph.projections)
    t = Text()
    t.append(f"Params: {pa:,} -> {pb:,} ({_signed(pb - pa)})   ")
    t.append(f"MACs: {ma:,} ({human_int(ma)}) -> {mb:,} ({human_int(mb)}) ({_signed(mb - ma)})\n")
    t.append(f"Inserted Ws: {wa} -> {wb}", style="yellow")
    return t


def carry_lines(weights_a: str, r: dict) -> list[str]:
    """What --carry-weights prints: what it wrote, what it copied, each layer it initialised and why."""
    from ..render import escape
    nc, ni = len(r["copied"]), len(r["initialised"])
    lines = [(f"wrote {escape(r['output'])}: {r['tensors_copied']} tensors ({nc} layer{'s' * (nc != 1)}, "
             f"{r['params_copied']:,} params) copied from {escape(weights_a)}, {r['tensors_initialised']} "
             f"({ni} layer{'s' * (ni != 1)}, {r['params_initialised']:,} params) initialised by B's init: "
             f"(seed {r['seed']})")]
    for x in r["initialised"]:
        lines.append(f"  initialised {escape(x['layer'])}: {escape(x['reason'])}")
    return lines


COMMANDS = (diff,)
