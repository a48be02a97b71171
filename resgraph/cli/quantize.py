"""`resgraph quantize`: a compiled fp32 folder to an int8 one (or, with --explain, where int8 costs
accuracy); and the calibration options `compile --precision int8` shares. The work is in quant/."""
from __future__ import annotations

import sys

import click

from .common import FiniteFloat, run


def quant_options(f):
    """Calibration and accuracy-gate options (compile --precision int8 and quantize)."""
    for opt in reversed([
        click.option("--calibrate", "calibrate", multiple=True, metavar="INPUT",
                     help="Calibration inputs, as `run` takes them: images, folders, .npy files, '-' (paths on "
                          "stdin), or digits; repeat for more. Needed for int8."),
        click.option("--calibration-samples", type=click.IntRange(1, 1 << 20), default=None,
                     help="How many inputs to calibrate on, drawn with --seed [default: all found, at most 512]; "
                          "more than are found is an error."),
        click.option("--calibration-method", type=click.Choice(["minmax", "percentile", "entropy"]),
                     default="percentile", show_default=True,
                     help="How each activation's range is chosen: the largest |x| (minmax), the --percentile of "
                          "|x| (percentile), or TensorRT's KL-divergence minimum (entropy)."),
        click.option("--percentile", type=FiniteFloat(0.0, 100.0, min_open=True), default=99.999, show_default=True,
                     help="The percentile of |x| that --calibration-method percentile keeps."),
        click.option("--keep-float", "keep_float", multiple=True, metavar="PATH",
                     help="A layer or block (spec path or id: stem, fc, layer1.0) to keep in float; repeat or "
                          "separate by commas."),
        click.option("--eval", "eval_set", default=None, metavar="DIR|digits",
                     help="Labelled data for the accuracy gate: class folders (DIR/<class>/*.png, or DIR/val/...) "
                          "or digits. Without: top-1 agreement and SQNR against fp32 on the calibration inputs."),
        click.option("--min-accuracy", type=FiniteFloat(0.0, 1.0), default=0.99, show_default=True,
                     help="The gate with --eval: int8 top-1 >= this x fp32 top-1 (MLPerf's ResNet-50 rule)."),
        click.option("--min-agreement", type=FiniteFloat(0.0, 1.0), default=0.99, show_default=True,
                     help="The gate without --eval: top-1 agreement with fp32, at least this share."),
        click.option("--min-sqnr", type=FiniteFloat(-1000.0, 1000.0), default=20.0, show_default=True,
                     help="The gate without --eval: output SQNR against fp32, at least this many dB."),
        click.option("--no-gate", is_flag=True, help="Publish without the accuracy gate (recorded as not gated)."),
    ]):
        f = opt(f)
    return f


def quant_from_flags(calibrate, calibration_samples, calibration_method, percentile, keep_float, eval_set,
                     min_accuracy, min_agreement, min_sqnr, no_gate, seed: int):
    """QuantOptions from the flags; None when no --calibrate was given."""
    from ..quant.gate import Thresholds
    from ..quant.pipeline import QuantOptions
    if not calibrate:
        return None
    keep = tuple(k.strip() for v in keep_float for k in v.split(",") if k.strip())
    return QuantOptions(tuple(calibrate), calibration_samples, calibration_method, percentile, keep, eval_set,
                        Thresholds(min_accuracy, min_agreement, min_sqnr), not no_gate, seed, sys.stdin)


def print_gate(q) -> None:
    """The gate's figures, one line per model."""
    gate = q.gate
    if gate.get("passed") is None:
        click.echo(f"  accuracy gate: {gate['on']}")
        return
    click.echo(f"  accuracy gate on {gate['on']}: {'passed' if gate['passed'] else 'FAILED'}")
    for f, p in gate["models"].items():
        click.echo(f"    {f:<14} {p['why']}")
    click.echo(f"  calibrated: {q.method}{f' {q.percentile:g}' if q.percentile else ''} on {q.calibration}; "
               f"observers {q.state_bytes / 2**20:.1f} MiB; CPU int8: {q.cpu.get('int8_dot')}")


@click.command("quantize")
@click.argument("artifact", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--out", type=click.Path(file_okay=False), help="Output folder [default: compiled/<name>-int8].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the calibration sample.")
@click.option("--explain", is_flag=True,
              help="Write nothing: print each layer's SQNR when quantised alone and in order, and a --keep-float "
                   "set that meets the gate.")
@quant_options
def quantize_cmd(artifact, out, seed, explain, **flags):
    """Quantise the compiled fp32 folder ARTIFACT to int8 into a new folder: calibrate on --calibrate's
    inputs, write model.onnx (uint8 activations, for ONNX Runtime) and model.s8.onnx (int8, for
    TensorRT), and publish them only if the accuracy gate passes."""
    def body():
        from ..compile import compile_spec
        from ..quant.pipeline import source_folder
        from ..render import console
        options = quant_from_flags(seed=seed, **flags)
        src = source_folder(artifact, out, options)
        if explain:
            return _explain(src, options)
        with console(stderr=True).status("quantising") as status:
            c = compile_spec(src.folder, weights=src.weights, out=out or f"compiled/{src.manifest.name}-int8",
                             precision="int8", opset=src.manifest.opset, fold=src.manifest.folded, quant=options,
                             progress=lambda s, *_: status.update(s))
        _print_int8(c)
    run(body)


def _explain(src, options) -> None:
    from ..compile import inference_graph
    from ..quant.pipeline import sensitivity
    from ..render import console, escape
    graph, weights, dims = inference_graph(src.folder, src.manifest)
    with console(stderr=True).status("measuring") as status:
        from ..compile import bar
        s = sensitivity(graph, weights, src.manifest, options, src.manifest.opset, dims,
                        lambda what, i, n: status.update(f"{what} {bar(i, n)} {i}/{n}"))
    click.echo(f"{src.manifest.name}: output SQNR against fp32 on {escape(s.on)}, per layer quantised alone and "
               f"with every layer up to it quantised (an add is its block's: --keep-float of it keeps the block)")
    click.echo(f"  {'layer':<34} {'op':<7} {'alone dB':>9} {'cumul. dB':>10}  spec line")
    for u, a, c in s.rows:
        click.echo(f"  {escape(u.path):<34} {u.op:<7} {a:>9.1f} {c:>10.1f}  {escape(str(u.loc))}")
    for f, p in s.gate["models"].items():
        click.echo(f"whole model, {f}: {p['why']}: {'passes' if p['passed'] else 'fails'}")
    if s.suggestion == ():
        click.echo("the gate passes with every layer quantised")
    elif s.suggestion is None:
        click.echo("no --keep-float set of up to 12 layers meets the gate: calibrate on more or other inputs, or "
                   "another --calibration-method")
    else:
        click.echo("suggested: " + " ".join(f"--keep-float {escape(p)}" for p in s.suggestion))


def _print_int8(c) -> None:
    m = c.manifest
    click.echo(f"quantised {m.name} -> {c.out}/  int8, opset {m.opset}, {c.seconds['total']:.2f} s")
    for name, info in m.artifacts.items():
        click.echo(f"  {name:<20} {info.bytes:>12,} bytes  sha256 {info.sha256[:16]}")
    print_gate(m.quantization)
    click.echo("  manifest.json")


COMMANDS = (quantize_cmd,)
