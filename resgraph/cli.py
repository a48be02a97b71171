"""The command line: argument parsing, rendering and exit codes. No compiler logic lives here.

Exit codes: 0 ok, 1 the spec has errors (or warnings with --strict) or another user error (a
ResgraphError: weights, data, a path, a compiled folder, a back end, an option), 2 usage, 70 internal
error.
"""
from __future__ import annotations

import json
import os
import sys

import click

from . import __version__
from .cli_engine import build_options, engine_group, engine_options, parity_gate, print_engine
from .errors import OptionError, ResgraphError


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
    """Check a file, or standard input for '-' (editors and pipes), or the spec compiled into a folder."""
    from .frontend import check_file, check_text
    if path == "-":
        from .render import remember_source
        text = sys.stdin.read(4 << 20)
        remember_source("<stdin>", text)
        return check_text(text, "<stdin>")
    spec = _compiled_spec(path)
    if spec is not None:
        from .render import remember_source
        text = spec.decode("utf-8")
        where = os.path.join(os.path.dirname(path) if os.path.isfile(path) else path, "spec.yaml")
        remember_source(where, text)
        return check_text(text, where, read_files=False)   # the labels are in the manifest already
    return check_file(path)


def _compiled_spec(path: str) -> bytes | None:
    """These commands take a spec. A compiled folder (or its model.onnx) holds its spec byte for byte
    (spec.yaml, its sha256 in the manifest): that one, checked, with a note saying so. An ONNX file
    outside a compiled folder, or another folder, is a one-line error saying what they take."""
    from .artifacts import read_manifest, read_spec
    from .errors import PathError
    onnx_file = path.endswith(".onnx") and os.path.isfile(path)
    folder = path if os.path.isdir(path) else os.path.dirname(path) or "." if onnx_file else None
    if folder is None:
        return None
    if not os.path.isfile(os.path.join(folder, "manifest.json")):
        if onnx_file:
            raise OptionError.at(path, "this command takes a spec (YAML), not an ONNX model",
                                 "give the spec it was compiled from, or its compiled folder (compiled/NAME)")
        raise PathError.at(path, "a folder, not a spec", "give a spec file, or a compiled folder (it holds manifest.json)")
    manifest = read_manifest(folder)
    spec_path, raw = read_spec(folder, manifest)
    click.echo(f"note: {path} is compiled from {manifest.name}'s spec; checking {spec_path}", err=True)
    return raw


