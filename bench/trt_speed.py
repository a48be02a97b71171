"""TensorRT engine throughput: resgraph's runtime against the raw engine, side by side; prints ratios, never asserts.

For a compiled folder with model.engine (resgraph compile SPEC --engine ...), at each --batch:

    raw, compute      execute_async_v3 in a loop on device-resident I/O, shapes and addresses set once, one
                      stream synchronize per query: the engine alone (trtexec --noDataTransfers)
    raw, with copies  the same plus a pinned H2D of the input and a D2H of the output each query, on the same
                      stream: what any host-fed deployment of this engine pays (trtexec's default loop)
    resgraph          Session.run on the runtime's own pinned input buffer (Session.input_buffer): copies,
                      set-up and the numpy output included; and with --cuda-graph
Reported: images/s of each; resgraph / raw-with-copies (goal >= 0.95); and the raw engine's compute as
a share of the card's dense fp16 (or tf32/fp32) peak, counting 2 x MACs per image (goal for fp16 at
batch 256: >= 40%). The peak comes from the table below by GPU name, or --peak-tflops.

Needs TensorRT, cuda-python and an NVIDIA GPU (bench/gpu_check.sh runs it).

    python bench/trt_speed.py compiled/resnet50-fp16 --batch 1,256 --seconds 5 --json out.json
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import write_json
from _timing import run_for

# dense (no sparsity) tensor-core peaks, TFLOPS, from NVIDIA's data sheets: fp16/bf16, tf32; fp32 = CUDA cores
PEAKS = {
    "H200": {"fp16": 989, "bf16": 989, "tf32": 494, "fp32": 67},
    "H100 80GB HBM3": {"fp16": 989, "bf16": 989, "tf32": 494, "fp32": 67},     # SXM
    "H100 PCIe": {"fp16": 756, "bf16": 756, "tf32": 378, "fp32": 51},
    "A100": {"fp16": 312, "bf16": 312, "tf32": 156, "fp32": 19.5},
    "L40S": {"fp16": 362, "bf16": 362, "tf32": 183, "fp32": 91.6},
    "L4": {"fp16": 121, "bf16": 121, "tf32": 60, "fp32": 30},
    "A10": {"fp16": 125, "bf16": 125, "tf32": 62.5, "fp32": 31.2},
}


def peak(gpu_name: str, precision: str) -> float | None:
    for key, p in PEAKS.items():
        if key in gpu_name:
            return p.get(precision)
    return None


def throughput(step, seconds: float, batch: int, sync=None, args: tuple = ()) -> float:
    """Images per second: step(*args) warmed up for 0.5 s, then timed (with sync() after each) for `seconds`."""
    lat, wall = run_for(step, seconds, 0.5, sync=sync, args=args)
    return len(lat) * batch / wall


def _checked(ok, what: str) -> None:
    """TensorRT's bool returns: a refused call would otherwise time nothing and show as huge img/s."""
    if not ok:
        raise SystemExit(f"trt_speed: TensorRT refused {what}: the raw baseline would measure nothing")


