"""runtime/cuda.py's device resources on a real GPU: memory comes back when an object is dropped
without free() (its weakref.finalize), free()/destroy() twice is harmless, a capture whose enqueue
raises leaves nothing behind, and a stream's integer handle is worked out once. Skipped, with the
reason, where no CUDA device is visible (`python -m pytest tests/runtime/test_cuda_resources.py` on
a GPU machine; bench/gpu_check.sh runs it)."""
import gc

import pytest

pytest.importorskip("cuda.bindings", reason="no CUDA device: cuda-python is not installed")

from resgraph.runtime import cuda  # noqa: E402
from resgraph.runtime.base import nvidia_gpu_visible  # noqa: E402

pytestmark = pytest.mark.skipif(not nvidia_gpu_visible(), reason="no CUDA device: these tests need a GPU")

MIB = 1 << 20


def _free_bytes() -> int:
    rt = cuda.cudart()
    free, _ = cuda.call(rt.cudaMemGetInfo(), "cudaMemGetInfo")
    return int(free)


def test_a_dropped_buffer_gives_its_memory_back():
    cuda.call(cuda.cudart().cudaFree(0), "cudaFree")     # the context exists before the first reading
    before = _free_bytes()
    bufs = [cuda.DeviceBuffer(256 * MIB) for _ in range(4)]
    assert _free_bytes() <= before - 1000 * MIB
    del bufs
    gc.collect()
    assert _free_bytes() >= before - 8 * MIB


def test_free_and_destroy_twice_are_harmless():
    b, s, e = cuda.DeviceBuffer(MIB), cuda.Stream(), cuda.Event()
    for _ in range(2):
        b.free(), s.destroy(), e.destroy()
    assert b.ptr == 0 and s.handle is None and e.handle is None
    rt = cuda.cudart()
    assert rt.cudaGetLastError()[0] == rt.cudaError_t.cudaSuccess


def test_a_capture_whose_enqueue_raises_ends_cleanly():
    s = cuda.Stream()

    def boom():
        raise RuntimeError("enqueue failed")
    with pytest.raises(RuntimeError, match="enqueue failed"):
        cuda.Graph(s, boom, "test")
    rt = cuda.cudart()
    status = cuda.call(rt.cudaStreamIsCapturing(s.handle), "cudaStreamIsCapturing")
    assert status == rt.cudaStreamCaptureStatus.cudaStreamCaptureStatusNone
    s.synchronize()      # the stream is usable: no capture left open on it
    s.destroy()


def test_a_streams_integer_handle_is_computed_once():
    s = cuda.Stream()
    assert int(s) == int(s) == s._int != 0
    s.destroy()
