#!/usr/bin/env bash
# Everything that needs an NVIDIA GPU, in one run, every report into one folder:
#   the GPU tests (TensorRT engines, ONNX Runtime CUDA, torch CUDA), resgraph doctor, and for resnet50 at
#   fp32 and fp16 (engines with the batch profile 1:256:256): parity across every back end, bench of every
#   back end at batch 1 and 256, and bench/trt_speed.py (resgraph's runtime vs the raw engine, share of peak);
#   then INT8 against FP16: the fp32 folder quantised (resgraph quantize, random calibration inputs: a speed
#   figure, not an accuracy one), its strongly typed int8 engine built at 1:256:256, both timed at batch 256;
#   and resgraph profile of the fp32 folder on tensorrt (IProfiler), ort-cuda and torch-cuda.
#
#   bash bench/gpu_check.sh [OUT]          (OUT default: gpu-check-<date>; needs .venv with resgraph[tensorrt,dev])
#
# Goals (docs/tensorrt.md): TensorRT fp16 resnet50 at batch 256 >= 40% of the card's dense fp16 peak
# (2 x MACs per image); resgraph's runtime within 5% of the raw engine's throughput; the int8 engine >= 1.3x
# the fp16 one's throughput at batch 256 (issue 23).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-check-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
PY=${PYTHON:-.venv/bin/python}
RG=(${RESGRAPH:-.venv/bin/resgraph})
status=0
# one process (-n 0): the GPU tests share one device. Every GPU test runs here: one that skips for want of a GPU or TensorRT fails (tests/skip_policy.py);
# RESGRAPH_REQUIRE_GPU=cuda on a GPU machine known to have no TensorRT
export RESGRAPH_REQUIRE_GPU=${RESGRAPH_REQUIRE_GPU:-1}
step() { echo "== $*" >&2; "$@" || { local rc=$?; echo "!! failed ($rc): $*" >&2; status=1; return $rc; }; }

step "$PY" -m pytest tests/backends/tensorrt/test_tensorrt_gpu.py tests/backends/tensorrt/test_tensorrt_int8.py tests/runtime/test_cuda.py tests/runtime/test_runtime_cuda.py tests/runtime/test_cuda_resources.py tests/backends/tensorrt/test_trt_speed.py \
    tests/backends/tensorrt/test_tensorrt_api.py tests/runtime/test_tensorrt_batching.py \
    tests/runtime/test_profile.py::test_tensorrt_layer_times_through_its_iprofiler -rs -n 0 \
    --junitxml="$OUT/gpu-tests.xml"
"${RG[@]}" doctor --json > "$OUT/doctor.json" || status=1

for precision in fp32 fp16; do
    folder="$OUT/resnet50-$precision"
    step "${RG[@]}" compile specs/resnet50.yaml -o "$folder" --precision "$precision" --engine --batch 1:256:256
    [ -f "$folder/model.engine" ] || continue
    cp "$folder/engine.json" "$OUT/engine-$precision.json"
    "${RG[@]}" parity "$folder" --backends all --inputs 64 --json > "$OUT/parity-$precision.json" || status=1
    "${RG[@]}" bench "$folder" --backend all --batch 1,256 --duration 5 --json > "$OUT/bench-$precision.json" || status=1
    "${RG[@]}" bench "$folder" --backend tensorrt --cuda-graph --batch 1,256 --duration 5 --json \
        > "$OUT/bench-$precision-tensorrt-cuda-graph.json" || status=1
    step "$PY" bench/trt_speed.py "$folder" --batch 1,256 --seconds 5 --json "$OUT/trt-speed-$precision.json"
done