def raw(folder: str, batch: int, seconds: float) -> dict:
    """The engine driven directly: a context of its own, its own stream and buffers, on the engine the
    session deserialised (so a version-compatible plan loads as the session loads it:
    engine_host_code_allowed); every bool TensorRT returns checked."""
    from resgraph.runtime import cuda, open_session
    with open_session(folder, "tensorrt") as s:
        m, engine = s.manifest, s.engine
        ctx = engine.create_execution_context()
        shape_in, shape_out = (batch, *m.input.sample_shape), (batch, *m.output.sample_shape)
        hin, hout = cuda.PinnedBuffer(shape_in), cuda.PinnedBuffer(shape_out)
        din, dout = cuda.DeviceBuffer(hin.nbytes), cuda.DeviceBuffer(hout.nbytes)
        hin.array[...] = np.random.default_rng(0).standard_normal(shape_in, dtype=np.float32)
        stream = cuda.Stream()
        _checked(ctx.set_input_shape(m.input.name, shape_in), f"the input shape {shape_in}")
        _checked(ctx.set_tensor_address(m.input.name, din.ptr), "the input's address")
        _checked(ctx.set_tensor_address(m.output.name, dout.ptr), "the output's address")
        handle = int(stream)
        _checked(ctx.execute_async_v3(handle), "execute_async_v3")
        stream.synchronize()

        def compute():
            _checked(ctx.execute_async_v3(handle), "execute_async_v3")

        def with_copies():
            stream.h2d(din.ptr, hin.ptr, hin.nbytes)
            _checked(ctx.execute_async_v3(handle), "execute_async_v3")
            stream.d2h(hout.ptr, dout.ptr, hout.nbytes)
        out = {}
        for name, step in (("compute", compute), ("with_copies", with_copies)):
            out[name] = throughput(step, seconds, batch, stream.synchronize)
        stream.synchronize()
        for b in (hin, hout, din, dout):
            b.free()
        stream.destroy()
    return out


def runtime(folder: str, batch: int, seconds: float, cuda_graph: bool) -> float:
    from resgraph.runtime import Options, open_session
    with open_session(folder, "tensorrt", Options(cuda_graph=cuda_graph)) as s:
        x = s.input_buffer(batch)
        x[...] = np.random.default_rng(0).standard_normal(x.shape, dtype=np.float32)
        return throughput(s.run, seconds, batch, args=(x,))    # run() returns after its own synchronize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--batch", default="1,256")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--peak-tflops", type=float, default=None, help="The card's dense peak for the engine's precision.")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    from resgraph.manifest import read_manifest
    from resgraph.backends.tensorrt.engine_json import read_engine_info
    m, info = read_manifest(a.folder), read_engine_info(a.folder)
    precision = info.options.precision
    tflops = a.peak_tflops or peak(info.gpu_name, precision)
    print(f"{m.name}: TensorRT {info.tensorrt_version}, {precision}, {info.gpu_name}, profile {info.options.batch}, "
          f"{m.macs:,} MACs per image; peak {tflops or '?'} TFLOPS ({precision}, dense)")
    rows = []
    for b in (int(x) for x in a.batch.split(",")):
        if not info.options.batch.contains(b):
            print(f"  batch {b}: outside the engine's profile {info.options.batch}, skipped")
            continue
        r = raw(a.folder, b, a.seconds)
        rt, rtg = runtime(a.folder, b, a.seconds, False), runtime(a.folder, b, a.seconds, True)
        achieved = 2 * m.macs * r["compute"] / 1e12
        row = {"batch": b, "raw_compute_images_per_s": r["compute"], "raw_with_copies_images_per_s": r["with_copies"],
               "resgraph_images_per_s": rt, "resgraph_cuda_graph_images_per_s": rtg,
               "resgraph_vs_raw": rt / r["with_copies"], "resgraph_cuda_graph_vs_raw": rtg / r["with_copies"],
               "raw_compute_tflops": achieved, "share_of_peak": achieved / tflops if tflops else None}
        rows.append(row)
        share = f"{row['share_of_peak']:.1%} of peak" if tflops else "peak unknown (--peak-tflops)"
        print(f"  batch {b:>4}: raw {r['compute']:>10,.0f} img/s compute ({achieved:.1f} TFLOPS, {share}), "
              f"{r['with_copies']:>10,.0f} with copies | resgraph {rt:>10,.0f} ({rt / r['with_copies']:.3f}x), "
              f"with CUDA graph {rtg:>10,.0f} ({rtg / r['with_copies']:.3f}x)   goals: >= 0.95x; fp16 b256 >= 40%")
    if a.json:
        write_json(a.json, {"model": m.name, "engine": info.to_json(), "peak_tflops": tflops, "rows": rows})


if __name__ == "__main__":
    main()
