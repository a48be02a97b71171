"""model.engine on TensorRT.

Opening: engine.json is checked against this machine first (TensorRT version, GPU compute
capability, the folder's model.onnx: backends/tensorrt/engine_json.py), then model.engine against
engine.json's sha256 (a corrupt or replaced file), and only then deserialised with trt.Runtime;
`--rebuild` (runtime/rebuild.py, a step before opening) rebuilds a mismatched engine from model.onnx.

Running one batch of N (the engine's profile MIN <= N <= MAX; a larger batch runs in chunks of MAX,
a smaller one is padded to MIN):

    x (numpy) -> pinned host buffer (unless x is input_buffer(N), already there) -> cudaMemcpyAsync H2D -> context.set_input_shape([N, ...])
    -> execute_async_v3(stream) on device buffers bound by tensor name (set_tensor_address)
    -> cudaMemcpyAsync D2H -> pinned host buffer -> stream synchronize -> a copy of the N outputs

everything on one non-blocking stream of the session's own; host<->device copies are timed with
CUDA events (last_io). With --cuda-graph, execute_async_v3 is captured once per batch size (after
one plain run, which TensorRT needs to finish its shape-dependent set-up) into a CUDA graph on an
execution context of its own, and replayed. All contexts share one block of activation memory
(TensorRT >= 10.1: user-managed, engine.device_memory_size_v2), as they run one at a time on one
stream; a lock keeps one run() at a time.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from typing import TYPE_CHECKING

import numpy as np

from ..errors import BackendError
from .base import Availability, Options, Session, nvidia_gpu_visible

if TYPE_CHECKING:   # the annotations' names; imported for real when a session opens
    import tensorrt as trt


def probe(folder: str | None) -> Availability:
    if importlib.util.find_spec("tensorrt") is None:
        return Availability(False, "tensorrt is not installed", "pip install 'resgraph[tensorrt]' (and an NVIDIA GPU)")
    if importlib.util.find_spec("cuda") is None:
        return Availability(False, "cuda-python is not installed", "pip install 'resgraph[tensorrt]'")
    if not nvidia_gpu_visible():
        return Availability(False, "no NVIDIA GPU visible")
    if folder is not None and not os.path.isfile(os.path.join(folder, "model.engine")):
        return Availability(False, f"no model.engine in {folder}",
                            f"build one: resgraph engine build {folder} (or compile with --engine)")
    return Availability(True, "TensorRT, model.engine")


def open_engine(folder: str, manifest, options: Options):
    """A TensorRTSession; every refusal is a BackendError, so that `auto` passes over a back end it
    cannot open (no loadable TensorRT, an engine for another GPU) to the next, saying why. Opening
    never rebuilds: `--rebuild` is a step of its own before it (runtime/rebuild.py)."""
    from ..backends.tensorrt.engine_json import EngineMismatch
    from ..errors import ResgraphError
    try:
        return TensorRTSession(folder, manifest, options)
    except EngineMismatch as e:
        err = BackendError(e.diagnostics)
        err.differs = e.differs
        raise err from None
    except BackendError:
        raise
    except ResgraphError as e:   # engine.json unreadable, no GPU to query, TensorRT that does not load
        raise BackendError(e.diagnostics) from None


def check_engine(folder: str, manifest, device_id: int):
    """(engine.json's record, the plan's bytes) of a model.engine that can run on this GPU; an
    EngineMismatch naming what differs otherwise (TensorRT version, compute capability, model.onnx,
    a corrupt plan, the I/O), all before anything deserialises the plan."""
    from ..backends.tensorrt.build import import_tensorrt
    from ..backends.tensorrt.engine_json import EngineMismatch, check_compatible, read_engine_info
    from ..backends.tensorrt.gpu import gpu
    trt = import_tensorrt()
    info = read_engine_info(folder)
    card = gpu(device_id)
    onnx = manifest.artifacts.get("model.onnx")
    check_compatible(folder, info, trt.__version__, card.compute_capability, onnx.sha256 if onnx else "", card.name)
    path = os.path.join(folder, "model.engine")
    rebuild = f"rebuild it: resgraph engine build {folder} {info.options.command_flags()}  (or pass --rebuild)"
    with open(path, "rb") as f:
        plan = f.read()
    if hashlib.sha256(plan).hexdigest() != info.engine_sha256:
        raise EngineMismatch.at(path, f"model.engine does not match engine.json's sha256 ({len(plan):,} bytes, "
                                f"{info.engine_bytes:,} recorded): corrupt, truncated or replaced", rebuild)
    ins, outs = [t.name for t in info.inputs], [t.name for t in info.outputs]
    if ins != [manifest.input.name] or outs != [manifest.output.name] or \
            any(t.dtype != "float32" for t in (*info.inputs, *info.outputs)):
        raise EngineMismatch.at(os.path.join(folder, "engine.json"), f"the engine's I/O {ins} -> {outs} "
                                f"({', '.join(t.dtype for t in (*info.inputs, *info.outputs))}) is not the "
                                f"manifest's {manifest.input.name} -> {manifest.output.name} (float32)", rebuild)
    return info, plan


class TensorRTSession(Session):
    backend = "tensorrt"

    def __init__(self, folder: str, manifest, options: Options):
        super().__init__(folder, manifest, options)
        from ..backends.tensorrt.build import import_tensorrt, logger
        from ..backends.tensorrt.engine_json import EngineMismatch
        from ..backends.tensorrt.gpu import select
        from . import cuda
        trt = import_tensorrt()
        self.trt, self.cuda = trt, cuda
        self.device = f"cuda:{options.device_id}"
        info, plan = check_engine(folder, manifest, options.device_id)
        self.info, self.profile = info, info.options.batch
        self.precision = info.options.precision
        path = os.path.join(folder, "model.engine")
        rebuild = f"rebuild it: resgraph engine build {folder} {info.options.command_flags()}  (or pass --rebuild)"
        select(options.device_id)
        self._log = logger(trt, verbose=False)
        self.runtime = trt.Runtime(self._log)
        if info.options.version_compatible:
            self.runtime.engine_host_code_allowed = True    # the lean runtime embedded in the plan
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise EngineMismatch.at(path, "TensorRT could not deserialise model.engine: " +
                                    ("; ".join(self._log.errors[-3:]) or "no reason given"), rebuild)
        self._lock = threading.Lock()             # one stream, one set of buffers: one run at a time
        self._graphs: dict[int, tuple] = {}       # batch -> (its context, its CUDA graph)
        self._shape: int | None = None             # the batch the plain context's input shape is set to
        self.stream = self.context = self._memory = None
        self.host_in = self.host_out = self.dev_in = self.dev_out = None
        self._events = []
        try:
            self.stream = cuda.Stream()
            self._events = [cuda.Event() for _ in range(4)]
            n = self.profile.max
            self.host_in = cuda.PinnedBuffer((n, *self.input_shape))
            self.host_out = cuda.PinnedBuffer((n, *self.output_shape))
            self.dev_in = cuda.DeviceBuffer(self.host_in.nbytes)
            self.dev_out = cuda.DeviceBuffer(self.host_out.nbytes)
            if hasattr(self.engine, "device_memory_size_v2"):   # TensorRT >= 10.1
                # every context (the plain one, one per captured batch size) runs on this stream, one
                # at a time: they share one block of activation memory instead of one block each
                self._memory = cuda.DeviceBuffer(self.engine.device_memory_size_v2)
            self.context = self._context()
        except BaseException:
            self.close()
            raise

    def _context(self) -> "trt.IExecutionContext":
        trt = self.trt
        if self._memory is not None and hasattr(self.engine, "device_memory_size_v2"):
            ctx = self.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            if ctx is not None:
                ctx.set_device_memory(self._memory.ptr, self._memory.nbytes)
        else:
            ctx = self.engine.create_execution_context()
        if ctx is None:
            raise BackendError.at(os.path.join(self.folder, "model.engine"), "TensorRT could not create an execution "
                                  "context (out of GPU memory?): " + ("; ".join(self._log.errors[-3:]) or "no reason "
                                  "given"), f"free GPU memory (nvidia-smi), or rebuild with a smaller --batch than "
                                  f"{self.profile}")
        for name, ptr in ((self.input_name, self.dev_in.ptr), (self.output_name, self.dev_out.ptr)):
            if not ctx.set_tensor_address(name, ptr):
                raise BackendError.at(name, "TensorRT refused the tensor's device address: " +
                                      ("; ".join(self._log.errors[-3:]) or "no reason given"),
                                      f"rebuild the engine: resgraph engine build {self.folder}")
        return ctx

    def _set_shape(self, ctx: "trt.IExecutionContext", n: int) -> None:
        if not ctx.set_input_shape(self.input_name, (n, *self.input_shape)):
            raise BackendError.at(self.input_name, f"TensorRT refused the input shape {[n, *self.input_shape]} "
                                  f"(profile {self.profile}): " + ("; ".join(self._log.errors[-3:]) or "no reason given"),
                                  f"rebuild the engine with a --batch profile covering {n}")

    def describe(self) -> str:
        return f"tensorrt {self.info.tensorrt_version} on {self.device}, {self.precision}, batch {self.profile}"

    def run(self, x: np.ndarray) -> np.ndarray:
        x = self.check_batch(x)
        n = x.shape[0]
        if n > self.profile.max:                   # in chunks the profile admits
            return np.concatenate([self.run(x[i:i + self.profile.max]) for i in range(0, n, self.profile.max)])
        if n < self.profile.min:                   # padded: samples are independent at inference
            pad = np.zeros((self.profile.min - n, *self.input_shape), np.float32)
            return self.run(np.concatenate([x, pad]))[:n]
        with self._lock:
            return self._run(x)

    def input_buffer(self, n: int) -> np.ndarray:
        if self.profile.min <= n <= self.profile.max:
            return self.host_in.array[:n]      # pinned: run() sends it as is
        return super().input_buffer(n)

    def _run(self, x: np.ndarray) -> np.ndarray:
        s, (e0, e1, e2, e3) = self.stream, self._events
        n = x.shape[0]
        if x.ctypes.data != self.host_in.ptr:  # not written into input_buffer(): stage it (pageable -> pinned)
            np.copyto(self.host_in.array[:n], x)
        e0.record(s)
        s.h2d(self.dev_in.ptr, self.host_in.ptr, x.nbytes)
        e1.record(s)
        if self.options.cuda_graph:
            if n not in self._graphs:
                self._graphs[n] = self._capture(n)
            self._graphs[n][1].launch(s)
        else:
            if self._shape != n:
                self._set_shape(self.context, n)
                self._shape = n
            if not self.context.execute_async_v3(int(s)):
                raise BackendError.at(os.path.join(self.folder, "model.engine"), "TensorRT could not enqueue the "
                                      f"batch of {n}: " + ("; ".join(self._log.errors[-3:]) or "no reason given"),
                                      "see resgraph doctor")
        out_bytes = n * int(np.prod(self.output_shape)) * 4
        e2.record(s)
        s.d2h(self.host_out.ptr, self.dev_out.ptr, out_bytes)
        e3.record(s)
        s.synchronize()
        self.last_io = (e1.ms_since(e0) / 1e3, e3.ms_since(e2) / 1e3)
        return self.host_out.array[:n].copy()

    def _capture(self, n: int) -> tuple:
        """An execution context of its own for batch n (sharing the session's activation memory), run
        once (TensorRT finishes its shape-dependent set-up there), then captured into a CUDA graph."""
        ctx = self._context()
        self._set_shape(ctx, n)
        where = os.path.join(self.folder, "model.engine")
        if not ctx.execute_async_v3(int(self.stream)):
            raise BackendError.at(where, f"TensorRT could not run batch {n}", "leave out --cuda-graph")
        self.stream.synchronize()
        graph = self.cuda.Graph(self.stream, lambda: ctx.execute_async_v3(int(self.stream)), where)
        return ctx, graph

    def close(self) -> None:
        """Free everything this session holds, each resource on its own (one failure does not keep the
        others); pinned memory goes with the last array viewing it (input_buffer's included)."""
        import contextlib
        if self.stream is not None:
            with contextlib.suppress(BackendError):
                self.stream.synchronize()
        for _, g in self._graphs.values():
            with contextlib.suppress(Exception):
                g.destroy()
        self._graphs.clear()
        self.context = None
        for b in (self.host_in, self.host_out, self.dev_in, self.dev_out, self._memory):
            if b is not None:
                with contextlib.suppress(Exception):
                    b.free()
        for e in self._events:
            with contextlib.suppress(Exception):
                e.destroy()
        self._events = []
        if self.stream is not None:
            with contextlib.suppress(Exception):
                self.stream.destroy()
        self.stream = None
        self.engine = None
