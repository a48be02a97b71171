"""`resgraph bench`: trtexec-style latency and throughput of one session at one batch size.

Each iteration is one Session.run on the same random batch (standard normal: the normalised input
space), timed with perf_counter around the call; so the latency is what a caller of the runtime
sees, host->device and device->host copies included where the back end has a device (their share
is reported on its own, as trtexec's H2D / D2H latencies).

    queries/s  = iterations / measured wall time        (one query = one batch)
    images/s   = queries/s x batch
    GFLOP/s    = 2 x MACs per image x images/s / 1e9    (MACs from the spec; a multiply-add is 2 FLOPs)
    CV         = std / mean of the latencies: above the threshold the run is flagged noisy
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

NOISY_CV = 0.10   # latencies varying more than this (std / mean) make a figure worth rerunning


@dataclass(frozen=True)
class BenchResult:
    backend: str
    device: str
    precision: str
    batch: int
    iterations: int
    seconds: float
    queries_per_s: float
    images_per_s: float
    latency_ms: dict            # min, mean, median, p90, p95, p99, max
    gflops: float
    h2d_ms: float | None        # mean host->device copy per query, where the back end has a device
    d2h_ms: float | None
    cv: float
    noisy: bool

    def to_json(self) -> dict:
        d = asdict(self)
        d["throughput"] = {"queries_per_s": d.pop("queries_per_s"), "images_per_s": d.pop("images_per_s")}
        return d


def bench(session, batch: int, duration: float = 3.0, warmup: float = 1.0, min_iterations: int = 10,
          cv_threshold: float = NOISY_CV, seed: int = 0) -> BenchResult:
    x = session.input_buffer(batch)       # the back end's staging memory where it has some: no extra copy
    x[...] = np.random.default_rng(seed).standard_normal((batch, *session.input_shape), dtype=np.float32)
    run = session.run
    end = time.perf_counter() + warmup
    run(x)                                        # at least once: lazy initialisation, graph capture
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
    wall = clock() - start
    ms = np.asarray(lat) * 1e3
    pct = np.percentile(ms, [50, 90, 95, 99])
    qps = len(lat) / wall
    cv = float(ms.std() / ms.mean()) if ms.mean() > 0 else 0.0
    m = session.manifest
    return BenchResult(
        backend=session.backend, device=session.device, precision=session.precision, batch=batch,
        iterations=len(lat), seconds=round(wall, 4), queries_per_s=qps, images_per_s=qps * batch,
        latency_ms={"min": float(ms.min()), "mean": float(ms.mean()), "median": float(pct[0]), "p90": float(pct[1]),
                    "p95": float(pct[2]), "p99": float(pct[3]), "max": float(ms.max())},
        gflops=2 * m.macs * qps * batch / 1e9,
        h2d_ms=float(np.mean([a for a, _ in io]) * 1e3) if io else None,
        d2h_ms=float(np.mean([b for _, b in io]) * 1e3) if io else None,
        cv=cv, noisy=cv > cv_threshold)


def bench_all(folder: str, names: list[str], sizes: list[int], duration: float, warmup: float, options,
              cv_threshold: float | None = None, triton: tuple[str, str | None] | None = None,
              keep_going: bool = False, say=lambda message: None) -> tuple[list[BenchResult], list[dict]]:
    """Every back end of `names` (then the Triton endpoint `triton` = (url, model name)) at every batch
    size: (results, the back ends passed over). With `keep_going` (bench --backend all), a back end
    that fails to open is listed as skipped instead of raising. `say` gets one line per session."""
    from ..manifest import read_manifest
    from .session import BackendError, open_session
    cv = NOISY_CV if cv_threshold is None else cv_threshold
    results, skipped = [], []

    def measure(label: str, session):
        with session:
            say(f"resgraph: {label}: {session.describe()}" + (f" ({session.why})" if label != "triton" else ""))
            results.extend(bench(session, n, duration, warmup, cv_threshold=cv) for n in sizes)

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
        measure("triton", TritonSession(folder, read_manifest(folder), *triton))
    return results, skipped


def report(folder: str, results: list[BenchResult], skipped: list[dict], duration: float, warmup: float) -> dict:
    """bench's JSON report (docs/inference.md)."""
    from ..version import __version__
    from ..manifest import read_manifest
    m = read_manifest(folder)
    return {"resgraph_version": __version__, "artifact": folder, "model": m.name, "precision": m.precision,
            "macs_per_image": m.macs, "params": m.params, "duration_s": duration, "warmup_s": warmup,
            "results": [r.to_json() for r in results], "skipped": skipped}
