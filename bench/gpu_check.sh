#!/usr/bin/env bash
# Everything that needs an NVIDIA GPU, in one run, every report into one folder:
#   the GPU tests (TensorRT engines, ONNX Runtime CUDA, torch CUDA), resgraph doctor, and for resnet50 at
#   fp32 and fp16 (engines with the batch profile 1:256:256): parity across every back end, bench of every
#   back end at batch 1 and 256, and bench/trt_speed.py (resgraph's runtime vs the raw engine, share of peak).
#
#   bash bench/gpu_check.sh [OUT]          (OUT default: gpu-check-<date>; needs .venv with resgraph[tensorrt,dev])
#
# Goals (docs/tensorrt.md): TensorRT fp16 resnet50 at batch 256 >= 40% of the card's dense fp16 peak
# (2 x MACs per image); resgraph's runtime within 5% of the raw engine's throughput.
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
step() { echo "== $*" >&2; "$@" || { echo "!! failed ($?): $*" >&2; status=1; }; }

step "$PY" -m pytest tests/backends/tensorrt/test_tensorrt_gpu.py tests/runtime/test_cuda.py tests/runtime/test_runtime_cuda.py \
    tests/backends/tensorrt/test_tensorrt_api.py tests/runtime/test_tensorrt_batching.py -rs -n 0 \
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
    rm -f "$folder"/model.onnx* "$folder"/weights.safetensors   # keep the reports small
done
echo "reports in $OUT/ (exit $status)" >&2
exit $status
