"""torch.compile for bench/torch_speed.py: the wall time of a first call (tracing, inductor's code generation
and compilation), the graphs and graph breaks dynamo saw, and the inductor cache it compiles into
(cold: a fresh, empty one for every compile; warm: the usual on-disk one)."""
from __future__ import annotations

import contextlib
import shutil
import tempfile
import time

import torch
from _common import say
from _timing import time_call


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def dynamo_counts() -> dict:
    from torch._dynamo.utils import counters
    return {"graphs": counters["stats"]["unique_graphs"], "graph_breaks": sum(counters["graph_break"].values()),
            "fxgraph_cache_hit": counters["inductor"]["fxgraph_cache_hit"],
            "fxgraph_cache_miss": counters["inductor"]["fxgraph_cache_miss"]}


class CompileCache:
    """cold: each compile in its own fresh, empty inductor cache (directories removed at the end); warm: as configured."""

    def __init__(self, mode: str):
        self.mode = mode
        self.root = tempfile.mkdtemp(prefix="torch_speed-inductor-") if mode == "cold" else None

    def scope(self):
        if self.mode != "cold":
            return contextlib.nullcontext()
        from torch._inductor.utils import fresh_cache
        return fresh_cache(dir=self.root, delete=False)   # kept until close(): lazily loaded artefacts stay valid

    def close(self) -> None:
        if self.root:
            shutil.rmtree(self.root, ignore_errors=True)


def first_call(label: str, fn, device, cache: CompileCache) -> dict:
    before = dynamo_counts()
    with cache.scope():
        t = time_call(lambda: fn(1), sync=lambda: sync(device))
    after = dynamo_counts()
    d = {k: after[k] - before[k] for k in after}
    d["seconds"] = t
    hits = f", inductor cache {d['fxgraph_cache_hit']} hit / {d['fxgraph_cache_miss']} miss" if cache.mode == "warm" else ""
    say(f"   {label:<32} {t:8.1f} s   ({d['graphs']} graph{'s' * (d['graphs'] != 1)}, "
        f"{d['graph_breaks']} graph break{'s' * (d['graph_breaks'] != 1)}{hits})")
    return d


def prime_compiler(device, cache: CompileCache) -> float:
    """Compile a tiny conv net (inference and a train step) so inductor's one-time start-up is paid up front."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2)).to(device)
    x = torch.randn(2, 3, 8, 8, device=device)
    c = torch.compile(net)
    t0 = time.perf_counter()
    with cache.scope():
        net.eval()
        with torch.inference_mode():
            c(x)
        net.train()
        c(x).sum().backward()
    sync(device)
    return time.perf_counter() - t0
