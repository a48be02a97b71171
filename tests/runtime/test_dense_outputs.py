"""`run`, `bench` and `parity` on models beyond the classifier: a dense [C, H, W] output with labels
beside a vector one, two inputs and three outputs, size variables. Each saved file is checked against
ONNX Runtime called directly on model.onnx with the preprocess written out by hand (numpy and
Pillow), each class-map PNG against the arg-max of that output taken back to the image's size with
Pillow's nearest resize; images whose size the model cannot take are refused on their own line."""
import json

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli

# a dense model: seg [3, H, W] (labelled: sky, tree, road) and emb [8]; H, W any even size 8..96
SEG = """\
resgraph: 1
name: tiny_seg
sizes: {H: {min: 8, max: 96}, W: {min: 8, max: 96}}
input: {name: image, shape: [3, H, W]}
preprocess: {mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]FIT}
labels: [sky, tree, road]
outputs:
  - {name: seg, from: head}
  - {name: emb, from: pooled}
layers:
  - conv: {out: 8, kernel: 3, id: stem}
  - conv: {out: 8, kernel: 3, stride: 2}
  - upsample: {scale: 2}
  - add: {from: [stem], id: joined}
  - conv: {out: 3, kernel: 1, id: head}
  - global_avgpool: {in: joined}
  - flatten: {id: pooled}
"""

# two inputs, three outputs (two maps a stride apart and a vector); H, W any size 16..256
BACKBONE = """\
resgraph: 1
name: tiny_backbone
inputs:
  - {name: image, shape: [3, H, W]}
  - {name: mask, shape: [1, H, W]}
sizes: {H: {min: 16, max: 256}, W: {min: 16, max: 256}}
outputs:
  - {name: c3, from: s2}
  - {name: c4, from: s3}
  - {name: emb, from: head}
layers:
  - conv: {out: 8, kernel: 3, stride: 2, id: a}
  - conv: {out: 8, kernel: 3, stride: 2, id: m, in: mask}
  - add: {from: [a], id: s1}
  - conv: {out: 16, kernel: 3, stride: 2, id: s2}
  - conv: {out: 32, kernel: 3, stride: 2, id: s3}
  - global_avgpool
  - flatten: {id: head}
"""


def compiled(tmp_path_factory, name: str, text: str) -> str:
    from resgraph.compile import compile_spec
    folder = tmp_path_factory.mktemp(name)
    (folder / "spec.yaml").write_text(text)
    return compile_spec(str(folder / "spec.yaml"), out=str(folder / "out")).out


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    return compiled(tmp_path_factory, "seg", SEG.replace("FIT", ""))


@pytest.fixture(scope="module")
def seg_resize(tmp_path_factory):
    return compiled(tmp_path_factory, "seg_resize", SEG.replace("FIT", ", fit: resize"))


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return compiled(tmp_path_factory, "backbone", BACKBONE)


def ort(folder: str, feeds: dict) -> dict:
    """ONNX Runtime on model.onnx, every output by name."""
    import onnxruntime as ort
    s = ort.InferenceSession(f"{folder}/model.onnx", providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))


def by_hand(path, size=None) -> np.ndarray:
    """tiny_seg's preprocess written out: RGB, optionally a bilinear resize to `size` (w, h), [0, 1],
    (x - 0.5) / 0.25, [3, H, W]."""
    im = Image.open(path).convert("RGB")
    if size is not None:
        im = im.resize(size, Image.Resampling.BILINEAR)
    return ((np.asarray(im, dtype=np.float32) / 255 - np.float32(0.5)) / np.float32(0.25)).transpose(2, 0, 1)


def pad_to_even(x: np.ndarray) -> np.ndarray:
    """fit: pad by hand: zeros at the bottom and right up to the next even H and W."""
    _, h, w = x.shape
    return np.pad(x, ((0, 0), (0, h % 2), (0, w % 2)))


def images(folder, sizes: dict) -> dict:
    rng = np.random.default_rng(1)
    out = {}
    for name, (w, h) in sizes.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        out[name] = path
    return out


def lines(p) -> dict:
    return {r["input"]: r for r in map(json.loads, p.stdout.splitlines())}


