"""Training memory: resgraph's estimate (`resgraph check --memory`, resgraph.memory) against what
PyTorch measures on the CPU, and what per-block activation checkpointing saves.

    python bench/train_memory.py [--json out.json] [--quick]

For each spec, at a small input and batch, fp32, SGD with momentum:
  1. saved for backward: the estimate's activations against the bytes
     torch.autograd.graph.saved_tensors_hooks see in one training-mode forward (each storage once,
     parameters and buffers aside): equal, byte for byte;
  2. one training step (zero_grad, forward, cross-entropy, backward, step; the second step, so the
     optimizer's state exists) under torch.profiler.profile(profile_memory=True): the peak of the
     profiler's memory timeline (torch.profiler._memory_profiler.MemoryProfileTimeline, what
     Profiler.export_memory_timeline draws) against the estimate's total (weights + gradients +
     optimizer state + activations); goal: their ratio within 0.8 .. 1.2;
  3. the same step with to_torch(..., checkpointing=True): its peak and the saving, against the
     estimate's checkpointed total; the loss is the same.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time

from _common import ROOT, say

import resgraph
from resgraph.memory import training_memory

# (label, spec, input side or None for the spec's own, batch)
CASES = [("cifar_resnet20_a", "cifar_resnet20_a", None, 32),
         ("resnet18 @64", "resnet18", 64, 16),
         ("resnet50 @64 (bottlenecks)", "resnet50", 64, 8),
         ("mobilenet_v3_small @96", "mobilenet_v3_small", 96, 16)]
MIB = 2 ** 20


def spec_at(name: str, side: int | None):
    """specs/NAME.yaml checked, its input (and preprocess's resize and crop) at side x side."""
    path = ROOT / "specs" / f"{name}.yaml"
    text = path.read_text(encoding="utf-8")
    if side:
        text = re.sub(r"shape: \[3, \d+, \d+\]", f"shape: [3, {side}, {side}]", text, count=1)
        text = re.sub(r"resize: \d+, crop: \d+", f"resize: {side}, crop: {side}", text, count=1)
    return resgraph.check_text(text, str(path)).graph


def saved_bytes(model, x) -> int:
    """The bytes autograd saves in one forward of `model` on `x`: each storage once, weights aside."""
    import torch
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in own:
            seen[s.data_ptr()] = s.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(seen.values())


def profiled_step(model, x, y) -> tuple[int, dict, float]:
    """(peak bytes, bytes by category at the peak, loss) of the second SGD step under torch.profiler."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfileTimeline
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    torch.manual_seed(1)   # the same dropout masks for every model measured

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()
    step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as p:
        loss = step()
    timeline = MemoryProfileTimeline(p._memory_profile())
    _, sizes = timeline._coalesce_timeline("cpu")
    totals = [sum(s) for s in sizes]
    i = max(range(len(totals)), key=totals.__getitem__)
    names = ["?", "parameter", "optimizer_state", "input", "temporary", "activation", "gradient", "autograd_detail",
             "unknown"]   # _coalesce_timeline's columns: a leading 0, then _CATEGORY_TO_INDEX's order
    return totals[i], {n: v for n, v in zip(names, sizes[i]) if n != "?" and v}, loss


def case(label: str, name: str, side: int | None, batch: int) -> dict:
    import torch
    g = spec_at(name, side)
    est = training_memory(g, batch, "sgd")
    torch.manual_seed(0)
    x = torch.randn(batch, *g.nodes[0].shape)
    y = torch.randint(0, g[g.output].shape[0], (batch,))
    plain = resgraph.to_torch(g, seed=0)
    ckpt = resgraph.to_torch(g, seed=0, checkpointing=True)
    hooks = saved_bytes(plain, x)
    peak, cats, loss = profiled_step(plain, x, y)
    peak_c, cats_c, loss_c = profiled_step(ckpt, x, y)
    j = est.to_json()
    r = {"label": label, "spec": name, "input": list(g.nodes[0].shape), "batch": batch,
         "estimate": {k: j[k] for k in ("weights", "gradients", "optimizer_state", "activations", "total",
                                         "checkpointed_activations", "checkpointed_total")},
         "saved_hooks": hooks, "saved_exact": hooks == est.activations,
         "peak": peak, "peak_categories": cats, "ratio": est.total / peak,
         "peak_checkpointed": peak_c, "peak_checkpointed_categories": cats_c,
         "ratio_checkpointed": j["checkpointed_total"] / peak_c, "saving": peak - peak_c,
         "estimated_saving": est.total - j["checkpointed_total"], "same_loss": loss == loss_c}
    say(f"\n{label}: input {g.nodes[0].shape}, batch {batch}")
    say(f"   saved for backward   estimate {est.activations / MIB:9.2f} MiB   saved_tensors_hooks "
        f"{hooks / MIB:9.2f} MiB   {'equal' if r['saved_exact'] else f'DIFFER by {est.activations - hooks:+d} B'}")
    say(f"   training step peak   estimate {est.total / MIB:9.2f} MiB   torch.profiler      {peak / MIB:9.2f} MiB   "
        f"ratio {r['ratio']:.3f}")
    say(f"   checkpointed peak    estimate {j['checkpointed_total'] / MIB:9.2f} MiB   torch.profiler      "
        f"{peak_c / MIB:9.2f} MiB   ratio {r['ratio_checkpointed']:.3f}")
    say(f"   checkpointing saves  estimate {r['estimated_saving'] / MIB:9.2f} MiB   measured            "
        f"{r['saving'] / MIB:9.2f} MiB   ({100 * r['saving'] / peak:.0f}% of the peak); same loss: {r['same_loss']}")
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--quick", action="store_true", help="the first case only")
    args = ap.parse_args(argv)
    import torch
    say(f"training memory, fp32, CPU; torch {torch.__version__}, resgraph {resgraph.__version__}")
    t0 = time.perf_counter()
    results = [case(*c) for c in (CASES[:1] if args.quick else CASES)]
    ok = all(r["saved_exact"] and 0.8 <= r["ratio"] <= 1.2 for r in results)
    say(f"\nestimate within 20% of torch.profiler's peak and saved bytes exact: {'yes' if ok else 'NO'}"
        f"   ({time.perf_counter() - t0:.0f} s)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
