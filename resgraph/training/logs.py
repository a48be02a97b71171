"""TensorBoard logs of a run (`train --tensorboard`): torch.utils.tensorboard's SummaryWriter into
<out>/tensorboard/, beside metrics.csv, one scalar per metrics column per epoch (the process of
rank 0 only). On by default when the tensorboard package is importable (the `train` extra has it).

    tensorboard --logdir runs/           # every run under runs/, each its own folder's curves

A resumed run writes on from its last finished epoch: events of epochs it repeats (those after the
trainer state's epoch, from a run stopped before it committed them) are purged (purge_step).
"""
from __future__ import annotations

import importlib.util
import math
import os

from ..errors import OptionError

# metrics column -> the TensorBoard tag it is drawn under
TAGS = {"train_loss": "loss/train", "val_loss": "loss/val", "ema_val_loss": "loss/ema_val",
        "train_acc": "accuracy/train", "val_acc": "accuracy/val", "ema_val_acc": "accuracy/ema_val",
        "lr": "lr", "seconds": "seconds/epoch"}


def available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


class Writer:
    """A SummaryWriter into <out>/tensorboard, opened at the first epoch it logs (a run that fails
    before finishing one leaves no folder), its steps continuing after epoch `start`."""

    def __init__(self, out: str, start: int):
        self.out, self.start, self.writer = out, start, None

    def log(self, row: dict) -> None:
        """One epoch's metrics (those measured: nan is left out), at step = the epoch."""
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=os.path.join(self.out, "tensorboard"),
                                        purge_step=self.start + 1 if self.start else None)
        for key, tag in TAGS.items():
            v = row.get(key)
            if isinstance(v, float) and math.isfinite(v):
                self.writer.add_scalar(tag, v, int(row["epoch"]))
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def open_writer(want: bool | None, out: str, start: int) -> Writer | None:
    """The run's TensorBoard Writer, or None: `want` False, or None (the default) without the package.
    True without it is an OptionError, before training starts."""
    if want is False or (want is None and not available()):
        return None
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError as e:
        raise OptionError.at("--tensorboard", f"TensorBoard logging needs the tensorboard package ({e})",
                             "pip install 'resgraph[train]' (or tensorboard), or train with --no-tensorboard") from None
    return Writer(out, start)


def log_row(writer: Writer | None, row: dict) -> None:
    if writer is not None:
        writer.log(row)
