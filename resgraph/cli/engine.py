"""TensorRT engine commands: `resgraph engine build | info`, and the engine options `compile --engine`
shares with them. Parsing and rendering only: the work is in resgraph.backends.tensorrt and, for the
parity gate, resgraph.runtime.gate.
"""
from __future__ import annotations

import json
import sys

import click

from .common import run

ENGINE_FLAGS = ("batch", "shapes", "min_shapes", "opt_shapes", "max_shapes", "workspace", "opt_level", "timing_cache",
                "no_timing_cache", "hardware_compatibility", "version_compatible")
# the BuildOptions flags (backends.tensorrt.options.from_flags)


def engine_options(f):
    """The options of an engine build (trtexec's names in brackets in the help)."""
    for opt in reversed([
        click.option("--batch", "batch", default=None,
                     help="Batch profile MIN:OPT:MAX of every input (N: fixed; MIN:MAX: opt = max) [the first dim of "
                          "trtexec's --minShapes/--optShapes/--maxShapes] [default: 1:32:32, the batch of --shapes "
                          "where given, or the engine's own when rebuilding]."),
        click.option("--shapes", default=None, metavar="NAME:MIN:OPT:MAX,...",
                     help="Each input's profile, shapes as trtexec writes them with the batch first, e.g. "
                          "image:1x3x224x224:8x3x512x512:32x3x1024x1024 (one shape: fixed, as trtexec --shapes; "
                          "MIN:MAX: opt = max); inputs not named: --batch, and each size variable from its smallest "
                          "valid size to its largest (docs/tensorrt.md)."),
        click.option("--min-shapes", default=None, metavar="NAME:SHAPE,...",
                     help="trtexec's --minShapes; with --opt-shapes, --max-shapes, each point not given filled as "
                          "trtexec fills it (docs/tensorrt.md)."),
        click.option("--opt-shapes", default=None, metavar="NAME:SHAPE,...", help="trtexec's --optShapes."),
        click.option("--max-shapes", default=None, metavar="NAME:SHAPE,...", help="trtexec's --maxShapes."),
        click.option("--workspace", type=click.IntRange(1, 1 << 24), default=None,
                     help="Workspace pool limit in MiB [--memPoolSize=workspace:N] [default: TensorRT's, the GPU's memory]."),
        click.option("--opt-level", type=click.IntRange(0, 5), default=None,
                     help="Builder optimisation level 0-5: higher searches longer for faster kernels "
                          "[--builderOptimizationLevel] [default: 3]."),
        click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
                     help="Timing cache file [--timingCacheFile] [default: one per TensorRT version and GPU under "
                          "~/.cache/resgraph/tensorrt]."),
        click.option("--no-timing-cache", is_flag=True, help="Build without reading or writing a timing cache."),
        click.option("--hardware-compatibility", type=click.Choice(["none", "ampere-plus", "same-compute-capability"]),
                     default=None, help="Run on other GPUs than the one that builds [--hardwareCompatibilityLevel] "
                                        "[default: none]."),
        click.option("--version-compatible", is_flag=True, default=None,
                     help="Run on later TensorRT versions of the same major [--versionCompatible]."),
        click.option("--no-parity-gate", is_flag=True, help="Keep the engine without checking it against ONNX Runtime "
                                                            "and PyTorch."),
        click.option("--device-id", "engine_device", type=click.IntRange(0, 1024), default=0, show_default=True,
                     help="The GPU that builds (and that the engine is for)."),
        click.option("--verbose", is_flag=True, help="Print TensorRT's warnings and messages while building."),
    ]):
        f = opt(f)
    return f


def parity_gate(options, device_id: int):
    """The gate compile --engine and engine build run on the staged folder, printing its pairs."""
    def gate(folder):
        from ..runtime import Options
        from ..runtime.gate import gate as run_gate
        for where, p in run_gate(folder, Options(device_id=device_id)):
            if "tensorrt" in (p.reference, p.other):
                click.echo(f"  parity at {where}: {p.other} vs {p.reference}: max |a-b| {p.max_abs:.2e}  ok "
                           f"({p.tolerance})", err=True)
    return gate


def print_engine(info, folder: str) -> None:
    """engine.json's record in two lines; what came from the file is escaped (a forged one must not
    reach the terminal as escape sequences)."""
    from ..render import escape
    o = info.options
    # the batch profile where every other dim is fixed; else every input's MIN:OPT:MAX (as --shapes takes them)
    profile = f"batch {o.batch}" if all(p.fixed for p in info.profile) else \
        f"shapes {','.join(map(str, info.profile))}"
    click.echo(escape(f"  model.engine  {info.engine_bytes:>12,} bytes  TensorRT {info.tensorrt_version}, {o.precision}"
                      f"{' (strongly typed)' if info.strongly_typed else ''}, {profile}, {info.gpu_name} "
                      f"(sm {info.compute_capability}), built in {info.build_seconds:.1f} s"))
    click.echo("  engine.json")


