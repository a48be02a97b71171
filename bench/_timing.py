"""How the benchmarks take their times: one call, calls interleaved round by round (so that drift in the
machine's load hits every contender alike), loops for a duration, and whole processes with warm-ups."""
from __future__ import annotations

import contextlib
import subprocess
import sys
import time

from _common import ROOT


def time_call(fn, before=None, sync=None) -> float:
    """Seconds one fn() takes; before() first, untimed (gc.collect, say); sync() (a device's) on both sides."""
    if before:
        before()
    if sync:
        sync()
    t0 = time.perf_counter()
    fn()
    if sync:
        sync()
    return time.perf_counter() - t0


def timer(fn, before=None, sync=None):
    """A measurement: a function of no arguments that times one fn() and returns the seconds."""
    return lambda: time_call(fn, before, sync)


def rotation(names: list, r: int, rotate: bool = True) -> list:
    """The order of round r: names rotated left by r (so every entry takes every place in turn), or as given."""
    first = r % len(names) if rotate else 0
    return names[first:] + names[:first]


def interleaved(measure: dict, rounds: int, *, rotate: bool = True, before=None) -> dict[str, list]:
    """`rounds` rounds, each taking one measurement of every entry in turn, so that drift in machine load hits
    all alike; rotate: the order rotating round by round (else the same order every round); before(): called
    ahead of each measurement, untimed."""
    names = list(measure)
    times: dict[str, list] = {k: [] for k in names}
    for r in range(rounds):
        for k in rotation(names, r, rotate):
            if before:
                before()
            times[k].append(measure[k]())
    return times


def interleaved_blocks(fns: dict, n: int, blocks: int) -> dict[str, list[float]]:
    """n calls of each fn, each timed alone, in `blocks` blocks (sizes differing by at most one), the order
    of the fns rotating block by block."""
    sizes = [n // blocks + (i < n % blocks) for i in range(blocks)]
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i, size in enumerate(sizes):
        for k in rotation(list(fns), i):
            fn = fns[k]
            for _ in range(size):
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
    return times


def timed_until(step, end: float, min_iterations: int = 1, sync=None, args: tuple = ()) -> list[float]:
    """step(*args) (and sync()) timed call by call until the clock reaches `end` and min_iterations are done."""
    clock = time.perf_counter
    lat = []
    while True:
        t0 = clock()
        step(*args)
        if sync:
            sync()
        t1 = clock()
        lat.append(t1 - t0)
        if t1 >= end and len(lat) >= min_iterations:
            return lat


def run_for(step, duration: float, warmup: float, min_iterations: int = 10, sync=None,
            args: tuple = ()) -> tuple[list[float], float]:
    """Warm up (step(*args) at least once, for `warmup` seconds), then time step(*args) call by call for
    `duration` seconds and at least min_iterations calls.  Returns (the latencies, the wall seconds of the
    timed calls)."""
    end = time.perf_counter() + warmup      # as resgraph.runtime.bench.bench warms up
    step(*args)
    while time.perf_counter() < end:
        step(*args)
    if sync:
        sync()
    t0 = time.perf_counter()
    lat = timed_until(step, t0 + duration, min_iterations, sync, args)
    return lat, time.perf_counter() - t0


# --------------------------------------------------------------------------------------------- whole processes

def run_process(cmd: list[str], prog: str, stdout_path=None) -> float:
    """Wall time of one whole process (in the repository root, no stdin), its stdout to the file stdout_path
    or captured; a failing command ends the benchmark `prog` (its time would mean nothing), showing the end
    of its output."""
    with open(stdout_path, "wb") if stdout_path else contextlib.nullcontext(subprocess.PIPE) as out:
        t0 = time.perf_counter()
        p = subprocess.run(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE, check=False)
        dt = time.perf_counter() - t0
    if p.returncode != 0:
        sys.stderr.write((p.stdout or b"").decode(errors="replace")[-6000:] + p.stderr.decode(errors="replace")[-6000:])
        raise SystemExit(f"{prog}: command failed with exit status {p.returncode}: {' '.join(cmd)}")
    return dt


def process_measures(cmds: dict[str, list[str]], prog: str, stdout: dict | None = None) -> dict:
    """A measurement per command (see run_process); stdout: a file per command for its output (else captured)."""
    stdout = stdout or {}
    return {k: (lambda k=k, c=c: run_process(c, prog, stdout.get(k))) for k, c in cmds.items()}


def time_processes(cmds: dict[str, list[str]], rounds: int, prog: str, *, rotate: bool = False,
                   stdout: dict | None = None) -> tuple[dict[str, float], dict[str, list[float]]]:
    """One warm-up run of every command (the OS file cache), then `rounds` rounds, interleaved (rotating or in
    the given order).  Returns (the warm-up seconds, the timed seconds) per command."""
    measure = process_measures(cmds, prog, stdout)
    warm = {k: m() for k, m in measure.items()}
    return warm, interleaved(measure, rounds, rotate=rotate)
