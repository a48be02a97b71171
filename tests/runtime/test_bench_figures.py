"""bench's figures from fixed timings: resgraph.runtime.bench.bench measures a session whose run()
advances a fake clock by set latencies, so every figure it reports (percentiles, mean, CV, queries/s,
images/s, GFLOP/s, the copies) is checked against numpy and the definitions in docs/inference.md,
then through report() (the JSON) and the table bench prints. Nothing here is timed."""
import types

import numpy as np
import pytest

from resgraph.manifest import read_manifest
from resgraph.runtime import bench as bench_mod
from resgraph.runtime.bench import bench, report

START = 1000.0     # perf_counter is not 0 at start-up; the figures must not depend on it


class FakeSession:
    """A session whose run() takes exactly the next of `latencies` seconds (a warm-up run first)."""
    backend, device, precision, input_shape = "ort-cpu", "cpu", "fp32", (1, 8, 8)

    def __init__(self, clock, manifest, latencies, io=None, warmup_s=0.5):
        self.clock, self.manifest = clock, manifest
        self.inputs, self.outputs, self.sizes = manifest.inputs, manifest.outputs, manifest.sizes   # one of each, fixed
        self.todo = [warmup_s, *latencies]
        self.io = None if io is None else [io[0], *io]
        self.last_io = None
        self.batches = []

    def input_buffer(self, n):
        return np.empty((n, *self.input_shape), np.float32)

    def run(self, x):
        assert self.todo, "bench ran past the set latencies: its stopping rule changed"
        self.batches.append(len(x))
        self.clock.now += self.todo.pop(0)
        if self.io is not None:
            self.last_io = self.io.pop(0)
        return np.zeros((len(x), 10), np.float32)


def measured(monkeypatch, manifest, latencies, batch, io=None, **kw):
    """bench() on the fake session, its clock in place of time.perf_counter; stops after exactly
    len(latencies) measured runs (the duration ends halfway through the last one)."""
    clock = types.SimpleNamespace(now=START)
    clock.perf_counter = lambda: clock.now
    monkeypatch.setattr(bench_mod, "time", clock)
    s = FakeSession(clock, manifest, latencies, io)
    duration = float(np.sum(latencies[:-1])) + latencies[-1] / 2
    r = bench(s, batch, duration=duration, warmup=0.0, **kw)
    assert s.todo == [] and set(s.batches) == {batch}
    return r


# 200 latencies, a long tail: p90, p95 and p99 all differ by far more than the table's 0.001 ms
LATENCIES_S = np.random.default_rng(7).lognormal(np.log(2e-3), 0.5, 200)


@pytest.fixture(scope="module")
def digits_manifest(digits_folder):
    return read_manifest(digits_folder)


def test_percentiles_are_numpys_on_the_latencies(monkeypatch, digits_manifest):
    r = measured(monkeypatch, digits_manifest, list(LATENCIES_S), batch=4)
    ms = LATENCIES_S * 1e3
    want = dict(zip(("median", "p90", "p95", "p99"), np.percentile(ms, [50, 90, 95, 99])))
    assert len({round(v, 3) for v in want.values()}) == 4          # the test can tell them apart
    for k, v in want.items():
        assert r.latency_ms[k] == pytest.approx(v, rel=1e-9), k
    assert r.latency_ms["min"] == pytest.approx(ms.min(), rel=1e-9)
    assert r.latency_ms["max"] == pytest.approx(ms.max(), rel=1e-9)
    assert r.latency_ms["mean"] == pytest.approx(ms.mean(), rel=1e-9)
    assert r.iterations == 200 and r.seconds == pytest.approx(LATENCIES_S.sum(), abs=1e-4)
    assert r.cv == pytest.approx(np.std(ms) / np.mean(ms), rel=1e-9)
    assert r.h2d_ms is None and r.d2h_ms is None


