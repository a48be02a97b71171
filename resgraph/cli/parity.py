"""`resgraph parity` (and `--locate`): the same inputs through every back end, compared at the
folder's precision's tolerance. Parsing and rendering only: the work is in resgraph.runtime.parity
and resgraph.locate.

Exit codes: 0 ok; 1 a pair beyond tolerance, or a user error.
"""
from __future__ import annotations

import json
import sys

import click

from ..limits import MAX_BATCH
from .common import run, say
from .foreign import model_arg, preprocess_options
from .infer import BACKEND_HELP, SHAPE_HELP, _options, _shape_list, session_options


@click.command("parity")
@click.argument("artifact", type=click.Path())
@click.option("--backends", default="all", show_default=True,
              help="Comma-separated back ends to compare, or 'all' (every usable one). " + BACKEND_HELP)
@click.option("--inputs", "source", default="16", show_default=True,
              help="N random normalised inputs (seeded), or a folder of images / .npy / .npz files.")
@click.option("--shape", "shapes", multiple=True,
              help=SHAPE_HELP + ", for random inputs [default: the smallest valid size, a middle one and the largest "
                                "up to 512].")
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH), default=8, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.option("--locate", is_flag=True,
              help="Re-run the first failing pair (else the fp16/fp32 pair, else the first) with every layer's output "
                   "exposed and name the first spec line beyond the tolerance, with a per-layer error table.")
@click.option("--reference", "reference", type=click.Path(dir_okay=False), default=None,
              help="Compare each back end with the inputs and outputs saved in this .npz, by tensor name "
                   "(docs/inference.md).")
@click.option("--save-reference", "save_reference", type=click.Path(dir_okay=False), default=None,
              help="Write the --inputs and the first back end's outputs to this .npz, for a later --reference.")
@preprocess_options
@session_options
def parity_cmd(artifact, backends, source, shapes, batch_size, as_json, locate, reference, save_reference, **opts):
    """The same inputs through every back end: max abs and relative error and top-1 agreement for
    each pair on each output (and, with size variables, at several sizes); exit 1 if any is beyond
    the tolerance for the artifact's precision. ARTIFACT: a compiled folder or a plain ONNX file
    (its preprocess, for --inputs DIR, from --mean/--std/--resize/--crop)."""
    def body():
        from ..errors import OptionError
        from ..runtime.bench import sizes_at
        from ..runtime.foreign import manifest_of
        from ..runtime.parity import parity
        folder = model_arg(artifact, opts)
        size = getattr(folder, "batch", None) or batch_size   # an ONNX file that fixes its batch at 1: 1
        if shapes and not source.isdigit():
            raise OptionError.at("--shape", "--shape sizes random inputs; a folder's inputs run at their own sizes",
                                 "leave --shape out, or give --inputs N")
        if reference or save_reference:
            return _reference(folder, backends, source, reference, save_reference, size, as_json, locate,
                              _options(artifact, backends, **opts))
        manifest = manifest_of(folder)
        if locate:   # refused before parity runs: an int8 folder
            from ..locate import check_locatable
            check_locatable(manifest, ())
        at = sizes_at(manifest, _shape_list(shapes)) if shapes else None
        options = _options(artifact, backends, **opts)
        r = parity(folder, backends, source, size, options, at)
        located = _locate(folder, r, source, options) if locate else None
        if as_json:
            click.echo(json.dumps({**r, "locate": located.to_json() if located else None} if locate else r, indent=2))
        else:
            _parity_table(r)
            if located:
                _locate_report(located)
        return r["ok"]
    sys.exit(0 if run(body) else 1)


def _reference(model, backends, source, reference, save_reference, batch_size, as_json, locate, options) -> bool:
    """parity --reference FILE (compare) or --save-reference FILE (write): runtime.reference."""
    from ..errors import OptionError
    from ..runtime.reference import compare_reference, save_reference as save
    clash = "--save-reference" if reference and save_reference else "--locate" if locate else None
    if clash:
        raise OptionError.at(clash, f"{clash} does not go with --reference" if reference else
                             "--locate does not go with --save-reference", "run them one at a time")
    if save_reference:
        r = save(model, backends, source, save_reference, batch_size, options)
        click.echo(json.dumps(r, indent=2) if as_json else f"wrote {r['written']}: {r['inputs']} and {r['backend']}'s "
                   f"outputs ({', '.join(r['arrays'])})")
        return True
    if source != "16":
        raise OptionError.at("--inputs", "--reference holds its own inputs", "leave --inputs out")
    r = compare_reference(model, backends, reference, batch_size, options)
    if as_json:
        click.echo(json.dumps(r, indent=2))
    else:
        _parity_table(r)
    return r["ok"]


