"""`resgraph run`, `bench`, `parity` and `doctor`, end to end through the command line, on the
shipped digits model: real PNG files, real ONNX Runtime, real torch, every answer checked against
a hand-written Pillow + ONNX Runtime loop."""
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, resgraph_cmd, run_cli
from test_runtime import bad_files

SAMPLES = ROOT / "examples" / "digits" / "samples"


@pytest.fixture(scope="module")
def all_digits(tmp_path_factory):
    """All 1,797 scikit-learn digits as PNGs (as examples/digits/make_samples.py writes them) -> labels by path."""
    from sklearn.datasets import load_digits
    d = load_digits()
    folder = tmp_path_factory.mktemp("digits_png")
    labels = {}
    for i, (img, y) in enumerate(zip(d.images, d.target)):
        path = folder / f"{i:04d}.png"
        Image.fromarray(np.round(img * 255.0 / 16.0).astype(np.uint8)).save(path)
        labels[str(path)] = int(y)
    return folder, labels


def hand_loop(model: str, paths: list[str], batch: int = 64) -> dict[str, int]:
    """The reference: Pillow and ONNX Runtime by hand, the digits spec's preprocess written out."""
    import onnxruntime as ort
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    preds = {}
    for i in range(0, len(paths), batch):
        chunk = paths[i:i + batch]
        x = np.stack([((np.asarray(Image.open(p).convert("L"), dtype=np.float32) / 255 - np.float32(0.3))
                       / np.float32(0.38))[None] for p in chunk])
        preds.update(zip(chunk, sess.run(None, {"image": x})[0].argmax(1).tolist()))
    return preds


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_the_quick_start_samples(digits_folder):
    p = run_cli("run", str(digits_folder), str(SAMPLES))
    assert p.returncode == 0, p.stderr
    rows = p.stdout.splitlines()
    assert rows[0].split()[:2] == ["input", "top-5"] and len(rows) == 41
    right = sum(os.path.basename(r.split()[0]).split("digit-")[1][0] == r.split()[1] for r in rows[1:])
    assert right >= 38                     # 0005 and 0046 are 5s the model reads as 9s
    assert "ort-cpu" in p.stderr and "40 inputs: 40 ok, 0 failed" in p.stderr


def test_all_digits_with_broken_files_among_them(digits_folder, all_digits, tmp_path):
    folder, labels = all_digits
    mixed = tmp_path / "mixed"
    shutil.copytree(folder, mixed)
    broken = bad_files(mixed)
    np.save(mixed / "zz_batch.npy", np.zeros((3, 1, 8, 8), np.float32))
    p = run_cli("run", str(digits_folder), str(mixed), "--json", "--batch-size", "64", timeout=300)
    assert p.returncode == 1, p.stderr[-2000:]
    lines = json_lines(p.stdout)
    names = sorted([*(f"{mixed}/{os.path.basename(k)}" for k in labels), *(f"{mixed}/{b}" for b in broken),
                    *(f"{mixed}/zz_batch.npy[{i}]" for i in range(3))])
    assert [r["input"] for r in lines] == names              # every input once, in sorted order
    failed = {os.path.basename(r["input"]): r["error"] for r in lines if not r["ok"]}
    assert set(failed) == set(broken), failed
    assert "shape [3, 8, 8], but the model takes [1, 8, 8]" in failed["wrong_shape.npy"]
    assert "NaN" in failed["nan.npy"] and "not an image" in failed["notes.txt"]
    assert "Traceback" not in p.stderr and "1,797" not in p.stderr and "failed" in p.stderr
    ours = {r["input"]: r["top"][0]["index"] for r in lines if r["ok"] and r["input"].endswith(".png")}
    ref = hand_loop(str(digits_folder / "model.onnx"), sorted(labels))
    assert {os.path.basename(k): v for k, v in ours.items()} == {os.path.basename(k): v for k, v in ref.items()}
    accuracy = np.mean([ours[f"{mixed}/{os.path.basename(k)}"] == y for k, y in labels.items()])
    assert accuracy >= 0.97
    assert all(len(r["top"]) == 5 and r["top"][0]["score"] >= r["top"][1]["score"] for r in lines if r["ok"])