def test_throughput_and_gflops_from_macs_and_time(monkeypatch, digits_manifest):
    """queries/s = runs / seconds; images/s = that x batch; GFLOP/s = FLOPs / s / 1e9 where a
    multiply-add is 2 FLOPs (the digits ResNet: 763,520 MACs per image)."""
    assert digits_manifest.macs == 763_520
    batch = 8
    r = measured(monkeypatch, digits_manifest, list(LATENCIES_S), batch=batch)
    seconds = LATENCIES_S.sum()
    images = 200 * batch
    flops = images * 763_520 * 2
    assert r.queries_per_s == pytest.approx(200 / seconds, rel=1e-9)
    assert r.images_per_s == pytest.approx(images / seconds, rel=1e-9)
    assert r.gflops == pytest.approx(flops / seconds / 1e9, rel=1e-9)


def test_noisy_flag_sits_at_the_cv_threshold(monkeypatch, digits_manifest):
    cv = float(np.std(LATENCIES_S) / np.mean(LATENCIES_S))
    assert measured(monkeypatch, digits_manifest, list(LATENCIES_S), 1, cv_threshold=cv * 0.99).noisy
    assert not measured(monkeypatch, digits_manifest, list(LATENCIES_S), 1, cv_threshold=cv * 1.01).noisy
    steady = [2e-3] * 10                      # the fewest runs bench takes, all alike: CV 0
    r = measured(monkeypatch, digits_manifest, steady, 1)
    assert r.cv == pytest.approx(0, abs=1e-9) and not r.noisy and r.latency_ms["p99"] == pytest.approx(2.0)


def test_device_copies_are_the_mean_of_the_measured_runs(monkeypatch, digits_manifest):
    rng = np.random.default_rng(3)
    io = [(float(a), float(b)) for a, b in rng.uniform(1e-5, 1e-3, (20, 2))]
    r = measured(monkeypatch, digits_manifest, list(LATENCIES_S[:20]), 2, io=io)
    assert r.h2d_ms == pytest.approx(np.mean([a for a, _ in io]) * 1e3, rel=1e-9)
    assert r.d2h_ms == pytest.approx(np.mean([b for _, b in io]) * 1e3, rel=1e-9)


def test_report_and_table_carry_each_figure_under_its_name(monkeypatch, digits_folder, digits_manifest, capsys):
    """The JSON report and the printed table: p99 under p99, GFLOP/s under GFLOP/s."""
    from resgraph.cli.infer import _bench_table
    batch = 4
    r = measured(monkeypatch, digits_manifest, list(LATENCIES_S), batch=batch)
    rep = report(str(digits_folder), [r], [], 0.4, 0.0)
    ms = LATENCIES_S * 1e3
    pct = dict(zip(("median", "p90", "p95", "p99"), np.percentile(ms, [50, 90, 95, 99])))
    [row] = rep["results"]
    for k, v in pct.items():
        assert row["latency_ms"][k] == pytest.approx(v, rel=1e-9), k
    gflops = 2 * 763_520 * 200 * batch / LATENCIES_S.sum() / 1e9
    assert rep["macs_per_image"] == 763_520 and row["gflops"] == pytest.approx(gflops, rel=1e-9)
    assert row["throughput"]["images_per_s"] == pytest.approx(200 * batch / LATENCIES_S.sum(), rel=1e-9)

    monkeypatch.setenv("COLUMNS", "80")
    _bench_table(rep)
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    thr, lat = [cells for cells in lines if cells[:2] == ["ort-cpu", str(batch)]]
    head = next(cells for cells in lines if "p99" in cells)
    assert head == ["backend", "batch", "median", "p90", "p95", "p99", "min", "max"]
    want = [pct["median"], pct["p90"], pct["p95"], pct["p99"], ms.min(), ms.max()]
    assert lat[2:] == [f"{v:.3f}" for v in want]
    qps = 200 / LATENCIES_S.sum()
    fmt = lambda v: f"{v:,.0f}" if v >= 1000 else f"{v:,.1f}"  # noqa: E731
    assert thr[2:5] == [fmt(qps), fmt(qps * batch), fmt(gflops)]
