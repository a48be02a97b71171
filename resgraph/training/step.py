"""One training epoch of `resgraph train`: micro-batches, gradient accumulation, clipping, autocast
and the optimizer step (the loop and its checkpoints are in loop.py).

- --accumulate K: K micro-batches (each --batch-size) per optimizer step, each loss divided by the
  number of micro-batches in its step, so a step follows the mean gradient of K x batch samples. An
  epoch whose batch count is not a multiple of K ends with a shorter step. The schedule counts
  optimizer steps. Under torchrun every micro-batch but the last of a step runs in no_sync (no
  all-reduce until the last).
- --clip-grad NORM: clip_grad_norm_ over the trainable parameters before each step, after the
  GradScaler has unscaled the gradients (fp16).
- autocast: --amp-dtype fp16 (CUDA only, with a GradScaler) or bf16 (CUDA or CPU, no scaler).
- --ema: the averaged model is updated after every optimizer step.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError, WeightsError
from .data import report_bad
from .progress import progress as _progress
from .segmentation import IGNORE, counts


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of the global generator at the start of an epoch, which the model's random ops
    (dropout, drop_path) and the augmentation draw from. A function of (--seed, epoch, rank) alone: a
    run resumed after epoch k draws what an uninterrupted one draws from epoch k + 1 on (the
    generator's state is not in the trainer state), and each process of a torchrun draws its own."""
    return int(np.random.SeedSequence([seed % (1 << 64), epoch, rank]).generate_state(1, np.uint64)[0]) >> 1


def train_epoch(run, epoch: int, console, bad_train: dict) -> dict:
    """One pass over the training data: the epoch's row (lr, train_loss, train_acc over every process).
    Unusable images are reported once a run; diverged weights stop the run before anything is saved."""
    cfg, d, device = run.cfg, run.d, run.device
    run.sampler.set_epoch(epoch)
    torch.manual_seed(epoch_seed(cfg.seed, epoch, d.rank))
    run.model.train()
    for m in run.frozen_bn:   # frozen layers' statistics stay as they were
        m.eval()
    loss_sum = correct = seen = 0.0
    new_bad: dict = {}
    progress = _progress(console, d.main and cfg.progress, epoch, cfg.epochs, len(run.loader), cfg.log_every)
    k, n = cfg.accumulate, len(run.loader)
    pending = False   # gradients accumulated since the last step
    run.optimizer.zero_grad(set_to_none=True)
    for b, (x, y, skipped) in enumerate(run.loader):
        last = (b + 1) % k == 0 or b + 1 == n   # the last micro-batch of its step
        if skipped:
            new_bad.update((p, why) for p, why in skipped if p not in bad_train)
        if x is not None:
            out = _micro_batch(run, x, y, min(k, n - b // k * k), last)
            if out is not None:
                pending = True
                loss_sum += out[0] * out[2]
                correct += out[1]
                seen += out[2]
                progress.advance(loss_sum / seen, correct / seen, len(y) * d.world)
        if last and pending:
            _step(run)
            pending = False
    progress.close()
    if new_bad:   # each process its own shard's, once a run
        bad_train.update(new_bad)
        report_bad(new_bad, run.data.train)
    loss_sum, correct, seen = d.sum([loss_sum, correct, seen], device)
    if seen == 0:
        raise DataError.at(cfg.data, f"none of the {len(run.data.train)} training images can be used",
                           "see the files listed above: replace or remove them")
    if not all(bool(torch.isfinite(v).all()) for v in run.module.state_dict().values() if v.is_floating_point()):
        raise WeightsError.at(cfg.spec, f"training diverged in epoch {epoch + 1}: the weights hold NaN or inf "
                              f"(training loss {loss_sum / seen:.4g}); nothing of this epoch was saved",
                              f"lower --lr (or add --warmup-epochs) and start again; {run.out}'s checkpoints and "
                              f"--resume stay at epoch {epoch}" if epoch else "lower --lr (or add --warmup-epochs)")
    return {"epoch": epoch + 1, "lr": run.optimizer.param_groups[0]["lr"], "train_loss": loss_sum / seen,
            "train_acc": correct / seen}


def _micro_batch(run, x, y, group: int, last: bool):
    """Forward and backward of one micro-batch, its loss divided by the `group` micro-batches of its
    step; (loss, right, counted), or None where no pixel of it is labelled. Under DDP, every
    micro-batch but a step's last skips the gradient all-reduce (forward and backward in no_sync)."""
    cfg, device = run.cfg, run.device
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    if cfg.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    sync = contextlib.nullcontext() if last or not run.d.on else run.model.no_sync()
    with sync:
        with torch.autocast(device.type, dtype=run.amp_dtype, enabled=run.amp):
            logits = run.model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing,
                                   **({"ignore_index": IGNORE} if y.dim() > 1 else {}))   # per pixel
        right, counted = counts(logits, y)
        if not counted:   # every pixel of the batch unlabelled: no loss to learn from
            return None
        run.scaler.scale(loss / group if group > 1 else loss).backward()
    return loss.item(), right, counted


def _step(run) -> None:
    """The optimizer step over the gradients accumulated: clip (unscaled first), step, schedule, EMA."""
    if run.cfg.clip_grad:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_([p for g in run.optimizer.param_groups for p in g["params"]],
                                       run.cfg.clip_grad)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update_parameters(run.module)
