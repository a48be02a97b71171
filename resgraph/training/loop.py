"""`resgraph train`: SGD/AdamW, cosine schedule with warm-up, weight decay, AMP on GPU, a rich
progress bar, a safetensors checkpoint per epoch, --resume, a metrics CSV. The recipe's pieces live
beside it: augment.py (--augment), recipe.py (weight decay by op, --freeze, --ema, what --resume
keeps), step.py (an epoch: --accumulate, --clip-grad, autocast), logs.py (TensorBoard).

Runs unchanged under `torchrun --nproc_per_node N`: it reads RANK / WORLD_SIZE / LOCAL_RANK, uses
gloo on CPU and NCCL on GPU, wraps the module in DistributedDataParallel, and shards each global
batch across processes with DistributedSampler. --batch-size is the global batch: with N processes
each takes batch/N of the same samples one process would take at that step, so N processes and
one process follow the same trajectory (up to BatchNorm, whose statistics are per process unless
--sync-bn).
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from ..backends.torch.checkpoint import writing
from ..errors import DataError, OptionError
from . import recipe
from .augment import augmented
from .data import collate, load_data, report_bad
from .evaluate import evaluate
from .logs import log_row, open_writer
from .state import resume, save_trainer_state, write_metrics
from .step import train_epoch
from .threads import set_threads


@dataclass
class TrainConfig:
    spec: str
    data: str = "digits"
    out: str | None = None               # default runs/<spec name>; train() fills in the folder it used
    epochs: int = 10
    batch_size: int = 64                 # global, across processes
    optimizer: str = "sgd"               # sgd | adamw
    lr: float | None = None              # default 0.1 (sgd) / 1e-3 (adamw), for batch 64; scale with batch
    momentum: float = 0.9
    nesterov: bool = True                # False: the classical momentum of He et al.
    weight_decay: float | None = None    # default 5e-4 (sgd) / 0.05 (adamw)
    schedule: str = "cosine"             # cosine | constant
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    seed: int = 0                        # initialisation, batch order
    split_seed: int = 0                  # the train/val split: fixed across training seeds
    resume: bool = False
    save_every: int = 1                  # epoch-NNN.safetensors every N epochs (0: none); last/best always
    threads: int | None = None           # torch.set_num_threads (CPU); default: threads.default_threads
    weights: str | None = None           # start from a checkpoint instead of the spec's init
    amp: bool | None = None              # default: on for CUDA (fp16 + GradScaler), off on CPU
    device: str = "auto"
    val_split: float = 0.2
    workers: int = 0
    channels_last: bool = False
    sync_bn: bool = False
    checkpointing: bool = False          # each block under torch.utils.checkpoint: less memory, same gradients
    progress: bool = True
    size: tuple | None = None            # (H, W) for a spec with size variables: the size it trains at
    log_every: int | None = None         # off a terminal, a progress line every N batches (0: none); default ~10%
    # the recipe (recipe.RECIPE): None takes a resumed run's own, else the default in the comment
    augment: str | None = None           # none | standard | trivialaugment (augment.py)
    flip: bool | None = None             # standard's horizontal flip (True)
    ema: float | None = None             # EMA decay of the weights (0: none)
    clip_grad: float | None = None       # max gradient norm (0: none)
    accumulate: int | None = None        # micro-batches per optimizer step (1)
    amp_dtype: str | None = None         # bf16 | fp16 (fp16 on CUDA, bf16 on CPU)
    wd_all: bool | None = None           # weight decay on norms, scales and biases too (False)
    freeze: str | None = None            # comma-separated spec paths frozen, their bn in eval mode ("")
    tensorboard: bool | None = None      # <out>/tensorboard logs; default: when the package is importable
    on_epoch: object = None              # Python API: called with each epoch's metrics row (rank 0)


class _Dist:
    def __init__(self, device_kind: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local = int(os.environ.get("LOCAL_RANK", "0"))
        self.on = self.world > 1
        if self.on and not dist.is_initialized():
            dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float], device) -> list[float]:
        if not self.on:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self):
        if self.on:
            dist.barrier()

    def close(self):
        if self.on and dist.is_initialized():
            dist.destroy_process_group()


def _device(cfg: TrainConfig, d: _Dist) -> torch.device:
    kind = cfg.device
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise OptionError.at("--device", "CUDA was asked for but is not available", "use --device cpu")
        return torch.device("cuda", d.local)
    return torch.device("cpu")


def _schedule(optimizer, cfg: TrainConfig, steps_per_epoch: int):
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:   # per optimizer step
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "constant":
            return 1.0
        t = (step - warm) / max(1, total - warm)
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _optimizer(module, cfg: TrainConfig):
    """SGD or AdamW over the trainable parameters, in recipe.param_groups' groups (no decay on norms,
    scales and biases unless --wd-all)."""
    if cfg.optimizer == "sgd":
        lr = 0.1 if cfg.lr is None else cfg.lr
        wd = 5e-4 if cfg.weight_decay is None else cfg.weight_decay
        return torch.optim.SGD(recipe.param_groups(module, wd, cfg.wd_all), lr=lr, momentum=cfg.momentum,
                               weight_decay=wd, nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.optimizer == "adamw":
        lr = 1e-3 if cfg.lr is None else cfg.lr
        wd = 0.05 if cfg.weight_decay is None else cfg.weight_decay
        return torch.optim.AdamW(recipe.param_groups(module, wd, cfg.wd_all), lr=lr, weight_decay=wd)
    raise OptionError.at("--optimizer", f"unknown optimizer '{cfg.optimizer}'", "use sgd or adamw")


def train(cfg: TrainConfig, console=None) -> list[dict]:
    """Train; returns the metrics rows (one per epoch, this run's and any resumed ones).

    Under torchrun the process group is torn down only after _train has returned: its frame holds
    the DistributedDataParallel wrapper, whose reducer keeps the group alive; destroyed later, at
    interpreter exit, gloo's threads abort the process ("terminate called without an active
    exception", 1 run in 8 here). And after one last barrier, so that no rank tears down while a
    peer is still completing a collective. Not on the error path: a rank that raised must not wait
    for peers stuck elsewhere (torchrun stops them). The caller's torch thread count is restored."""
    kind = "cuda" if (cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())) else "cpu"
    d = _Dist(kind)
    threads = torch.get_num_threads()
    try:
        rows = _train(cfg, console, d)
        d.barrier()
        return rows
    finally:
        d.close()
        torch.set_num_threads(threads)


