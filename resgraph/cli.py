"""The command line: argument parsing, rendering and exit codes. No compiler logic lives here.

Exit codes: 0 ok, 1 the spec has errors (or warnings with --strict), 2 usage, 70 internal error.
"""
from __future__ import annotations

import json
import os
import sys

import click

from . import __version__
from .errors import SpecError


def _fail_internal(e: BaseException) -> None:
    if os.environ.get("RESGRAPH_DEBUG"):
        raise e
    click.echo(f"resgraph: internal error: {type(e).__name__}: {e}\n"
               "  this is a bug in resgraph, not in your spec; rerun with RESGRAPH_DEBUG=1 for a traceback "
               "and report it", err=True)
    sys.exit(70)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="resgraph")
def cli():
    """resgraph: compile residual-network specs (YAML) into checked graphs, PyTorch, ONNX and TensorRT."""


def _check(path):
    """Check a file, or standard input for '-' (editors and pipes)."""
    from .compiler import check_file, check_text
    if path == "-":
        from .render import remember_source
        text = sys.stdin.read(4 << 20)
        remember_source("<stdin>", text)
        return check_text(text, "<stdin>")
    return check_file(path)


@cli.command()
@click.argument("specs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (the contract's format).")
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
def check(specs, as_json, strict):
    """Check every dimension along every edge of SPECS ('-' reads standard input); report inserted
    projections (Ws). With --json and several specs, one JSON object per line."""
    failed = False
    for path in specs:
        try:
            c = _check(path)
        except SpecError as e:
            failed = True
            if as_json:
                click.echo(json.dumps({"errors": [d.to_json() for d in e.diagnostics]}))
            else:
                _print_diagnostics(e.diagnostics, path)
            continue
        except Exception as e:  # noqa: BLE001
            _fail_internal(e)
        if strict and c.warnings:
            failed = True
        if as_json:
            click.echo(json.dumps(c.to_json()))
        else:
            _print_ok(path, c)
    sys.exit(1 if failed else 0)


def _print_diagnostics(diags, path):
    from .render import console, diagnostic
    err = console(stderr=True)
    for d in diags:
        err.print(diagnostic(d))
    n = sum(d.severity == "error" for d in diags)
    err.print(f"{path}: {n} error{'s' * (n != 1)}", style="bold red")


def _print_ok(path, c):
    from rich.text import Text

    from .ops import fmt
    from .render import console, diagnostic, human_int
    out = console()
    g = c.graph
    t = Text()
    t.append("ok ", style="bold green")
    t.append(f"{path}: {g.name}  {g.input_name} {fmt(g.nodes[0].shape)} -> {g.output_name} {fmt(g[g.output].shape)}\n")
    t.append(f"   params {c.params:,}   MACs {c.macs:,} ({human_int(c.macs)})   "
             f"{len(g.nodes) - 1} nodes   {len(g.projections)} projection{'s' * (len(g.projections) != 1)} inserted\n")
    for p in g.projections:
        t.append(f"   Ws at {p.at}: {p.kind} {fmt(p.from_shape)} -> {fmt(p.to_shape)}, stride {p.stride}, "
                 f"{p.params:,} params\n", style="yellow")
    t.rstrip()
    out.print(t)
    err = console(stderr=True)
    for w in c.warnings:
        err.print(diagnostic(w))


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--depth", type=click.IntRange(1, 16), default=None,
              help="Collapse paths deeper than this into one row (like torchinfo's depth).")
def summary(spec, depth):
    """A layer table of SPEC: path, op, output shape, params, MACs, skip edges; inserted Ws marked."""
    try:
        c = _check(spec)
    except SpecError as e:
        _print_diagnostics(e.diagnostics, spec)
        sys.exit(1)
    except Exception as e:  # noqa: BLE001
        _fail_internal(e)
    from .render import console, summary_table, totals_text
    out = console()
    out.print(summary_table(c, depth))
    out.print(totals_text(c))


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False))
def graph(spec):
    """Print the compiled IR of SPEC as readable Python (shapes and source lines as comments)."""
    try:
        c = _check(spec)
    except SpecError as e:
        _print_diagnostics(e.diagnostics, spec)
        sys.exit(1)
    except Exception as e:  # noqa: BLE001
        _fail_internal(e)
    click.echo(str(c.graph))


@cli.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write to this file instead of standard output.")
def schema(output):
    """Print the JSON Schema of the spec language (for editors: yaml-language-server)."""
    from .ops import OPS
    from .spec.schema import json_schema
    text = json.dumps(json_schema(OPS), indent=2) + "\n"
    if output:
        _write_atomic(output, text)
    else:
        click.echo(text, nl=False)


def _write_atomic(path: str, text: str) -> None:
    import tempfile
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".resgraph-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main() -> None:
    cli(prog_name="resgraph")


if __name__ == "__main__":
    main()
