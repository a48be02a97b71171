"""INT8 on ONNX Runtime's CPU: resgraph's calibrated Q/DQ model against our own fp32 model and against
ONNX Runtime's own quantize_static on the same fp32 model, side by side in one run.

    python bench/int8_speed.py [--spec specs/resnet50.yaml] [--samples 16] [--rounds 3] [--json FILE]

The model has random weights (fresh init, seed 0) and random calibration inputs: what is measured is
speed and the kernels each model runs on, not accuracy (tests/quant/test_qdq.py measures top-1 on the
trained digits model). Both INT8 models are QDQ, per-channel int8 weights, uint8 activations (U8S8):
resgraph's from quant.calibrate (minmax) + quant.qdq (u8), quantize_static's after its
quant_pre_process. Printed: calibration + quantisation seconds of each, the ops of each optimised
graph (QLinearConv: the integer kernels), SQNR and top-1 agreement against fp32 on one batch, and the
throughput at batch 1 and 8, best of interleaved rounds. Goals (issue 23): int8 >= 2.5x fp32, >= 1.0x
quantize_static, calibration no slower than quantize_static's.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402
from _common import arg_parser, footer, header, write_json  # noqa: E402
from _timing import interleaved, timer  # noqa: E402

import resgraph  # noqa: E402


def _session(path: str, optimized: str | None = None):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if optimized:
        so.optimized_model_filepath = optimized
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def ours(graph, weights, cal: np.ndarray, out: str) -> float:
    """resgraph: minmax calibration over `cal` in batches of 4, then the u8 Q/DQ model. Seconds."""
    import onnx

    from resgraph.quant.calibrate import calibrate_full
    from resgraph.quant.qdq import quantize, tensors_to_calibrate
    t0 = time.perf_counter()
    c = calibrate_full(graph, weights, (cal[i:i + 4] for i in range(0, len(cal), 4)), tensors_to_calibrate(graph))
    onnx.save(quantize(graph, weights, c.amax, "u8", ranges=c.ranges), out)
    return time.perf_counter() - t0


def theirs(fp32: str, cal: np.ndarray, name: str, folder: str, out: str) -> tuple[float, float]:
    """ONNX Runtime's quantize_static (QDQ, per channel, U8S8) after quant_pre_process: (pre, quantize) seconds."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    t0 = time.perf_counter()
    pre = os.path.join(folder, "pre.onnx")
    quant_pre_process(fp32, pre)
    t1 = time.perf_counter()

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{name: cal[i:i + 1]} for i in range(len(cal))])

        def get_next(self):
            return next(self.items, None)
    quantize_static(pre, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return t1 - t0, time.perf_counter() - t1


def main(argv=None) -> int:
    ap = arg_parser(__doc__)
    ap.add_argument("--spec", default="specs/resnet50.yaml")
    ap.add_argument("--samples", type=int, default=16, help="calibration inputs (random)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best is kept")
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args(argv)
    import onnx

    from resgraph.backends.onnx.lower import to_onnx
    from resgraph.compile import fresh_weights
    from resgraph.passes.inference import for_inference
    t_start = time.perf_counter()
    h = header(f"== INT8 on ONNX Runtime's CPU: {a.spec}, random weights", os.cpu_count(), ("onnxruntime", "onnx"),
               "threads (ONNX Runtime's default)")
    c = resgraph.check(a.spec)
    g, w = for_inference(c.graph, {k: np.asarray(v) for k, v in fresh_weights(c.graph, 0).items()})
    rng = np.random.default_rng(0)
    cal = rng.standard_normal((a.samples, *g.nodes[0].shape)).astype(np.float32)
    name = g.inputs[0][0]
    folder = tempfile.mkdtemp(prefix="int8_speed-")
    paths = {k: os.path.join(folder, f"{k}.onnx") for k in ("fp32", "resgraph", "quantize_static")}
    onnx.save(to_onnx(g, w), paths["fp32"])
    t_ours = ours(g, w, cal, paths["resgraph"])
    t_pre, t_theirs = theirs(paths["fp32"], cal, name, folder, paths["quantize_static"])
    print(f"\n   calibrate + quantise ({a.samples} inputs): resgraph {t_ours:.1f} s; quantize_static {t_theirs:.1f} s "
          f"(+ quant_pre_process {t_pre:.1f} s): {t_ours / (t_theirs + t_pre):.2f}x of theirs   goal <= 1.0")
    sessions = {}
    for k, p in paths.items():
        opt = os.path.join(folder, f"{k}.opt.onnx")
        sessions[k] = _session(p, opt)
        ops = Counter(n.op_type for n in onnx.load(opt).graph.node)
        print(f"   {k:<16} optimised graph: {', '.join(f'{op} {n}' for op, n in ops.most_common(6))}")
    x = rng.standard_normal((8, *g.nodes[0].shape)).astype(np.float32)
    ref = sessions["fp32"].run(None, {name: x})[0]
    results = {"header": h, "calibration_s": {"resgraph": t_ours, "quantize_static": t_theirs, "pre_process": t_pre},
               "throughput": {}}
    for k in ("resgraph", "quantize_static"):
        y = sessions[k].run(None, {name: x})[0]
        sqnr = 10 * np.log10(float((ref ** 2).sum() / ((y - ref) ** 2).sum()))
        print(f"   {k:<16} against fp32 on 8 inputs: SQNR {sqnr:.1f} dB, top-1 agreement {(y.argmax(1) == ref.argmax(1)).mean():.2f}")
    for batch, n in ((1, 10), (8, 2)):
        xb = x[:batch]
        for s in sessions.values():
            s.run(None, {name: xb})   # warm-up
        times = interleaved({k: timer(lambda s=s: [s.run(None, {name: xb}) for _ in range(n)]) for k, s in sessions.items()},
                            a.rounds)
        ips = {k: n * batch / min(v) for k, v in times.items()}
        results["throughput"][batch] = ips
        print(f"\n   batch {batch}: " + ", ".join(f"{k} {v:.1f} img/s" for k, v in ips.items()))
        print(f"      resgraph int8 / fp32 {ips['resgraph'] / ips['fp32']:.2f}x   goal >= 2.5")
        print(f"      resgraph int8 / quantize_static {ips['resgraph'] / ips['quantize_static']:.2f}x   goal >= 1.0")
    footer(results, t_start)
    write_json(a.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