@click.group("engine")
def engine_group():
    """TensorRT engines of compiled folders: build one, or show one and whether it runs here."""


@engine_group.command("build")
@click.argument("artifact", type=click.Path())
@click.option("--precision", type=click.Choice(["fp32", "tf32", "fp16", "bf16", "int8"]), default=None,
              help="Engine precision [default: the engine's own when rebuilding, else the folder's]; int8: from an "
                   "int8 folder (resgraph quantize), a strongly typed network of its model.s8.onnx.")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False), default=None,
              help="A plain ONNX file's engine [default: FILE.engine beside it, its record FILE.engine.json] "
                   "[trtexec's --saveEngine].")
@engine_options
def build_cmd(artifact, precision, output, engine_device, no_parity_gate, verbose, **flags):
    """Build model.engine (+ engine.json) in the compiled folder ARTIFACT from its model.onnx (an int8
    folder's model.s8.onnx), replacing any engine there; the folder is republished atomically, like compile's.
    ARTIFACT may be a plain ONNX file: its engine goes beside it (-o), without a parity gate."""
    def body():
        from ..backends.tensorrt.build import build_engine, plan_build
        from ..render import console
        from ..runtime.foreign import is_plain_onnx
        if is_plain_onnx(artifact):
            return _build_plain(artifact, precision, output, engine_device, verbose, flags)
        if output:
            from ..errors import OptionError
            raise OptionError.at("--output", "a compiled folder's engine is its model.engine", "leave -o out")
        folder, manifest, options = plan_build(artifact, precision, flags)
        gate = None if no_parity_gate else parity_gate(options, engine_device)
        with console(stderr=True).status(f"building model.engine ({options.command_flags()})"):
            info = build_engine(folder, options, engine_device, gate=gate, verbose=verbose)
        click.echo(f"built {manifest.name} -> {folder}/")
        print_engine(info, folder)
    run(body)


def _build_plain(path, precision, output, engine_device, verbose, flags) -> None:
    """engine build of a plain ONNX file (runtime.foreign_engine): FILE.engine + FILE.engine.json."""
    from ..render import console
    from ..runtime.foreign_engine import build_foreign_engine, plan_foreign_build
    model, options = plan_foreign_build(path, precision, flags)
    with console(stderr=True).status(f"building {output or 'the engine'} ({options.command_flags()})"):
        out, info = build_foreign_engine(model, options, output, engine_device, verbose)
    click.echo(f"built {model.manifest.name} -> {out} (+ {out}.json)")


@engine_group.command("info")
@click.argument("artifact", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="engine.json, with a `here` section.")
@click.option("--device-id", type=click.IntRange(0, 1024), default=0, show_default=True)
def info_cmd(artifact, as_json, device_id):
    """Show ARTIFACT's engine.json and whether its model.engine can run on this machine (exit 1 if not)."""
    def body():
        from ..backends.tensorrt.engine_json import engine_report
        report, info, folder = engine_report(artifact, device_id)
        if as_json:
            click.echo(json.dumps(report, indent=2))
        else:
            _print_info(report, info, folder)
        return report["here"]["runs"] is False
    sys.exit(1 if run(body) else 0)


def _print_info(report: dict, info, folder: str) -> None:
    from ..render import escape
    here = report["here"]
    print_engine(info, folder)
    click.echo(escape(f"  inputs  {', '.join(f'{t.name} {list(t.shape)} {t.dtype}' for t in info.inputs)}"))
    click.echo(escape(f"  outputs {', '.join(f'{t.name} {list(t.shape)} {t.dtype}' for t in info.outputs)}"))
    click.echo(escape(f"  profile {','.join(map(str, info.profile))}  (per input NAME:MIN:OPT:MAX)"))
    onnx = "model.s8.onnx" if info.options.precision == "int8" else "model.onnx"
    click.echo(escape(f"  from {onnx} sha256 {info.onnx_sha256[:16]}"))
    if here["runs"] is None:
        click.echo(f"  here: cannot tell ({escape(str(here.get('why')))})")
    elif not here["runs"]:
        click.echo(escape("  here: does not run: " + "; ".join(m["why"] for m in here["mismatches"])))
        click.echo(escape(f"  rebuild: {here['rebuild']}"))
    else:
        click.echo(f"  here: runs (TensorRT {here['tensorrt_version']}, {escape(here['gpu'])}, sm {here['compute_capability']})")


COMMANDS = (engine_group,)
