"""Per-layer times of one session from its back end's own profiler, for `resgraph profile`.

The same session is first timed unprofiled by bench's core (bench.bench: the whole-model latency
`bench` reports), then again with its back end's profiler on, through the same core (bench.time_runs),
so both figures come from one run of one session on one random batch:

    ort-cpu, ort-cuda   a second InferenceSession of the same file with the session's own options and
                        providers, plus SessionOptions.enable_profiling; its "Node" events
                        (<node name>_kernel_time) per "model_run", run through the session's own run()
    torch-cpu/-cuda     the session's fx module copied with a record_function range around every node
                        (named after the node's IR path, the module's meta) and one around the forward,
                        under torch.profiler; on CUDA each range first synchronises, so it holds its
                        kernels' time
    tensorrt            a trt.IProfiler on the session's execution context (runtime/tensorrt.py):
                        TensorRT's layer names, fused layers joined by " + "

Names are the back end's own (ONNX node names, IR paths, TensorRT layer names): mapping them to spec
lines needs the IR, which the runtime does not import (resgraph/profile/ does it). What no node or
layer holds is measured here and named: the runtime's own time between kernels, the caller's side of
the call (Python, the numpy batch in and out), host<->device copies.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np

from ..errors import BackendError, DataError
from .bench import BenchResult, bench, time_runs, workload
from .session import open_session

PREFIX = "rg:"            # torch: the record_function ranges resgraph adds (not the aten ops' own events)
FORWARD = PREFIX + "forward"


@dataclass
class Timings:
    backend: str
    device: str
    precision: str
    batch: int
    runs: int
    events: dict          # the back end's name of a node or layer -> ms in each profiled run (len runs)
    ops: dict             # the back end's name -> its op there (ONNX Runtime's op_name, "layer" for TensorRT)
    other: dict           # named time of no node: label -> ms in each run
    latency_ms: list      # each profiled call as the timing core timed it
    bench: BenchResult    # the same session unprofiled, through bench's core, just before
    nonfinite: dict       # output name -> the share of its values that are NaN or inf (only where > 0)


def profile_session(folder: str, backend: str, batch: int, runs: int, options, sizes: dict | None = None,
                    warmup: float = 1.0) -> Timings:
    """Open `folder` on `backend`, profile `runs` calls of it on a random batch, then time it as bench
    does (`runs` calls after `warmup` seconds) on the same batch. A DataError where every value of an output
    is NaN or inf: those timings would be of a broken model."""
    if options.cuda_graph or options.torch_compile:
        raise BackendError.at("--cuda-graph" if options.cuda_graph else "--torch-compile",
                              "a CUDA graph or a compiled module runs as one piece: no per-layer times",
                              "profile without it")
    session = open_session(folder, backend, options)
    with session:
        run, x = workload(session, batch, sizes, seed=0)
        nonfinite = _nonfinite(session, run(x))
        family = session.backend.split("-")[0]
        if family not in COLLECT:
            raise BackendError.at(session.backend, f"{session.backend} has no per-layer profiler here",
                                  "--backend ort-cpu, torch-cpu, ort-cuda, torch-cuda or tensorrt")
        run(x)
        events, ops, other, lat = COLLECT[family](session, run, x, runs)
        # bench's figure after the profiled runs, on the plain session: both measured warm (measured first,
        # torch-cpu's oneDNN caches and allocator were still settling: bench's median read 5-15% high)
        plain = bench(session, batch, duration=0.0, warmup=warmup, min_iterations=runs, sizes=sizes)
    return Timings(session.backend, session.device, session.precision, batch, runs, events, ops, other,
                   [t * 1e3 for t in lat], plain, nonfinite)


def _nonfinite(session, y) -> dict:
    """Each output's share of NaN or inf values; a DataError where one holds nothing else."""
    outs = y if isinstance(y, dict) else {session.output_name: y}
    bad = {k: float(np.mean(~np.isfinite(v))) for k, v in outs.items()}
    for k, share in bad.items():
        if share == 1.0:
            raise DataError.at(k, f"output {k} is NaN or inf everywhere on a random batch: the model computes "
                               "nothing a timing would describe", f"check the weights: resgraph parity "
                               f"{session.folder} shows which back end and layer goes wrong")
    return {k: v for k, v in bad.items() if v > 0}


