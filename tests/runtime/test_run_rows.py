"""Each input of `resgraph run` gets its own row of the batch's output, whatever failed before it.

Broken inputs sit among the good ones (first, last and in the middle of batches, several in a row, a
whole batch of them, a .npy whose answer is not finite), across several batches decoded by more than
one worker. Every answer is checked against a hand-written loop: Pillow and the digits spec's
preprocess written out, then ONNX Runtime on model.onnx, one file at a time."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli

BATCH = 4

# what each input is, in input order (file names sort in this order): a digit PNG, a good .npy,
# a .npy of 3 samples (3 inputs), or a broken input of some kind
LAYOUT = ["corrupt", "png", "png", "empty",            # a batch that starts and ends with a failure
          "png", "txt", "fake_jpg", "png",             # two in a row in the middle
          "truncated", "wrong_shape", "broken_npy", "nan_npy",   # a batch with nothing good in it
          "png", "huge", "png", "npy",                 # decoded, but the model's answer is not finite
          "empty", "npy3", "png",                      # a batched .npy after a failure
          "png", "corrupt", "png", "txt", "png", "png", "png", "truncated", "png", "png", "empty"]


def digits_images(n: int) -> list[np.ndarray]:
    """scikit-learn's digits as 8-bit greyscale (as examples/digits/make_samples.py writes them)."""
    from sklearn.datasets import load_digits
    d = load_digits()
    return [np.round(img * 255.0 / 16.0).astype(np.uint8) for img in d.images[:n]]


def hand_preprocess(grey: np.ndarray) -> np.ndarray:
    """The digits spec's preprocess written out: [0, 1], then (x - 0.3) / 0.38, as [1, 8, 8]."""
    return ((grey.astype(np.float32) / 255 - np.float32(0.3)) / np.float32(0.38))[None]


