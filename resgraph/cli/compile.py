"""`resgraph compile`: a spec (+ checkpoint) to a compiled folder. The work is in resgraph.compile."""
from __future__ import annotations

import click

from .common import Requires, check_requires, run, var_option
from .engine import ENGINE_FLAGS, engine_options, parity_gate, print_engine
from .quantize import print_gate, quant_from_flags, quant_options

# which options need which: checked in order, the first broken row is the error
REQUIRES = (
    Requires("precision", "engine", "{value} is an engine precision: it needs --engine",
             "model.onnx is fp32 or fp16; add --engine to build a TensorRT engine in {value}",
             when=lambda v: v in ("tf32", "bf16")),
    *(Requires(flag, "engine", "an engine option without --engine",
               "add --engine, or build later: resgraph engine build FOLDER ...") for flag in (*ENGINE_FLAGS, "no_parity_gate")),
)


@click.command("compile")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--weights", type=click.Path(dir_okay=False), help="A .safetensors checkpoint (default: a fresh seeded init, flagged untrained).")
@click.option("-o", "--out", type=click.Path(file_okay=False), help="Output folder [default: compiled/<name>].")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8", "tf32", "bf16"]), default="fp32",
              show_default=True,
              help="fp16: fp16 weights and compute, fp32 input and output. int8: calibrated Q/DQ (with --calibrate; "
                   "docs/int8.md). tf32, bf16: engine precisions (with --engine; model.onnx stays fp32).")
@click.option("--opset", type=int, default=None, help="ONNX opset, 13 to 21 [default: 17].")
@click.option("--input", "input_", type=click.Choice(["fp32", "fp16", "uint8-nchw", "uint8-nhwc"]), default=None,
              help="What the model takes: uint8-nhwc/-nchw: raw pixels after the client's resize and crop, the "
                   "preprocess's scale, mean and std the graph's first nodes; fp16: half the bytes of fp32 "
                   "(docs/deploy.md) [default: the spec's input: {dtype, layout}, else fp32].")
@click.option("--output", "output_", type=click.Choice(["fp32", "fp16"]), default=None,
              help="What the model gives: fp16 casts every output last [default: the spec's output: {dtype}, else fp32].")
@click.option("--no-fold", is_flag=True, help="Keep batch norms instead of folding them into the layer before.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the fresh init when no --weights, and of the calibration sample.")
@click.option("--external-data", is_flag=True,
              help="Weights in model.onnx.data beside model.onnx: ONNX Runtime maps them (faster start-up). "
                   "Automatic from 2 GiB, which one .onnx file cannot hold.")
@click.option("--engine", is_flag=True, help="Also build a TensorRT engine (model.engine + engine.json) and check it "
                                             "against ONNX Runtime and PyTorch; see docs/tensorrt.md.")
@engine_options
@quant_options
@var_option()
def compile_cmd(spec, weights, out, precision, opset, input_, output_, no_fold, seed, external_data, engine, engine_device,
                no_parity_gate, verbose, calibrate, calibration_samples, calibration_method, percentile, keep_float,
                eval_set, min_accuracy, min_agreement, min_sqnr, no_gate, **flags):
    """Compile SPEC to ONNX: model.onnx, weights.safetensors and manifest.json (and model.onnx.data with
    --external-data; model.engine and engine.json with --engine), written atomically."""
    def body():
        from ..backends.onnx.contract import Contract
        from ..backends.tensorrt.options import from_flags
        from ..compile import compile_spec
        from ..render import console
        check_requires(REQUIRES, {"precision": precision, "engine": engine, "no_parity_gate": no_parity_gate, **flags})
        quant = quant_from_flags(calibrate, calibration_samples, calibration_method, percentile, keep_float, eval_set,
                                 min_accuracy, min_agreement, min_sqnr, no_gate, seed)
        build = from_flags(precision, **flags) if engine else None
        gate = parity_gate(build, engine_device) if engine and not no_parity_gate else None
        with console(stderr=True).status("compiling") as status:
            c = compile_spec(spec, weights=weights, out=out, precision=precision if precision in ("fp16", "int8") else "fp32",
                             opset=opset, fold=not no_fold, seed=seed, external_data=external_data,
                             progress=lambda s, *_: status.update(s), engine=build, engine_device=engine_device,
                             gate=gate, verbose=verbose, quant=quant, contract=Contract(input_, output_))
        _print_compiled(c, weights, seed)
    run(body)


def _print_compiled(c, weights, seed) -> None:
    m = c.manifest
    untrained = "" if m.trained else (f"  (untrained: fresh init, seed {seed})" if not weights
                                         else "  (untrained: the checkpoint is marked so by resgraph init)")
    io = "" if (m.input.dtype, m.output.dtype) == ("float32", "float32") else \
        f", takes {m.input.dtype} {m.input.layout} {list(m.input.sample_shape)}, gives {m.output.dtype}"
    click.echo(f"compiled {m.name} -> {c.out}/  {m.precision}, opset {m.opset}, "
               f"{'folded' if m.folded else 'unfolded'} bn{io}, {c.seconds['total']:.2f} s{untrained}")
    for name, info in m.artifacts.items():
        if name not in ("model.engine", "engine.json"):
            click.echo(f"  {name:<20} {info.bytes:>12,} bytes  sha256 {info.sha256[:16]}")
    if m.quantization is not None:
        print_gate(m.quantization)
    if "model.engine" in m.artifacts:
        from ..backends.tensorrt.engine_json import read_engine_info
        print_engine(read_engine_info(c.out), c.out)
    click.echo("  manifest.json")


COMMANDS = (compile_cmd,)