@dataclass
class _Run:
    """What one training run holds between its epochs."""
    cfg: TrainConfig
    d: _Dist
    device: torch.device
    spec: object
    data: object
    module: torch.nn.Module       # the resgraph module (what is saved)
    model: torch.nn.Module        # what runs: the module, or DistributedDataParallel around it
    loader: DataLoader
    sampler: DistributedSampler
    optimizer: object
    scheduler: object
    scaler: object
    amp: bool
    amp_dtype: torch.dtype
    has_val: bool
    best_by: str
    ema: object = None            # the AveragedModel of --ema (rank 0), or None
    frozen_bn: list = field(default_factory=list)   # --freeze's bn layers, kept in eval mode
    writer: object = None         # TensorBoard's SummaryWriter (rank 0), or None
    ema_best: float = -math.inf   # the best EMA val_acc so far (ema-best.safetensors)

    @property
    def out(self) -> str:
        return self.cfg.out

    @property
    def state_path(self) -> str:
        return os.path.join(self.cfg.out, "trainer.safetensors")

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.cfg.out, "metrics.csv")


def _train(cfg: TrainConfig, console, d: _Dist) -> list[dict]:
    run = _setup(cfg, console, d)
    rows: list[dict] = []
    start = 0
    if cfg.resume:
        start, rows = resume(cfg, run.module, run.optimizer, run.scheduler, run.device, run.out, run.state_path,
                              run.metrics_path, ema=run.ema, scaler=run.scaler)
    best = max((_score(r, run.best_by) for r in rows), default=-math.inf)
    run.ema_best = max((_score(r, "ema_val_acc") for r in rows), default=-math.inf)
    run.writer = open_writer(cfg.tensorboard, run.out, start) if d.main else None
    bad_train: dict = {}
    bad_val: dict = {}
    try:
        for epoch in range(start, cfg.epochs):
            t0 = time.perf_counter()
            row = train_epoch(run, epoch, console, bad_train)
            if d.main:
                best = _end_epoch(run, epoch, row, rows, best, bad_val, t0, console)
            d.barrier()
    finally:
        if run.writer is not None:
            run.writer.close()
    return rows


