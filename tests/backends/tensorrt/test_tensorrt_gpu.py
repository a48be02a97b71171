"""TensorRT engines, built and run: where TensorRT, cuda-python and an NVIDIA GPU exist (bench/gpu_check.sh
runs this file there); skipped, with the reason, elsewhere.

    every shipped spec at fp32 and fp16, against ONNX Runtime on the same inputs
    the batch profile at MIN, OPT and MAX (and outside it: chunked, padded)
    a size-variable model with two inputs and two outputs built with --shapes: every output at the
    profile's MIN, OPT and MAX and between, against ONNX Runtime; engine.json's profile is the plan's;
    sizes outside the profile refused; buffers grown to a larger request; CUDA graphs per shape
    CUDA graphs, one per batch size, against plain execution
    the timing cache reused (the second build of the same network is faster)
    another TensorRT version, another GPU, another model.onnx: refused before deserialising, naming which;
    --rebuild rebuilds; a corrupt engine is refused
    compile --engine end to end (parity gate included), and the plan loading in TensorRT as is
"""
from __future__ import annotations

import importlib.util
from dataclasses import replace
import json
import os
import shutil
import time

import numpy as np
import pytest

from conftest import ROOT, SPECS, run_cli
from resgraph.errors import BackendError


def _missing() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt is not installed (pip install 'resgraph[tensorrt]'; see docs/tensorrt.md)"
    if importlib.util.find_spec("cuda") is None:
        return "cuda-python is not installed"
    from resgraph.runtime.session import nvidia_gpu_visible
    if not nvidia_gpu_visible():
        return "no NVIDIA GPU visible"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))
TOL = {"fp32": dict(abs_=1e-4), "fp16": dict(rel=2e-2)}


@pytest.fixture(autouse=True)
def close_sessions(monkeypatch):
    """Every session a test opens is closed when it ends: device memory comes back between tests (the
    parametrized build test alone opens 42 engines), not at the process's end."""
    import resgraph.runtime
    opened, real = [], resgraph.runtime.open_session

    def tracked(*args, **kwargs):
        s = real(*args, **kwargs)
        opened.append(s)
        return s
    monkeypatch.setattr(resgraph.runtime, "open_session", tracked)
    yield
    for s in opened:
        s.close()


def _compile(spec, out, precision="fp32", batch="1:4:8", *extra):
    weights = ["--weights", str(ROOT / "specs" / "weights" / "digits_resnet.safetensors")] \
        if os.path.basename(spec) == "digits_resnet.yaml" else []
    r = run_cli("compile", str(spec), "-o", str(out), "--precision", precision, "--engine", "--batch", batch,
                *weights, *extra, timeout=1800)
    assert r.returncode == 0, r.stderr
    return out


def _close(a, b, precision):
    if precision == "fp32":
        return float(np.abs(a - b).max()) <= 1e-4 or np.allclose(a, b, rtol=0, atol=5e-4)
    return float((np.abs(a - b) / (1 + np.abs(b))).max()) <= 2e-2


@pytest.fixture(scope="module")
def digits_engine(tmp_path_factory):
    return _compile(ROOT / "specs" / "digits_resnet.yaml", tmp_path_factory.mktemp("trt") / "digits", "fp32",
                    "2:8:32")


def _small_profile(spec, batch: str) -> list[str]:
    """--shapes for a size-variable spec: each variable from its smallest valid size to its largest
    up to 256 (the default, its whole range up to 2048, makes a long gate); [] for a fixed one."""
    from resgraph.backends.tensorrt.options import BatchProfile
    from resgraph.compile import io_infos, size_ranges
    from resgraph.frontend import check_file
    c = check_file(str(spec))
    sizes = size_ranges(c)
    if not sizes:
        return []
    b = BatchProfile.parse(batch)
    pick = {k: (r.valid[0], max(v for v in r.valid if v <= max(256, r.valid[0]))) for k, r in sizes.items()}
    dims = lambda t, i: "x".join(str(pick[d][i] if isinstance(d, str) else d) for d in t.sample_shape)  # noqa: E731
    return ["--shapes", ",".join(f"{t.name}:{b.min}x{dims(t, 0)}:{b.opt}x{dims(t, 1)}:{b.max}x{dims(t, 1)}"
                                 for t in io_infos(c)[0])]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("spec", SPECS, ids=[s.stem for s in SPECS])
