"""Epoch time of `resgraph train` on the old thread default, the new one and --threads 1, side by side.

What is measured, in one run: `resgraph train SPEC --data DATA --epochs E --save-every 0` as a whole
process, once per setting, --repeat rounds with the order rotating round by round, and the `seconds`
column of its metrics.csv (training plus validation of each epoch; the first epoch is left out as
warm-up).  The settings:

    old default   --threads T, T = torch's own default in a fresh process (one per core): what
                  `train` used before it chose a count itself
    new default   no --threads: resgraph.training.threads.default_threads (the count it chose is
                  read from the line train prints on stderr)
    --threads 1

Each is measured with the machine as it is and, by --busy, with K busy-loop processes started beside
it (a stand-in for the other jobs of a shared machine; stopped after).  Reported per setting: the
threads used, min and median epoch seconds, and the ratios old default / setting of the medians and
of the minimums (above 1: faster than the old default).  Timings are never asserted on.

Run from the repository root:

    .venv/bin/python bench/train_threads.py                    # digits_resnet, idle and 1 busy process, 3 rounds
    .venv/bin/python bench/train_threads.py --quick            # 2 rounds, 3 epochs each
    .venv/bin/python bench/train_threads.py --busy 0 1 2 --repeat 5 --workers 1

OMP_NUM_THREADS and MKL_NUM_THREADS are removed from the runs' environment (they would override both
defaults).  The load average and the CPU other processes used are printed: noise only slows runs down,
so read the minimums beside the medians.
"""
from __future__ import annotations

import csv
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from _common import ROOT, cpu_snapshot, load, others_since, others_text, usable_cpus

BUSY_LOOP = "while True: pass"


def child_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")} | {"NO_COLOR": "1"}


def torch_default_threads() -> int:
    code = "import torch; print(torch.get_num_threads())"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env=child_env()).stdout)


def train_once(args, extra: list[str], out: str) -> tuple[list[float], int]:
    """(seconds of each epoch after the first, the threads train said it used)."""
    cmd = [sys.executable, "-m", "resgraph", "train", args.spec, "--data", args.data, "--epochs", str(args.epochs),
           "--save-every", "0", "--log-every", "0", "--batch-size", str(args.batch_size),
           "--workers", str(args.workers), "-o", out, *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=child_env())
    if p.returncode:
        raise SystemExit(f"train failed ({p.returncode}):\n{p.stderr}")
    m = re.search(r"training on (\d+) CPU thread", p.stderr)
    with open(os.path.join(out, "metrics.csv"), newline="") as f:
        seconds = [float(r["seconds"]) for r in csv.DictReader(f)]
    return seconds[1:], int(m.group(1)) if m else -1


def start_busy(k: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(k)]


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
        p.wait()


def measure(args, settings: dict[str, list[str]], busy: int) -> dict[str, dict]:
    """Every setting --repeat times, rotating, beside `busy` busy-loop processes."""
    times = {name: [] for name in settings}
    used = {}
    names = list(settings)
    burners = start_busy(busy)
    snap = cpu_snapshot()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.repeat):
                for name in names[r % len(names):] + names[:r % len(names)]:
                    secs, used[name] = train_once(args, settings[name], os.path.join(tmp, f"{r}-{len(times[name])}"))
                    times[name] += secs
    finally:
        stop(burners)
    others = others_since(snap)
    return {n: {"threads": used[n], "min": min(t), "median": statistics.median(t), "epochs": len(t),
                "others": others} for n, t in times.items()}


def report(busy: int, res: dict[str, dict]) -> None:
    base = res["old default"]
    others = others_text(next(iter(res.values()))["others"])
    print(f"\n== {busy} busy-loop process{'es' * (busy != 1)} beside it (CPU used by all other processes, "
          f"burners included: {others})")
    print(f"   {'setting':<13} {'threads':>7} {'min s':>8} {'median s':>9} {'old/this median':>16} {'old/this min':>13}")
    for name, r in res.items():
        print(f"   {name:<13} {r['threads']:>7} {r['min']:>8.3f} {r['median']:>9.3f} "
              f"{base['median'] / r['median']:>15.2f}x {base['min'] / r['min']:>12.2f}x   ({r['epochs']} epochs)")


def main() -> None:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", default="specs/digits_resnet.yaml")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--epochs", type=int, default=6, help="per run; the first is left out (default 6)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="rounds (default 3)")
    ap.add_argument("--busy", type=int, nargs="+", default=[0, 1], help="busy-loop processes beside (default 0 1)")
    ap.add_argument("--quick", action="store_true", help="2 rounds of 3 epochs")
    args = ap.parse_args()
    if args.quick:
        args.repeat, args.epochs = 2, 3
    if args.epochs < 2:
        raise SystemExit("--epochs must be at least 2 (the first is left out)")
    old = torch_default_threads()
    settings = {"old default": ["--threads", str(old)], "new default": [], "--threads 1": ["--threads", "1"]}
    print(f"resgraph train {args.spec} --data {args.data}: {args.epochs} epochs a run, {args.repeat} rounds, "
          f"--workers {args.workers}, batch {args.batch_size}")
    print(f"   cpus {os.cpu_count()} ({usable_cpus()} usable); torch's own default: {old} threads; "
          f"load average at start (1, 5, 15 min): {load()}")
    t0 = time.perf_counter()
    for busy in args.busy:
        report(busy, measure(args, settings, busy))
    print(f"\n   load average at end: {load()}; took {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