def test_save_and_save_masks_equal_onnxruntime_on_the_hand_preprocess(seg, tmp_path):
    """fit: pad. Images at a valid size, at odd sizes (padded), too wide (refused on its own line),
    and two of one name in two folders; several sizes in one batch."""
    imgs = images(tmp_path / "in", {"a.png": (40, 30), "b/a.png": (33, 21), "big.png": (120, 40), "c.png": (64, 64)})
    out, masks = tmp_path / "out", tmp_path / "masks"
    p = run_cli("run", seg, str(tmp_path / "in"), "--save", str(out), "--save-masks", str(masks), "--json")
    assert p.returncode == 1, p.stderr
    got = lines(p)
    big = got.pop(str(imgs["big.png"]))
    assert not big["ok"] and "width 120" in big["error"] and "the nearest valid sizes are 94 or 96" in big["error"]
    stems = {"a.png": "a", "b/a.png": "a~2", "c.png": "c"}      # a later a.png of another folder: a~2
    palette = Image.open(masks / "a.seg.png").getpalette()[:12]
    assert palette == [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0]   # PASCAL VOC's colours
    for name, stem in stems.items():
        x = by_hand(imgs[name])
        want = ort(seg, {"image": pad_to_even(x)[None]})
        r = got[str(imgs[name])]
        assert r["ok"] and set(r["outputs"]) == {"seg", "emb"}
        for o in ("seg", "emb"):
            path = out / f"{stem}.{o}.npy"
            assert r["outputs"][o]["file"] == str(path) and r["outputs"][o]["shape"] == list(want[o][0].shape)
            assert np.abs(np.load(path) - want[o][0]).max() <= 1e-6, (name, o)
        h, w = x.shape[1:]
        mask = Image.open(masks / f"{stem}.seg.png")
        assert mask.mode == "P" and mask.size == (w, h)
        assert r["outputs"]["seg"]["mask"] == {"file": str(masks / f"{stem}.seg.png"), "shape": [h, w]}
        assert np.array_equal(np.asarray(mask), want["seg"][0].argmax(0)[:h, :w]), name   # the padding cut off
        assert [t["label"] for t in r["outputs"]["emb"]["top"]] == [str(t["index"]) for t in r["outputs"]["emb"]["top"]]
    assert sorted(f.name for f in out.iterdir()) == sorted(f"{s}.{o}.npy" for s in stems.values() for o in ("seg", "emb"))


def test_fit_resize_resizes_to_the_nearest_valid_size_and_the_mask_back(seg_resize, tmp_path):
    imgs = images(tmp_path, {"odd.png": (33, 21), "wide.png": (150, 20)})
    p = run_cli("run", seg_resize, str(imgs["odd.png"]), str(imgs["wide.png"]), "--save", str(tmp_path / "o"),
                "--save-masks", str(tmp_path / "m"), "--json")
    assert p.returncode == 0, p.stderr
    for name, (w, h), size in (("odd", (33, 21), (34, 22)), ("wide", (150, 20), (96, 20))):  # nearest valid, larger on a tie
        want = ort(seg_resize, {"image": by_hand(imgs[f"{name}.png"], size)[None]})
        for o in ("seg", "emb"):
            assert np.abs(np.load(tmp_path / "o" / f"{name}.{o}.npy") - want[o][0]).max() <= 1e-6, (name, o)
        classes = Image.fromarray(want["seg"][0].argmax(0).astype(np.uint8)).resize((w, h), Image.Resampling.NEAREST)
        assert np.array_equal(np.asarray(Image.open(tmp_path / "m" / f"{name}.seg.png")), np.asarray(classes)), name


def test_npy_inputs_keep_their_size_and_are_named_per_sample(seg, tmp_path):
    x = np.random.default_rng(2).standard_normal((2, 3, 16, 24)).astype(np.float32)
    np.save(tmp_path / "batch.npy", x)
    np.save(tmp_path / "odd.npy", x[0, :, :15])
    p = run_cli("run", seg, str(tmp_path / "batch.npy"), str(tmp_path / "odd.npy"), "--save", str(tmp_path / "o"),
                "--save-masks", str(tmp_path / "m"), "--json")
    got = lines(p)
    assert p.returncode == 1 and "H = 15 is not a size the model takes" in got[f"{tmp_path}/odd.npy"]["error"]
    want = ort(seg, {"image": x})
    for i in range(2):
        assert np.abs(np.load(tmp_path / "o" / f"batch-{i}.seg.npy") - want["seg"][i]).max() <= 1e-6
        assert np.array_equal(np.asarray(Image.open(tmp_path / "m" / f"batch-{i}.seg.png")), want["seg"][i].argmax(0))


