"""`resgraph profile`: where the time of a compiled model goes, per spec line. Parsing and rendering
only: the work is resgraph.profile.profile (runtime/profiler.py runs the back end's own profiler).

Exit codes: 0 ok; 1 a user error (an unknown back end, a folder without what it needs, an output that
is NaN everywhere).
"""
from __future__ import annotations

import json

import click

from ..limits import MAX_BATCH
from .common import FiniteFloat, HxW, run, say

BACKENDS = "auto, ort-cpu, torch-cpu, ort-cuda, torch-cuda, tensorrt"


@click.command("profile")
@click.argument("artifact", type=click.Path())
@click.option("--backend", default="auto", show_default=True, help=f"One back end: {BACKENDS}.")
@click.option("--batch", type=click.IntRange(1, MAX_BATCH), default=1, show_default=True)
@click.option("--shape", type=HxW(), default=None,
              help="HxW of the first input, for a model with size variables [default: bench's].")
@click.option("--depth", type=click.IntRange(1, 16), default=None,
              help="Fold paths deeper than this into one row (summary --depth's folding): 1 stages, 2 blocks.")
@click.option("--runs", type=click.IntRange(3, 10_000), default=20, show_default=True,
              help="Profiled runs (each row is the median over them); bench's latency is timed over as many.")
@click.option("--warmup", type=FiniteFloat(0, 3600), default=1.0, show_default=True,
              help="Seconds run first, unmeasured.")
@click.option("--threads", type=click.IntRange(1, 1024), default=None,
              help="CPU threads for one inference (ONNX Runtime intra-op, torch) [default: all cores].")
@click.option("--json", "as_json", is_flag=True, help="One JSON object (see docs/inference.md).")
@click.option("--html", "html_file", type=click.Path(dir_okay=False), default=None,
              help="Also write one self-contained HTML page: an icicle chart (stage -> block -> layer) and the table.")
def profile_cmd(artifact, backend, batch, shape, depth, runs, warmup, threads, as_json, html_file):
    """Per-layer time of ARTIFACT on one back end, from the back end's own profiler (ONNX Runtime's
    node events, torch.profiler, TensorRT's IProfiler), one row per spec line: op, output shape,
    MACs, ms (median of --runs), share, GFLOP/s; fused layers are split by their members' MACs and
    say so; the time of no spec line gets named rows. bench's whole-model latency is measured in the
    same run, and the per-layer sum is compared with it."""
    def body():
        from ..profile import depth_rows, profile
        from ..runtime import Options
        r = profile(artifact, backend, batch, shape, runs, Options(threads=threads), warmup)
        for w in r["warnings"]:
            say(f"warning: {w}")
        if html_file:
            from ..fileio import atomic_write_text
            from ..profile.html import page
            atomic_write_text(html_file, page(r))
        if as_json:
            click.echo(json.dumps({**r, "depth": depth, "rows": depth_rows(r, depth)}, indent=2))
        else:
            _table(r, depth_rows(r, depth))
        if html_file:
            say(f"resgraph: wrote {html_file}")
    run(body)


def _table(report: dict, rows: list[dict]) -> None:
    """The rows, then the time of no spec line, then the totals against bench's latency."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from ..render import console
    from ..render import escape as plain
    r = report
    at = f", {r['shape']}" if r["shape"] else ""
    t = Table(title=escape(plain(f"{r['model']} on {r['backend']} ({r['precision']}), batch {r['batch']}{at}: "
                                 f"median of {r['runs']} runs")), title_justify="left", box=box.SIMPLE_HEAD,
              pad_edge=False, collapse_padding=True)
    for col in ("path", "line", "op", "output", "MACs", "ms", "share", "GFLOP/s", "fused"):
        t.add_column(col, justify="right" if col in ("MACs", "ms", "share", "GFLOP/s") else "left", no_wrap=True)
    for row in rows:
        t.add_row(escape(plain(row["path"])), row["line"], escape(row["op"]), row["shape"],
                  f"{row['macs']:,}" if row["macs"] else "-", f"{row['ms']:.3f}", f"{row['share']:.1%}",
                  "-" if row["gflops"] is None else f"{row['gflops']:,.1f}", escape(row.get("fused") or ""))
    for o in r["other"]:
        t.add_row(f"[italic]{escape(plain(o['name']))}[/]", "", "", "", "", f"{o['ms']:.3f}", f"{o['share']:.1%}", "", "")
    out = console()
    out.print(t)
    out.print(f"attributed to spec lines: {r['attributed']:.1%} of {r['total_ms']:.3f} ms per run")
    out.print(f"per-layer sum {r['total_ms']:.3f} ms vs bench's median latency {r['bench_latency_ms']:.3f} ms "
              f"(same run, unprofiled): {r['sum_vs_bench']:.3f}x; profiled calls {r['profiled_latency_ms']:.3f} ms")


COMMANDS = (profile_cmd,)
