"""Dense training: a [C, H, W] output trained on a folder of images/ and masks/ with per-pixel
cross-entropy (255 = unlabelled), the shipped U-Net with size variables trained at one --size and
compiled for every size with those weights. Pixel accuracy is checked against a count by hand."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from conftest import ROOT, run_cli

torch = pytest.importorskip("torch", reason="the torch extra is not installed")
Image = pytest.importorskip("PIL.Image")

UNET = str(ROOT / "specs" / "unet.yaml")


def squares(folder, n: int = 24, size: int = 32, seed: int = 0, ignore_border: bool = True):
    """A bright square on noise; its mask is class 1 inside it, 0 outside, 255 on a 1-pixel frame."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i in range(n):
        im = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), np.uint8)
        s = int(rng.integers(8, 16))
        top, left = (int(v) for v in rng.integers(0, size - s, 2))
        im[top:top + s, left:left + s] = rng.integers(170, 255, (s, s, 3), dtype=np.uint8)
        mask[top:top + s, left:left + s] = 1
        if ignore_border:
            mask[0, :] = 255
        Image.fromarray(im).save(folder / "images" / f"{i:03d}.png")
        Image.fromarray(mask, "L").save(folder / "masks" / f"{i:03d}.png")
    return folder


def test_the_unet_trains_on_masks_at_one_size_and_compiles_for_every_size(tmp_path):
    data = squares(tmp_path / "data", n=40)
    out = tmp_path / "run"
    p = run_cli("train", UNET, "--data", str(data), "--size", "32x32", "-o", str(out), "--epochs", "5",
                "--batch-size", "8", "--optimizer", "adamw", "--lr", "0.01", "--threads", "2", timeout=300)
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 5 and float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    # the accuracy train reports is the labelled pixels' share the argmax gets right: counted here by hand
    import resgraph
    from resgraph.frontend import check_at
    from resgraph.training.data import load_data
    checked = check_at(resgraph.check(UNET), (32, 32))
    module = resgraph.to_torch(checked.graph, weights=str(out / "last.safetensors")).eval()
    val = load_data(str(data), checked.spec, 0.2, 0).val
    right = counted = 0
    for image, mask in val.pairs:
        x = val.pre.file(image)
        with torch.no_grad():
            pred = module(torch.from_numpy(x)[None])[0].argmax(0).numpy()
        y = np.asarray(Image.open(mask))
        right += int(((pred == y) & (y != 255)).sum())
        counted += int((y != 255).sum())
    assert counted == len(val.pairs) * 31 * 32
    assert float(rows[-1]["val_acc"]) == pytest.approx(right / counted, abs=1e-6)
    assert right / counted > 0.95, right / counted     # the squares are found (background alone: ~85%)
    # the sized spec compiles with these weights and runs at another size
    p = run_cli("compile", UNET, "--weights", str(out / "last.safetensors"), "-o", str(tmp_path / "c"), timeout=120)
    assert p.returncode == 0, p.stderr
    from resgraph.runtime import open_session
    x = np.random.default_rng(1).standard_normal((1, 3, 48, 64), dtype=np.float32)
    at = check_at(resgraph.check(UNET), (48, 64))
    want = resgraph.to_torch(at.graph, weights=str(out / "last.safetensors")).eval()(torch.from_numpy(x))
    got = open_session(str(tmp_path / "c"), "ort-cpu").run(x)
    np.testing.assert_allclose(got, want.detach().numpy(), atol=1e-4)


def test_dense_training_errors_are_located(tmp_path):
    data = squares(tmp_path / "data", n=6)
    p = run_cli("train", UNET, "--data", str(data), "-o", str(tmp_path / "r1"))
    assert p.returncode == 1 and "train takes fixed input sizes: H, W are size variables here" in p.stderr
    assert "--size HxW" in p.stderr and not (tmp_path / "r1").exists()
    p = run_cli("train", UNET, "--data", str(data), "--size", "30x32", "-o", str(tmp_path / "r2"))
    assert p.returncode == 1 and "--size" in p.stderr and "H = 30 is not a size the network takes" in p.stderr
    assert "the nearest valid sizes are 32" in p.stderr and not (tmp_path / "r2").exists()
    p = run_cli("train", str(ROOT / "specs" / "digits_resnet.yaml"), "--data", str(data), "-o", str(tmp_path / "r3"))
    assert p.returncode == 1 and "per-pixel masks, but the network's output is [10]" in p.stderr
    (data / "masks" / "003.png").unlink()
    p = run_cli("train", UNET, "--data", str(data), "--size", "32x32", "-o", str(tmp_path / "r4"))
    assert p.returncode == 1 and "masks: error: no mask for 1 image(s): 003.png" in p.stderr and "hint:" in p.stderr


def test_a_mask_with_a_class_beyond_the_labels_is_skipped_and_reported(tmp_path):
    data = squares(tmp_path / "data", n=10, ignore_border=False)
    Image.fromarray(np.full((32, 32), 7, np.uint8), "L").save(data / "masks" / "004.png")
    Image.new("RGB", (32, 32)).save(data / "masks" / "005.png")
    p = run_cli("train", UNET, "--data", str(data), "--size", "32x32", "-o", str(tmp_path / "r"), "--epochs", "1",
                "--batch-size", "2", "--val-split", "0", timeout=120)
    assert p.returncode == 0, p.stderr
    assert "skipped 2 of 10 train images that cannot be used" in p.stderr
    assert "its mask 004.png holds class 7, but the spec has 2 labels (0 to 1; 255 = ignore)" in p.stderr
    assert "its mask 005.png is RGB, not an 8-bit grey or palette PNG of class indices" in p.stderr