def _locate(folder: str, report: dict, source: str, options):
    """parity --locate on the pair locate.pick chooses; None (and a note) where there is none."""
    from ..locate import LOCATABLE, locate, pick
    p = pick(report["pairs"])
    if p is None:
        say(f"note: --locate opens up {', '.join(LOCATABLE)}; no pair here has two of them")
    return p and locate(folder, p["reference"], p["other"], source, p["shape"], options)


def _locate_report(located) -> None:
    """The per-layer table, then the located line as a compiler diagnostic (on stdout: it is the result)."""
    from rich.markup import escape
    from rich.table import Table

    from ..render import console, diagnostic
    from ..render import escape as plain   # then rich's escape: no control character, no markup
    L, first = located, located.first
    t = Table("layer", "op", "line", "max |a-b|", "max |a-b|/(1+|ref|)", "SQNR dB", "growth", "", title_justify="left",
              title=escape(plain(f"per layer, {L.other} against {L.reference} ({L.rule}): {L.inputs}")))
    fmt = lambda v: "—" if v is None else f"{v:.3g}"  # noqa: E731
    for r in located.rows:   # merged: a bn folded into the conv, a dropped no-op
        mark = "[bold red]FIRST[/]" if r is first else "[green]ok[/]" if r.ok else "[red]beyond[/]"
        t.add_row(escape(plain(r.path + (f" (+{', '.join(r.merged)})" if r.merged else ""))), r.op, str(r.loc.line),
                  f"{r.max_abs:.3e}", f"{r.max_scaled:.3e}", fmt(r.sqnr_db), fmt(r.growth), mark)
    (out := console()).print(t)
    for n in located.notes:
        out.print(f"[yellow]note:[/] {escape(plain(n))}")
    d = located.diagnostic()
    out.print(diagnostic(d) if d else f"locate: every layer of {L.other} is within the tolerance of {L.reference}")


def _parity_table(report: dict) -> None:
    """One row per pair (one output at one size: today's table), else one per pair, output and size,
    then each pair's worst."""
    from rich.markup import escape
    from rich.table import Table

    from ..render import console
    from ..render import escape as plain   # then rich's escape: no control character, no markup
    out = console()
    rows = report["outputs"]
    several = len(rows) > len(report["pairs"])
    shaped = bool(report["shapes"])
    t = Table(title=escape(plain(f"{report['model']} ({report['precision']}): {report['inputs']}")), title_justify="left")
    extra = (("output",) if several else ()) + (("size",) if several and shaped else ())
    int8 = report.get("int8")
    for col in ("reference", "other", *extra, "max |a-b|", "max |a-b|/(1+|ref|)", "top-1 agree",
                *(("SQNR dB",) if int8 else ()), "tolerance", ""):
        t.add_column(col)
    for p in rows if several else report["pairs"]:
        agree = p["agreement"] if p.get("rule") == "int8" else p["top1_agreement"]
        sqnr = ("—" if p.get("rule") != "int8" else "inf" if p["sqnr_db"] is None else f"{p['sqnr_db']:.1f}",)
        t.add_row(p["reference"], p["other"], *((p["output"],) if several else ()),
                  *((p["shape"] or "",) if several and shaped else ()), f"{p['max_abs']:.3e}", f"{p['max_scaled']:.3e}",
                  "—" if agree is None else f"{agree:.1%}", *(sqnr if int8 else ()), escape(p["tolerance"]),
                  "[green]ok[/]" if p["ok"] else "[bold red]FAIL[/]")
    out.print(t)
    if several:
        for p in report["pairs"]:
            at = f" at {p['shape']}" if p["shape"] else ""
            out.print(f"worst {p['reference']} vs {p['other']}: {p['output']}{at}, max |a-b| {p['max_abs']:.3e} "
                      + ("[green]ok[/]" if p["ok"] else "[bold red]FAIL[/]"))
    for name, sha in report["changed_since_compile"].items():
        out.print(f"[yellow]note:[/] {name} is not the file compile wrote (sha256 {sha[:16]}..., manifest says otherwise)")
    for f in report["failed_inputs"]:
        out.print(f"[yellow]skipped input[/] {escape(plain(f['input']))}: {escape(plain(f['error']))}")
    for s in report["skipped"]:
        out.print(escape(plain(f"not compared: {s['backend']}: {s['reason']}")))
    if int8 and int8["inputs"] == "random":
        out.print(f"[yellow]note:[/] int8 is judged against its gate (top-1 agreement >= {100 * int8['min_agreement']:g}%, "
                  f"SQNR >= {int8['min_sqnr']:g} dB) on real inputs only: give --inputs DIR; on random ones int8 vs "
                  "fp32 is reported, not judged")
    out.print("[green]parity ok[/]" if report["ok"] else "[bold red]parity FAILED[/]: a pair is beyond its tolerance")


COMMANDS = (parity_cmd,)