def test_paths_on_standard_input(digits_folder):
    paths = sorted(str(p) for p in SAMPLES.glob("*.png"))[:5] + ["missing.png"]
    p = subprocess.run(resgraph_cmd() + ["run", str(digits_folder), "-", "--json", "--top-k", "2"],
                       input="\n".join(paths) + "\n", capture_output=True, text=True, cwd=ROOT, timeout=60)
    lines = json_lines(p.stdout)
    assert [r["input"] for r in lines] == paths and p.returncode == 1
    assert lines[-1] == {"input": "missing.png", "ok": False, "error": "no such file"}
    assert all(len(r["top"]) == 2 for r in lines[:-1])


def test_torch_and_onnxruntime_give_the_same_top1(digits_folder):
    runs = [json_lines(run_cli("run", str(digits_folder), str(SAMPLES), "--json", "--backend", b).stdout)
            for b in ("ort-cpu", "torch-cpu")]
    assert len(runs[0]) == 40 and [r["top"][0]["index"] for r in runs[0]] == [r["top"][0]["index"] for r in runs[1]]
    assert max(abs(a["top"][0]["score"] - b["top"][0]["score"]) for a, b in zip(*runs)) <= 1e-5


def test_the_model_file_itself_and_batch_sizes(digits_folder):
    a = run_cli("run", str(digits_folder / "model.onnx"), str(SAMPLES), "--json", "--batch-size", "7", "--workers", "0")
    b = run_cli("run", str(digits_folder), str(SAMPLES), "--json", "--batch-size", "40", "--workers", "3")
    assert a.returncode == b.returncode == 0 and json_lines(a.stdout) == json_lines(b.stdout)