# INT8 vs FP16: TensorRT resnet50 at batch 256. Skipped, with the reason, where TensorRT is absent or
# the fp16 figure is missing; a failed quantise or build fails the run.
int8_vs_fp16() {
    local src="$OUT/resnet50-fp32" q="$OUT/resnet50-int8" why
    why=$("$PY" -c "import tensorrt" 2>&1 | tail -1) || { echo "== skipped INT8 vs FP16: TensorRT does not import here ($why)" >&2; return 0; }
    [ -f "$OUT/trt-speed-fp16.json" ] || { echo "== skipped INT8 vs FP16: no fp16 figure (the fp16 engine did not build)" >&2; return 0; }
    [ -f "$src/manifest.json" ] || { echo "!! INT8 vs FP16: no $src to quantise" >&2; status=1; return 0; }
    # 32 random samples of the model's input, one batched .npy: enough calibration for a speed figure
    step "$PY" -c "import sys, numpy as np; from resgraph.manifest import read_manifest
m = read_manifest(sys.argv[1]); np.save(sys.argv[2], np.random.default_rng(0).standard_normal((32, *m.input.sample_shape), dtype=np.float32))" \
        "$src" "$OUT/calibration.npy" || return 0
    # no accuracy gate, no parity gate: random calibration of random weights is no accuracy test (parity
    # is reported below); the figure is the speed
    step "${RG[@]}" quantize "$src" --calibrate "$OUT/calibration.npy" -o "$q" --no-gate || return 0
    step "${RG[@]}" engine build "$q" --precision int8 --batch 1:256:256 --no-parity-gate || return 0
    cp "$q/engine.json" "$OUT/engine-int8.json"
    "${RG[@]}" parity "$q" --backends all --inputs 64 --json > "$OUT/parity-int8.json" || status=1
    step "$PY" bench/trt_speed.py "$q" --batch 256 --seconds 5 --json "$OUT/trt-speed-int8.json" || return 0
    step "$PY" - "$OUT/trt-speed-fp16.json" "$OUT/trt-speed-int8.json" "$OUT/int8-vs-fp16.json" <<'PY'
import json, sys
rows = [{r["batch"]: r for r in json.load(open(p))["rows"]}.get(256) for p in sys.argv[1:3]]
if None in rows:
    sys.exit("no batch-256 row in " + " or ".join(p for p, r in zip(sys.argv[1:3], rows) if r is None))
fp16, int8 = rows
out = {}
for key, what in (("raw_compute_images_per_s", "engine alone"), ("resgraph_images_per_s", "resgraph runtime")):
    ratio = int8[key] / fp16[key]
    out[key] = {"fp16": fp16[key], "int8": int8[key], "ratio": ratio}
    print(f"INT8 vs FP16, TensorRT resnet50, batch 256, {what}: {int8[key]:,.0f} vs {fp16[key]:,.0f} img/s = "
          f"{ratio:.2f}x   goal >= 1.3x: {'met' if ratio >= 1.3 else 'NOT met'}")
json.dump({"goal": 1.3, **out}, open(sys.argv[3], "w"), indent=2)
PY
}
int8_vs_fp16

# per-layer times by spec line (resgraph profile, issue 24) of the fp32 folder: TensorRT's IProfiler (skipped,
# with the reason, where TensorRT does not import), and ONNX Runtime's and torch's profilers on CUDA
profile_gpu() {
    local folder="$OUT/resnet50-fp32" b why
    [ -f "$folder/manifest.json" ] || { echo "!! profile: no $folder" >&2; status=1; return 0; }
    for b in ort-cuda torch-cuda; do
        "${RG[@]}" profile "$folder" --backend "$b" --depth 2 --json > "$OUT/profile-$b.json" || status=1
    done
    why=$("$PY" -c "import tensorrt" 2>&1 | tail -1) || { echo "== skipped profile on tensorrt: TensorRT does not import here ($why)" >&2; return 0; }
    [ -f "$folder/model.engine" ] || { echo "!! profile: no model.engine in $folder" >&2; status=1; return 0; }
    step "${RG[@]}" profile "$folder" --backend tensorrt --runs 50 --html "$OUT/profile-tensorrt.html"
    "${RG[@]}" profile "$folder" --backend tensorrt --runs 50 --json > "$OUT/profile-tensorrt.json" || status=1
}
profile_gpu

for precision in fp32 fp16 int8; do   # keep the reports small
    rm -f "$OUT/resnet50-$precision"/model*.onnx* "$OUT/resnet50-$precision"/weights.safetensors
done
rm -f "$OUT/calibration.npy"
echo "reports in $OUT/ (exit $status)" >&2
exit $status
