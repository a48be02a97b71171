"""The spec commands: check, summary, graph, schema. They take a spec file, '-' (standard input) or a
compiled folder (its spec.yaml); the work is in resgraph.frontend, render and draw."""
from __future__ import annotations

import json
import sys

import click

from ..errors import ResgraphError
from .common import HxW, fail_internal, print_diagnostics, run, say


def checked(path):
    """Check the spec behind a command's argument (frontend.spec_source), its text remembered for
    the carets of any diagnostic."""
    from ..frontend import check_source, spec_source
    from ..render import remember_source
    src = spec_source(path, sys.stdin)
    if src.note:
        say(src.note)
    if src.text is not None:
        remember_source(src.where, src.text)
    return check_source(src)


@click.command()
@click.argument("specs", nargs=-1, required=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (the contract's format).")
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
@click.option("--at", "at", type=HxW(), default=None,
              help="HxW: for specs with size variables, give the MACs at this input size [default: the smallest valid].")
def check(specs, as_json, strict, at):
    """Check every dimension along every edge of SPECS ('-' reads standard input); report inserted
    projections (Ws). With --json and several specs, one JSON object per line."""
    failed = False
    for path in specs:
        try:
            c = macs_at(checked(path), at)
        except ResgraphError as e:
            failed = True
            if as_json:
                click.echo(json.dumps({"errors": [d.to_json() for d in e.diagnostics]}))
            else:
                print_diagnostics(e.diagnostics, path)
            continue
        except Exception as e:  # noqa: BLE001
            fail_internal(e)
        failed |= bool(strict and c.warnings)
        if as_json:
            click.echo(json.dumps(c.to_json()))
        else:
            from ..render import console, diagnostic, ok_text
            console().print(ok_text(path, c))
            for w in c.warnings:
                console(stderr=True).print(diagnostic(w))
    sys.exit(1 if failed else 0)


@click.command()
@click.argument("spec", type=click.Path())
@click.option("--depth", type=click.IntRange(1, 16), default=None,
              help="Collapse paths deeper than this into one row (like torchinfo's depth).")
@click.option("--size", type=HxW(), default=None,
              help="HxW: for a spec with size variables, the input size to show [default: the largest valid].")
def summary(spec, depth, size):
    """A layer table of SPEC: path, op, output shape, params, MACs, skip edges; inserted Ws marked."""
    c = run(lambda: at_size(checked(spec), size))
    from ..render import console, summary_table, totals_text
    out = console()
    out.print(summary_table(c, depth))
    out.print(totals_text(c))


def macs_at(c, at):
    """check --at HxW: a sized spec's MACs (and macs_at) at that size instead of the smallest valid one."""
    if at is None:
        return c
    import dataclasses
    fixed = at_size(c, at, "--at")
    names = c.spec.inputs[0].vars[1:] if c.spec.inputs and c.spec.inputs[0].vars else ()
    where = {v: n for v, n in zip(names, at) if v}
    return dataclasses.replace(c, sizes=dataclasses.replace(c.sizes, macs=fixed.macs, macs_at=where))


def at_size(c, size, option: str = "--size"):
    """A checked spec with size variables at `size` (HxW of its first input), or at the reference
    size its check uses (the largest valid one) where none is given; one without them as it is."""
    from ..errors import OptionError
    from ..frontend import check_at
    if c.sizes is None:
        if size is not None:
            raise OptionError.at(option, "the spec's input has a fixed size", f"leave out {option}")
        return c
    if size is None:
        size = tuple(c.graph.nodes[0].shape[1:])
    return check_at(c, size, option)


@click.command()
@click.argument("spec", type=click.Path())
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Draw it instead: .svg, .png, .pdf (Graphviz's dot renders them) or .dot.")
@click.option("--collapse", is_flag=True, help="One node per residual block (large networks).")
def graph(spec, output, collapse):
    """Print the compiled IR of SPEC as readable Python (shapes and source lines as comments), or draw
    it with -o: blocks as clusters, skip edges dashed, inserted Ws highlighted, shapes on the edges."""
    g = run(lambda: checked(spec)).graph
    if output is None:
        click.echo(str(g))
        return

    def draw():
        from ..draw import write_drawing
        write_drawing(g, output, collapse)
        click.echo(f"drew {g.name} -> {output}  ({len(g.projections)} Ws highlighted)")
    run(draw)


@click.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write to this file instead of standard output.")
def schema(output):
    """Print the JSON Schema of the spec language (for editors: yaml-language-server)."""
    from ..ops import OPS
    from ..spec.schema import json_schema
    text = json.dumps(json_schema(OPS), indent=2) + "\n"
    if output:
        from ..fileio import atomic_write_text
        run(lambda: atomic_write_text(output, text))
    else:
        click.echo(text, nl=False)


COMMANDS = (check, summary, graph, schema)