def _setup(cfg: TrainConfig, console, d: _Dist) -> _Run:
    """The module, data, loader, optimizer, schedule and AMP of a run, every option checked, and its
    folder made (cfg.out filled in; the recipe's fields settled: a resumed run's own, or defaults)."""
    from ..backends.torch import to_torch
    device = _device(cfg, d)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    threads = set_threads(cfg.threads, cfg.workers)
    if d.main and console is not None:
        print(threads, file=sys.stderr, flush=True)
    checked = _checked(cfg)
    spec = checked.spec
    cfg.out = cfg.out or os.path.join("runs", spec.name)
    amp = cfg.amp if cfg.amp is not None else device.type == "cuda"
    recipe.settle(cfg, device.type, os.path.join(cfg.out, "trainer.safetensors"), amp)
    torch.manual_seed(cfg.seed)
    module = to_torch(checked.graph, seed=cfg.seed, weights=cfg.weights, checkpointing=cfg.checkpointing)
    frozen_bn = recipe.freeze(module, cfg.freeze, cfg.spec)
    if cfg.freeze and not cfg.weights and not cfg.resume and d.main and console is not None:
        console.print(f"note: --freeze {cfg.freeze} without --weights keeps those layers at the spec's random "
                      "initialisation")
    data = load_data(cfg.data, spec, cfg.val_split, cfg.split_seed)
    _check_output(cfg, checked.graph[checked.graph.output].shape, data)
    data = augmented(data, cfg.augment, cfg.flip, spec)
    sampler, loader = _loader(cfg, d, data, device)
    # no validation set (--val-split 0, a class too small to hold one out, an empty val/): val_loss
    # and val_acc are nan (not 0) and best.safetensors is the lowest training loss, said so
    has_val = len(data.val) > 0
    if not has_val and d.main and console is not None:
        console.print(f"note: {data.source} has no validation set (--val-split {cfg.val_split:g}): val_loss and "
                      "val_acc are not measured (nan in metrics.csv); best.safetensors is the epoch with the "
                      "lowest training loss")
    module.to(device)
    if cfg.channels_last:
        module.to(memory_format=torch.channels_last)
    if cfg.sync_bn and d.on:
        module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        frozen_bn = recipe.freeze(module, cfg.freeze, cfg.spec)   # the SyncBatchNorm layers that replaced them
    model = torch.nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None) \
        if d.on else module
    optimizer = _optimizer(module, cfg)
    scheduler = _schedule(optimizer, cfg, math.ceil(len(loader) / cfg.accumulate))   # optimizer steps
    amp_dtype = recipe.AMP_DTYPES[cfg.amp_dtype]
    scaler = torch.amp.GradScaler(device.type, enabled=amp and amp_dtype == torch.float16)
    if d.main:
        with writing(cfg.out):
            os.makedirs(cfg.out, exist_ok=True)
    ema = recipe.make_ema(module, cfg.ema) if d.main else None   # a copy of the module as it trains
    return _Run(cfg, d, device, spec, data, module, model, loader, sampler, optimizer, scheduler, scaler, amp, amp_dtype,
                has_val, "val_acc" if has_val else "train_loss", ema, frozen_bn)