def _last(values: list, runs: int, name: str) -> list:
    assert len(values) >= runs, (name, len(values), runs)
    return values[-runs:]


# --- ONNX Runtime ----------------------------------------------------------------------------------

def _ort(session, run, x, runs: int):
    """The session's run() on a profiling copy of its InferenceSession: node events per model_run."""
    ort, plain = session.ort, session.sess
    so = plain.get_session_options()
    tmp = tempfile.mkdtemp(prefix="resgraph-profile-")
    so.enable_profiling, so.profile_file_prefix = True, os.path.join(tmp, "ort")
    providers = plain.get_providers()
    opts = plain.get_provider_options()
    try:
        session.sess = ort.InferenceSession(session.path, so, providers=providers,
                                            provider_options=[opts.get(p, {}) for p in providers])
        lat, io, _ = time_runs(session, run, x, 0.0, 0.0, runs)
        with open(session.sess.end_profiling(), encoding="utf-8") as f:
            trace = json.load(f)
    finally:
        session.sess = plain
        shutil.rmtree(tmp, ignore_errors=True)
    events, ops, total = _ort_events(trace, runs)
    other = _overheads(total, events, lat, io, "runtime: ONNX Runtime between kernels")
    return events, ops, other, lat


def _ort_events(trace: list, runs: int) -> tuple[dict, dict, list]:
    """(node name -> ms per run, node name -> op, model_run ms per run) of the last `runs` model_runs."""
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in trace if e.get("cat") == "Session" and e["name"] == "model_run")
    spans = _last(spans, runs, "model_run")
    events: dict[str, list] = {}
    ops: dict[str, str] = {}
    for e in trace:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        k = next((i for i, (a, b) in enumerate(spans) if a <= e["ts"] <= b), None)
        if k is None:   # a warm-up run's
            continue
        name = e["name"][:-len("_kernel_time")]
        events.setdefault(name, [0.0] * runs)[k] += e["dur"] / 1e3
        ops[name] = e.get("args", {}).get("op_name", "")
    return events, ops, [(b - a) / 1e3 for a, b in spans]


def _overheads(total: list | None, events: dict, lat: list, io: list, inside: str) -> dict:
    """The named time of no node, per run: `inside` (the runtime's whole run minus its nodes, where it
    reports a whole run), host<->device copies (where the session has a device), and the caller's side
    (the timed call minus all that)."""
    runs = len(lat)
    nodes = [sum(v[k] for v in events.values()) for k in range(runs)]
    whole = total or nodes
    copies = [a + b for a, b in io[-runs:]] if io else [0.0] * runs
    copies = [c * 1e3 for c in copies]
    other = {}
    if total:
        other[inside] = [max(t - n, 0.0) for t, n in zip(total, nodes)]
    if io:
        other["copies: host<->device"] = copies
    other["call: Python, the batch in and out"] = [max(t * 1e3 - w - c, 0.0) for t, w, c in zip(lat, whole, copies)]
    return other


# --- PyTorch -----------------------------------------------------------------------------------------

def _torch(session, run, x, runs: int):
    """The session's run() on an instrumented copy of its module, under torch.profiler."""
    torch, plain = session.torch, session.module
    cuda = session.dev.type == "cuda"
    session.module = instrumented(plain, torch, sync=cuda)
    try:
        time_runs(session, run, x, 0.0, 0.0, 2)              # the copy's own first calls, unprofiled
        lat, io, seen = _user_ranges(torch, lambda: time_runs(session, run, x, 0.0, 0.0, runs))
    finally:
        session.module = plain
    total = _last(seen.pop(FORWARD, []), runs, FORWARD)
    events = {k[len(PREFIX):]: _last(v, runs, k) for k, v in seen.items()}
    ops = {k: "" for k in events}
    return events, ops, _overheads(total, events, lat, io, "runtime: the fx forward between nodes"), lat


