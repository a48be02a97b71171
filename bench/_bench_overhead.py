"""resgraph.runtime.bench.bench (what `resgraph bench` reports) against a bare InferenceSession.run loop, for
bench/run_speed.py's part 3: does bench add anything measurable to the latency it reports?"""
from __future__ import annotations

import gc
import statistics
from pathlib import Path

from _common import cpu_snapshot, load, others_since, others_text
from _stats import goal_text, range_rows
from _timing import interleaved, run_for


def bare_session(folder: Path, threads: int):
    """An onnxruntime.InferenceSession with the options resgraph's OrtSession sets."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    return ort.InferenceSession(str(folder / "model.onnx"), so, providers=["CPUExecutionProvider"])


def bench_case(name: str, folder: Path, batch: int, duration: float, warmup: float, threads: int, rounds: int,
               goal: tuple[float, float]) -> dict:
    """One model and batch size: bench() against the bare loop, `rounds` rounds interleaved, the order rotating;
    the ratio of their medians (over the rounds, of each round's median latency) should lie within `goal`."""
    import numpy as np

    from resgraph.runtime import Options, open_session
    from resgraph.runtime.bench import bench
    s = open_session(str(folder), "ort-cpu", Options(threads=threads))
    bare = bare_session(folder, threads)
    x = np.random.default_rng(0).standard_normal((batch, *s.input_shape), dtype=np.float32)   # bench's input
    args = ([s.output_name], {s.input_name: x})
    iters: dict[str, list[int]] = {"bench": [], "bare": []}

    def one_bench() -> float:
        r = bench(s, batch, duration, warmup)
        iters["bench"].append(r.iterations)
        return r.latency_ms["median"] / 1e3

    def one_bare() -> float:
        lat, _ = run_for(bare.run, duration, warmup, args=args)
        iters["bare"].append(len(lat))
        return statistics.median(lat)

    snap = cpu_snapshot()
    meds = interleaved({"bench": one_bench, "bare": one_bare}, rounds, before=gc.collect)
    others = others_since(snap)
    mb, mr = statistics.median(meds["bench"]), statistics.median(meds["bare"])
    ratio = mb / mr
    goal, met = goal_text(ratio, goal)
    print(f"\n   {name}, batch {batch}: {duration:g} s measured after {warmup:g} s warm-up, per round; "
          f"iterations per round: bench {iters['bench']}, bare {iters['bare']}")
    range_rows([("bench(session, ...)", meds["bench"], "median of the round medians"),
                ("bare sess.run loop ", meds["bare"], "")])
    print(f"   bench / bare: {ratio:.3f}x   goal {goal}   {'meets goal' if met else 'OUTSIDE GOAL'}   "
          f"(other processes used {others_text(others)} CPUs meanwhile)")
    s.close()
    return {"others_cpus": others, "bench_round_medians_s": meds["bench"], "bare_round_medians_s": meds["bare"],
            "bench_median_s": mb, "bare_median_s": mr, "ratio": ratio,
            "iterations": iters, "duration_s": duration, "warmup_s": warmup}


def bench_vs_bare(cases: list[tuple[str, Path, int, float, float]], threads: int, rounds: int,
                  goal: tuple[float, float]) -> dict:
    """Each case (name, compiled folder, batch, duration, warm-up) through bench_case."""
    print(f"\n\n== 3. resgraph.runtime.bench.bench vs a bare InferenceSession.run loop, {threads} intra-op threads, "
          f"{rounds} rounds interleaved   (load {load()})")
    return {f"{name} batch {batch}": bench_case(name, folder, batch, duration, warmup, threads, rounds, goal)
            for name, folder, batch, duration, warmup in cases}