@cli.command()
@click.argument("specs", nargs=-1, required=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (the contract's format).")
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
def check(specs, as_json, strict):
    """Check every dimension along every edge of SPECS ('-' reads standard input); report inserted
    projections (Ws). With --json and several specs, one JSON object per line."""
    failed = False
    for path in specs:
        try:
            c = _check(path)
        except ResgraphError as e:
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
    from rich.text import Text

    from .render import console, diagnostic, escape
    err = console(stderr=True)
    for d in diags:
        err.print(diagnostic(d))
    n = sum(d.severity == "error" for d in diags)
    err.print(Text(f"{escape(str(path))}: {n} error{'s' * (n != 1)}", style="bold red"))   # a path is not markup


def _print_ok(path, c):
    from rich.text import Text

    from .ops import fmt
    from .render import console, diagnostic, escape, human_int
    out = console()
    g = c.graph
    t = Text()
    t.append("ok ", style="bold green")
    t.append(f"{escape(str(path))}: {g.name}  {g.input_name} {fmt(g.nodes[0].shape)} -> {g.output_name} {fmt(g[g.output].shape)}\n")
    t.append(f"   params {c.params:,}   MACs {c.macs:,} ({human_int(c.macs)})   "
             f"{len(g.nodes) - 1} nodes   {len(g.projections)} projection{'s' * (len(g.projections) != 1)} inserted\n")
    for p in g.projections:
        kind = p.kind + ("" if p.bn or p.kind != "conv1x1" else " (no bn)")
        t.append(f"   Ws at {p.at}: {kind} {fmt(p.from_shape)} -> {fmt(p.to_shape)}, stride {p.stride}, "
                 f"{p.params:,} params\n", style="yellow")
    t.rstrip()
    out.print(t)
    err = console(stderr=True)
    for w in c.warnings:
        err.print(diagnostic(w))


@cli.command()
@click.argument("spec", type=click.Path())
@click.option("--depth", type=click.IntRange(1, 16), default=None,
              help="Collapse paths deeper than this into one row (like torchinfo's depth).")
def summary(spec, depth):
    """A layer table of SPEC: path, op, output shape, params, MACs, skip edges; inserted Ws marked."""
    c = _run(lambda: _check(spec))
    from .render import console, summary_table, totals_text
    out = console()
    out.print(summary_table(c, depth))
    out.print(totals_text(c))


@cli.command()
@click.argument("spec", type=click.Path())
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Draw it instead: .svg, .png, .pdf (Graphviz's dot renders them) or .dot.")
@click.option("--collapse", is_flag=True, help="One node per residual block (large networks).")
def graph(spec, output, collapse):
    """Print the compiled IR of SPEC as readable Python (shapes and source lines as comments), or draw
    it with -o: blocks as clusters, skip edges dashed, inserted Ws highlighted, shapes on the edges."""
    g = _run(lambda: _check(spec)).graph
    if output is None:
        click.echo(str(g))
        return

    def draw():
        from .draw import write_drawing
        write_drawing(g, output, collapse)
        click.echo(f"drew {g.name} -> {output}  ({len(g.projections)} Ws highlighted)")
    _run(draw)


@cli.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write to this file instead of standard output.")
def schema(output):
    """Print the JSON Schema of the spec language (for editors: yaml-language-server)."""
    from .ops import OPS
    from .spec.schema import json_schema
    text = json.dumps(json_schema(OPS), indent=2) + "\n"
    if output:
        from .fileio import atomic_write_text
        _run(lambda: atomic_write_text(output, text))
    else:
        click.echo(text, nl=False)


# --- the PyTorch side: init, import-weights, train, eval ------------------------------------------

EXTRAS = {"torch": "torch", "safetensors": "onnx", "onnx": "onnx", "onnxruntime": "onnx", "PIL": "onnx", "numpy": "onnx",
          "sklearn": "train", "torchvision": "torchvision", "tensorrt": "tensorrt", "cuda": "tensorrt",
          "pytriton": "serve", "tritonclient": "serve"}   # a missing module -> the extra that installs it


def _run(fn):
    """Run a command body: user errors print like a compiler's and exit 1; bugs exit 70."""
    try:
        return fn()
    except ResgraphError as e:
        _print_diagnostics(e.diagnostics, e.diagnostics[0].loc.file)
        sys.exit(1)
    except OSError as e:   # the environment's (full disk, read-only, permissions), not a bug: name the path
        from .fileio import os_error
        err = os_error(e)
        _print_diagnostics(err.diagnostics, err.file)
        sys.exit(1)
    except ImportError as e:
        top = (e.name or "").split(".")[0]
        extra = EXTRAS.get(top, "torch")
        click.echo(f"resgraph: error: {e}\n  hint: this command needs {top or 'a package'}: pip install 'resgraph[{extra}]'",
                   err=True)
        sys.exit(1)
    except Exception as e:  # noqa: BLE001
        _fail_internal(e)


@cli.command("init")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The .safetensors file to write.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed: the same seed gives the same weights.")
def init_cmd(spec, output, seed):
    """Write freshly initialised weights for SPEC (the spec's init: policies), marked untrained."""
    def body():
        from .backends.torch import save_checkpoint, to_torch
        from .frontend import check_file
        c = check_file(spec)
        m = to_torch(c, seed=seed)
        save_checkpoint(m, output, {"spec": c.spec.name, "spec_sha256": c.spec.sha256, "untrained": "true",
                                    "seed": seed, "resgraph_version": __version__})
        click.echo(f"wrote {output}: {c.params:,} parameters, seed {seed} (untrained)")
    _run(body)


@cli.command("import-weights")
@click.argument("source")
@click.option("--spec", "spec", required=True, type=click.Path(dir_okay=False), help="The spec whose architecture matches.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The .safetensors file to write.")
@click.option("--pretrained", is_flag=True,
              help="Download the library's published weights (torchvision: download.pytorch.org; timm: the "
                   "Hugging Face hub; needs internet unless cached).")
@click.option("--weights-file", type=click.Path(exists=True, dir_okay=False),
              help="The model's state_dict (.pth or .safetensors) downloaded elsewhere, for machines without internet.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed for a randomly initialised model (without --pretrained or --weights-file).")
def import_weights_cmd(source, spec, output, pretrained, weights_file, seed):
    """Import weights from SOURCE (torchvision:NAME or timm:NAME, e.g. torchvision:resnet50,
    timm:resnet50d) into SPEC's layout.

    Tensors are paired in the order the two models use them, by kind, shape and layer, not by name,
    so any spec with the same architecture works whatever its ids; a different architecture fails at
    the first mismatch. Both models then run on one random input and must agree.
    """
    def body():
        from .backends.torch import save_checkpoint
        from .backends.torch.importer import import_model
        from .backends.torch.sources import parse_source
        from .frontend import check_file
        src = parse_source(source)
        c = check_file(spec)
        module, report = import_model(src, c, pretrained=pretrained, weights_file=weights_file, seed=seed)
        origin = "pretrained" if pretrained else (weights_file or f"random init, seed {seed}")
        save_checkpoint(module, output, {"spec": c.spec.name, "spec_sha256": c.spec.sha256,
                                         "untrained": str(not (pretrained or weights_file)).lower(),
                                         "source": f"{src} ({origin})", "resgraph_version": __version__})
        click.echo(f"wrote {output}: {report['tensors']} tensors, {report['params']:,} parameters from "
                   f"{src} ({origin}); verified: largest output difference {report['max_abs_diff']:.2g}")
        if report["unused"]:   # e.g. an auxiliary classifier that only runs in training
            n, first = len(report["unused"]), ", ".join(report["unused"][:3])
            click.echo(f"left out {n} tensors of {src} that its eval-mode forward does not use: {first}"
                       + (", ..." if n > 3 else ""))
    _run(body)


@cli.command("train")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--data", required=True, help="'digits' (scikit-learn's, bundled) or an ImageFolder-style folder.")
@click.option("-o", "--out", type=click.Path(file_okay=False), help="Run folder (default runs/<spec name>).")
@click.option("--epochs", type=click.IntRange(1, 100000), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 1 << 20), default=64, show_default=True, help="Global batch.")
@click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), default="sgd", show_default=True)
@click.option("--lr", type=float, default=None, help="Peak learning rate [default: 0.1 sgd, 0.001 adamw].")
@click.option("--momentum", type=float, default=0.9, show_default=True)
@click.option("--nesterov/--no-nesterov", default=True, show_default=True, help="Nesterov momentum for SGD.")
@click.option("--weight-decay", type=float, default=None, help="[default: 5e-4 sgd, 0.05 adamw]")
@click.option("--schedule", type=click.Choice(["cosine", "constant"]), default="cosine", show_default=True)
@click.option("--warmup-epochs", type=float, default=0.0, show_default=True)
@click.option("--label-smoothing", type=float, default=0.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Initialisation and batch order.")
@click.option("--split-seed", type=int, default=0, show_default=True, help="The train/val split (kept across --seed).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last finished epoch.")
@click.option("--save-every", type=click.IntRange(0, None), default=1, show_default=True,
              help="Keep epoch-NNN.safetensors every N epochs (0: none; last and best are always kept).")
@click.option("--threads", type=click.IntRange(1, 1024), default=None, help="CPU threads for torch.")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False), help="Start from these weights.")
@click.option("--amp/--no-amp", default=None, help="Mixed precision [default: on for CUDA, off on CPU].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--val-split", type=click.FloatRange(0.0, 0.9), default=0.2, show_default=True)
@click.option("--workers", type=click.IntRange(0, 64), default=0, show_default=True)
@click.option("--channels-last", is_flag=True)
@click.option("--sync-bn", is_flag=True, help="Synchronise BatchNorm statistics across processes (torchrun).")
def train_cmd(spec, data, out, **options):
    """Train SPEC on DATA; a checkpoint per epoch, metrics.csv, resumable. Works under torchrun."""
    def body():
        from .render import console
        from .training.loop import TrainConfig, done_line, train
        cfg = TrainConfig(spec=spec, data=data, out=out, **options)
        rows = train(cfg, console())
        if rows and int(os.environ.get("RANK", "0")) == 0:
            click.echo(done_line(cfg, rows))
    _run(body)