def test_every_shipped_spec_builds_and_matches_onnx_runtime(spec, precision, tmp_path):
    from resgraph.runtime import open_session
    # the compile's own parity gate runs too (against ONNX Runtime and torch where installed), every output
    folder = _compile(spec, tmp_path / spec.stem, precision, "1:2:4", "--opt-level", "1",   # 42 builds: a short search
                      *_small_profile(spec, "1:2:4"))
    trt, ort = open_session(str(folder), "tensorrt"), open_session(str(folder), "ort-cpu")
    rng = np.random.default_rng(1)
    feeds = {t.name: rng.standard_normal((4, *trt.shapes[t.name].max[1:]), dtype=np.float32)   # at the profile's MAX
             for t in trt.inputs}
    a, b = trt.run_all(feeds), ort.run_all(feeds)
    assert list(a) == [t.name for t in trt.outputs]
    for k in a:
        assert np.isfinite(a[k]).all()
        # fp16 model.onnx on both sides: the engine's fp16 against ONNX Runtime's
        assert _close(a[k], b[k], precision), (k, float(np.abs(a[k] - b[k]).max()))
    assert trt.precision == precision


def test_profile_min_opt_max_and_outside_it(digits_engine):
    from resgraph.runtime import open_session
    trt, ort = open_session(str(digits_engine), "tensorrt"), open_session(str(digits_engine), "ort-cpu")
    assert (trt.profile.min, trt.profile.opt, trt.profile.max) == (2, 8, 32)
    rng = np.random.default_rng(2)
    for n in (2, 8, 32, 1, 33, 100):      # 1: padded to MIN; 33 and 100: chunks of MAX
        x = rng.standard_normal((n, *trt.input_shape), dtype=np.float32)
        y = trt.run(x)
        assert y.shape == (n, *trt.output_shape)
        assert _close(y, ort.run(x), "fp32"), n
    assert trt.last_io is not None and all(t >= 0 for t in trt.last_io)


def test_cuda_graphs_match_plain_execution_on_fresh_inputs(digits_engine):
    from resgraph.runtime import Options, open_session
    plain = open_session(str(digits_engine), "tensorrt")
    graphs = open_session(str(digits_engine), "tensorrt", Options(cuda_graph=True))
    rng = np.random.default_rng(3)
    for _ in range(2):
        for n in (2, 8, 32, 8):
            x = rng.standard_normal((n, *plain.input_shape), dtype=np.float32)
            # two sessions may pick tactics whose atomics sum in another order: equal to ~1e-6, not bitwise
            np.testing.assert_allclose(graphs.run(x), plain.run(x), rtol=0, atol=1e-6)
    assert sorted(shapes[0][0] for shapes in graphs._graphs) == [2, 8, 32]      # keyed by the inputs' shapes


def _resnet18(tmp_path):
    from resgraph.manifest import read_manifest
    folder = tmp_path / "r"
    r = run_cli("compile", str(ROOT / "specs" / "resnet18.yaml"), "-o", str(folder), timeout=600)
    assert r.returncode == 0, r.stderr
    return folder, read_manifest(str(folder))


def test_timing_cache_is_reused_and_shared(tmp_path):
    """A build with a warm cache selects its tactics faster than one with a cold cache, both after a
    first build that paid CUDA's and TensorRT's lazy start-up (which wall time would otherwise hold)."""
    from resgraph.backends.tensorrt.build import build_plan
    from resgraph.backends.tensorrt.options import BatchProfile, BuildOptions
    folder, m = _resnet18(tmp_path)
    o = BuildOptions(batch=BatchProfile(1, 8, 8), optimization_level=3)
    build_plan(str(folder / "model.onnx"), m, replace(o, timing_cache=""))          # start-up, no cache
    cache = tmp_path / "timing.cache"
    o = replace(o, timing_cache=str(cache))
    t0 = time.perf_counter()
    build_plan(str(folder / "model.onnx"), m, o)                                     # cold cache
    cold = time.perf_counter() - t0
    size = cache.stat().st_size
    assert size > 0 and not list(tmp_path.glob(".timing-*"))       # written whole, no temporary left
    t0 = time.perf_counter()
    build_plan(str(folder / "model.onnx"), m, o)                                     # warm cache
    warm = time.perf_counter() - t0
    assert warm < 0.7 * cold, (cold, warm)
    assert cache.stat().st_size >= size


