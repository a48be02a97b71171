"""The options run, bench and parity take for a plain ONNX file (one resgraph did not compile): its
preprocess and labels, which a compiled folder has from its spec (the work: resgraph.runtime.foreign).
"""
from __future__ import annotations

import math

import click

from ..limits import MAX_SPATIAL

PREPROCESS = ("mean", "std", "resize", "crop", "interpolation")
# runtime.preprocess.PIL_FILTERS' names, written out: importing it here would load numpy with the
# command line (tests/runtime/test_foreign_onnx.py keeps the two equal)
INTERPOLATIONS = ("nearest", "lanczos", "bilinear", "bicubic", "box", "hamming")


class Numbers(click.ParamType):
    """Comma-separated finite numbers: 0.485,0.456,0.406 -> [0.485, 0.456, 0.406]."""
    name = "A,B,C"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            out = [float(v) for v in str(value).split(",")]
        except ValueError:
            out = []
        if not out or not all(math.isfinite(v) for v in out):
            self.fail(f"{value!r} is not a comma-separated list of numbers (one per input channel)", param, ctx)
        return out


def preprocess_options(f):
    """--mean, --std, --resize, --crop, --interpolation, --labels: a plain ONNX file's preprocess and
    labels (without them: the file's metadata where resgraph wrote it, else inputs fed as .npy)."""
    for opt in reversed([
        click.option("--mean", type=Numbers(), default=None,
                     help="A plain ONNX file's input: per-channel mean of the [0, 1] pixels, e.g. 0.485,0.456,0.406."),
        click.option("--std", type=Numbers(), default=None, help="A plain ONNX file's input: per-channel std."),
        click.option("--resize", type=click.IntRange(1, MAX_SPATIAL), default=None,
                     help="A plain ONNX file's input: resize the shorter side to this, then centre crop to the input."),
        click.option("--crop", type=click.IntRange(1, MAX_SPATIAL), default=None,
                     help="A plain ONNX file's input: centre crop to this (the input's own size)."),
        click.option("--interpolation", type=click.Choice(INTERPOLATIONS), default=None,
                     help="A plain ONNX file's resize filter [default: bilinear]."),
        click.option("--labels", "labels_file", type=click.Path(dir_okay=False), default=None,
                     help="A plain ONNX file's class names, one a line."),
    ]):
        f = opt(f)
    return f


def model_arg(artifact: str, opts: dict):
    """The compiled folder, or the plain ONNX file's ForeignModel with the preprocess flags (popped from
    the command's options)."""
    from ..runtime.foreign import model_of
    pre = {k: opts.pop(k) for k in PREPROCESS}
    return model_of(artifact, pre, opts.pop("labels_file"))


def batch_sizes(model, given: list[int] | None, option: str) -> list[int]:
    """A model whose ONNX file fixes its batch at 1 runs batch 1 only: by default, and refused if asked
    for another; `given` None: the command's default (bench's 1,8,32)."""
    from ..errors import OptionError
    fixed = getattr(model, "batch", None)
    if fixed is None:
        return given or [1, 8, 32]
    if given and given != [fixed]:
        raise OptionError.at(option, f"{model}'s batch dim is fixed at {fixed}", f"{option} {fixed}, or export the "
                             "model with a dynamic batch")
    return [fixed]