@pytest.fixture(scope="module")
def mixed_inputs(tmp_path_factory):
    """(folder, [(input name, the hand-computed sample or None where the input must fail)]) in input order."""
    folder = tmp_path_factory.mktemp("mixed_rows")
    images = iter(digits_images(40))
    good_png = io.BytesIO()
    Image.fromarray(digits_images(1)[0]).save(good_png, "PNG")
    png = good_png.getvalue()
    broken = {"corrupt": ("png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4), "truncated": ("png", png[: len(png) // 2]),
              "empty": ("png", b""), "txt": ("txt", b"not an image\n"), "fake_jpg": ("jpg", b"\xff\xd8\xff\xe0" + bytes(40)),
              "broken_npy": ("npy", b"\x93NUMPY\x01\x00garbage")}
    expected = []
    for k, kind in enumerate(LAYOUT):
        stem = folder / f"{k:03d}_{kind}"
        if kind == "png":
            path = f"{stem}.png"
            img = next(images)
            Image.fromarray(img).save(path)
            with Image.open(path) as im:   # the hand loop decodes the file itself
                expected.append((path, hand_preprocess(np.asarray(im.convert("L")))))
        elif kind == "npy":
            x = hand_preprocess(next(images))
            np.save(f"{stem}.npy", x)
            expected.append((f"{stem}.npy", x))
        elif kind == "npy3":
            x = np.stack([hand_preprocess(next(images)) for _ in range(3)])
            np.save(f"{stem}.npy", x)
            expected.extend((f"{stem}.npy[{i}]", x[i]) for i in range(3))
        elif kind in ("wrong_shape", "nan_npy", "huge"):
            x = {"wrong_shape": np.zeros((3, 8, 8), np.float32), "nan_npy": np.full((1, 8, 8), np.nan, np.float32),
                 "huge": np.full((1, 8, 8), 3e38, np.float32)}[kind]
            np.save(f"{stem}.npy", x)
            expected.append((f"{stem}.npy", None))
        else:
            ext, data = broken[kind]
            (folder / f"{stem.name}.{ext}").write_bytes(data)
            expected.append((f"{stem}.{ext}", None))
    # the layout does what it is for: some batch has a failed input before a good one
    oks = [x is not None for _, x in expected]
    batches = [oks[i:i + BATCH] for i in range(0, len(oks), BATCH)]
    assert sum(any(not a and b for a, b in zip(c, c[1:])) for c in batches) >= 4
    assert any(not any(c) for c in batches) and len(batches) >= 8
    return folder, expected


def hand_outputs(model: str, expected) -> dict[str, np.ndarray]:
    """The reference: ONNX Runtime on model.onnx, one input at a time."""
    import onnxruntime as ort
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return {name: sess.run(None, {"image": x[None]})[0][0] for name, x in expected if x is not None}


def softmax(z: np.ndarray) -> np.ndarray:
    p = np.exp(z.astype(np.float64) - z.max())
    return p / p.sum()


def check_top(name: str, top: list[tuple[int, float]], ref_logits: np.ndarray, tol: float):
    """top-k (index, score) pairs are the reference's: the arg-max first, each score the reference's
    softmax at that index, and no class left out scoring above the last one listed."""
    p = softmax(ref_logits)
    assert top[0][0] == int(p.argmax()), (name, top, p.round(4))
    for index, score in top:
        assert abs(score - p[index]) <= tol, (name, index, score, p[index])
    rest = np.delete(p, [i for i, _ in top])
    assert rest.max(initial=0) <= top[-1][1] + tol, name


def test_predict_batches_gives_every_input_its_own_row(digits_folder, mixed_inputs):
    from resgraph.runtime import Options, expand, open_session, predict_batches
    folder, expected = mixed_inputs
    ref = hand_outputs(str(digits_folder / "model.onnx"), expected)
    with open_session(str(digits_folder), "ort-cpu", Options(threads=1)) as s:
        items = expand([str(folder)], None, s.input_shape)
        for workers in (2, 3):
            batches = list(predict_batches(s, items, BATCH, workers))
            results = [r for b in batches for r in b]
            assert [len(b) for b in batches] == [len(items[i:i + BATCH]) for i in range(0, len(items), BATCH)]
            assert [r.item.name for r in results] == [name for name, _ in expected]
            for r, (name, x) in zip(results, expected):
                assert r.ok == (x is not None), (name, r.error)
                if r.ok:
                    assert np.abs(r.output - ref[name]).max() <= 1e-5, (workers, name)
    assert sum(x is not None for _, x in expected) == len(ref) >= 15


@pytest.mark.parametrize("workers", ["2", "4"])
def test_run_json_answers_each_input_with_its_own_row(digits_folder, mixed_inputs, workers):
    folder, expected = mixed_inputs
    ref = hand_outputs(str(digits_folder / "model.onnx"), expected)
    p = run_cli("run", str(digits_folder), str(folder), "--json", "--batch-size", str(BATCH), "--workers", workers)
    assert p.returncode == 1, p.stderr[-2000:]
    lines = [json.loads(line) for line in p.stdout.splitlines()]
    assert [r["input"] for r in lines] == [name for name, _ in expected]
    for r, (name, x) in zip(lines, expected):
        assert r["ok"] == (x is not None), r
        if r["ok"]:
            check_top(name, [(t["index"], t["score"]) for t in r["top"]], ref[name], 2e-6)
            assert [t["label"] for t in r["top"]] == [str(t["index"]) for t in r["top"]]
    failed = {r["input"] for r in lines if not r["ok"]}
    assert f"{folder}/013_huge.npy" in failed
    n, bad = len(lines), len(failed)
    assert f"{n} inputs: {n - bad} ok, {bad} failed" in p.stderr


def test_run_table_answers_each_input_with_its_own_row(digits_folder, mixed_inputs):
    """The same through the table (a code path of its own in the command)."""
    folder, expected = mixed_inputs
    ref = hand_outputs(str(digits_folder / "model.onnx"), expected)
    p = run_cli("run", str(digits_folder), str(folder), "--batch-size", str(BATCH), "--workers", "3", "--top-k", "3")
    assert p.returncode == 1, p.stderr[-2000:]
    rows = p.stdout.splitlines()
    assert rows[0].split()[:2] == ["input", "top-3"] and len(rows) == 1 + len(expected)
    for row, (name, x) in zip(rows[1:], expected):
        assert row.startswith(name + " "), (row, name)
        cells = row[len(name):].split()
        if x is None:
            assert cells[0] == "error:", row
            continue
        assert cells[0] != "error:", row
        top = [(int(label), float(score.strip("()"))) for label, score in zip(cells[::2], cells[1::2])]
        assert len(top) == 3
        check_top(name, top, ref[name], 5e-4 + 1e-6)      # the table prints 3 decimals