def test_a_corrupt_timing_cache_is_set_aside_and_the_engine_still_built(tmp_path, capfd):
    """create_timing_cache returns None for bytes it cannot read: the file is set aside as .bad, the
    build starts an empty cache and writes a good one; no TypeError, no engine lost."""
    from resgraph.backends.tensorrt.build import build_plan
    from resgraph.backends.tensorrt.options import BatchProfile, BuildOptions
    folder, m = _resnet18(tmp_path)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"not a timing cache" * 100)
    plan, _ = build_plan(str(folder / "model.onnx"), m,
                         BuildOptions(batch=BatchProfile(1, 1, 1), timing_cache=str(cache), optimization_level=0))
    assert len(bytes(plan)) > 0
    assert (tmp_path / "timing.cache.bad").read_bytes() == b"not a timing cache" * 100
    assert cache.stat().st_size > 0 and cache.read_bytes() != b"not a timing cache" * 100
    assert "is not a timing cache TensorRT can read" in capfd.readouterr().err


def test_the_three_mismatches_are_refused_before_deserialising_and_rebuild_fixes_them(digits_engine, tmp_path):
    from resgraph.runtime import BackendError, Options, open_session
    for what, change in (("tensorrt", {"tensorrt_version": "9.0.0.1"}), ("gpu", {"gpu": {"name": "X",
                                                                                  "compute_capability": "1.0"}}),
                         ("onnx", {"onnx_sha256": "0" * 64})):
        folder = tmp_path / what
        shutil.copytree(digits_engine, folder)
        d = json.loads((folder / "engine.json").read_text())
        d.update(change)
        (folder / "engine.json").write_text(json.dumps(d))
        with pytest.raises(BackendError) as e:
            open_session(str(folder), "tensorrt")
        assert e.value.differs == (what,) and "resgraph engine build" in e.value.hint
        from resgraph.runtime.gate import rebuild_stale
        assert rebuild_stale(str(folder), "tensorrt", 0)                       # rebuilt from model.onnx, then opened
        s = open_session(str(folder), "tensorrt", Options())
        assert s.run(np.zeros((2, *s.input_shape), np.float32)).shape[0] == 2
        assert json.loads((folder / "engine.json").read_text())[
            "tensorrt_version" if what == "tensorrt" else "onnx_sha256" if what == "onnx" else "gpu"] != \
            change["tensorrt_version" if what == "tensorrt" else "onnx_sha256" if what == "onnx" else "gpu"]


def test_a_corrupt_engine_is_refused(digits_engine, tmp_path):
    from resgraph.runtime import open_session
    folder = tmp_path / "c"
    shutil.copytree(digits_engine, folder)
    data = bytearray((folder / "model.engine").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "model.engine").write_bytes(bytes(data))
    with pytest.raises(BackendError, match="does not match engine.json's sha256"):
        open_session(str(folder), "tensorrt")
    # a plan that matches its record but is not a plan: TensorRT's refusal, as a user error
    import hashlib
    (folder / "model.engine").write_bytes(b"\0" * 1000)
    d = json.loads((folder / "engine.json").read_text())
    d["engine_sha256"] = hashlib.sha256(b"\0" * 1000).hexdigest()
    (folder / "engine.json").write_text(json.dumps(d))
    with pytest.raises(BackendError, match="could not deserialise"):
        open_session(str(folder), "tensorrt")


