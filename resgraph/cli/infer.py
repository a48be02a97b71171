"""The inference commands: run, bench, doctor (parity: cli/parity.py). Parsing and rendering only: the work is in
resgraph.runtime (open_session, predict_batches, bench.bench_all, parity.parity, doctor.report). None of them imports torch or the front end unless a torch back end is opened.

Exit codes: 0 ok; 1 an input failed (run), a pair beyond tolerance (parity), or a user error.
"""
from __future__ import annotations

import json
import os
import sys

import click

from ..limits import MAX_BATCH
from .common import FiniteFloat, HxW, run, say
from .foreign import batch_sizes, model_arg, preprocess_options
from .run_lines import RunLines

BACKEND_HELP = ("auto, tensorrt, ort-cuda, torch-cuda, ort-cpu, torch-cpu, ort-trt (only when named); ort / torch: that "
                "package's best device")


def session_options(f):
    """The options every inference command shares (how a back end is opened)."""
    for opt in reversed([
        click.option("--threads", type=click.IntRange(1, 1024), default=None,
                     help="CPU threads for one inference (ONNX Runtime intra-op, torch) [default: all cores]."),
        click.option("--cuda-graph", is_flag=True, help="Capture a CUDA graph per batch size (tensorrt, ort-cuda, torch-cuda)."),
        click.option("--torch-compile", is_flag=True, help="torch.compile the module (torch back ends)."),
        click.option("--amp", type=click.Choice(["off", "fp16", "bf16"]), default=None,
                     help="torch-cuda autocast [default: the artifact's precision]."),
        click.option("--device-id", type=click.IntRange(0, 1024), default=0, show_default=True, help="Which GPU."),
        click.option("--tf32", is_flag=True, help="Let fp32 work on CUDA use TF32 (faster; about fp16's precision)."),
        click.option("--rebuild", is_flag=True, help="tensorrt: first rebuild a model.engine built for another GPU, "
                                                     "TensorRT or model.onnx, instead of refusing it."),
    ]):
        f = opt(f)
    return f


def _options(artifact, backend, threads, cuda_graph, torch_compile, amp, device_id, tf32, rebuild):
    """The session Options; with --rebuild, first the rebuild step (runtime.gate.rebuild_stale), since
    opening a session never rebuilds."""
    from ..runtime import Options
    if rebuild:
        from ..manifest import folder_of
        from ..runtime.gate import rebuild_stale
        rebuild_stale(folder_of(artifact), backend, device_id)
    return Options(threads=threads, cuda_graph=cuda_graph, torch_compile=torch_compile, amp=amp, device_id=device_id,
                   tf32=tf32)


