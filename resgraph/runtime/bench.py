"""`resgraph bench`: trtexec-style latency and throughput of one session at one batch size.

Each iteration is one Session.run on the same random batch (standard normal: the normalised input
space), timed with perf_counter around the call; so the latency is what a caller of the runtime
sees, host->device and device->host copies included where the back end has a device (their share
is reported on its own, as trtexec's H2D / D2H latencies).

    queries/s  = iterations / measured wall time        (one query = one batch)
    images/s   = queries/s x batch
    GFLOP/s    = 2 x MACs per image x images/s / 1e9    (MACs from the spec; a multiply-add is 2 FLOPs)
    CV         = std / mean of the latencies: above the threshold the run is flagged noisy

A model with several inputs gets a random batch of each (run_all); one with size variables is
measured at each shape asked for (--shape HxW: the first input's H and W, checked against the valid
sizes), by default at one (default_sizes). The manifest's MACs are at the smallest valid sizes, and
the runtime does not re-derive them: GFLOP/s is given at those sizes only (None elsewhere).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from .base import random_batch

NOISY_CV = 0.10   # latencies varying more than this (std / mean) make a figure worth rerunning


@dataclass(frozen=True)
class BenchResult:
    backend: str
    device: str
    precision: str
    batch: int
    shape: str | None            # the first input's H x W ("224x224"); None for a vector input
    iterations: int
    seconds: float
    queries_per_s: float
    images_per_s: float
    latency_ms: dict            # min, mean, median, p90, p95, p99, max
    gflops: float | None        # None where the manifest's MACs are not this shape's
    h2d_ms: float | None        # mean host->device copy per query, where the back end has a device
    d2h_ms: float | None
    cv: float
    noisy: bool

    def to_json(self) -> dict:
        d = asdict(self)
        d["throughput"] = {"queries_per_s": d.pop("queries_per_s"), "images_per_s": d.pop("images_per_s")}
        return d


def bench(session, batch: int, duration: float = 3.0, warmup: float = 1.0, min_iterations: int = 10,
          cv_threshold: float = NOISY_CV, seed: int = 0, sizes: dict | None = None) -> BenchResult:
    """One back end at one batch size (and, with size variables, at `sizes`: variable -> length)."""
    run, x = workload(session, batch, sizes, seed)
    lat, io, wall = time_runs(session, run, x, duration, warmup, min_iterations)
    ms = np.asarray(lat) * 1e3
    pct = np.percentile(ms, [50, 90, 95, 99])
    qps = len(lat) / wall
    cv = float(ms.std() / ms.mean()) if ms.mean() > 0 else 0.0
    m = session.manifest
    full = {**{k: r.valid[-1] for k, r in m.sizes.items()}, **(sizes or {})}
    at_macs = all(full[k] == r.valid[0] for k, r in m.sizes.items())   # the sizes the manifest's MACs are for
    return BenchResult(
        backend=session.backend, device=session.device, precision=session.precision, batch=batch,
        shape=shape_label(m.input.at(full)), iterations=len(lat), seconds=round(wall, 4), queries_per_s=qps,
        images_per_s=qps * batch,
        latency_ms={"min": float(ms.min()), "mean": float(ms.mean()), "median": float(pct[0]), "p90": float(pct[1]),
                    "p95": float(pct[2]), "p99": float(pct[3]), "max": float(ms.max())},
        gflops=2 * m.macs * qps * batch / 1e9 if at_macs else None,
        h2d_ms=float(np.mean([a for a, _ in io]) * 1e3) if io else None,
        d2h_ms=float(np.mean([b for _, b in io]) * 1e3) if io else None,
        cv=cv, noisy=cv > cv_threshold)


def time_runs(session, run, x, duration: float, warmup: float,
              min_iterations: int) -> tuple[list[float], list[tuple], float]:
    """bench's timing core, shared with `resgraph profile`: `run(x)` for `warmup` seconds (at least once:
    lazy initialisation, graph capture), then timed with perf_counter around each call until `duration`
    seconds have passed and at least `min_iterations` calls were made (duration 0: exactly that many).
    Returns (seconds per call, the session's host<->device copy times per call where it has a
    device, the measured wall time)."""
    end = time.perf_counter() + warmup
    run(x)
    while time.perf_counter() < end:
        run(x)
    lat, io = [], []
    clock = time.perf_counter
    start = clock()
    end = start + duration
    while True:
        t0 = clock()
        run(x)
        t1 = clock()
        lat.append(t1 - t0)
        if session.last_io is not None:
            io.append(session.last_io)
        if t1 >= end and len(lat) >= min_iterations:
            break
    return lat, io, clock() - start


def workload(session, batch: int, sizes: dict | None, seed: int):
    """(the call bench times, its argument): random inputs at `sizes` (base.random_batch: standard normal
    ones, the normalised input space; raw pixels for a uint8 input). One input and one output: run() on the back end's own staging buffer; else
    run_all() on a batch of every input."""
    rng = np.random.default_rng(seed)
    if len(session.inputs) == 1 and len(session.outputs) == 1:
        # the back end's staging memory where it has some: no extra copy
        x = session.input_buffer(batch, session.sample_shape(sizes)) if session.sizes else session.input_buffer(batch)
        x[...] = random_batch(rng, x.shape, x.dtype.name)
        return session.run, x
    full = session.default_sizes(sizes)
    return session.run_all, {t.name: random_batch(rng, (batch, *t.at(full)), t.dtype) for t in session.inputs}


def shape_label(sample_shape: tuple) -> str | None:
    """'224x224' for a [C, H, W] sample (H x W), None for a vector."""
    return f"{sample_shape[1]}x{sample_shape[2]}" if len(sample_shape) == 3 else None


def default_sizes(manifest) -> dict:
    """bench's sizes for a model with size variables when no --shape is given: per variable, the
    preprocess crop where it is valid, else the smallest valid size from 224 up (ImageNet's), else
    the largest valid size."""
    crop = manifest.preprocess.get("crop")
    return {k: crop if crop in r.valid else next((v for v in r.valid if v >= 224), r.valid[-1])
            for k, r in manifest.sizes.items()}


def sizes_at(manifest, shapes: list[tuple[int, int]], option: str = "--shape") -> list[dict]:
    """Each HxW of --shape as values of the model's size variables (H, W of its first input), checked
    against the valid sizes: an OptionError names the nearest valid ones."""
    from ..errors import OptionError
    from ..manifest import compact
    t = manifest.input
    if len(t.sample_shape) != 3:
        raise OptionError.at(option, f"{manifest.name}'s input {t.name} is [{', '.join(map(str, t.sample_shape))}], "
                             "not an image: it has no H x W", f"leave {option} out")
    _, dh, dw = t.sample_shape
    out = []
    for h, w in shapes:
        sizes: dict = {}
        for d, n, axis in ((dh, h, "H"), (dw, w, "W")):
            if isinstance(d, int):
                if d != n:
                    raise OptionError.at(option, f"{h}x{w}: {manifest.name}'s {axis} is fixed at {d}",
                                         f"{option} {shape_label(t.sample_shape)}, or leave it out")
                continue
            r = manifest.sizes[d]
            if n not in r.valid:
                raise OptionError.at(option, f"{h}x{w}: {d} = {n} is not a size {manifest.name} takes ({compact(r.valid)})",
                                     f"the nearest valid sizes are {' or '.join(map(str, r.nearest(n)))}")
            if sizes.setdefault(d, n) != n:
                raise OptionError.at(option, f"{h}x{w}: {d} is both H and W of {manifest.name}'s input (square)",
                                     f"give equal sides, e.g. {option} {h}x{h}")
        out.append(sizes)
    return out


def bench_all(folder: str, names: list[str], sizes: list[int], duration: float, warmup: float, options,
              cv_threshold: float | None = None, triton: tuple[str, str | None] | None = None,
              keep_going: bool = False, say=lambda message: None,
              shapes: list[dict] | None = None) -> tuple[list[BenchResult], list[dict]]:
    """Every back end of `names` (then the Triton endpoint `triton` = (url, model name)) at every
    shape (`shapes`: size-variable values, each checked by sizes_at; default: default_sizes) and
    every batch size: (results, the back ends passed over). With `keep_going` (bench --backend all),
    a back end that fails to open is listed as skipped instead of raising. `say` gets one line per session."""
    from .foreign import manifest_of
    from .session import BackendError, open_session
    cv = NOISY_CV if cv_threshold is None else cv_threshold
    results, skipped = [], []
    manifest = manifest_of(folder)
    shapes = shapes or [default_sizes(manifest) if manifest.sizes else {}]

    def measure(label: str, session):
        with session:
            say(f"resgraph: {label}: {session.describe()}" + (f" ({session.why})" if label != "triton" else ""))
            results.extend(bench(session, n, duration, warmup, cv_threshold=cv, sizes=at) for at in shapes for n in sizes)

    for name in names:
        try:
            session = open_session(folder, name, options)
        except BackendError as e:
            if not keep_going:
                raise
            skipped.append({"backend": name, "reason": e.message, "install": None})
            continue
        measure(name, session)
    if triton:
        from .triton_client import TritonSession
        measure("triton", TritonSession(folder, manifest, *triton))
    return results, skipped


def report(folder: str, results: list[BenchResult], skipped: list[dict], duration: float, warmup: float) -> dict:
    """bench's JSON report (docs/inference.md). `warnings`: an int8 folder run on a CPU weaker than
    its gate's (base.cpu_warning), once."""
    from ..version import __version__
    from .base import cpu_warning
    from .foreign import manifest_of
    m = manifest_of(folder)
    warnings = [w for w in dict.fromkeys(cpu_warning(m, b) for b in dict.fromkeys(r.backend for r in results)) if w]
    return {"resgraph_version": __version__, "artifact": folder, "model": m.name, "precision": m.precision,
            "macs_per_image": m.macs, "macs_at": shape_label(m.input.at({k: r.valid[0] for k, r in m.sizes.items()}))
            if m.sizes else None,
            "params": m.params, "duration_s": duration, "warmup_s": warmup,
            "results": [r.to_json() for r in results], "skipped": skipped, "warnings": warnings}