@cli.command("eval")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--weights", required=True, type=click.Path(dir_okay=False), help="A .safetensors checkpoint.")
@click.option("--data", required=True, help="'digits' or an ImageFolder-style folder.")
@click.option("--split", type=click.Choice(["val", "train"]), default="val", show_default=True)
@click.option("--val-split", type=click.FloatRange(0.0, 0.9), default=0.2, show_default=True)
@click.option("--split-seed", "seed", type=int, default=0, show_default=True, help="The seed of the train/val split.")
def eval_cmd(spec, weights, data, split, val_split, seed):
    """Accuracy and loss of SPEC with WEIGHTS on DATA (the held-out split by default)."""
    def body():
        import torch

        from .backends.torch import to_torch
        from .frontend import check_file
        from .training.data import load_data
        from .training.loop import evaluate
        c = check_file(spec)
        m = to_torch(c, weights=weights)
        d = load_data(data, c.spec, val_split, seed)
        ds = d.val if split == "val" else d.train
        loss, acc = evaluate(m, ds, torch.device("cpu"))
        click.echo(f"{c.spec.name} on {d.source} ({split}, {len(ds)} samples): accuracy {acc:.4f}, loss {loss:.4f}")
    _run(body)


@cli.command("compile")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--weights", type=click.Path(dir_okay=False), help="A .safetensors checkpoint (default: a fresh seeded init, flagged untrained).")
@click.option("-o", "--out", type=click.Path(file_okay=False), help="Output folder [default: compiled/<name>].")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "tf32", "bf16"]), default="fp32", show_default=True,
              help="fp16: fp16 weights and compute, fp32 input and output. tf32, bf16: engine precisions (with "
                   "--engine; model.onnx stays fp32).")