def test_bench_json(digits_folder):
    p = run_cli("bench", str(digits_folder), "--backend", "all", "--batch", "1,4", "--duration", "0.2",
                "--warmup", "0.05", "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["model"] == "digits_resnet" and r["macs_per_image"] == 763_520
    assert [(x["backend"], x["batch"]) for x in r["results"]] == [("ort-cpu", 1), ("ort-cpu", 4), ("torch-cpu", 1),
                                                                   ("torch-cpu", 4)]
    for x in r["results"]:
        lat = x["latency_ms"]
        assert lat["min"] <= lat["median"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert x["iterations"] >= 10 and x["throughput"]["images_per_s"] == pytest.approx(
            x["throughput"]["queries_per_s"] * x["batch"])
        assert x["gflops"] == pytest.approx(2 * 763_520 * x["throughput"]["images_per_s"] / 1e9)
        assert x["h2d_ms"] is None and isinstance(x["noisy"], bool)
    assert {s["backend"] for s in r["skipped"]} >= {"tensorrt", "torch-cuda"}


def test_bench_table_and_bad_batch(digits_folder):
    p = run_cli("bench", str(digits_folder), "--batch", "2", "--duration", "0.1", "--warmup", "0")
    assert p.returncode == 0 and "queries/s" in p.stdout and "images/s" in p.stdout and "ort-cpu" in p.stdout
    p = run_cli("bench", str(digits_folder), "--batch", "1,x")
    assert p.returncode == 1 and "not a list of batch sizes" in p.stderr and "hint:" in p.stderr


def test_parity_passes_then_fails_on_a_tampered_model(digits_folder, tmp_path):
    p = run_cli("parity", str(digits_folder), "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    r = json.loads(p.stdout)
    [pair] = r["pairs"]
    assert (pair["reference"], pair["other"]) == ("torch-cpu", "ort-cpu") and pair["ok"] and pair["max_abs"] <= 1e-4
    assert pair["top1_agreement"] == 1.0 and r["changed_since_compile"] == {}
    # alter one weight of model.onnx after compiling, the way a bad copy or a hand edit would
    import onnx
    from onnx import numpy_helper
    folder = tmp_path / "tampered"
    shutil.copytree(digits_folder, folder)
    model = onnx.load(str(folder / "model.onnx"))
    fc = next(t for t in model.graph.initializer if t.name == "fc.weight")
    fc.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(fc) * np.float32(1.01), "fc.weight"))
    onnx.save(model, str(folder / "model.onnx"))
    p = run_cli("parity", str(folder), "--backends", "ort-cpu,torch-cpu", "--json")
    assert p.returncode == 1
    r = json.loads(p.stdout)
    assert not r["ok"] and r["pairs"][0]["max_abs"] > 1e-4 and "model.onnx" in r["changed_since_compile"]
    p = run_cli("parity", str(folder), "--backends", "ort-cpu,torch-cpu")
    assert p.returncode == 1 and "FAIL" in p.stdout and "model.onnx is not the file compile wrote" in p.stdout


def test_parity_on_image_inputs_and_needing_two_back_ends(digits_folder, tmp_path):
    folder = tmp_path / "imgs"
    shutil.copytree(SAMPLES, folder)
    (folder / "junk.png").write_bytes(b"junk")
    p = run_cli("parity", str(digits_folder), "--inputs", str(folder), "--json")
    r = json.loads(p.stdout)
    assert p.returncode == 0 and r["inputs"].startswith("40 inputs") and r["failed_inputs"][0]["input"].endswith("junk.png")
    p = run_cli("parity", str(digits_folder), "--backends", "ort-cpu")
    assert p.returncode == 1 and "parity needs two back ends" in p.stderr


def test_doctor(tmp_path):
    p = run_cli("doctor", "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["python"]["version"].count(".") == 2 and r["packages"]["onnxruntime"] and r["packages"]["torch"]
    assert "CPUExecutionProvider" in r["onnxruntime"]["providers"]
    backends = {b["name"]: b for b in r["backends"]}
    assert backends["ort-cpu"]["usable"] and backends["torch-cpu"]["usable"]
    assert not backends["tensorrt"]["usable"] and "resgraph[tensorrt]" in backends["tensorrt"]["install"]
    p = run_cli("doctor")
    assert p.returncode == 0 and "back ends" in p.stdout and "ort-cpu" in p.stdout


def test_run_errors_a_user_can_cause(digits_folder, tmp_path):
    cases = [
        (["run", str(tmp_path / "nowhere"), str(SAMPLES)], "no such compiled folder"),
        (["run", str(SAMPLES / "0005_digit-5.png"), str(SAMPLES)], "not a compiled folder"),
        (["run", str(digits_folder), str(SAMPLES), "--backend", "tensorrt"], "tensorrt back end is not usable"),
        (["run", str(digits_folder), str(SAMPLES), "--backend", "onnx"], "unknown back end 'onnx'"),
        (["run", str(digits_folder), str(tmp_path)], "no inputs"),
    ]
    for args, message in cases:
        p = run_cli(*args)
        assert p.returncode == 1 and message in p.stderr and "hint:" in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)
        assert p.stdout == "", args        # no partial output
    newer = tmp_path / "newer"
    shutil.copytree(digits_folder, newer)
    m = json.loads((newer / "manifest.json").read_text())
    (newer / "manifest.json").write_text(json.dumps({**m, "format": 99}))
    p = run_cli("run", str(newer), str(SAMPLES))
    assert p.returncode == 1 and "newer than this resgraph" in p.stderr and "upgrade resgraph" in p.stderr


def test_a_vector_model_takes_npy_not_images(tmp_path):
    from resgraph.compile import compile_spec
    c = compile_spec(str(ROOT / "specs" / "residual_mlp.yaml"), out=str(tmp_path / "mlp"))
    shape = tuple(json.loads((tmp_path / "mlp" / "manifest.json").read_text())["input"]["shape"][1:])
    np.save(tmp_path / "x.npy", np.zeros(shape, np.float32))
    p = run_cli("run", c.out, str(tmp_path / "x.npy"), str(SAMPLES / "0005_digit-5.png"), "--json")
    a, b = json_lines(p.stdout)
    assert p.returncode == 1 and a["ok"] and not b["ok"] and "not an image: give .npy files" in b["error"]


def test_the_decoding_threads_keep_every_input_in_order(digits_folder, tmp_path):
    """Many small batches through the read-ahead queue (workers + 1 batches in flight), broken files
    among them: the same lines as decoding in line."""
    folder = tmp_path / "mixed"
    shutil.copytree(SAMPLES, folder)
    bad_files(folder)
    runs = [run_cli("run", str(digits_folder), str(folder), "--json", "--batch-size", "3", "--workers", w)
            for w in ("0", "1", "3")]
    assert [p.returncode for p in runs] == [1, 1, 1]
    lines = [json_lines(p.stdout) for p in runs]
    assert len(lines[0]) == 40 + 8 and lines[0] == lines[1] == lines[2]


def test_odd_file_names_and_a_closed_pipe(digits_folder, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    shutil.copy(SAMPLES / "0012_digit-2.png", os.fsdecode(bytes(folder) + b"/b\xffd name.png"))
    shutil.copy(SAMPLES / "0009_digit-9.png", folder / "ünïcode ✓.png")
    p = run_cli("run", str(digits_folder), str(folder), "--json")
    lines = json_lines(p.stdout)
    assert p.returncode == 0 and [r["top"][0]["label"] for r in lines] == ["2", "9"]
    assert lines[0]["input"].endswith("b\\xffd name.png") and lines[1]["input"].endswith("ünïcode ✓.png")
    # `resgraph run ... | head -1`: the reader stops early; no error about it
    sh = subprocess.run(" ".join(resgraph_cmd()) + f" run {digits_folder} {SAMPLES} {SAMPLES} {SAMPLES} --batch-size 2 | head -1",
                        shell=True, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert sh.stdout.startswith("input") and "internal error" not in sh.stderr and "Traceback" not in sh.stderr


def test_an_output_that_is_not_finite_is_that_inputs_error(digits_folder, tmp_path):
    np.save(tmp_path / "huge.npy", np.full((1, 8, 8), 3e38, np.float32))
    shutil.copy(SAMPLES / "0012_digit-2.png", tmp_path / "ok.png")
    p = run_cli("run", str(digits_folder), str(tmp_path), "--json")
    a, b = json_lines(p.stdout)
    assert p.returncode == 1 and "NaN or inf" in a["error"] and b["ok"]
    assert "NaN" not in p.stdout.replace("NaN or inf", "")   # strict JSON: no NaN scores


def test_auto_passes_over_a_back_end_that_cannot_open(digits_folder, tmp_path):
    """A back end that probes usable but cannot open (onnxruntime-gpu listing CUDA without its
    libraries) is passed over by auto, saying why. Made here by a model.onnx ONNX Runtime cannot load,
    through the API with verification off: the command line refuses that folder first (a damaged
    model.onnx is the folder's fault, not the machine's: tests/runtime/test_untrusted_folder.py)."""
    from resgraph.runtime import Options, open_session
    folder = tmp_path / "broken_onnx"
    shutil.copytree(digits_folder, folder)
    (folder / "model.onnx").write_bytes(b"not a model")
    with open_session(str(folder), "auto", Options(verify=False)) as s:
        assert s.backend == "torch-cpu" and "failed to open ort-cpu (ONNX Runtime cannot load the model" in s.why
    p = run_cli("run", str(folder), str(SAMPLES / "0012_digit-2.png"), "--json")
    assert p.returncode == 1 and "model.onnx is not the file compile wrote" in p.stderr and p.stdout == ""
    p = run_cli("run", str(folder), str(SAMPLES / "0012_digit-2.png"), "--backend", "torch-cpu", "--json")
    assert p.returncode == 0 and json_lines(p.stdout)[0]["top"][0]["label"] == "2"


def test_parity_needs_inputs_and_a_sound_manifest(digits_folder, tmp_path):
    p = run_cli("parity", str(digits_folder), "--inputs", "0")
    assert p.returncode == 1 and "nothing to compare" in p.stderr and "internal error" not in p.stderr
    for change, message in ((lambda m: {**m, "labels": m["labels"][:9]}, "9 labels for an output of shape [10]"),
                            (lambda m: {**m, "preprocess": {**m["preprocess"], "mean": 0.3}}, "preprocess.mean is 0.3"),
                            (lambda m: {**m, "preprocess": {**m["preprocess"], "interpolation": "cubic"}},
                             "unknown preprocess.interpolation 'cubic'")):
        folder = tmp_path / "edited"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(digits_folder, folder)
        m = json.loads((folder / "manifest.json").read_text())
        (folder / "manifest.json").write_text(json.dumps(change(m)))
        p = run_cli("run", str(folder), str(SAMPLES))
        assert p.returncode == 1 and message in p.stderr and "internal error" not in p.stderr, p.stderr


def test_pipes_and_devices_as_inputs_fail_on_their_line_without_blocking(digits_folder, tmp_path):
    """Reading a named pipe blocks until someone writes to it and /dev/zero never ends: each is an
    input error on its own line, and the good input beside them is classified."""
    for name in ("img.png", "x.npy"):
        os.mkfifo(tmp_path / name)
    good = str(ROOT / "examples" / "digits" / "samples" / "0012_digit-2.png")
    (tmp_path / "empty.png").write_bytes(b"")
    r = run_cli("run", str(digits_folder), str(tmp_path / "img.png"), str(tmp_path / "x.npy"), "/dev/zero", good,
                str(tmp_path / "empty.png"), "--json", timeout=30)
    assert r.returncode == 1, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [d["ok"] for d in lines] == [False, False, False, True, False]
    assert all("not a regular file" in d["error"] for d in lines[:3])
    assert lines[3]["top"][0]["label"] == "2" and lines[4]["error"] == "an empty file"


def test_run_says_once_that_an_untrained_folder_answers_nothing(tmp_path, digits_folder):
    from resgraph.compile import compile_spec
    c = compile_spec(str(ROOT / "specs" / "digits_resnet.yaml"), out=str(tmp_path / "fresh"))   # a seeded init
    p = run_cli("run", c.out, str(SAMPLES))
    assert p.returncode == 0 and p.stderr.count("is untrained (fresh init, seed 0)") == 1, p.stderr
    assert "untrained" not in p.stdout
    trained = run_cli("run", str(digits_folder), str(SAMPLES / "0012_digit-2.png"))
    assert trained.returncode == 0 and "untrained" not in trained.stderr


def test_bench_tables_fit_80_columns_at_their_widest(capsys, monkeypatch):
    """bench's figures in two tables (throughput, latency) that fit an 80-column terminal even with a
    device's copy columns, the widest back end name and numbers in the millions: no cell is cut."""
    from resgraph.cli.infer import _bench_table
    monkeypatch.setenv("COLUMNS", "80")
    row = {"backend": "torch-cuda", "batch": 65536, "throughput": {"queries_per_s": 1234567.8, "images_per_s": 98765432.1},
           "gflops": 123456.7, "h2d_ms": 123.456, "d2h_ms": 12.345, "cv": 0.123, "noisy": True,
           "latency_ms": {"min": 1234.567, "mean": 2345.678, "median": 2345.678, "p90": 3456.789, "p95": 4567.891,
                          "p99": 5678.912, "max": 99999.999}}
    _bench_table({"model": "digits_resnet", "precision": "fp16", "duration_s": 3.0, "macs_per_image": 4_089_184_256,
                  "results": [row, {**row, "backend": "ort-cpu", "h2d_ms": None, "d2h_ms": None}], "skipped": []})
    out = capsys.readouterr().out
    widths = [len(line) for line in out.splitlines()]
    assert max(widths) <= 80, (max(widths), out)
    assert "…" not in out and "98,765,432" in out and "99999.999" in out and "123.456" in out and "12.3% !" in out
