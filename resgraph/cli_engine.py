"""TensorRT engine commands: `resgraph engine build | info`, and the engine options `compile --engine`
shares with them. Parsing and rendering only: the work is in resgraph.backends.tensorrt.
"""
from __future__ import annotations

import json
import sys

import click


def engine_options(f):
    """The options of an engine build (trtexec's names in brackets in the help)."""
    for opt in reversed([
        click.option("--batch", "batch", default=None,
                     help="Batch profile MIN:OPT:MAX (N: fixed; MIN:MAX: opt = max) [trtexec --minShapes/--optShapes/"
                          "--maxShapes] [default: 1:32:32, or the engine's own when rebuilding]."),
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


def build_options(precision, batch, workspace, opt_level, timing_cache, no_timing_cache, hardware_compatibility,
                  version_compatible, base=None):
    """BuildOptions from the command line; what is not given comes from `base` (the engine being
    rebuilt), else the defaults."""
    from .backends.tensorrt.options import BatchProfile, BuildOptions
    from .errors import OptionError
    if timing_cache and no_timing_cache:
        raise OptionError.at("--timing-cache", "--timing-cache and --no-timing-cache together", "give one of them")
    b = base or BuildOptions(precision=precision or "fp32")
    return BuildOptions(
        precision=precision or b.precision,
        batch=BatchProfile.parse(batch) if batch is not None else b.batch,
        workspace_mib=workspace if workspace is not None else b.workspace_mib,
        optimization_level=opt_level if opt_level is not None else b.optimization_level,
        timing_cache="" if no_timing_cache else timing_cache,
        hardware_compatibility=hardware_compatibility or b.hardware_compatibility,
        version_compatible=bool(version_compatible) if version_compatible is not None else b.version_compatible)


def parity_gate(options, device_id: int):
    """The gate compile --engine and engine build run on the staged folder (None: skipped)."""
    def gate(folder):
        from .runtime import Options
        from .runtime.parity import gate as run_gate
        o = options.batch
        pairs = run_gate(folder, Options(device_id=device_id), o.sizes())
        for p in pairs:
            if "tensorrt" in (p.reference, p.other):
                click.echo(f"  parity {p.other} vs {p.reference}: max |a-b| {p.max_abs:.2e}  ok ({p.tolerance})", err=True)
    return gate


def print_engine(info, folder: str) -> None:
    o = info.options
    click.echo(f"  model.engine  {info.engine_bytes:>12,} bytes  TensorRT {info.tensorrt_version}, {o.precision}"
               f"{' (strongly typed)' if info.strongly_typed else ''}, batch {o.batch}, {info.gpu_name} "
               f"(sm {info.compute_capability}), built in {info.build_seconds:.1f} s")
    click.echo("  engine.json")


@click.group("engine")
def engine_group():
    """TensorRT engines of compiled folders: build one, or show one and whether it runs here."""


@engine_group.command("build")
@click.argument("artifact", type=click.Path())
@click.option("--precision", type=click.Choice(["fp32", "tf32", "fp16", "bf16"]), default=None,
              help="Engine precision [default: the engine's own when rebuilding, else model.onnx's].")
@engine_options
def build_cmd(artifact, precision, engine_device, no_parity_gate, verbose, **opts):
    """Build model.engine (+ engine.json) in the compiled folder ARTIFACT from its model.onnx, replacing
    any engine there; the folder is republished atomically, like compile's."""
    from .cli import _run

    def body():
        from .artifacts import folder_of, read_manifest
        from .backends.tensorrt.build import build_engine
        from .backends.tensorrt.engine_json import read_engine_info
        from .render import console
        folder = folder_of(artifact)
        manifest = read_manifest(folder)
        base = None
        if "model.engine" in manifest.artifacts:
            try:
                base = read_engine_info(folder).options
            except Exception:  # noqa: BLE001  (a damaged engine.json: build from the defaults)
                base = None
        options = build_options(precision or (None if base else manifest.precision), base=base, **opts)
        from .backends.tensorrt.build import import_tensorrt
        from .backends.tensorrt.options import typing_plan, version_tuple
        # before any work: TensorRT present, and the precision buildable from this model.onnx on its version
        typing_plan(options.precision, manifest.precision, version_tuple(import_tensorrt().__version__), "--precision")
        gate = None if no_parity_gate else parity_gate(options, engine_device)
        with console(stderr=True).status(f"building model.engine ({options.command_flags()})"):
            info = build_engine(folder, options, engine_device, gate=gate, verbose=verbose)
        click.echo(f"built {manifest.name} -> {folder}/")
        print_engine(info, folder)
    _run(body)


@engine_group.command("info")
@click.argument("artifact", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="engine.json, with a `here` section.")
@click.option("--device-id", type=click.IntRange(0, 1024), default=0, show_default=True)
def info_cmd(artifact, as_json, device_id):
    """Show ARTIFACT's engine.json and whether its model.engine can run on this machine (exit 1 if not)."""
    from .cli import _run

    def body():
        from .artifacts import folder_of, read_manifest
        from .backends.tensorrt.engine_json import mismatches, read_engine_info, rebuild_command
        folder = folder_of(artifact)
        manifest = read_manifest(folder)
        info = read_engine_info(folder)
        here = _here(device_id)
        found = None
        if here.get("tensorrt_version") and here.get("compute_capability"):
            found = mismatches(info, here["tensorrt_version"], here["compute_capability"],
                               manifest.artifacts["model.onnx"].sha256 if "model.onnx" in manifest.artifacts else "",
                               here.get("gpu"))
        report = {**info.to_json(), "here": {**here, "runs": None if found is None else not found,
                                              "mismatches": [{"what": w, "why": y} for w, y in found or []],
                                              "rebuild": rebuild_command(folder, info)}}
        if as_json:
            click.echo(json.dumps(report, indent=2))
        else:
            print_engine(info, folder)
            click.echo(f"  inputs  {', '.join(f'{t.name} {list(t.shape)} {t.dtype}' for t in info.inputs)}")
            click.echo(f"  outputs {', '.join(f'{t.name} {list(t.shape)} {t.dtype}' for t in info.outputs)}")
            click.echo(f"  from model.onnx sha256 {info.onnx_sha256[:16]}")
            if found is None:
                click.echo(f"  here: cannot tell ({here.get('why')})")
            elif found:
                click.echo("  here: does not run: " + "; ".join(y for _, y in found))
                click.echo(f"  rebuild: {rebuild_command(folder, info)}")
            else:
                click.echo(f"  here: runs (TensorRT {here['tensorrt_version']}, {here['gpu']}, sm {here['compute_capability']})")
        return bool(found)
    sys.exit(1 if _run(body) else 0)


def _here(device_id: int) -> dict:
    """This machine's TensorRT version and GPU, as far as they can be read."""
    import importlib.util
    out: dict = {}
    if importlib.util.find_spec("tensorrt") is None:
        return {"why": "tensorrt is not installed"}
    try:
        import tensorrt as trt
        out["tensorrt_version"] = trt.__version__
    except Exception as e:  # noqa: BLE001  (a broken install: say so)
        return {"why": f"tensorrt does not import: {e}"}
    from .backends.tensorrt.gpu import gpu
    from .errors import ResgraphError
    try:
        g = gpu(device_id)
    except ResgraphError as e:   # BackendError: no GPU to query, no cuda-python
        return {**out, "why": e.message}
    return {**out, "gpu": g.name, "compute_capability": g.compute_capability}