def _checked(cfg: TrainConfig):
    """The spec, checked; with size variables, at --size (one size: a batch is one tensor)."""
    from ..frontend import check_at, check_file
    checked = check_file(cfg.spec)
    g = checked.graph
    if len(g.inputs) != 1 or len(g.outputs) != 1:
        raise DataError.at(cfg.spec, f"train takes a network with one input and one output; this one has "
                           f"{len(g.inputs)} and {len(g.outputs)}",
                           "train it from Python: resgraph.to_torch(SPEC) is an nn.Module taking every input, "
                           "returning a tuple of the outputs")
    if checked.sizes is None:
        if cfg.size is not None:
            raise OptionError.at("--size", "the spec's input has a fixed size", "leave out --size")
        return checked
    if cfg.size is None:
        from ..sized import fixed_size
        fixed_size(checked, "train")
    return check_at(checked, cfg.size)


def _check_output(cfg: TrainConfig, out: tuple, data) -> None:
    """A classifier's output is a vector of the data's classes; a dense one [C, H, W], C the labels."""
    from .segmentation import Masks
    dense = isinstance(data.train, Masks)
    if dense and len(out) != 3:
        raise DataError.at(cfg.data, f"the data are per-pixel masks, but the network's output is {list(out)}",
                           "end a segmentation network with a [C, H, W] map, e.g. conv: {out: CLASSES, kernel: 1}")
    if not dense and out != (len(data.classes),):
        hint = (f"set the last layer to linear: {{out: {len(data.classes)}}}" if len(out) == 1 else
                "a [C, H, W] output trains on a folder of images/ and masks/ (see docs/pytorch.md)")
        raise DataError.at(cfg.spec, f"the data has {len(data.classes)} classes but the network's output is "
                           f"{list(out)}", hint)


def _loader(cfg: TrainConfig, d: _Dist, data, device: torch.device) -> tuple[DistributedSampler, DataLoader]:
    """Each process's share of every global batch (--batch-size over the processes), shuffled by seed."""
    if cfg.batch_size % d.world:
        raise OptionError.at("--batch-size", f"batch {cfg.batch_size} does not split evenly over {d.world} processes",
                             "use a multiple of the process count")
    sampler = DistributedSampler(data.train, num_replicas=d.world, rank=d.rank, shuffle=True, seed=cfg.seed)
    loader = DataLoader(data.train, batch_size=cfg.batch_size // d.world, sampler=sampler, drop_last=True,
                        collate_fn=collate, num_workers=cfg.workers, pin_memory=device.type == "cuda")
    if len(loader) == 0:
        raise DataError.at(cfg.data, f"{len(data.train)} training samples make no full batch of {cfg.batch_size}",
                           "lower --batch-size")
    return sampler, loader


