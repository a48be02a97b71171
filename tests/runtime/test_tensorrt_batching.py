"""The TensorRT session's batching, on the CPU: a batch above the engine profile's MAX runs in chunks
of MAX, one below MIN is padded to MIN, and every row of every output comes back in its place; a
request whose sizes lie outside the profile is refused before the engine.

The session's own run() and run_all() drive it (check_feeds, the profile's range, chunking, padding,
the lock), with the profile that `engine build` resolves for the model. The one thing replaced is the
engine call, `_run`, by a row-wise function that records the batch sizes the engine would see:
without a GPU and TensorRT nothing else can execute a plan, and a row-wise function is what an
engine is at inference (samples are independent), so the test sees every row land where it must."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from resgraph.backends.tensorrt.options import BatchProfile, BuildOptions
from resgraph.backends.tensorrt.profile import parse_shapes, resolve
from resgraph.errors import DataError
from resgraph.manifest import read_manifest
from resgraph.runtime.base import Options, Session
from resgraph.runtime.tensorrt import TensorRTSession

# two inputs, two outputs (a map at the input's size and a vector), even sizes: one spec for the TensorRT tests
from test_tensorrt_profile import TWO_STREAM  # noqa: E402


@pytest.fixture(scope="module")
def two_stream_folder(tmp_path_factory):
    from resgraph.compile import compile_spec
    spec = tmp_path_factory.mktemp("spec") / "two_stream.yaml"
    spec.write_text(TWO_STREAM)
    out = tmp_path_factory.mktemp("compiled") / "two_stream"
    compile_spec(str(spec), out=str(out))
    return out


def signature(rows: list[np.ndarray], shape) -> np.ndarray:
    """An output row made of the input rows' own values: exact, and different for every row."""
    return np.resize(np.concatenate([r.ravel() for r in rows]), shape)


def expected(s: Session, feeds: dict) -> dict:
    """Every output, row by row, as the row-wise engine gives it."""
    n = next(iter(feeds.values())).shape[0]
    shapes = s.output_shapes(feeds)
    return {name: np.stack([signature([x[i] for x in feeds.values()], shape[1:]) for i in range(n)])
            for name, shape in shapes.items()}


def rowwise_session(folder, batch: BatchProfile, shapes: str | None = None) -> tuple[TensorRTSession, list[int]]:
    s = TensorRTSession.__new__(TensorRTSession)           # no engine to deserialise here
    m = read_manifest(str(folder))
    Session.__init__(s, str(folder), m, Options())
    given = parse_shapes(shapes) if shapes else ()
    options = BuildOptions(batch=batch, shapes=given)
    s.profile, s._lock = batch, threading.Lock()
    s.shapes = {p.name: p for p in resolve(options, m.inputs, m.sizes)}    # as engine build resolves it
    seen: list[int] = []

    def engine(feeds: dict) -> dict:   # the engine call: one output row per input row, every output
        n = next(iter(feeds.values())).shape[0]
        assert batch.min <= n <= batch.max, f"the engine was given a batch of {n} ({batch})"
        assert all(len(x) == n for x in feeds.values())
        seen.append(n)
        return expected(s, feeds)
    s._run = engine
    return s, seen


@pytest.mark.parametrize("n, batches", [(1, [2]), (5, [5]), (11, [8, 3]), (17, [8, 8, 2])])
def test_chunks_above_max_and_pads_below_min_keeping_every_row(digits_folder, n, batches):
    s, seen = rowwise_session(digits_folder, BatchProfile(2, 4, 8))
    x = np.random.default_rng(n).standard_normal((n, *s.input_shape), dtype=np.float32)
    y = s.run(x)
    want = expected(s, {s.input_name: x})[s.output_name]
    assert y.shape == (n, *s.output_shape) and np.array_equal(y, want)
    # each chunk: MAX rows, the rest last; a rest below MIN padded to MIN (17 = 8 + 8 + 1 -> 2)
    assert seen == batches


@pytest.mark.parametrize("n, batches", [(1, [2]), (11, [8, 3]), (17, [8, 8, 2])])
def test_every_output_of_every_input_keeps_its_rows(two_stream_folder, n, batches):
    """Two inputs chunked and padded together, two outputs (a map and a vector) put back in place."""
    s, seen = rowwise_session(two_stream_folder, BatchProfile(2, 4, 8))
    rng = np.random.default_rng(n)
    feeds = {"image": rng.standard_normal((n, 3, 16, 24), dtype=np.float32),
             "mask": rng.standard_normal((n, 1, 16, 24), dtype=np.float32)}
    y = s.run_all(feeds)
    want = expected(s, feeds)
    assert list(y) == ["fused", "emb"] and y["fused"].shape == (n, 8, 16, 24) and y["emb"].shape == (n, 8)
    assert all(np.array_equal(y[k], want[k]) for k in want)
    assert seen == batches
    with pytest.raises(DataError, match="takes 2 input"):    # run() is the one-input, one-output form
        s.run(feeds["image"])


def test_a_request_outside_the_engines_profile_is_refused_before_the_engine(two_stream_folder):
    s, seen = rowwise_session(two_stream_folder, BatchProfile(1, 2, 4), "image:1x3x8x8:2x3x16x16:4x3x32x32")
    ok = {"image": np.zeros((9, 3, 32, 8), np.float32), "mask": np.zeros((9, 1, 32, 8), np.float32)}
    assert s.run_all(ok)["fused"].shape == (9, 8, 32, 8) and seen == [4, 4, 1]      # the batch: chunked
    with pytest.raises(DataError) as e:
        s.run_all({"image": np.zeros((1, 3, 34, 8), np.float32), "mask": np.zeros((1, 1, 34, 8), np.float32)})
    assert e.value.file == "image" and "H = 34 is outside the engine's profile, which takes image's H from 8 to 32" \
        in e.value.message
    with pytest.raises(DataError) as e:      # not a size the model takes at all: the model's own refusal first
        s.run_all({"image": np.zeros((1, 3, 9, 8), np.float32), "mask": np.zeros((1, 1, 9, 8), np.float32)})
    assert "H = 9 is not a size the model takes" in e.value.message and "8 or 10" in e.value.hint
    assert seen == [4, 4, 1]


def test_a_batch_of_another_shape_is_refused_before_the_engine(digits_folder):
    s, seen = rowwise_session(digits_folder, BatchProfile(2, 4, 8))
    with pytest.raises(DataError, match="the model takes"):
        s.run(np.zeros((3, 2, 8, 8), np.float32))
    assert seen == []
