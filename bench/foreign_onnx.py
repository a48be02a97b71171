"""A torch-exported resnet50 measured by `resgraph bench` beside resgraph's own compile of the same weights.

    python bench/foreign_onnx.py [--batch 1,4] [--duration 3] [--warmup 1] [--threads N] [--json OUT]

torchvision's resnet50 (random init, seed 0: no download) is exported by torch.onnx.export, legacy
(dynamo=False) and dynamo, with a dynamic batch (bench/_tv_export.py: what onnx_speed.py measures),
and imported and compiled by resgraph (import_model, then compile_spec) from the same module. The
three ONNX files are first checked against each other on the same random inputs (max |a-b| scaled by
1 + max |ref|, the compiled folder the reference), then each is measured by runtime.bench (what
`resgraph bench` runs) on ONNX Runtime's CPU provider, one after the other in this process, and the
figures printed side by side.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from _common import arg_parser, header, say


def build(work: Path) -> dict[str, str]:
    """name -> what bench opens: the legacy and dynamo exports and resgraph's compiled folder."""
    import torch
    import torchvision
    from _tv_export import EXAMPLE_BATCH, export

    from resgraph.backends.importer import import_model, write
    from resgraph.compile import compile_spec
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    x = torch.randn(EXAMPLE_BATCH, 3, 224, 224)
    out = {}
    for mode in ("legacy", "dynamo"):
        path = work / mode / "resnet50.onnx"
        path.parent.mkdir()
        export(model, x, path, mode)
        out[f"torch.onnx.export {mode}"] = str(path)
    imported = import_model(model, name="resnet50", input_shape=(3, 224, 224))
    write(imported, str(work / "resnet50.yaml"), str(work / "resnet50.safetensors"))
    c = compile_spec(str(work / "resnet50.yaml"), weights=str(work / "resnet50.safetensors"), out=str(work / "compiled"))
    out["resgraph compile"] = str(c.out)
    return out


def agreement(models: dict[str, str], threads: int | None) -> dict[str, float]:
    """max |a - ref| / (1 + max |ref|) of each model's logits against the compiled folder's, 4 random inputs."""
    from resgraph.runtime import Options, open_session
    x = np.random.default_rng(0).standard_normal((4, 3, 224, 224), dtype=np.float32)
    ys = {}
    for name, path in models.items():
        with open_session(path, "ort-cpu", Options(threads=threads)) as s:
            ys[name] = s.run(x)
    ref = ys["resgraph compile"]
    return {name: float(np.abs(y - ref).max() / (1 + np.abs(ref).max())) for name, y in ys.items()}


def measure(models: dict[str, str], batches: list[int], duration: float, warmup: float, threads: int | None) -> dict:
    from resgraph.runtime import Options
    from resgraph.runtime.bench import bench_all, report
    from resgraph.runtime.foreign import model_of
    out = {}
    for name, path in models.items():
        artifact = model_of(path)
        results, _ = bench_all(artifact, ["ort-cpu"], batches, duration, warmup, Options(threads=threads))
        out[name] = report(artifact, results, [], duration, warmup)
    return out


def table(reports: dict, diffs: dict) -> None:
    names = list(reports)
    say(f"{'':<26}" + "".join(f"{n:>28}" for n in names))
    say(f"{'MACs per image':<26}" + "".join(f"{reports[n]['macs_per_image']:>28,}" for n in names))
    say(f"{'max |a-ref|/(1+|ref|)':<26}" + "".join(f"{diffs[n]:>28.2e}" for n in names))
    for i, r in enumerate(reports[names[0]]["results"]):
        b = r["batch"]
        rows = [reports[n]["results"][i] for n in names]
        say(f"{f'batch {b}: median ms':<26}" + "".join(f"{x['latency_ms']['median']:>28.2f}" for x in rows))
        say(f"{f'batch {b}: images/s':<26}" + "".join(f"{x['throughput']['images_per_s']:>28.1f}" for x in rows))
        say(f"{f'batch {b}: CV':<26}" + "".join(f"{x['cv']:>27.1%}" + ("!" if x["noisy"] else " ") for x in rows))


def main() -> None:
    ap = arg_parser(__doc__)
    ap.add_argument("--batch", default="1,4")
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="write the three bench reports and the agreement here")
    a = ap.parse_args()
    import os
    header("resgraph bench: torch-exported resnet50 (legacy, dynamo) beside resgraph's compile, ort-cpu",
           a.threads or os.cpu_count(), ("torch", "onnx", "onnxruntime"), "ONNX Runtime threads")
    batches = [int(b) for b in a.batch.split(",")]
    with tempfile.TemporaryDirectory(prefix="foreign-onnx-") as tmp:
        models = build(Path(tmp))
        diffs = agreement(models, a.threads)
        reports = measure(models, batches, a.duration, a.warmup, a.threads)
    table(reports, diffs)
    if a.json:
        Path(a.json).write_text(json.dumps({"agreement": diffs, "reports": reports}, indent=2) + "\n")


if __name__ == "__main__":
    main()
