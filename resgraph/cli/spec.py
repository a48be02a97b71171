"""The spec commands: check, summary, graph, schema. They take a spec file, '-' (standard input) or a
compiled folder (its spec.yaml); the work is in resgraph.frontend, render and draw."""
from __future__ import annotations

import json
import sys

import click

from ..errors import ResgraphError
from .common import HxW, fail_internal, print_diagnostics, run, say, var_option


def checked(path):
    """Check the spec behind a command's argument (frontend.spec_source), its text remembered for
    the carets of any diagnostic."""
    from ..frontend import spec_source
    src = spec_source(path, sys.stdin)
    if src.note:
        say(src.note)
    return checked_source(src)


def checked_source(src):
    """check_source with the command line's --var applied, the text checked remembered for carets."""
    from ..frontend import check_source, with_overrides
    from ..render import remember_source
    src = with_overrides(src)
    if src.text is not None:
        remember_source(src.where, src.text)
    return check_source(src)


@click.command()
@click.argument("specs", nargs=-1, required=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (the contract's format).")
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
@click.option("--at", "at", type=HxW(), default=None,
              help="HxW: for specs with size variables, give the MACs at this input size [default: the smallest valid].")
@click.option("--memory", is_flag=True,
              help="Estimate training memory from the shapes: weights, gradients, optimizer state and the "
                   "activations saved for backward, per block and in total (fp32). Needs --batch.")
@click.option("--batch", type=click.IntRange(1, 1 << 20), default=None, help="With --memory: the batch size.")
@click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), default=None,
              help="With --memory: its state per parameter, SGD's momentum (1) or AdamW's moments (2) [default: sgd].")
@click.option("--checkpointing", is_flag=True,
              help="With --memory: also the estimate with each block checkpointed (to_torch(checkpointing=True)).")
@var_option(sweep=True)
def check(specs, as_json, strict, at, memory, batch, optimizer, checkpointing, var):
    """Check every dimension along every edge of SPECS ('-' reads standard input); report inserted
    projections (Ws). With --json and several specs, one JSON object per line.

    With --var NAME=3,5,7 (a sweep; several swept NAMEs step together), one row per value: params,
    MACs and the Ws inserted; with --json, one list of check's objects (each with its "vars") per spec.

    With --memory --batch N, the training memory of one step at batch N, per block and in total
    (with --json, check's object gets a "memory" object)."""
    from ..frontend import spec_vars
    runs = run(lambda: sweep_runs(var))
    mem = run(lambda: memory_options(memory, batch, optimizer, checkpointing, len(runs) > 1))
    if len(runs) > 1:
        sys.exit(sweep(specs, runs, as_json, strict, at))
    with spec_vars(runs[0]):
        sys.exit(check_each(specs, as_json, strict, at, mem))


def memory_options(memory: bool, batch, optimizer, checkpointing: bool, swept: bool):
    """--memory's settings as (batch, optimizer, checkpointing), None without --memory; its options
    without it, or it without --batch, are errors."""
    from ..errors import OptionError
    if not memory:
        for name, given in (("--batch", batch is not None), ("--optimizer", optimizer is not None),
                            ("--checkpointing", checkpointing)):
            if given:
                raise OptionError.at(name, f"{name} is an option of --memory, which is not given",
                                     f"add --memory (resgraph check SPEC --memory --batch 32), or leave out {name}")
        return None
    if batch is None:
        raise OptionError.at("--memory", "--memory needs the batch size to estimate for",
                             "add --batch N, e.g. --memory --batch 32")
    if swept:
        raise OptionError.at("--memory", "--memory estimates one spec at a time, not a sweep of --var values",
                             "give each --var one value with --memory")
    return batch, optimizer or "sgd", checkpointing


def check_each(specs, as_json, strict, at, mem=None) -> int:
    """check without a sweep: each spec's report (or its errors), and the exit code."""
    failed = False
    for path in specs:
        try:
            c = macs_at(checked(path), at)
            est = memory_at(c, at, mem) if mem else None
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
            click.echo(json.dumps(c.to_json() | ({"memory": est.to_json(mem[2])} if est else {})))
        else:
            from ..render import console, diagnostic, ok_text
            console().print(ok_text(path, c))
            if est:
                print_memory(est, mem[2])
            for w in c.warnings:
                console(stderr=True).print(diagnostic(w))
    return 1 if failed else 0


def memory_at(c, at, mem):
    """check --memory: the training-memory estimate of the checked spec (a sized one at --at, or at
    its reference size)."""
    from ..memory import training_memory
    return training_memory(at_size(c, at, "--at").graph, mem[0], mem[1])