@click.option("--opset", type=int, default=None, help="ONNX opset, 17 to 21 [default: 17].")
@click.option("--no-fold", is_flag=True, help="Keep batch norms instead of folding them into the layer before.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the fresh init when no --weights.")
@click.option("--external-data", is_flag=True,
              help="Weights in model.onnx.data beside model.onnx: ONNX Runtime maps them (faster start-up). "
                   "Automatic from 2 GiB, which one .onnx file cannot hold.")
@click.option("--engine", is_flag=True, help="Also build a TensorRT engine (model.engine + engine.json) and check it "
                                             "against ONNX Runtime and PyTorch; see docs/tensorrt.md.")
@engine_options
def compile_cmd(spec, weights, out, precision, opset, no_fold, seed, external_data, engine, engine_device,
                no_parity_gate, verbose, **engine_opts):
    """Compile SPEC to ONNX: model.onnx, weights.safetensors and manifest.json (and model.onnx.data with
    --external-data; model.engine and engine.json with --engine), written atomically."""
    def body():
        from .compile import compile_spec
        from .render import console
        if precision in ("tf32", "bf16") and not engine:
            raise OptionError.at("--precision", f"{precision} is an engine precision: it needs --engine",
                                 "model.onnx is fp32 or fp16; add --engine to build a TensorRT engine in " + precision)
        given = [k for k, v in engine_opts.items() if v not in (None, False)] + (["no_parity_gate"] if no_parity_gate else [])
        if given and not engine:
            raise OptionError.at("--" + given[0].replace("_", "-"), "an engine option without --engine",
                                 "add --engine, or build later: resgraph engine build FOLDER ...")
        build = build_options(precision, **engine_opts) if engine else None
        gate = parity_gate(build, engine_device) if engine and not no_parity_gate else None
        con = console(stderr=True)
        with con.status("compiling") as status:
            c = compile_spec(spec, weights=weights, out=out, precision="fp16" if precision == "fp16" else "fp32",
                             opset=opset, fold=not no_fold, seed=seed, external_data=external_data,
                             progress=lambda s: status.update(s), engine=build, engine_device=engine_device, gate=gate,
                             verbose=verbose)
        m = c.manifest
        untrained = "" if m.trained else (f"  (untrained: fresh init, seed {seed})" if not weights
                                             else "  (untrained: the checkpoint is marked so by resgraph init)")
        click.echo(f"compiled {m.name} -> {c.out}/  {m.precision}, opset {m.opset}, "
                   f"{'folded' if m.folded else 'unfolded'} bn, {c.seconds['total']:.2f} s{untrained}")
        for name, info in m.artifacts.items():
            if name not in ("model.engine", "engine.json"):
                click.echo(f"  {name:<20} {info.bytes:>12,} bytes  sha256 {info.sha256[:16]}")
        if engine:
            from .backends.tensorrt.engine_json import read_engine_info
            print_engine(read_engine_info(c.out), c.out)
        click.echo("  manifest.json")
    _run(body)


from .cli_infer import bench_cmd, doctor_cmd, parity_cmd, run_cmd  # noqa: E402  (they use _run above)

from .cli_serve import export_group, serve_cmd  # noqa: E402

for _command in (run_cmd, bench_cmd, parity_cmd, doctor_cmd, engine_group, export_group, serve_cmd):
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="resgraph")


if __name__ == "__main__":
    main()
