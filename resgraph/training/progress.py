"""Progress within an epoch: a rich bar on a terminal; otherwise (a log file, a pipe, CI) a plain line
every N batches, so that a long epoch shows it is moving before its summary line:

    epoch 1/5  batch 40/235  loss 0.4120  acc 0.8801  812.3 img/s

N is --log-every (0: no lines); by default a tenth of the epoch, at most 50 batches. img/s counts the
global batch (every process's images) since the epoch began.
"""
from __future__ import annotations

import math
import time


def default_every(steps: int) -> int:
    """A line every tenth of an epoch (rounded up), at most every 50 batches."""
    return max(1, min(50, math.ceil(steps / 10)))


class NoProgress:
    def advance(self, loss, acc, images):
        pass

    def close(self):
        pass


class Bar:
    """The terminal's bar: removed when the epoch ends (its summary line replaces it)."""

    def __init__(self, console, epoch, epochs, steps):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        self.p = Progress(TextColumn(f"epoch {epoch + 1}/{epochs}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.4f}"),
                          TimeRemainingColumn(), console=console, transient=True)
        self.task = self.p.add_task("train", total=steps, loss=float("nan"), acc=float("nan"))
        self.p.start()

    def advance(self, loss, acc, images):
        self.p.update(self.task, advance=1, loss=loss, acc=acc)

    def close(self):
        self.p.stop()


class Lines:
    """A line every `every` batches (batch every, 2 * every, ...), printed and flushed as it happens."""

    def __init__(self, console, epoch, epochs, steps, every):
        self.console, self.every, self.steps = console, every, steps
        self.head = f"epoch {epoch + 1}/{epochs}"
        self.step = self.images = 0
        self.t0 = time.perf_counter()

    def advance(self, loss, acc, images):
        self.step += 1
        self.images += images
        if self.step % self.every == 0:
            rate = self.images / max(time.perf_counter() - self.t0, 1e-9)
            self.console.print(f"{self.head}  batch {self.step}/{self.steps}  loss {loss:.4f}  acc {acc:.4f}  "
                               f"{rate:.1f} img/s", markup=False, highlight=False)

    def close(self):
        pass


def progress(console, on: bool, epoch: int, epochs: int, steps: int, every: int | None):
    """The bar on a terminal, lines elsewhere, nothing when off (no console, --log-every 0 off a terminal)."""
    if not on or console is None:
        return NoProgress()
    if console.is_terminal:
        return Bar(console, epoch, epochs, steps)
    every = default_every(steps) if every is None else every
    return Lines(console, epoch, epochs, steps, every) if every > 0 else NoProgress()