def _progress(total: int, enabled: bool):
    """A rich progress bar on stderr, only on a terminal and only for long runs."""
    import contextlib
    if not enabled:
        return contextlib.nullcontext(lambda n: None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ..render import console

    @contextlib.contextmanager
    def bar():
        with Progress(TextColumn("inference"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=console(stderr=True), transient=True) as p:
            task = p.add_task("run", total=total)
            yield lambda n: p.advance(task, n)
    return bar()


@click.command("run")
@click.argument("artifact", type=click.Path())
@click.argument("inputs", nargs=-1, required=True)
@click.option("--backend", default="auto", show_default=True, help=BACKEND_HELP)
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH), default=32, show_default=True)
@click.option("--top-k", type=click.IntRange(1, 1000), default=5, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON Lines on stdout, one object per input, in input order.")
@click.option("--save", "save", type=click.Path(), default=None,
              help="Save every output of every input as DIR/<input stem>.<output>.npy (docs/inference.md).")
@click.option("--save-masks", "save_masks", type=click.Path(), default=None,
              help="For each [C, H, W] output with labels: DIR/<input stem>.<output>.png, the arg-max class of "
                   "each pixel as a palette PNG at the input image's own size.")
@click.option("--workers", type=click.IntRange(0, 256), default=None,
              help="Threads decoding images beside inference (0: decode in line) [default: the cores --threads "
                   "leaves, at most 4; without --threads, half the cores, 0 on 1 or 2 cores].")
@preprocess_options
@session_options
def run_cmd(artifact, inputs, backend, batch_size, top_k, as_json, save, save_masks, workers, **opts):
    """Run the model ARTIFACT (a compiled folder, its model.onnx, or a plain ONNX file) on INPUTS.

    INPUTS: image files (JPEG, PNG, BMP, GIF, TIFF, WebP), folders (recursive, sorted), .npy files
    holding the network's input as is ([C, H, W] or a batch [N, C, H, W]), .npz files holding one
    sample of every input by name (models with several inputs take these), or - for paths on
    standard input. A vector output prints its top-k classes; other outputs are saved with --save
    (and class maps with --save-masks). An input that cannot be used is reported on its own line
    and skipped; the exit status is 1 if any input failed. A plain ONNX file takes its preprocess from
    --mean/--std/--resize/--crop (else its metadata's), its class names from --labels.
    """
    def body():
        from ..runtime import open_session
        model = model_arg(artifact, opts)
        size = getattr(model, "batch", None) or batch_size   # an ONNX file that fixes its batch at 1: 1
        session = open_session(model, backend, _options(artifact, backend, **opts))
        try:
            with session:
                return _run_session(session, artifact, inputs, size, top_k, as_json, workers, save, save_masks)
        except BrokenPipeError:   # `resgraph run ... | head`: the reader has what it wanted; stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1

    sys.exit(1 if run(body) else 0)


def _run_session(session, artifact, inputs, batch_size, top_k, as_json, workers, save=None, save_masks=None) -> int:
    """run's loop: the table or JSON Lines on stdout, a batch at a time; returns how many inputs failed."""
    import time

    from ..render import escape   # names, labels and errors come from files: no escape sequence reaches the terminal
    from ..runtime import expand, predict_batches
    from ..runtime.inputs import no_inputs
    from ..runtime.outputs import Writer, check_saving, file_stems, plan_outputs
    say(f"resgraph: {escape(session.manifest.name)} on {session.describe()} ({session.why})")
    if not session.manifest.trained:   # once, on stderr: the answers below come from untrained weights
        say(f"note: {escape(session.manifest.name)} is untrained ({escape(session.manifest.weights_source)}): its "
            "answers are not predictions; compile it with --weights from resgraph train or import-weights")
    from ..runtime.base import cpu_warning
    weaker = cpu_warning(session.manifest, session.backend)   # an int8 folder on a CPU weaker than its gate's
    if weaker:
        say(f"warning: {escape(weaker)}")
    plans = plan_outputs(session.outputs, session.labels)
    check_saving(artifact, session.manifest.name, plans, save, save_masks)
    items = expand(inputs, sys.stdin, session.input_shape)
    if not items:
        raise no_inputs(inputs)
    classic = len(plans) == 1 and plans[0].vector and not (save or save_masks)   # today's classifier lines
    writer = None if classic else Writer(plans, file_stems(items), save, save_masks)
    lines = RunLines(items, plans, top_k, as_json, writer)
    out = click.get_text_stream("stdout")
    failed, done = 0, 0
    t0 = time.perf_counter()
    long_run = sys.stderr.isatty() and len(items) > 2 * batch_size
    with _progress(len(items), long_run) as advance:
        for batch in predict_batches(session, items, batch_size, workers, geometry=bool(save_masks)):
            out.write("\n".join(lines.batch(batch, done)) + "\n")   # a batch at a time: one write, not one per line
            out.flush()
            failed += sum(not r.ok for r in batch)
            done += len(batch)
            advance(len(batch))
    seconds = time.perf_counter() - t0
    n = len(items)
    say(f"{n} input{'s' * (n != 1)}: {n - failed} ok, {failed} failed; {seconds:.2f} s ({n / seconds:,.0f} inputs/s)")
    return failed


SHAPE_HELP = ("HxW of the first input, for a model with size variables: several comma-separated or repeated, "
              "each a valid size (docs/inference.md)")


@click.command("bench")
@click.argument("artifact", type=click.Path())
@click.option("--backend", default="auto", show_default=True,
              help="One back end, a comma-separated list, or 'all' (every usable one, side by side). " + BACKEND_HELP)
@click.option("--batch", default=None, help="Batch sizes, comma-separated [default: 1,8,32; a model whose ONNX file "
                                             "fixes its batch at 1: 1].")
@click.option("--shape", "shapes", multiple=True,
              help=SHAPE_HELP + " [default: the preprocess crop if valid, else the smallest valid size from 224 up, "
                                "else the largest].")
@click.option("--duration", type=FiniteFloat(0.01, 3600), default=3.0, show_default=True,
              help="Seconds measured per back end and batch size.")
@click.option("--warmup", type=FiniteFloat(0, 3600), default=1.0, show_default=True, help="Seconds run first, unmeasured.")
@click.option("--cv-threshold", type=FiniteFloat(0, 10), default=None,
              help="Flag a run as noisy above this coefficient of variation of the latencies [default: 0.10].")
@click.option("--json", "as_json", is_flag=True, help="One JSON object (see docs/inference.md).")
@click.option("--triton", "triton_url", default=None,
              help="Also measure this Triton endpoint serving the model (http://HOST:PORT or grpc://HOST:PORT).")
@click.option("--triton-model", default=None, help="The model's name on the Triton server [default: the spec's name].")
@session_options
def bench_cmd(artifact, backend, batch, shapes, duration, warmup, cv_threshold, as_json, triton_url, triton_model, **opts):
    """Latency and throughput of ARTIFACT (a compiled folder or a plain ONNX file) per back end, shape
    and batch size, trtexec-style."""
    def body():
        from ..runtime.bench import bench_all, report, sizes_at
        from ..runtime.foreign import manifest_of, model_of
        from ..runtime.session import named_backends
        folder = model_of(artifact)
        sizes = batch_sizes(folder, _int_list(batch, "--batch") if batch else None, "--batch")
        at = sizes_at(manifest_of(folder), _shape_list(shapes)) if shapes else None
        names, skipped = named_backends(backend, folder)
        results, failed = bench_all(folder, names, sizes, duration, warmup, _options(artifact, backend, **opts),
                                    cv_threshold, (triton_url, triton_model) if triton_url else None,
                                    keep_going=backend == "all", say=(lambda m: None) if as_json else say, shapes=at)
        r = report(folder, results, skipped + failed, duration, warmup)
        for w in r["warnings"]:   # on stderr in either form; --json also holds them
            say(f"warning: {w}")
        if as_json:
            click.echo(json.dumps(r, indent=2))
        else:
            _bench_table(r)
    run(body)


def _shape_list(values) -> list[tuple[int, int]]:
    """--shape values (repeated, each possibly comma-separated) as (H, W) pairs, each once; each part
    read by the HxW option type (one home for what a size looks like)."""
    from ..errors import OptionError
    out = []
    for part in (p.strip() for v in values for p in v.split(",")):
        try:
            hw = HxW().convert(part, None, None)
        except click.BadParameter as e:
            raise OptionError.at("--shape", e.message, "e.g. --shape 224x224, or --shape 224x224,512x512") from None
        if hw in out:
            raise OptionError.at("--shape", f"--shape names {hw[0]}x{hw[1]} twice", "give each shape once")
        out.append(hw)
    return out


def _int_list(text: str, option: str) -> list[int]:
    """A comma-separated list of batch sizes, each once: '1,,2', '0', '8,8' are refused, not guessed at."""
    from ..errors import OptionError
    from ..limits import MAX_BATCH
    parts = [v.strip() for v in text.split(",")]
    values = [int(v) for v in parts if v.isdigit()]
    if not parts or len(values) != len(parts) or any(v < 1 or v > MAX_BATCH for v in values):
        raise OptionError.at(option, f"'{text}' is not a list of batch sizes",
                             f"positive integers up to {MAX_BATCH:,}, comma-separated, e.g. {option} 1,8,32")
    if len(set(values)) != len(values):
        twice = sorted({v for v in values if values.count(v) > 1})
        raise OptionError.at(option, f"'{text}' names batch {', '.join(map(str, twice))} twice", "give each size once")
    return values


def _bench_table(report: dict) -> None:
    """Two tables that fit an 80-column terminal: throughput (with the host<->device copies where a
    back end has a device) and latency per query. The mean is in --json. A model with size variables
    gets the two for each shape measured, the shape in their titles."""
    from rich.markup import escape

    from ..render import console
    from ..render import escape as plain   # then rich's escape: no control character, no markup
    results = report["results"]
    device = any(r["h2d_ms"] is not None for r in results)
    shaped = bool(report.get("macs_at"))
    ms = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
    rate = lambda v: "—" if v is None else f"{v:,.0f}" if v >= 1000 else f"{v:,.1f}"  # noqa: E731  (a tenth of 10^6/s says nothing)
    out = console()
    macs_at = f" at {report['macs_at']}" if shaped else ""
    out.print(escape(plain(f"{report['model']} ({report['precision']}): {report['duration_s']:g} s per row, "
                           f"{report['macs_per_image']:,} MACs per image{macs_at}")))
    noisy = []
    for shape in dict.fromkeys(r.get("shape") for r in results):
        at = f", {shape}" if shaped and shape else ""
        thr = _table(f"throughput{at}", ("queries/s", "images/s", "GFLOP/s", *(("H2D ms", "D2H ms") if device else ()), "CV"))
        lat = _table(f"latency per query, ms{at}", ("median", "p90", "p95", "p99", "min", "max"))
        for r in (r for r in results if r.get("shape") == shape):
            head = (escape(plain(r["backend"])), str(r["batch"]))
            thr.add_row(*head, rate(r["throughput"]["queries_per_s"]), rate(r["throughput"]["images_per_s"]),
                        rate(r["gflops"]), *((ms(r["h2d_ms"]), ms(r["d2h_ms"])) if device else ()),
                        f"{r['cv']:.1%}" + (" !" if r["noisy"] else ""))
            lat.add_row(*head, *(ms(r["latency_ms"][k]) for k in ("median", "p90", "p95", "p99", "min", "max")))
            if r["noisy"]:
                noisy.append(f"{r['backend']} batch {r['batch']}" + (f" at {shape}" if at else ""))
        out.print(thr)
        out.print(lat)
    out.print("one query = one batch; images/s = queries/s x batch; mean latency: --json")
    if shaped:
        out.print(f"GFLOP/s{macs_at} only: the manifest's MACs are that size's")
    for s in report["skipped"]:
        out.print(escape(plain(f"skipped {s['backend']}: {s['reason']}" + (f"  ({s['install']})" if s.get("install") else ""))))
    if noisy:
        say(f"warning: noisy measurement (CV above the threshold) for {', '.join(noisy)}: other load on the machine? "
            "Rerun with a longer --duration")


def _table(title: str, cols: tuple[str, ...]):
    from rich import box
    from rich.table import Table
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False,
              collapse_padding=True, show_edge=False)
    for col in ("backend", "batch", *cols):
        t.add_column(col, justify="left" if col == "backend" else "right", no_wrap=True)
    return t


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True)
def doctor_cmd(as_json):
    """What this machine can run: Python, packages, CUDA, GPUs, and each back end with the command
    that makes it usable."""
    def body():
        from ..runtime.doctor import report
        r = report()
        if as_json:
            click.echo(json.dumps(r, indent=2))
            return
        from rich.markup import escape
        from rich.table import Table

        from ..render import console
        out = console()
        out.print(f"python      {r['python']['version']} ({r['python']['executable']})")
        out.print(f"platform    {r['platform']}")
        from ..runtime.cpu import meaning
        c = r["cpu"]
        out.print(escape(f"CPU int8    {c['int8_dot'] or 'unknown'}: {meaning(c['int8_dot'])}; "
                         f"flags {' '.join(c['flags']) if c['flags'] is not None else 'unknown'} ({c['model'] or '?'})"))
        out.print(f"resgraph    {r['resgraph']}")
        for p, v in r["packages"].items():
            if v or p in ("onnxruntime", "torch", "tensorrt", "onnx"):
                out.print(f"{p:<11} {v or '-'}")
        if "torch" in r:
            t = r["torch"]
            out.print(f"torch CUDA  {t.get('cuda') or 'none (CPU build)'}; available: {t.get('cuda_available', False)}"
                      if "error" not in t else f"torch       broken: {t['error']}")
        if "onnxruntime" in r:
            o = r["onnxruntime"]
            out.print(f"ORT EPs     {', '.join(o.get('providers', [])) or o.get('error')}")
        if "tensorrt" in r:
            out.print(f"TensorRT    {r['tensorrt'].get('version') or 'broken: ' + r['tensorrt']['error']}")
        gpus = r["nvidia"]["gpus"]
        out.print(f"NVIDIA      driver {r['nvidia']['driver'] or '-'}; " +
                  ("; ".join(f"GPU {g['index']}: {g['name']}, {g['memory_mib']:,} MiB, compute {g['compute_capability']}"
                             for g in gpus) if gpus else "no GPU found"))
        t = Table(title="back ends", title_justify="left")
        for col in ("back end", "usable", "why", "to make it usable"):
            t.add_column(col)
        for b in r["backends"]:
            t.add_row(b["name"], "[green]yes[/]" if b["usable"] else "[red]no[/]", escape(b["reason"]), escape(b["install"] or ""))
        out.print(t)
        for w in r["warnings"]:
            out.print(f"[yellow]warning:[/] {escape(w)}")
    run(body)


COMMANDS = (run_cmd, bench_cmd, doctor_cmd)