def test_the_plan_is_plain_tensorrt_and_auto_prefers_it(digits_engine):
    import tensorrt as trt

    from resgraph.runtime import choose
    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine((digits_engine / "model.engine").read_bytes())
    assert engine is not None            # no header: what trtexec --loadEngine and Triton read
    assert choose("auto", str(digits_engine))[0] == "tensorrt"
    r = run_cli("run", str(digits_engine), "examples/digits/samples", "--json")
    assert r.returncode == 0 and "tensorrt" in r.stderr
    r = run_cli("parity", str(digits_engine), "--backends", "all", "--json", timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_cli("engine", "info", str(digits_engine), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["here"]["runs"] is True


# two inputs, two outputs (a map at the input's size and a vector), even sizes: one spec for the TensorRT tests
from test_tensorrt_profile import TWO_STREAM  # noqa: E402
SHAPES = "image:1x3x8x8:4x3x16x32:8x3x32x64"       # mask follows in H and W (one size variable, one value)


@pytest.fixture(scope="module")
def two_stream_engine(tmp_path_factory):
    """Compiled with --engine --shapes: the compile's own parity gate runs at MIN, OPT and MAX, every output."""
    spec = tmp_path_factory.mktemp("spec") / "two_stream.yaml"
    spec.write_text(TWO_STREAM)
    out = tmp_path_factory.mktemp("trt") / "two_stream"
    r = run_cli("compile", str(spec), "-o", str(out), "--engine", "--shapes", SHAPES, timeout=1800)
    assert r.returncode == 0, r.stderr
    for point in ("MIN image 1x3x8x8, mask 1x1x8x8", "OPT image 4x3x16x32, mask 4x1x16x32",
                  "MAX image 8x3x32x64, mask 8x1x32x64"):
        for output in ("fused", "emb"):
            assert f"parity at {point}, output {output}: " in r.stderr, r.stderr
    return out


def _feeds(n, h, w, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.standard_normal((n, 3, h, w), dtype=np.float32),
            "mask": rng.standard_normal((n, 1, h, w), dtype=np.float32)}


def test_a_size_variable_two_input_two_output_engine_matches_onnx_runtime(two_stream_engine):
    from resgraph.runtime import open_session
    trt, ort = open_session(str(two_stream_engine), "tensorrt"), open_session(str(two_stream_engine), "ort-cpu")
    info = json.loads((two_stream_engine / "engine.json").read_text())
    assert [p["name"] for p in info["profile"]["inputs"]] == ["image", "mask"]
    assert info["profile"]["inputs"][1] == {"name": "mask", "min": [1, 1, 8, 8], "opt": [4, 1, 16, 32],
                                            "max": [8, 1, 32, 64]}
    # small first, then larger: the output buffers grow to the larger request
    for n, h, w in ((1, 8, 8), (4, 16, 32), (8, 32, 64), (3, 20, 10), (13, 32, 64), (2, 8, 8)):
        feeds = _feeds(n, h, w, seed=n)
        a, b = trt.run_all(feeds), ort.run_all(feeds)
        assert list(a) == ["fused", "emb"] and a["fused"].shape == (n, 8, h, w) and a["emb"].shape == (n, 8)
        for k in a:
            assert _close(a[k], b[k], "fp32"), (n, h, w, k, float(np.abs(a[k] - b[k]).max()))
    with pytest.raises(Exception) as e:              # outside the profile (H 34 > 32): refused, naming the range
        trt.run_all(_feeds(1, 34, 8))
    assert "H = 34 is outside the engine's profile, which takes image's H from 8 to 32" in str(e.value)
    r = run_cli("engine", "info", str(two_stream_engine))
    assert r.returncode == 0 and "shapes image:1x3x8x8:4x3x16x32:8x3x32x64,mask:1x1x8x8:4x1x16x32:8x1x32x64" in \
        r.stdout, r.stdout


def test_cuda_graphs_per_input_shapes_on_a_size_variable_engine(two_stream_engine):
    from resgraph.runtime import Options, open_session
    plain = open_session(str(two_stream_engine), "tensorrt")
    graphs = open_session(str(two_stream_engine), "tensorrt", Options(cuda_graph=True))
    for _ in range(2):
        for n, h, w in ((2, 8, 8), (4, 16, 32), (8, 32, 64), (4, 16, 32)):
            feeds = _feeds(n, h, w, seed=h)
            a, b = graphs.run_all(feeds), plain.run_all(feeds)
            for k in a:
                np.testing.assert_array_equal(a[k], b[k])
    assert len(graphs._graphs) == 3


def test_the_shipped_unet_engine_runs_at_two_sizes(tmp_path):
    """A dense output at the input's own size, on a profile given with --shapes (sizes from 32 to 256)."""
    from resgraph.runtime import open_session
    folder = _compile(ROOT / "specs" / "unet.yaml", tmp_path / "unet", "fp32", "1:4:4", "--shapes",
                      "image:1x3x32x32:4x3x128x128:4x3x256x256")
    trt, ort = open_session(str(folder), "tensorrt"), open_session(str(folder), "ort-cpu")
    for h, w in ((64, 96), (256, 128)):
        x = np.random.default_rng(h).standard_normal((2, 3, h, w), dtype=np.float32)
        a, b = trt.run(x), ort.run(x)
        assert a.shape == (2, 2, h, w) and _close(a, b, "fp32"), float(np.abs(a - b).max())


def test_close_waits_for_a_run_in_another_thread_and_runs_select_their_device(digits_engine):
    """close() takes the session's lock: a batch running in another thread finishes before the buffers
    go; and a run from a thread that never selected a device (cudaSetDevice is per thread) works."""
    import threading

    from resgraph.runtime import open_session
    s = open_session(str(digits_engine), "tensorrt")
    x = np.zeros((32, *s.input_shape), np.float32)
    got, errors = [], []

    def work():
        try:
            for _ in range(20):
                got.append(s.run(x).shape)
        except Exception as e:  # noqa: BLE001  (a run after close is refused; none may crash)
            errors.append(e)
    t = threading.Thread(target=work)
    t.start()
    while not got and t.is_alive():
        time.sleep(0.001)
    s.close()
    t.join()
    assert got and all(g == (32, 10) for g in got)
    assert all(isinstance(e, BackendError) and "session is closed" in e.message for e in errors), errors
