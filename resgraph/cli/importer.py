"""`resgraph import`: a torchvision, timm or user model as an editable spec (and its weights in the
spec's layout). The work is in resgraph.backends.importer."""
from __future__ import annotations

import time

import click

from .common import run


def _shape(text: str | None) -> tuple:
    if text is None:
        return None   # the model's own (an .onnx file's input), else 3,224,224
    try:
        shape = tuple(int(x) for x in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise click.BadParameter(f"'{text}' is not C,H,W (three positive integers, e.g. 3,224,224)")
    return shape


@click.command("import")
@click.argument("source")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The spec (.yaml) to write.")
@click.option("--weights-out", type=click.Path(dir_okay=False),
              help="Also write the model's weights in the spec's layout (.safetensors).")
@click.option("--name", help="The spec's name (default: the model's).")
@click.option("--input-shape", help="C,H,W of the input the model is traced and checked at (default: an .onnx file's own, else 3,224,224).")
def import_cmd(source, output, weights_out, name, input_shape):
    """Write SOURCE as a spec: torchvision:NAME, timm:NAME (built randomly initialised; no download),
    module:pkg.mod:factory (imports pkg.mod and calls factory(): this runs your code), or FILE.onnx
    (read with onnx, external data included; checked against ONNX Runtime).

    Residual units become blocks, their differences the blocks' arguments, consecutive copies one
    entry with repeat and first. The spec is checked (its parameter count must be the model's) and
    the weights imported into it must reproduce the model's outputs; otherwise nothing is written.
    """
    shape = _shape(input_shape)

    def body():
        from ..backends.importer import import_model, write
        start = time.perf_counter()
        imported = import_model(source, name=name, input_shape=shape)
        write(imported, output, weights_out)
        c, diff = imported.checked, imported.report["max_abs_diff"]
        click.echo(f"wrote {output}: {len(imported.text.splitlines())} lines, params {c.params:,}, "
                   f"MACs {c.macs:,}, {len(c.graph.projections)} projections inserted")
        if weights_out:
            click.echo(f"wrote {weights_out}: {imported.report['tensors']} tensors; largest output difference {diff:.2g}")
        click.echo(f"imported {source} in {time.perf_counter() - start:.1f} s")
    run(body)


COMMANDS = [import_cmd]