def _end_epoch(run: _Run, epoch: int, row: dict, rows: list[dict], best: float, bad_val: dict, t0: float,
               console) -> float:
    """The main process's end of an epoch: validation, the checkpoints (epoch-NNN, best, last), the
    metrics and, last, the trainer state that commits the epoch; returns the best score so far."""
    from ..backends.torch import save_checkpoint
    cfg, module, data = run.cfg, run.module, run.data
    if run.has_val:
        before = len(bad_val)
        row["val_loss"], row["val_acc"] = evaluate(module, data.val, run.device, channels_last=cfg.channels_last,
                                                   bad=bad_val)
        if len(bad_val) > before:
            report_bad(dict(list(bad_val.items())[before:]), data.val)
    else:
        row["val_loss"] = row["val_acc"] = math.nan
    if run.ema is not None:   # the averaged weights beside the raw ones (their unusable files reported above)
        row["ema_val_loss"], row["ema_val_acc"] = evaluate(run.ema.module, data.val, run.device, bad={},
                                                           channels_last=cfg.channels_last) \
            if run.has_val else (math.nan, math.nan)
    row["seconds"] = time.perf_counter() - t0
    rows.append(row)
    meta = {"spec": run.spec.name, "spec_sha256": run.spec.sha256, "data": data.source, "untrained": "false",
            "classes": ",".join(data.classes), "best_by": run.best_by, "epoch": epoch + 1}
    if run.has_val:
        meta["val_acc"] = f"{row['val_acc']:.6f}"
    else:
        meta["train_loss"] = f"{row['train_loss']:.6f}"
    # trainer.safetensors last: it commits the epoch (weights, optimizer, rows), so a run
    # stopped between two of these writes resumes from one consistent epoch
    if cfg.save_every and (epoch + 1) % cfg.save_every == 0:
        save_checkpoint(module, os.path.join(run.out, f"epoch-{epoch + 1:03d}.safetensors"), meta)
    if _score(row, run.best_by) > best:
        best = _score(row, run.best_by)
        save_checkpoint(module, os.path.join(run.out, "best.safetensors"), meta)
    save_checkpoint(module, os.path.join(run.out, "last.safetensors"), meta)
    _save_ema(run, row, meta)
    write_metrics(run.metrics_path, rows)
    log_row(run.writer, row)
    save_trainer_state(run.state_path, run.optimizer, run.scheduler, epoch + 1,
                       {"config": {k: v for k, v in asdict(cfg).items() if k != "on_epoch"},
                        "rows": rows, "best_by": run.best_by, "scaler": run.scaler.state_dict()},
                       model=module.state_dict(), ema=recipe.ema_state(run.ema))
    if cfg.on_epoch is not None:
        cfg.on_epoch(row)
    if console is not None:
        val = (f"val_loss {row['val_loss']:.4f}  val_acc {row['val_acc']:.4f}" if run.has_val
               else "no validation set (best by train loss)")
        if run.ema is not None and run.has_val:
            val += f"  ema_val_acc {row['ema_val_acc']:.4f}"
        console.print(f"epoch {epoch + 1}/{cfg.epochs}  loss {row['train_loss']:.4f}  "
                      f"acc {row['train_acc']:.4f}  {val}  lr {row['lr']:.5f}  {row['seconds']:.1f}s")
    return best


def _save_ema(run: _Run, row: dict, meta: dict) -> None:
    """ema-last.safetensors, and ema-best.safetensors when the EMA's val_acc is its best so far (none
    without a validation set): checkpoints as the raw weights' (`eval`, `compile` take them)."""
    from ..backends.torch import save_checkpoint
    if run.ema is None:
        return
    meta = {**meta, "ema_decay": run.cfg.ema, "best_by": "ema_val_acc"}
    if run.has_val:
        meta["val_acc"] = f"{row['ema_val_acc']:.6f}"
        if _score(row, "ema_val_acc") > run.ema_best:
            run.ema_best = _score(row, "ema_val_acc")
            save_checkpoint(run.ema.module, os.path.join(run.out, "ema-best.safetensors"), meta)
    save_checkpoint(run.ema.module, os.path.join(run.out, "ema-last.safetensors"), meta)


def done_line(cfg: TrainConfig, rows: list[dict]) -> str:
    """The CLI's last line: the run folder and the last epoch's held-out accuracy, or, without a
    validation set, its training loss (val_acc would print as nan)."""
    last = rows[-1]
    if math.isfinite(last.get("val_acc", math.nan)):
        return f"done: {cfg.out}  val_acc {last['val_acc']:.4f}"
    return f"done: {cfg.out}  train_loss {last['train_loss']:.4f} (no validation set: best.safetensors by training loss)"


def _score(row: dict, best_by: str) -> float:
    """Higher is better; nan (not measured) never wins."""
    v = -row.get("train_loss", math.nan) if best_by == "train_loss" else row.get(best_by, math.nan)
    return v if isinstance(v, float) and math.isfinite(v) else -math.inf
