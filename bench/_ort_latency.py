"""ONNX Runtime on the CPU against eager PyTorch, for bench/onnx_speed.py's section 2: session start-up,
agreement of the outputs, and latency per run (timed alone, in blocks, the order rotating block by block)."""
from __future__ import annotations

import gc
import statistics
import time
from pathlib import Path

from _common import load
from _stats import medians, ms, p90, stats
from _timing import interleaved, interleaved_blocks, time_call

BATCHES = (1, 8)


def session_options(threads: int):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return so


def bench_sessions(files: dict[str, Path], threads: int, repeat: int) -> tuple[dict, dict]:
    import onnxruntime as ort

    def create(path: Path):
        return ort.InferenceSession(str(path), sess_options=session_options(threads), providers=["CPUExecutionProvider"])

    def recreate(k: str) -> float:
        """Drop session k (collected, untimed), then time creating it anew."""
        sessions[k] = None
        return time_call(lambda: sessions.__setitem__(k, create(files[k])), gc.collect)

    print(f"\n   session start-up: onnxruntime.InferenceSession(path), {repeat} interleaved after one untimed"
          f"   (load {load()})")
    sessions = {k: create(p) for k, p in files.items()}
    times = interleaved({k: (lambda k=k: recreate(k)) for k in files}, repeat, rotate=False)
    for k, v in times.items():
        print(f"   {k:<19} {ms(statistics.median(v))}   min..max {min(v) * 1e3:.1f}..{max(v) * 1e3:.1f} ms")
    return {k: stats(v, with_p90=True) for k, v in times.items()}, sessions


def latency_fns(sessions: dict, tv, x) -> dict:
    """One inference of batch x (numpy) per call: each ORT session, and eager torchvision ("eager")."""
    import torch
    fns = {}
    for k, s in sessions.items():
        feed = {s.get_inputs()[0].name: x}
        fns[k] = (lambda s=s, feed=feed: s.run(None, feed)[0])
    xt = torch.from_numpy(x)

    def eager():
        with torch.inference_mode():
            return tv(xt).numpy()
    fns["eager"] = eager
    return fns


def warm_up(fns: dict, runs: int) -> tuple[dict, dict]:
    """`runs` calls of each fn in turn: (each one's last output, each one's last call's seconds)."""
    outs, est = {}, {}
    for k, fn in fns.items():
        for _ in range(runs):
            t0 = time.perf_counter()
            outs[k] = fn()
            est[k] = time.perf_counter() - t0
    return outs, est


def agreement(outs: dict, sessions: dict) -> tuple[float, dict]:
    """(the largest |logit| of eager, {"a vs b": max abs diff, relative, top-1 agreement}): each ORT session
    against eager, resgraph's against each other one's (the exporters')."""
    import numpy as np
    scale = float(np.abs(outs["eager"]).max())
    agree = {}
    for a, b in [(k, "eager") for k in sessions] + [("resgraph", e) for e in sessions if e != "resgraph"]:
        d = float(np.abs(outs[a].astype(np.float64) - outs[b]).max())
        top1 = float((outs[a].argmax(1) == outs[b].argmax(1)).mean())
        agree[f"{a} vs {b}"] = {"max_abs_diff": d, "relative": d / scale if scale else d, "top1_agreement": top1}
    return scale, agree


def print_latency(times: dict, scale: float, agree: dict) -> dict:
    """Median, p90, min per run and median / resgraph's; then the agreement.  Returns the ratios."""
    med = medians(times)
    print(f"   {'':<10} {'median':>11} {'p90':>11} {'min':>11}   {'median / resgraph':>17}")
    for k, v in times.items():
        label = "eager" if k == "eager" else f"{k} (ORT)"
        print(f"   {label:<15}{ms(med[k])} {ms(p90(v))} {ms(min(v))}   {med[k] / med['resgraph']:8.2f}")
    print(f"   agreement (logits up to |{scale:.3g}|):")
    for k, v in agree.items():
        print(f"      {k:<22} max abs diff {v['max_abs_diff']:<9.3g} ({v['relative']:.2g} of the largest |logit|)"
              f"   top-1 agree {v['top1_agreement']:.0%}")
    return {k: m / med["resgraph"] for k, m in med.items()}


def bench_latency(sessions: dict, tv, threads: int, runs_cfg: dict) -> dict:
    """Each session and eager torchvision (tv) at each of BATCHES: warm-up runs, then the same number of timed
    runs of each (sized from the warm-up to runs_cfg's budget_s per cell, within min_runs..max_runs)."""
    import numpy as np
    import torch
    torch.set_num_threads(threads)
    res: dict = {"threads": threads, "batches": {}}
    for batch in BATCHES:
        fns = latency_fns(sessions, tv, np.random.default_rng(batch).standard_normal((batch, 3, 224, 224)).astype(np.float32))
        outs, est = warm_up(fns, runs_cfg["warmup"])   # also the outputs, and a per-run estimate for sizing
        scale, agree = agreement(outs, sessions)
        n = int(runs_cfg["budget_s"] / max(est.values()))
        n = max(runs_cfg["min_runs"], min(runs_cfg["max_runs"], n))
        blocks = max(1, min(runs_cfg["blocks"], n))
        print(f"\n   batch {batch}: {n} timed runs each after {runs_cfg['warmup']} warm-up, in {blocks} blocks, "
              f"order rotating   (load {load()})")
        times = interleaved_blocks(fns, n, blocks)
        ratios = print_latency(times, scale, agree)
        res["batches"][str(batch)] = {"runs": n, "times": {k: stats(v, with_p90=True) for k, v in times.items()},
                                      "ratios_to_resgraph": ratios, "max_abs_logit": scale, "agreement": agree}
    return res
