"""model.engine on TensorRT.

Opening: engine.json is checked against this machine first (TensorRT version, GPU compute
capability, the folder's ONNX file: model.onnx, an int8 folder's model.s8.onnx; Manifest.onnx_file;
backends/tensorrt/engine_json.py), then model.engine against
engine.json's sha256 (a corrupt or replaced file), and only then deserialised with trt.Runtime;
`--rebuild` (runtime/rebuild.py, a step before opening) rebuilds a mismatched engine from model.onnx.

Opening also checks that the plan itself is what engine.json records: its I/O tensors by name
(num_io_tensors, get_tensor_name, get_tensor_mode) and every input's profile (get_tensor_profile_shape),
and engine.json's profile against the model (backends/tensorrt/engine_json.check_io).

run_all(feeds) runs every input to every output, by name; run(x) is its one-input, one-output form.
A request whose sizes lie outside the engine's profile (any dim but the batch) is refused, naming the
input and the profile's range. One batch of N (the profile's MIN <= N <= MAX; a larger batch runs in
chunks of MAX, a smaller one is padded to MIN):

    each input (numpy) -> its pinned host buffer (unless it is input_buffer(N), already there) -> H2D
    -> context.set_input_shape(name, shape) per input (when the shapes change), every output's shape
       read back from context.get_tensor_shape
    -> execute_async_v3(stream) on device buffers bound by tensor name (set_tensor_address)
    -> D2H of every output -> stream synchronize -> a copy of each

everything on one non-blocking stream of the session's own; host<->device copies are timed with
CUDA events (last_io). Each I/O tensor has one pinned host buffer and one device buffer, allocated
at open for the profile's MAX batch at its OPT sizes and grown (never shrunk) to the largest shape a
request needs; a buffer that grows moves, so the contexts are bound to it again. With --cuda-graph,
execute_async_v3 is captured once per set of input shapes (after one plain run, which TensorRT
needs to finish its shape-dependent set-up) into a CUDA graph on an execution context of its own,
and replayed; growing a buffer drops the graphs (they hold the old addresses). All contexts share
one block of activation memory (TensorRT >= 10.1: user-managed, engine.device_memory_size_v2), as
they run one at a time on one stream; a lock keeps one run at a time.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import threading
from typing import TYPE_CHECKING

import numpy as np

from ..errors import BackendError, DataError
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
    a corrupt plan, the I/O or the profile against the model), all before anything deserialises the plan."""
    from ..backends.tensorrt.build import import_tensorrt
    from ..backends.tensorrt.engine_json import EngineMismatch, check_compatible, check_io, read_engine_info
    from ..backends.tensorrt.gpu import gpu
    trt = import_tensorrt()
    info = read_engine_info(folder)
    card = gpu(device_id)
    name = manifest.onnx_file("tensorrt")       # the file the engine is built from: model.onnx or model.s8.onnx
    onnx = manifest.artifacts.get(name)
    check_compatible(folder, info, trt.__version__, card.compute_capability, onnx.sha256 if onnx else "", card.name,
                     name)
    path = os.path.join(folder, "model.engine")
    rebuild = f"rebuild it: resgraph engine build {folder} {info.options.command_flags()}  (or pass --rebuild)"
    with open(path, "rb") as f:
        plan = f.read()
    if hashlib.sha256(plan).hexdigest() != info.engine_sha256:
        raise EngineMismatch.at(path, f"model.engine does not match engine.json's sha256 ({len(plan):,} bytes, "
                                f"{info.engine_bytes:,} recorded): corrupt, truncated or replaced", rebuild)
    check_io(folder, info, manifest)
    return info, plan


