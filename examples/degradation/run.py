"""The degradation experiment of He et al. 2015 (Fig. 1 / Fig. 6 left and middle), on 8x8 digits.

Trains plain-20, plain-56, resnet-20 and resnet-56 (specs/ next to this file) IDENTICALLY with
resgraph's Python API (`resgraph.training.loop.TrainConfig` + `train`) on scikit-learn's digits,
for one or more seeds, and writes to --out:

    results.json   settings, environment, every per-epoch row of every run, the summary table
    results.csv    one row per (network, seed, epoch): loss, accuracy and error, train and val
    loss.png       training loss (log scale) and training error per epoch; plain dashed, residual
                   solid; the line is the mean over seeds, the band the min..max

and prints the final training / validation error per network (mean ± std and min..max over seeds).

    .venv/bin/python examples/degradation/run.py                  # the full experiment
    .venv/bin/python examples/degradation/run.py --quick          # smoke test: 2 epochs, seed 0

Every run uses the same optimiser, learning rate, schedule, epochs, batch size, weight decay and
(for a given seed) the same initialisation seed, batch order and train/val split: the networks differ
only in their specs. torch runs with one intra-op thread by default (--threads): on a small, shared
2-core machine that is several times faster than two threads competing with other processes.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
NETWORKS = [  # (name, kind, depth); the spec is specs/<name>.yaml
    ("plain20", "plain", 20),
    ("plain56", "plain", 56),
    ("resnet20", "residual", 20),
    ("resnet56", "residual", 56),
]


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=60, help="epochs per run (default 60)")
    p.add_argument("--seed", type=int, default=None, help="a single seed (same as --seeds SEED)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1 2; --quick: 0)")
    p.add_argument("--out", default=None,
                   help="output folder (default examples/degradation/results; --quick: .../results-quick)")
    p.add_argument("--quick", action="store_true", help="smoke test: 2 epochs, seed 0 unless --seed(s) given")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--schedule", default="cosine", choices=["cosine", "constant"])
    p.add_argument("--val-split", type=float, default=0.2)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads per run (default 1)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained in parallel processes (default 1)")
    p.add_argument("--networks", nargs="+", default=[n for n, _, _ in NETWORKS],
                   choices=[n for n, _, _ in NETWORKS], help="a subset of the four (default: all)")
    a = p.parse_args(argv)
    if a.quick:
        a.epochs = 2
    if a.seeds is None:
        a.seeds = [a.seed] if a.seed is not None else ([0] if a.quick else [0, 1, 2])
    elif a.seed is not None:
        p.error("give --seed or --seeds, not both")
    if a.out is None:
        a.out = str(HERE / ("results-quick" if a.quick else "results"))
    return a


def _settings(a) -> dict:
    return {"data": "digits", "epochs": a.epochs, "batch_size": a.batch_size, "optimizer": "sgd",
            "nesterov": a.momentum > 0,  # resgraph's SGD default (TrainConfig.nesterov)
            "lr": a.lr, "momentum": a.momentum, "weight_decay": a.weight_decay, "schedule": a.schedule,
            "warmup_epochs": 0.0, "label_smoothing": 0.0, "val_split": a.val_split, "amp": False,
            "device": "cpu", "threads": a.threads, "jobs": a.jobs, "seeds": a.seeds}


def _one(job: tuple) -> dict:
    """Train one (network, seed); runs in the main process or a worker."""
    name, seed, s = job
    import torch
    torch.set_num_threads(s["threads"])
    from resgraph.training.loop import TrainConfig, train

    tmp = tempfile.mkdtemp(prefix=f"degradation-{name}-{seed}-")  # resgraph's per-epoch checkpoints
    t0 = time.perf_counter()

    def progress(row):
        e = int(row["epoch"])
        if e == 1 or e % 10 == 0 or e == s["epochs"]:
            print(f"  {name:<9} seed {seed}  epoch {e:>3}/{s['epochs']}  train loss {row['train_loss']:.4f}  "
                  f"train err {100 * (1 - row['train_acc']):6.2f}%  val err {100 * (1 - row['val_acc']):6.2f}%  "
                  f"[{time.perf_counter() - t0:6.1f}s]", flush=True)

    try:
        cfg = TrainConfig(spec=str(HERE / "specs" / f"{name}.yaml"), data=s["data"], out=tmp, epochs=s["epochs"],
                          batch_size=s["batch_size"], optimizer="sgd", lr=s["lr"], momentum=s["momentum"],
                          weight_decay=s["weight_decay"], schedule=s["schedule"], warmup_epochs=0.0,
                          label_smoothing=0.0, seed=seed, amp=False, device="cpu", val_split=s["val_split"],
                          progress=False, on_epoch=progress)
        rows = train(cfg)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"network": name, "seed": seed, "wall_seconds": time.perf_counter() - t0, "rows": rows}


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "values": values}


def _summary(runs: list[dict], names: list[str]) -> dict:
    out = {}
    for name in names:
        last = [r["rows"][-1] for r in runs if r["network"] == name]
        allrows = [r["rows"] for r in runs if r["network"] == name]
        out[name] = {
            "final_train_error": _stats([1 - x["train_acc"] for x in last]),
            "final_train_loss": _stats([x["train_loss"] for x in last]),
            "final_val_error": _stats([1 - x["val_acc"] for x in last]),
            "final_val_loss": _stats([x["val_loss"] for x in last]),
            # the mean training loss over all epochs: how fast it trained, not only where it ended
            "mean_train_loss_over_epochs": _stats([statistics.fmean(x["train_loss"] for x in rows) for rows in allrows]),
            "wall_seconds": _stats([r["wall_seconds"] for r in runs if r["network"] == name]),
        }
    return out


def _write_csv(path: Path, runs: list[dict]) -> None:
    kinds = {n: (k, d) for n, k, d in NETWORKS}
    cols = ["network", "kind", "depth", "seed", "epoch", "lr", "train_loss", "train_acc", "train_error",
            "val_loss", "val_acc", "val_error", "seconds"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in runs:
            kind, depth = kinds[r["network"]]
            for row in r["rows"]:
                w.writerow({"network": r["network"], "kind": kind, "depth": depth, "seed": r["seed"],
                            "epoch": int(row["epoch"]), "lr": f"{row['lr']:.6g}",
                            "train_loss": f"{row['train_loss']:.6g}", "train_acc": f"{row['train_acc']:.6g}",
                            "train_error": f"{1 - row['train_acc']:.6g}", "val_loss": f"{row['val_loss']:.6g}",
                            "val_acc": f"{row['val_acc']:.6g}", "val_error": f"{1 - row['val_acc']:.6g}",
                            "seconds": f"{row['seconds']:.4g}"})


def _plot(path: Path, runs: list[dict], names: list[str], s: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    colours = {20: "tab:blue", 56: "tab:red"}
    kinds = {n: (k, d) for n, k, d in NETWORKS}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in names:
        kind, depth = kinds[name]
        rows = [r["rows"] for r in runs if r["network"] == name]
        epochs = np.array([int(x["epoch"]) for x in rows[0]])
        style = {"color": colours[depth], "linestyle": "--" if kind == "plain" else "-", "linewidth": 1.6}
        label = f"{'plain' if kind == 'plain' else 'ResNet'}-{depth}"
        for ax, key in ((axes[0], "train_loss"), (axes[1], "train_acc")):
            v = np.array([[x[key] for x in r] for r in rows], dtype=float)
            if key == "train_acc":
                v = 100 * (1 - v)  # training error, %
            ax.plot(epochs, v.mean(0), label=label, **style)
            if len(rows) > 1:
                ax.fill_between(epochs, v.min(0), v.max(0), color=colours[depth], alpha=0.12, linewidth=0)
    n = len(s["seeds"])
    band = f"line: mean of {n} seeds, band: min..max" if n > 1 else f"seed {s['seeds'][0]}"
    axes[0].set_yscale("log")
    axes[0].set_ylabel("training loss (cross-entropy, log scale)")
    axes[1].set_yscale("symlog", linthresh=1.0)
    axes[1].set_ylabel("training error (%, symlog)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(True, which="both", alpha=0.25)
        ax.legend()
    fig.suptitle(f"Digits 8x8, plain (dashed) vs residual (solid); SGD lr {s['lr']} {s['schedule']}, "
                 f"wd {s['weight_decay']}, batch {s['batch_size']}; {band}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _pct(st: dict) -> str:
    return f"{100 * st['mean']:5.2f} ± {100 * st['std']:4.2f}  ({100 * st['min']:.2f}..{100 * st['max']:.2f})"


def _table(summary: dict, s: dict) -> str:
    n = len(s["seeds"])
    head = (f"final epoch ({s['epochs']}), {n} seed{'s' if n > 1 else ''} {s['seeds']}: mean ± std (min..max), %; "
            f"loss: mean ± std")
    lines = [head, f"{'network':<10} {'train error %':<28} {'val error %':<28} {'train loss':<20} {'s/run':>6}"]
    for name, v in summary.items():
        tl = v["final_train_loss"]
        lines.append(f"{name:<10} {_pct(v['final_train_error']):<28} {_pct(v['final_val_error']):<28} "
                     f"{tl['mean']:.2e} ± {tl['std']:.1e}    {v['wall_seconds']['mean']:6.0f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    a = _parse(argv)
    s = _settings(a)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(name, seed, s) for seed in a.seeds for name in a.networks]
    print(f"{len(jobs)} runs: {a.networks} x seeds {a.seeds}, {a.epochs} epochs, batch {a.batch_size}, "
          f"SGD lr {a.lr} momentum {a.momentum} (Nesterov) wd {a.weight_decay}, {a.schedule}; "
          f"{a.threads} thread(s), {a.jobs} job(s)", flush=True)
    load0 = os.getloadavg() if hasattr(os, "getloadavg") else None
    t0 = time.perf_counter()
    if a.jobs > 1:
        with ProcessPoolExecutor(a.jobs) as ex:
            runs = list(ex.map(_one, jobs))
    else:
        runs = [_one(j) for j in jobs]
    wall = time.perf_counter() - t0
    load1 = os.getloadavg() if hasattr(os, "getloadavg") else None

    summary = _summary(runs, a.networks)
    import torch
    env = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
           "cpu_count": os.cpu_count(), "loadavg_before": load0, "loadavg_after": load1}
    for r in runs:
        r["rows"] = [{k: (int(v) if k == "epoch" else v) for k, v in row.items()} for row in r["rows"]]
    result = {"experiment": "degradation (He et al. 2015, Fig. 1/6): plain vs residual, 20 vs 56 layers, digits 8x8",
              "command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
              "settings": s, "environment": env, "total_wall_seconds": wall, "summary": summary,
              "runs": runs}
    (out / "results.json").write_text(json.dumps(result, indent=1, allow_nan=True) + "\n")
    _write_csv(out / "results.csv", runs)
    _plot(out / "loss.png", runs, a.networks, s)
    print()
    print(_table(summary, s))
    print(f"\ntotal wall time {wall:.0f} s ({wall / 60:.1f} min); load average before {load0}, after {load1}")
    print(f"wrote {out / 'results.json'}, {out / 'results.csv'}, {out / 'loss.png'}")
    bad = [r for r in runs if not all(math.isfinite(x["train_loss"]) for x in r["rows"])]
    if bad:
        print(f"warning: non-finite training loss in {[(r['network'], r['seed']) for r in bad]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