def human_bytes(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{n} B"


def print_memory(m, checkpointing: bool) -> None:
    """check --memory's table: a row per block (params, the bytes it saves for backward, and with
    --checkpointing the bytes that enter it), then the totals."""
    from rich.table import Table

    from ..render import console, escape
    what = {"sgd": "SGD: momentum, 1 per parameter", "adamw": "AdamW: 2 moments per parameter"}[m.optimizer]
    t = Table(title=f"training memory at batch {m.batch}, fp32", title_justify="left")
    for col in ("block", "params", "saved for backward") + (("block inputs (kept)",) if checkpointing else ()):
        t.add_column(col, justify="left" if col == "block" else "right")
    for b in m.blocks:
        t.add_row(escape(b.name), f"{b.params:,}", human_bytes(b.activations),
                  *((human_bytes(b.inputs),) if checkpointing else ()))
    out = console()
    out.print(t)
    rows = [("weights", m.weights, "parameters and bn statistics"), ("gradients", m.gradients, "one per parameter"),
            ("optimizer state", m.optimizer_state, what), ("activations", m.activations, "saved for backward"),
            ("total", m.total, "")]
    if checkpointing:
        big = max(m.blocks, key=lambda b: b.activations)
        note = f"activations: block inputs {human_bytes(m.kept)} + the largest block's {human_bytes(big.activations)}"
        rows += [("checkpointed", m.checkpointed_activations, f"{note} ({big.name})"),
                 ("total checkpointed", m.total - m.activations + m.checkpointed_activations, "")]
    for name, n, note in rows:
        out.print(f"  {name:<19}{human_bytes(n):>14}" + (f"   {escape(note)}" if note else ""))
    if m.assumed:
        out.print(f"  [yellow]ops {escape(', '.join(m.assumed))} (plugins): assumed to save their inputs and output[/yellow]")


def sweep_runs(var: dict) -> list[dict]:
    """--var's NAME -> [values] as one {NAME: value} per run: the swept names step together."""
    from ..errors import OptionError
    lengths = {len(v) for v in var.values() if len(v) > 1}
    if len(lengths) > 1:
        raise OptionError.at("--var", "swept variables have different numbers of values ("
                             + ", ".join(f"{k}: {len(v)}" for k, v in var.items() if len(v) > 1) + ")",
                             "several swept names step together (compound scaling): give each as many values")
    n = lengths.pop() if lengths else 1
    return [{k: v[i] if len(v) > 1 else v[0] for k, v in var.items()} for i in range(n)]


def sweep(specs, runs: list[dict], as_json: bool, strict: bool, at) -> int:
    """check --var n=3,5,7: per spec, each run's params, MACs and Ws as a table (or a JSON list of
    check's objects, each with its "vars"); a run that fails is a row with its first error, its
    diagnostics after the table. The exit code: 1 if a run failed (or warned, with --strict)."""
    from ..frontend import spec_source, spec_vars
    failed = False
    for path in specs:
        rows, src = [], None
        for values in runs:
            with spec_vars(values):
                try:
                    src = src or spec_source(path, sys.stdin)   # read once: '-' is standard input
                    rows.append((values, macs_at(checked_source(src), at)))
                except ResgraphError as e:
                    rows.append((values, e))
                except Exception as e:  # noqa: BLE001
                    fail_internal(e)
        failed |= any(isinstance(c, ResgraphError) or (strict and c.warnings) for _, c in rows)
        first = {(str(c.diagnostics[0].loc), c.diagnostics[0].message) if isinstance(c, ResgraphError) else None
                 for _, c in rows}
        if not as_json and len(first) == 1 and None not in first:   # the same for every value: --var m of no spec
            print_diagnostics(rows[0][1].diagnostics, path)
        elif as_json:
            click.echo(json.dumps([{"vars": v, **(c.to_json() if not isinstance(c, ResgraphError)
                                                  else {"errors": [d.to_json() for d in c.diagnostics]})}
                                   for v, c in rows]))
        else:
            print_sweep(path, rows)
    return 1 if failed else 0


def print_sweep(path, rows) -> None:
    """The sweep's table: a row per run (the values, params, MACs, Ws: how many and where)."""
    from rich.table import Table

    from ..render import console, diagnostic, escape, human_int
    names = list(rows[0][0])
    good = next((c for _, c in rows if not isinstance(c, ResgraphError)), None)
    t = Table(title=f"{escape(good.graph.name) + ' ' if good else ''}({escape(str(path))}): "
              + ", ".join(f"{k} = {', '.join(str(v[k]) for v, _ in rows)}" for k in names), title_justify="left")
    for k in names:
        t.add_column(escape(k), justify="right")
    for col in ("params", "MACs"):
        t.add_column(col, justify="right")
    t.add_column("Ws inserted")
    for values, c in rows:
        cells = [escape(json.dumps(values[k])) for k in names]
        if isinstance(c, ResgraphError):
            d = c.diagnostics[0]
            where = f" at {d.loc}" if d.loc.line else ""
            t.add_row(*cells, "-", "-", f"[red]error[/red]{escape(where)}: {escape(d.message)}")
            continue
        macs = c.macs if c.sizes is None else c.sizes.macs
        ws = c.graph.projections
        where = ", ".join(p.at for p in ws[:6]) + (", ..." if len(ws) > 6 else "")
        t.add_row(*cells, f"{c.params:,} ({human_int(c.params)})", f"{macs:,} ({human_int(macs)})",
                  f"{len(ws)}" + (f": {escape(where)}" if ws else "") + (f"  [yellow]{len(c.warnings)} warnings[/yellow]"
                                                                          if c.warnings else ""))
    console().print(t)
    err = console(stderr=True)
    for values, c in rows:
        for d in (c.diagnostics if isinstance(c, ResgraphError) else c.warnings):
            err.print(f"with {', '.join(f'{k}={json.dumps(v)}' for k, v in values.items())}:")
            err.print(diagnostic(d))


@click.command()
@click.argument("spec", type=click.Path())
@click.option("--depth", type=click.IntRange(1, 16), default=None,
              help="Collapse paths deeper than this into one row (like torchinfo's depth).")
@click.option("--size", type=HxW(), default=None,
              help="HxW: for a spec with size variables, the input size to show [default: the largest valid].")
@var_option()
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
@var_option()
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