def layer_profiler():
    """A trt.IProfiler whose `times` collects every report_layer_time call: layer name -> [ms, ...]
    (report_layer_time is the method TensorRT calls: tests/backends/tensorrt holds every override of
    a TensorRT interface to the interface's members in each release)."""
    from ..backends.tensorrt.build import import_tensorrt
    trt = import_tensorrt()

    class LayerTimes(trt.IProfiler):
        def __init__(self):
            trt.IProfiler.__init__(self)   # pybind11: the C++ side of the trampoline
            self.times: dict[str, list[float]] = {}

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            self.times.setdefault(layer_name, []).append(ms)

    return LayerTimes()


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
        self.shapes = {p.name: p for p in info.profile}     # every input's MIN, OPT and MAX shapes
        self.precision = info.options.precision
        path = os.path.join(folder, "model.engine")
        rebuild = f"rebuild it: resgraph engine build {folder} {info.options.command_flags()}  (or pass --rebuild)"
        self._select = lambda: select(options.device_id)   # cudaSetDevice is per thread: before every use
        self._select()
        self._log = logger(trt, verbose=False)
        self.runtime = trt.Runtime(self._log)
        if info.options.version_compatible:
            self.runtime.engine_host_code_allowed = True    # the lean runtime embedded in the plan
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise EngineMismatch.at(path, "TensorRT could not deserialise model.engine: " +
                                    ("; ".join(self._log.errors[-3:]) or "no reason given"), rebuild)
        found = self._plan_differs()
        if found:
            raise EngineMismatch.at(path, "model.engine is not what engine.json records: " + found, rebuild)
        self._lock = threading.Lock()             # one stream, one set of buffers: one run at a time
        self._graphs: dict[tuple, tuple] = {}     # input shapes -> (their context, their CUDA graph)
        self._set: tuple | None = None            # the input shapes the plain context is set to
        self._outs: dict[tuple, dict] = {}        # input shapes -> every output's shape
        self.host: dict = {}                      # tensor name -> pinned host buffer (flat float32)
        self.dev: dict = {}                       # tensor name -> device buffer
        self._moved, self._bound = 0, 0           # buffers moved so far; ... when the plain context was bound
        self.stream = self.context = self._memory = None
        self._events = []
        try:
            self.stream = cuda.Stream()
            self._events = [cuda.Event() for _ in range(4)]
            self._reserve_opt()
            if hasattr(self.engine, "device_memory_size_v2"):   # TensorRT >= 10.1
                # every context (the plain one, one per captured set of shapes) runs on this stream, one
                # at a time: they share one block of activation memory instead of one block each
                self._memory = cuda.DeviceBuffer(self.engine.device_memory_size_v2)
            self.context = self._context()
            self._bound = self._moved
        except BaseException:
            self.close()
            raise

    def profile_layers(self) -> dict:
        """From now on TensorRT reports each layer's time in each run of the plain context (not a CUDA
        graph's: a replay reports nothing) to an IProfiler; returns the dict it fills, layer name -> ms
        per run, in run order. Layer names are TensorRT's: fused layers joined by " + ", each carrying
        the ONNX node names (resgraph profile maps them to spec lines)."""
        profiler = layer_profiler()
        self.context.profiler = profiler   # enqueue_emits_profile (the default): reported at each execute
        self._profiler = profiler          # alive as long as the context reports to it
        return profiler.times

    def _plan_differs(self) -> str:
        """What in the deserialised plan is not engine.json's record: its I/O tensors by name, and
        every input's profile (MIN, OPT, MAX); "" where nothing."""
        trt, engine = self.trt, self.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        ins = sorted(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        outs = sorted(n for n in names if n not in ins)
        want = (sorted(t.name for t in self.info.inputs), sorted(t.name for t in self.info.outputs))
        if (ins, outs) != want:
            return f"its inputs {ins} and outputs {outs}, engine.json's {want[0]} and {want[1]}"
        for p in self.info.profile:
            got = tuple(tuple(int(d) for d in dims) for dims in engine.get_tensor_profile_shape(p.name, 0))
            if got != (p.min, p.opt, p.max):
                return f"{p.name}'s profile is {':'.join('x'.join(map(str, s)) for s in got)}, engine.json's {p}"
        return ""

    def _reserve_opt(self) -> None:
        """Every I/O tensor's buffers, for the profile's MAX batch at its OPT sizes."""
        opt = {t.name: (self.profile.max, *self.shapes[t.name].opt[1:]) for t in self.inputs}
        for name, shape in {**opt, **self._expected(opt)}.items():
            self._reserve(name, int(np.prod(shape)))

    def _expected(self, shapes: dict) -> dict:
        """Every output's shape for these input shapes (name -> [N, ...]), as the manifest gives it."""
        sizes = {d: shapes[t.name][i] for t in self.inputs for i, d in enumerate(t.sample_shape, start=1)
                 if isinstance(d, str)}
        n = next(iter(shapes.values()))[0]
        return {t.name: (n, *t.at(sizes)) for t in self.outputs}

    def _reserve(self, name: str, count: int) -> None:
        """`name`'s host and device buffers hold at least `count` float32s: grown (never shrunk) to the
        largest shape needed. A grown buffer moves: the contexts are bound again, the CUDA graphs
        (bound to the old addresses) dropped. Runs between batches (each ends synchronized)."""
        have = self.host.get(name)
        if have is not None and have.array.size >= count:
            return
        host = self.cuda.PinnedBuffer((count,))
        try:
            dev = self.cuda.DeviceBuffer(count * 4)
        except BaseException:
            host.free()
            raise
        old = (have, self.dev.get(name))
        self.host[name], self.dev[name] = host, dev
        for b in old:
            if b is not None:
                b.free()
        self._moved += 1
        self._drop_graphs()

    def _drop_graphs(self) -> None:
        import contextlib
        for _, g in self._graphs.values():
            with contextlib.suppress(Exception):
                g.destroy()
        self._graphs.clear()

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
                                  f"{self.profile} (or smaller MAX shapes)")
        self._bind(ctx)
        return ctx

    def _bind(self, ctx: "trt.IExecutionContext") -> None:
        """Every I/O tensor's device buffer, by name."""
        for name, buf in self.dev.items():
            if not ctx.set_tensor_address(name, buf.ptr):
                raise BackendError.at(name, "TensorRT refused the tensor's device address: " +
                                      ("; ".join(self._log.errors[-3:]) or "no reason given"),
                                      f"rebuild the engine: resgraph engine build {self.folder}")

    def _set_shapes(self, ctx: "trt.IExecutionContext", key: tuple) -> None:
        """Every input's shape (key: the inputs' shapes, in the manifest's order)."""
        for t, shape in zip(self.inputs, key):
            if not ctx.set_input_shape(t.name, shape):
                raise BackendError.at(t.name, f"TensorRT refused the input shape {list(shape)} (profile "
                                      f"{self.shapes[t.name]}): " + ("; ".join(self._log.errors[-3:]) or "no reason given"),
                                      "rebuild the engine with a profile covering it (--batch, --shapes)")

    def describe(self) -> str:
        sized = "" if all(p.fixed for p in self.shapes.values()) else \
            ", shapes " + ",".join(map(str, self.shapes.values()))
        return f"tensorrt {self.info.tensorrt_version} on {self.device}, {self.precision}, batch {self.profile}{sized}"

    def run(self, x: np.ndarray) -> np.ndarray:
        self.one_to_one()
        return self.run_all({self.input_name: x})[self.output_name]

    def run_all(self, feeds: dict) -> dict:
        from ..backends.tensorrt.profile import outside
        feeds = self.check_feeds(feeds)
        bad = outside(self.shapes, self.inputs, {k: x.shape for k, x in feeds.items()})
        if bad:
            raise DataError.at(*bad)
        n, b = next(iter(feeds.values())).shape[0], self.profile
        if n > b.max:                              # in chunks the profile admits
            parts = [self.run_all({k: x[i:i + b.max] for k, x in feeds.items()}) for i in range(0, n, b.max)]
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        if n < b.min:                              # padded: samples are independent at inference
            padded = {k: np.concatenate([x, np.zeros((b.min - n, *x.shape[1:]), x.dtype)]) for k, x in feeds.items()}
            return {k: y[:n] for k, y in self.run_all(padded).items()}
        with self._lock:
            return self._run(feeds)

    def input_buffer(self, n: int, shape: tuple | None = None) -> np.ndarray:
        shape = tuple(shape or self.input_shape)
        p = self.shapes[self.input_name]
        if self.profile.min <= n <= self.profile.max and len(shape) == len(p.min) - 1 and \
                all(isinstance(v, int) and lo <= v <= hi for v, lo, hi in zip(shape, p.min[1:], p.max[1:])):
            count = n * int(np.prod(shape))
            with self._lock:
                self._select()
                self._reserve(self.input_name, count)
                return self.host[self.input_name].array[:count].reshape(n, *shape)   # pinned: run() sends it as is
        return super().input_buffer(n, shape)

    def _run(self, feeds: dict) -> dict:
        """One batch the profile admits, through the engine (under the lock, on the session's device)."""
        if self.engine is None:
            raise BackendError.at(self.folder, "this TensorRT session is closed", "open the folder again")
        self._select()
        s, (e0, e1, e2, e3) = self.stream, self._events
        key = tuple(x.shape for x in feeds.values())
        for name, x in feeds.items():
            self._reserve(name, x.size)
        outs = self._output_shapes(key)
        for name, x in feeds.items():
            if x.ctypes.data != self.host[name].ptr:   # not written into input_buffer(): staged (pageable -> pinned)
                np.copyto(self.host[name].array[:x.size].reshape(x.shape), x)
        e0.record(s)
        for name, x in feeds.items():
            s.h2d(self.dev[name].ptr, self.host[name].ptr, x.nbytes)
        e1.record(s)
        self._execute(key)
        e2.record(s)
        for name, shape in outs.items():
            s.d2h(self.host[name].ptr, self.dev[name].ptr, 4 * int(np.prod(shape)))
        e3.record(s)
        s.synchronize()
        self.last_io = (e1.ms_since(e0) / 1e3, e3.ms_since(e2) / 1e3)
        return {name: self.host[name].array[:int(np.prod(shape))].reshape(shape).copy() for name, shape in outs.items()}

    def _output_shapes(self, key: tuple) -> dict:
        """Every output's shape for these input shapes, from TensorRT (context.get_tensor_shape once the
        input shapes are set), which must be the manifest's; the output buffers reserved for them."""
        outs = self._outs.get(key)
        if outs is None:
            self._set_shapes(self.context, key)
            self._set = key
            outs = {t.name: tuple(int(d) for d in self.context.get_tensor_shape(t.name)) for t in self.outputs}
            want = self._expected({t.name: shape for t, shape in zip(self.inputs, key)})
            if outs != want:
                raise BackendError.at(os.path.join(self.folder, "model.engine"), f"the engine gives outputs of "
                                      f"shapes {outs} for inputs of {list(key)}, the manifest says {want}",
                                      f"rebuild the engine: resgraph engine build {self.folder}")
            if len(self._outs) >= 1024:           # a size-variable model sees many shapes: keep the table bounded
                self._outs.clear()
            self._outs[key] = outs
        for name, shape in outs.items():
            self._reserve(name, int(np.prod(shape)))
        return outs

    def _execute(self, key: tuple) -> None:
        s = self.stream
        if self.options.cuda_graph:
            if key not in self._graphs:
                self._graphs[key] = self._capture(key)
            self._graphs[key][1].launch(s)
            return
        if self._bound != self._moved:
            self._bind(self.context)
            self._bound = self._moved
        if self._set != key:
            self._set_shapes(self.context, key)
            self._set = key
        if not self.context.execute_async_v3(int(s)):
            raise BackendError.at(os.path.join(self.folder, "model.engine"), "TensorRT could not enqueue the "
                                  f"batch of inputs {list(key)}: " + ("; ".join(self._log.errors[-3:]) or
                                                                     "no reason given"), "see resgraph doctor")

    def _capture(self, key: tuple) -> tuple:
        """An execution context of its own for these input shapes (sharing the session's activation
        memory, bound to the buffers as they are), run once (TensorRT finishes its shape-dependent
        set-up there), then captured into a CUDA graph."""
        ctx = self._context()
        self._set_shapes(ctx, key)
        where = os.path.join(self.folder, "model.engine")
        if not ctx.execute_async_v3(int(self.stream)):
            raise BackendError.at(where, f"TensorRT could not run inputs of {list(key)}", "leave out --cuda-graph")
        self.stream.synchronize()
        graph = self.cuda.Graph(self.stream, lambda: ctx.execute_async_v3(int(self.stream)), where)
        return ctx, graph

    def close(self) -> None:
        """Free everything this session holds, each resource on its own (one failure does not keep the
        others); pinned memory goes with the last array viewing it (input_buffer's included). Under the
        session's lock (a run in another thread finishes first), on the session's device."""
        with self._lock:
            with contextlib.suppress(Exception):
                self._select()
            self._close()

    def _close(self) -> None:
        if self.stream is not None:
            with contextlib.suppress(BackendError):
                self.stream.synchronize()
        self._drop_graphs()
        self.context = None
        for b in (*self.host.values(), *self.dev.values(), self._memory):
            if b is not None:
                with contextlib.suppress(Exception):
                    b.free()
        self.host, self.dev = {}, {}
        for e in self._events:
            with contextlib.suppress(Exception):
                e.destroy()
        self._events = []
        if self.stream is not None:
            with contextlib.suppress(Exception):
                self.stream.destroy()
        self.stream = None
        self.engine = None