def _user_ranges(torch, work):
    """(what work() returns..., PREFIX range name -> [ms, ...] in order): torch's profiler observing
    record_function ranges only (RecordScope.USER_SCOPE, not every aten op inside them, whose
    recording would cost more than the smaller nodes take). torch.profiler.profile's own machinery
    (torch.autograd._enable_profiler), where this torch has it; else torch.profiler.profile whole."""
    seen: dict[str, list] = {}
    try:
        from torch._C._profiler import RecordScope, _ExperimentalConfig
        from torch.autograd import (ProfilerActivity, ProfilerConfig, ProfilerState, _disable_profiler,
                                    _enable_profiler, _prepare_profiler)
    except ImportError:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            out = work()
        for e in prof.events():
            if e.name.startswith(PREFIX):
                seen.setdefault(e.name, []).append(e.time_range.elapsed_us() / 1e3)
        return (*out[:2], seen)
    config = ProfilerConfig(ProfilerState.KINETO, False, False, False, False, False, _ExperimentalConfig())
    _prepare_profiler(config, {ProfilerActivity.CPU})
    # _RecordFunctionFast's ranges are FUNCTION-scoped (with the aten ops'); the profiler ops' USER_SCOPE
    _enable_profiler(config, {ProfilerActivity.CPU}, {RecordScope.FUNCTION if _fast() else RecordScope.USER_SCOPE})
    try:
        out = work()
    finally:
        result = _disable_profiler()
    for e in sorted(result.events(), key=lambda e: e.start_ns()):
        if e.name().startswith(PREFIX):
            seen.setdefault(e.name(), []).append(e.duration_ns() / 1e6)
    return (*out[:2], seen)


def instrumented(gm, torch, sync: bool = False):
    """A copy of the fx GraphModule `gm` (sharing its submodules and weights) whose forward enters a
    record_function range before each node and leaves it after, named PREFIX + the node's IR path
    (gm.meta["resgraph"]["paths"]; a node of none, such as a projection's conv: its submodule's
    path), and one range around it all. With `sync`, each range waits for its CUDA kernels."""
    import torch.fx as fx
    paths = gm.meta.get("resgraph", {}).get("paths", {})
    g, env = fx.Graph(), {}
    leave = _leave_sync if sync else _leave
    whole = None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            env[node] = g.node_copy(node, lambda n: env[n])
            continue
        if whole is None:
            whole = g.call_function(_enter, (FORWARD,))
        if node.op == "output":
            out = env[node.args[0]] if isinstance(node.args[0], fx.Node) else node.args[0]
            g.call_function(leave, (whole, out))
            g.node_copy(node, lambda n: env[n])
            continue
        name = paths.get(node.name) or (node.target if node.op == "call_module" else node.name)
        h = g.call_function(_enter, (PREFIX + name,))
        env[node] = g.call_function(leave, (h, g.node_copy(node, lambda n: env[n])))
    return fx.GraphModule(gm, g)


def _fast():
    """torch's _RecordFunctionFast (what torch.profiler.record_function is built on in its fast path):
    a range costs 0.3 us on this machine against 12 us through the profiler ops, which over resnet50's
    175 nodes is the difference between a 0.5% and a 6% slower forward; None where torch lacks it."""
    import torch
    return getattr(getattr(torch._C, "_profiler", None), "_RecordFunctionFast", None)


_FAST = None


def _enter(name: str):
    global _FAST
    if _FAST is None:
        _FAST = _fast() or False
    if _FAST:
        r = _FAST(name)
        r.__enter__()
        return r
    import torch
    return torch.ops.profiler._record_function_enter_new(name, None)


def _leave(handle, value):
    if _FAST:
        handle.__exit__(None, None, None)
        return value
    import torch
    torch.ops.profiler._record_function_exit._RecordFunction(handle)
    return value


def _leave_sync(handle, value):
    import torch
    torch.cuda.synchronize()
    return _leave(handle, value)


# --- TensorRT ----------------------------------------------------------------------------------------

def _tensorrt(session, run, x, runs: int):
    """TensorRT's IProfiler on the session's context: each layer's time in each run."""
    if session.options.cuda_graph:
        raise BackendError.at("--cuda-graph", "a CUDA graph replays without TensorRT's profiler", "profile without it")
    times = session.profile_layers()
    lat, io, _ = time_runs(session, run, x, 0.0, 0.0, runs)   # its first call (the core's warm-up) is reported too
    events = {k: _last(v, runs, k) for k, v in times.items()}
    return events, {k: "layer" for k in events}, _overheads(None, events, lat, io, ""), lat


COLLECT = {"ort": _ort, "torch": _torch, "tensorrt": _tensorrt}