def test_a_map_output_without_save_says_what_to_do_and_writes_nothing(seg, backbone, tmp_path):
    p = run_cli("run", seg, str(tmp_path))
    assert p.returncode == 1 and p.stdout == "" and "output seg [3, H, W] is not a vector" in p.stderr
    assert "--save DIR" in p.stderr and "--save-masks DIR" in p.stderr
    np.save(tmp_path / "x.npy", np.zeros((3, 16, 16), np.float32))
    p = run_cli("run", backbone, str(tmp_path / "x.npy"), "--save-masks", str(tmp_path / "m"))
    assert p.returncode == 1 and p.stdout == "" and "--save-masks: error: no output of tiny_backbone" in p.stderr
    assert not (tmp_path / "m").exists()
    (tmp_path / "file").write_text("")
    p = run_cli("run", seg, str(tmp_path / "x.npy"), "--save", str(tmp_path / "file"))
    assert p.returncode == 1 and "is a file, not a folder" in p.stderr and "hint:" in p.stderr


def test_several_inputs_come_in_npz_files_and_every_output_is_saved(backbone, tmp_path):
    rng = np.random.default_rng(3)
    image, mask = rng.standard_normal((3, 32, 48)).astype(np.float32), rng.standard_normal((1, 32, 48)).astype(np.float32)
    np.savez(tmp_path / "good.npz", image=image, mask=mask)
    np.savez(tmp_path / "typo.npz", image=image, masks=mask)
    np.savez(tmp_path / "half.npz", image=image)
    np.savez(tmp_path / "apart.npz", image=image, mask=mask[:, :, :40])
    np.savez(tmp_path / "small.npz", image=image[:, :8, :8], mask=mask[:, :8, :8])
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "photo.png")
    p = run_cli("run", backbone, str(tmp_path), "--save", str(tmp_path / "o"), "--json")
    got = {k.rsplit("/", 1)[1]: v for k, v in lines(p).items()}
    assert p.returncode == 1 and [k for k, v in got.items() if v["ok"]] == ["good.npz"]
    assert "holds 'masks', which is not an input of this model (it takes image, mask): did you mean 'mask'?" \
        == got["typo.npz"]["error"]
    assert "holds no mask" in got["half.npz"]["error"]
    assert "W is 40 here but 48 elsewhere" in got["apart.npz"]["error"]
    assert "H = 8 is not a size the model takes" in got["small.npz"]["error"] and "16 or 17" in got["small.npz"]["error"]
    assert "give .npz files holding one sample of each by name" in got["photo.png"]["error"]
    want = ort(backbone, {"image": image[None], "mask": mask[None]})
    for o in ("c3", "c4", "emb"):
        assert got["good.npz"]["outputs"][o]["shape"] == list(want[o][0].shape)
        assert np.abs(np.load(tmp_path / "o" / f"good.{o}.npy") - want[o][0]).max() <= 1e-6
    table = run_cli("run", backbone, str(tmp_path / "good.npz"), "--save", str(tmp_path / "o")).stdout.splitlines()
    assert table[0].split() == ["input", "output", "result"] and len(table) == 4
    assert table[1].split()[1:4] == ["c3", "[16,", "8,"] and table[3].split()[1] == "emb"


