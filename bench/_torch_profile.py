"""An op-level comparison of two eager modules for bench/torch_speed.py --profile (torch.profiler): aten ops
per iteration, which ops only one of them calls, their self time; and the emitted module's fx graph facts."""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

from _common import say
from _torch_compile import sync


def fx_facts(rg) -> dict:
    import operator
    targets: dict[str, int] = {}
    nested = 0
    for n in rg.graph.nodes:
        if n.op == "call_function":
            name = getattr(n.target, "__name__", str(n.target))
            if n.target is operator.add:
                name = "operator.add"
            targets[name] = targets.get(name, 0) + 1
        elif n.op == "call_module":
            targets["call_module"] = targets.get("call_module", 0) + 1
            nested += n.target.count(".") > 0
    inplace = sum(1 for n in rg.graph.nodes if n.kwargs.get("inplace"))
    return {"calls": targets, "call_module_with_dotted_path": nested, "inplace_calls": inplace,
            "nodes": len(rg.graph.nodes)}


@contextlib.contextmanager
def quiet_kineto():
    """Kineto (the profiler's C++ side) logs 'USDT: ... profiler_start' and, without a GPU, 'ERROR: ...
    gpuGetDeviceCount failed' straight to file descriptor 2: capture it and pass on only other lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode(errors="replace").splitlines():
                if not re.match(r"(USDT|ERROR|WARNING|INFO):\d{4}-\d\d-\d\d .*\.cpp:\d+\]", line):
                    sys.stderr.write(line + "\n")


def profile_ops(fn, device, n: int) -> dict:
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with quiet_kineto(), profile(activities=acts) as prof:
        fn(n)
        sync(device)
    out = {}
    for e in prof.key_averages():
        if e.key.startswith("aten::"):
            out[e.key] = {"count": e.count / n, "self_cpu_ms": e.self_cpu_time_total / 1e3 / n}
    return out


def bench_profile(fns_by_phase: dict, models: dict, device, rg, n: int) -> dict:
    say("\n== 3. op-level profile of the eager modules (torch.profiler, per iteration)")
    facts = fx_facts(rg)
    calls = ", ".join(f"{k} {v}" for k, v in sorted(facts["calls"].items(), key=lambda kv: -kv[1]))
    say(f"   emitted fx graph: {facts['nodes']} nodes: {calls}; {facts['call_module_with_dotted_path']} submodule calls "
        f"reached through a getattr chain; {facts['inplace_calls']} in-place calls")
    res: dict = {"fx": facts}
    for phase, fns in fns_by_phase.items():
        for m in models.values():
            m.train(phase == "train step")
        for f in fns.values():
            f(1)                                              # warm (allocator, first-call paths)
        prof = {k: profile_ops(f, device, n) for k, f in fns.items()}
        tot = {k: (sum(v["count"] for v in p.values()), sum(v["self_cpu_ms"] for v in p.values())) for k, p in prof.items()}
        say(f"\n   {phase}: aten ops per iteration tv {tot['tv'][0]:.0f} ({tot['tv'][1]:.1f} ms self cpu), "
            f"rg {tot['rg'][0]:.0f} ({tot['rg'][1]:.1f} ms self cpu)")
        keys = set(prof["tv"]) | set(prof["rg"])
        zero = {"count": 0, "self_cpu_ms": 0.0}
        rows = []
        for k in keys:
            a, b = prof["tv"].get(k, zero), prof["rg"].get(k, zero)
            if a["count"] != b["count"] or max(a["self_cpu_ms"], b["self_cpu_ms"]) >= 0.05 * max(tot["tv"][1], 1e-9):
                rows.append((k, a, b))
        rows.sort(key=lambda r: -max(r[1]["self_cpu_ms"], r[2]["self_cpu_ms"]))
        say(f"   {'aten op':<44} {'tv n':>6} {'rg n':>6} {'tv ms':>8} {'rg ms':>8}   (ops whose counts differ, or >= 5% of the time)")
        for k, a, b in rows[:24]:
            mark = "  <- differs" if a["count"] != b["count"] else ""
            say(f"   {k:<44} {a['count']:6.0f} {b['count']:6.0f} {a['self_cpu_ms']:8.2f} {b['self_cpu_ms']:8.2f}{mark}")
        res[phase] = {"ops": prof, "totals": tot}
    return res
