"""The few CUDA runtime calls the TensorRT back end needs, through cuda-python (`cuda.bindings.runtime`,
what TensorRT's own Python samples use; the `tensorrt` extra installs it, torch is not needed).

Every cuda-python call returns a tuple whose first item is a cudaError_t; `call` turns a failure
into a BackendError naming the call and the error, and returns the rest.

Every device resource (DeviceBuffer, Stream, Event, Graph) is released by a weakref.finalize as
well as by its free()/destroy(): a session that is dropped without close() (an exception between
opening and closing, a caller that forgets) gives its device memory back when it is collected, not
at process exit. The finalizers hold the handle, never the object, and run at most once.
"""
from __future__ import annotations

import weakref

import numpy as np

from ..errors import BackendError


def cudart():
    try:
        from cuda.bindings import runtime
    except ImportError as e:
        raise BackendError.at("cuda-python", f"cuda-python is not installed ({e})",
                              "pip install 'resgraph[tensorrt]' (it brings cuda-python; take cuda-python 12.x for a "
                              "CUDA 12 driver: pip install 'cuda-python<13')") from None
    except RuntimeError as e:   # some releases (12.6.1, yanked) raise at import where no driver loads
        raise BackendError.at("cuda-python", f"cuda-python cannot load the CUDA driver ({e})",
                              "see resgraph doctor and nvidia-smi; pip install -U 'cuda-python>=12.9.10'") from None
    return runtime


def call(result, what: str):
    """(err, *values) -> values (one value alone, or None); a failed call is a BackendError."""
    rt = cudart()
    err, *rest = result if isinstance(result, tuple) else (result,)
    if err != rt.cudaError_t.cudaSuccess:
        _, text = rt.cudaGetErrorString(err)
        raise BackendError.at(what, f"CUDA error {err.name}: {text.decode() if isinstance(text, bytes) else text}",
                              "see resgraph doctor and nvidia-smi (driver, GPU visible, memory free)")
    return None if not rest else rest[0] if len(rest) == 1 else tuple(rest)


def _release(fn: str, handle) -> None:
    """cudart().<fn>(handle), for a finalizer: no exception escapes (at interpreter exit, or after the
    context is gone, the driver frees what is left)."""
    try:
        getattr(cudart(), fn)(handle)
    except Exception:  # noqa: BLE001
        pass


class DeviceBuffer:
    def __init__(self, nbytes: int):
        self.nbytes = nbytes
        self.ptr = call(cudart().cudaMalloc(max(nbytes, 1)), "cudaMalloc")
        self._release = weakref.finalize(self, _release, "cudaFree", self.ptr)

    def free(self) -> None:
        self._release()      # once: a second call, or the finalizer after it, does nothing
        self.ptr = 0


class _PinnedMemory:
    """cudaMallocHost memory that numpy arrays can view: each view keeps this object alive (it is their
    base, through __array_interface__), and the memory is freed when the last of them is gone, so an
    array handed out by input_buffer() never outlives it."""

    def __init__(self, nbytes: int):
        self.nbytes = nbytes
        self.ptr = call(cudart().cudaMallocHost(max(nbytes, 1)), "cudaMallocHost")

    @property
    def __array_interface__(self):
        return {"shape": (self.nbytes,), "typestr": "|u1", "data": (self.ptr, False), "version": 3}

    def __del__(self):
        try:
            from cuda.bindings import runtime
            runtime.cudaFreeHost(self.ptr)
        except Exception:  # noqa: BLE001  (interpreter shutdown: the process frees it)
            pass


class PinnedBuffer:
    """Page-locked host memory (cudaMallocHost) and a numpy view of it: copies from it to the device
    run at the bus's speed and asynchronously, which pageable memory does not."""

    def __init__(self, shape: tuple[int, ...], dtype=np.float32):
        dtype = np.dtype(dtype)
        self.nbytes = int(np.prod(shape)) * dtype.itemsize
        memory = _PinnedMemory(self.nbytes)
        self.ptr = memory.ptr
        self.array = np.asarray(memory)[:self.nbytes].view(dtype).reshape(shape)

    def free(self) -> None:
        """Drop this buffer's view; the memory goes with the last view (see _PinnedMemory)."""
        self.array = None


class Stream:
    def __init__(self):
        rt = cudart()
        self.handle = call(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")
        self._release = weakref.finalize(self, _release, "cudaStreamDestroy", self.handle)
        self._int = _native(self.handle)

    def __int__(self) -> int:
        """The cudaStream_t as the integer TensorRT's execute_async_v3 takes (worked out once: this is
        on every batch's path)."""
        return self._int

    def h2d(self, dst: int, src: int, nbytes: int) -> None:
        rt = cudart()
        call(rt.cudaMemcpyAsync(dst, src, nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.handle), "cudaMemcpyAsync")

    def d2h(self, dst: int, src: int, nbytes: int) -> None:
        rt = cudart()
        call(rt.cudaMemcpyAsync(dst, src, nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.handle), "cudaMemcpyAsync")

    def synchronize(self) -> None:
        call(cudart().cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def destroy(self) -> None:
        self._release()
        self.handle = None


def _native(handle) -> int:
    """A cuda-python handle as an integer (int(obj) is deprecated in cuda-python 13:
    get_cuda_native_handle where it exists)."""
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:
        return int(handle)
    return int(get_cuda_native_handle(handle))


class Event:
    def __init__(self):
        self.handle = call(cudart().cudaEventCreate(), "cudaEventCreate")
        self._release = weakref.finalize(self, _release, "cudaEventDestroy", self.handle)

    def record(self, stream: Stream) -> None:
        call(cudart().cudaEventRecord(self.handle, stream.handle), "cudaEventRecord")

    def ms_since(self, start: "Event") -> float:
        return float(call(cudart().cudaEventElapsedTime(start.handle, self.handle), "cudaEventElapsedTime"))

    def destroy(self) -> None:
        self._release()
        self.handle = None


class Graph:
    """A CUDA graph captured from the work `enqueue()` puts on `stream`, replayed with launch().
    `enqueue` returns False where its work cannot be captured (TensorRT's enqueue does when the
    capture fails), or raises: the capture is then ended, its graph discarded and the error raised."""

    def __init__(self, stream: Stream, enqueue, what: str):
        rt = cudart()
        call(rt.cudaStreamBeginCapture(stream.handle, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
             "cudaStreamBeginCapture")
        ok = False
        try:
            ok = enqueue()
        finally:   # on False and on an exception alike: end the capture, destroy what it made
            err, graph = rt.cudaStreamEndCapture(stream.handle)
            captured = graph is not None and err == rt.cudaError_t.cudaSuccess
            if captured and not ok:
                rt.cudaGraphDestroy(graph)
            if not ok or not captured:
                rt.cudaGetLastError()   # clear the capture's error so that later calls do not inherit it
        if not ok or not captured:
            raise BackendError.at(what, "this engine cannot be captured into a CUDA graph"
                                  + (f" ({err.name})" if err != rt.cudaError_t.cudaSuccess else ""),
                                  "leave out --cuda-graph")
        try:
            self.exec = call(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        finally:
            rt.cudaGraphDestroy(graph)  # the executable graph is all that is replayed
        self._release = weakref.finalize(self, _release, "cudaGraphExecDestroy", self.exec)

    def launch(self, stream: Stream) -> None:
        call(cudart().cudaGraphLaunch(self.exec, stream.handle), "cudaGraphLaunch")

    def destroy(self) -> None:
        self._release()
        self.exec = None
