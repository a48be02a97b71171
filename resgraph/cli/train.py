"""`resgraph train`: its options, one per TrainConfig field; the work is in resgraph.training.loop."""
from __future__ import annotations

import os
import sys

import click

from .common import FiniteFloat, HxW, run, var_option

KEPT = " Kept by --resume."


@click.command("train")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--data", required=True, help="'digits' (scikit-learn's, bundled), an ImageFolder-style folder, or "
              "a folder of images/ and masks/ (a [C, H, W] output: per-pixel cross-entropy).")
@click.option("-o", "--out", type=click.Path(file_okay=False), help="Run folder (default runs/<spec name>).")
@click.option("--size", type=HxW(), default=None, help="HxW: the input size a spec with size variables trains at.")
@click.option("--epochs", type=click.IntRange(1, 100000), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 1 << 20), default=64, show_default=True, help="Global batch.")
@click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), default="sgd", show_default=True)
@click.option("--lr", type=FiniteFloat(), default=None, help="Peak learning rate [default: 0.1 sgd, 0.001 adamw].")
@click.option("--momentum", type=FiniteFloat(), default=0.9, show_default=True)
@click.option("--nesterov/--no-nesterov", default=True, show_default=True, help="Nesterov momentum for SGD.")
@click.option("--weight-decay", type=FiniteFloat(), default=None,
              help="[default: 5e-4 sgd, 0.05 adamw; not on norms, scales and biases unless --wd-all]")
@click.option("--schedule", type=click.Choice(["cosine", "constant"]), default="cosine", show_default=True)
@click.option("--warmup-epochs", type=FiniteFloat(), default=0.0, show_default=True)
@click.option("--label-smoothing", type=FiniteFloat(), default=0.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Initialisation and batch order.")
@click.option("--split-seed", type=int, default=0, show_default=True, help="The train/val split (kept across --seed).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last finished epoch.")
@click.option("--save-every", type=click.IntRange(0, None), default=1, show_default=True,
              help="Keep epoch-NNN.safetensors every N epochs (0: none; last and best are always kept).")
@click.option("--threads", type=click.IntRange(1, 1024), default=None,
              help="CPU threads for torch [default: usable CPUs - 1 - --workers, at least 1; or OMP_NUM_THREADS].")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False), help="Start from these weights.")
@click.option("--amp/--no-amp", default=None, help="Mixed precision [default: on for CUDA, off on CPU].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--val-split", type=FiniteFloat(0.0, 0.9), default=0.2, show_default=True)
@click.option("--workers", type=click.IntRange(0, 64), default=0, show_default=True,
              help="Data-loader processes (one CPU thread each).")
@click.option("--log-every", type=click.IntRange(0, None), default=None,
              help="When output is not a terminal, a progress line every N batches (0: none) "
                   "[default: a tenth of an epoch, at most 50].")
@click.option("--augment", type=click.Choice(["none", "standard", "trivialaugment"]), default=None,
              help="Training-split augmentation: standard = pad-crop (inputs up to 32x32) or RandomResizedCrop, then "
                   "a horizontal flip; trivialaugment = standard + TrivialAugmentWide [default: none]." + KEPT)
@click.option("--flip/--no-flip", default=None, help="The horizontal flip of --augment [default: flip]." + KEPT)
@click.option("--ema", type=FiniteFloat(0.0, 1.0, max_open=True), default=None, metavar="DECAY",
              help="Keep an EMA of the weights (e.g. 0.999), evaluated and saved beside them as ema-last/ema-best"
                   ".safetensors [default: 0, none]." + KEPT)
@click.option("--clip-grad", type=FiniteFloat(0.0), default=None, metavar="NORM",
              help="Clip the gradient norm before each step [default: 0, none]." + KEPT)
@click.option("--accumulate", type=click.IntRange(1, 4096), default=None, metavar="K",
              help="Micro-batches of --batch-size per optimizer step [default: 1]." + KEPT)
@click.option("--amp-dtype", type=click.Choice(["bf16", "fp16"]), default=None,
              help="Autocast type with --amp: fp16 (CUDA, with a GradScaler) or bf16 [default: fp16 on CUDA, bf16 on "
                   "CPU]." + KEPT)
@click.option("--wd-all/--no-wd-all", default=None,
              help="Weight decay on every parameter, norms, scales and biases too [default: not on those]." + KEPT)
@click.option("--freeze", metavar="PATHS", default=None,
              help="Comma-separated spec paths (layer1, layer2.0, a node id such as conv1) whose parameters do not "
                   "train and whose bn statistics stay fixed; for fine-tuning --weights [default: none]." + KEPT)
@click.option("--tensorboard/--no-tensorboard", default=None,
              help="TensorBoard logs in OUT/tensorboard [default: on when the tensorboard package is installed].")
@click.option("--channels-last", is_flag=True)
@click.option("--sync-bn", is_flag=True, help="Synchronise BatchNorm statistics across processes (torchrun).")
@click.option("--checkpointing", is_flag=True,
              help="Recompute each block's activations in backward (torch.utils.checkpoint): less memory "
                   "(`resgraph check SPEC --memory --checkpointing --batch N` estimates it), the same gradients.")
@var_option()
def train_cmd(spec, data, out, **options):
    """Train SPEC on DATA; a checkpoint per epoch, metrics.csv, resumable. Works under torchrun."""
    def body():
        from ..render import console
        from ..training.loop import TrainConfig, done_line, train
        cfg = TrainConfig(spec=spec, data=data, out=out, **options)
        rows = train(cfg, console())
        if rows and int(os.environ.get("RANK", "0")) == 0:
            click.echo(done_line(cfg, rows))
    run(body)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # under torchrun, after the group is destroyed and every file written: leave without the
        # interpreter's teardown, where gloo's threads can still abort a rank ("terminate called without
        # an active exception", SIGABRT) and torchrun then reports a finished run as failed
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


COMMANDS = (train_cmd,)
