"""The TensorRT session's batching, on the CPU: a batch above the engine profile's MAX runs in chunks
of MAX, one below MIN is padded to MIN, and every row comes back in its place.

The session's own run() drives it (check_batch, chunking, padding, the lock). The one thing replaced
is the engine call, `_run`, by a row-wise function that records the batch sizes the engine would
see: without a GPU and TensorRT nothing else can execute a plan, and a row-wise function is what
an engine is at inference (samples are independent), so the test sees every row land where it must."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from resgraph.backends.tensorrt.options import BatchProfile
from resgraph.manifest import read_manifest
from resgraph.runtime.base import Options, Session
from resgraph.runtime.tensorrt import TensorRTSession


def signature(row: np.ndarray, shape) -> np.ndarray:
    """An output row made of the input row's own values: exact, and different for every row."""
    return np.resize(row.ravel(), shape)


def rowwise_session(folder, profile: BatchProfile) -> tuple[TensorRTSession, list[int]]:
    s = TensorRTSession.__new__(TensorRTSession)           # no engine to deserialise here
    Session.__init__(s, str(folder), read_manifest(str(folder)), Options())
    s.profile, s._lock = profile, threading.Lock()
    seen: list[int] = []

    def engine(x: np.ndarray) -> np.ndarray:   # the engine call: one output row per input row
        assert profile.min <= len(x) <= profile.max, f"the engine was given a batch of {len(x)} ({profile})"
        seen.append(len(x))
        return np.stack([signature(row, s.output_shape) for row in x])
    s._run = engine
    return s, seen


@pytest.mark.parametrize("n, batches", [(1, [2]), (5, [5]), (11, [8, 3]), (17, [8, 8, 2])])
def test_chunks_above_max_and_pads_below_min_keeping_every_row(digits_folder, n, batches):
    s, seen = rowwise_session(digits_folder, BatchProfile(2, 4, 8))
    x = np.random.default_rng(n).standard_normal((n, *s.input_shape), dtype=np.float32)
    y = s.run(x)
    want = np.stack([signature(row, s.output_shape) for row in x])
    assert y.shape == (n, *s.output_shape) and np.array_equal(y, want)
    # each chunk: MAX rows, the rest last; a rest below MIN padded to MIN (17 = 8 + 8 + 1 -> 2)
    assert seen == batches


def test_a_batch_of_another_shape_is_refused_before_the_engine(digits_folder):
    from resgraph.errors import DataError
    s, seen = rowwise_session(digits_folder, BatchProfile(2, 4, 8))
    with pytest.raises(DataError, match="the model takes"):
        s.run(np.zeros((3, 2, 8, 8), np.float32))
    assert seen == []