def test_bench_measures_each_shape_and_refuses_an_invalid_one(backbone):
    p = run_cli("bench", backbone, "--backend", "ort-cpu", "--shape", "16x16,32x48", "--shape", "256x17",
                "--batch", "1,2", "--duration", "0.05", "--warmup", "0", "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert [(x["shape"], x["batch"]) for x in r["results"]] == [(s, b) for s in ("16x16", "32x48", "256x17") for b in (1, 2)]
    assert r["macs_at"] == "16x16" and [x["gflops"] is None for x in r["results"]] == [False] * 2 + [True] * 4
    p = run_cli("bench", backbone, "--backend", "ort-cpu", "--batch", "1", "--duration", "0.05", "--warmup", "0", "--json")
    assert [x["shape"] for x in json.loads(p.stdout)["results"]] == ["224x224"]   # the smallest valid from 224 up
    for shape, message in (("300x16", "H = 300 is not a size tiny_backbone takes (every size from 16 to 256)"),
                           ("16x16,16x16", "names 16x16 twice"), ("16", "'16' is not a size HxW")):
        p = run_cli("bench", backbone, "--shape", shape)
        assert p.returncode == 1 and message in p.stderr and "hint:" in p.stderr and p.stdout == "", p.stderr
    assert "the nearest valid sizes are 255 or 256" in run_cli("bench", backbone, "--shape", "300x16").stderr


def test_parity_compares_every_output_at_three_sizes(backbone):
    p = run_cli("parity", backbone, "--backends", "torch-cpu,ort-cpu", "--inputs", "4", "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["shapes"] == ["16x16", "136x136", "256x256"] and r["ok"]
    assert [(x["output"], x["shape"]) for x in r["outputs"]] == [(o, s) for s in r["shapes"] for o in ("c3", "c4", "emb")]
    assert all(x["max_abs"] <= 1e-4 for x in r["outputs"])
    [worst] = r["pairs"]
    assert worst["max_abs"] == max(x["max_abs"] for x in r["outputs"]) and worst["output"] in ("c3", "c4", "emb")
    p = run_cli("parity", backbone, "--backends", "torch-cpu,ort-cpu", "--inputs", "2", "--shape", "20x30")
    assert p.returncode == 0 and "20x30" in p.stdout and "worst torch-cpu vs ort-cpu" in p.stdout


def test_fit_is_the_spec_languages_and_the_manifest_carries_it(seg_resize, tmp_path, write_spec):
    import shutil

    from resgraph.runtime.preprocess import FITS, Preprocess
    from resgraph.spec.grammar import PREPROCESS
    assert FITS == PREPROCESS["fit"].choices == ("pad", "resize")
    m = json.loads(open(f"{seg_resize}/manifest.json").read())
    assert m["preprocess"]["fit"] == "resize"
    old = {k: v for k, v in m["preprocess"].items() if k != "fit"}      # a manifest from before fit: pad
    assert Preprocess.from_json(old, (3, "H", "W")).fit == "pad"
    forged = tmp_path / "forged"
    shutil.copytree(seg_resize, forged)
    (forged / "manifest.json").write_text(json.dumps({**m, "preprocess": {**m["preprocess"], "fit": "squash"}}))
    p = run_cli("run", str(forged), str(tmp_path), "--save", str(tmp_path / "o"))
    assert p.returncode == 1 and "unknown preprocess.fit 'squash'" in p.stderr and not (tmp_path / "o").exists()
    p = run_cli("check", write_spec(SEG.replace("FIT", ", fit: padd")))
    assert p.returncode == 1 and "unknown preprocess.fit 'padd'" in p.stderr and "did you mean 'pad'?" in p.stderr


def test_a_class_map_goes_back_through_resize_and_crop():
    """Geometry.to_image: the crop put back where it was cut (void, 255, around it), the resize undone."""
    from resgraph.runtime.preprocess import Preprocess
    pre = Preprocess.resolve({"resize": 8, "crop": 6}, (3, 6, 6))
    _, g = pre.transform(Image.new("RGB", (10, 8)))       # shorter side already 8: the crop alone moves pixels
    labels = np.arange(36, dtype=np.uint8).reshape(6, 6)
    want = np.full((8, 10), 255, np.uint8)
    want[1:7, 2:8] = labels
    assert np.array_equal(g.to_image(labels), want)
    _, g = pre.transform(Image.new("RGB", (20, 16)))      # halved, then cut: each label covers 2 x 2 pixels
    want = np.full((16, 20), 255, np.uint8)
    want[2:14, 4:16] = labels.repeat(2, 0).repeat(2, 1)
    assert np.array_equal(g.to_image(labels), want)


def test_a_classifier_keeps_its_lines_and_saves_its_logits_on_request(digits_folder, tmp_path):
    from conftest import ROOT
    sample = str(ROOT / "examples" / "digits" / "samples" / "0012_digit-2.png")
    plain = lines(run_cli("run", str(digits_folder), sample, "--json", "--top-k", "2"))[sample]
    assert set(plain) == {"input", "ok", "top"} and plain["top"][0]["label"] == "2"
    p = run_cli("run", str(digits_folder), sample, "--json", "--top-k", "2", "--save", str(tmp_path))
    saved = lines(p)[sample]
    assert p.returncode == 0 and saved["top"] == plain["top"] == saved["outputs"]["logits"]["top"]
    logits = np.load(tmp_path / "0012_digit-2.logits.npy")
    assert saved["outputs"]["logits"]["shape"] == [10] and int(logits.argmax()) == 2
