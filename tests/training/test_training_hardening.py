"""`resgraph train` / `eval` against hostile inputs (issue 10, item 3): weights of the wrong dtype,
a FIFO as --weights, bad images in data folders, odd folder layouts, damaged run folders for
--resume, no validation set, and writes that fail (a file-size limit, a name too long).

Real files and the real CLI throughout; every refusal is exit 1 with the file named, never the
internal-error exit 70, and never a hang (each CLI call that could hang, a FIFO, a write limit, runs
in its own process with a timeout; quick refusals run the CLI in process: run_inproc).
"""
import csv
import json
import math
import os
import resource
import subprocess

import pytest

torch = pytest.importorskip("torch", reason="the torch extra is not installed")
pytest.importorskip("sklearn", reason="scikit-learn (digits) is not installed")
Image = pytest.importorskip("PIL.Image", reason="Pillow is not installed")

from conftest import ROOT, resgraph_cmd, run_cli, run_inproc
from test_training import SMALL  # the same small network
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from resgraph.training.loop import TrainConfig, train

FOLDERS = ("resgraph: 1\nname: folders\ninput: {shape: [1, 8, 8]}\npreprocess: {resize: 9, crop: 8, mean: [0.5], std: [0.25]}\n"
           "layers:\n  - conv: {out: 4, kernel: 3}\n  - relu\n  - global_avgpool\n  - flatten\n  - linear: {out: 2}\n")


@pytest.fixture
def small(tmp_path):
    p = tmp_path / "small.yaml"
    p.write_text(SMALL)
    return str(p)


@pytest.fixture(scope="module")
def run1(tmp_path_factory):
    """A finished one-epoch run of SMALL on digits: copy it before damaging it."""
    folder = tmp_path_factory.mktemp("run1")
    spec = folder / "small.yaml"
    spec.write_text(SMALL)
    train(TrainConfig(spec=str(spec), data="digits", out=str(folder / "run"), epochs=1, batch_size=64, progress=False))
    return folder


def copy_run(run1, tmp_path):
    import shutil
    shutil.copytree(run1 / "run", tmp_path / "run")
    shutil.copy(run1 / "small.yaml", tmp_path / "small.yaml")
    return tmp_path / "run", str(tmp_path / "small.yaml")


def user_error(p, *needles):
    """Exit 1, no traceback, each needle in stderr."""
    assert p.returncode == 1, (p.returncode, p.stdout[-2000:], p.stderr[-3000:])
    assert "Traceback" not in p.stderr and "internal error" not in p.stderr.lower(), p.stderr[-3000:]
    for n in needles:
        assert n in p.stderr, (n, p.stderr[-3000:])


def rewrite(path, change_tensors=None, change_meta=None):
    """Rewrite a safetensors file in place with changed tensors and/or metadata."""
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if change_tensors:
        change_tensors(tensors)
    if change_meta:
        change_meta(meta)
    save_file(tensors, str(path), metadata=meta)


# --- 1. weights of the wrong dtype ---------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.int8, torch.bool, torch.int64])
def test_weights_of_a_non_float_dtype_are_refused_not_cast(run1, tmp_path, dtype):
    w = tmp_path / "w.safetensors"
    import shutil
    shutil.copy(run1 / "run" / "last.safetensors", w)
    rewrite(w, lambda t: t.update({"conv1.weight": (t["conv1.weight"] * 10).to(dtype)}))
    spec = str(run1 / "small.yaml")
    name = str(dtype).removeprefix("torch.")
    p = run_inproc("eval", spec, "--weights", str(w), "--data", "digits")
    user_error(p, "w.safetensors", "dtype mismatch", f"conv1.weight: checkpoint {name}, spec float32")
    p = run_inproc("train", spec, "--data", "digits", "--weights", str(w), "--epochs", "1", "-o", str(tmp_path / "o"))
    user_error(p, "dtype mismatch", f"conv1.weight: checkpoint {name}")
    assert not (tmp_path / "o" / "last.safetensors").exists()


def test_integer_buffers_and_other_float_widths_still_load(run1, tmp_path):
    """bn's num_batches_tracked is int64 in the module: allowed. fp16 weights load into fp32."""
    w = tmp_path / "half.safetensors"
    import shutil
    shutil.copy(run1 / "run" / "last.safetensors", w)
    assert load_file(str(w))["bn1.num_batches_tracked"].dtype == torch.int64
    rewrite(w, lambda t: t.update({k: v.half() for k, v in t.items() if v.is_floating_point()}))
    p = run_inproc("eval", str(run1 / "small.yaml"), "--weights", str(w), "--data", "digits")
    assert p.returncode == 0, p.stderr
    assert "accuracy" in p.stdout


# --- 2. a FIFO as --weights ------------------------------------------------------------------------

def test_a_fifo_as_weights_is_refused_not_waited_on(small, tmp_path):
    fifo = tmp_path / "weights.safetensors"
    os.mkfifo(fifo)
    p = run_cli("eval", small, "--weights", str(fifo), "--data", "digits", timeout=90)
    user_error(p, "weights.safetensors", "named pipe (FIFO), not a regular file")
    p = run_cli("train", small, "--data", "digits", "--weights", str(fifo), "-o", str(tmp_path / "o"), timeout=90)
    user_error(p, "named pipe")


# --- 3. bad images in a data folder ------------------------------------------------------------------

def _png(path, level, size=(12, 10)):
    import numpy as np
    rng = np.random.default_rng(hash(str(path)) % 2**32)
    a = np.clip(rng.integers(-30, 30, size[::-1]) + level, 0, 255).astype("uint8")
    Image.fromarray(a, "L").save(path)


def image_folder(root, classes=("dark", "light"), n=10, split=True):
    for s in (("train", "val") if split else ("",)):
        for c, level in zip(classes, (40, 210, 120, 80)):
            d = root / s / c
            d.mkdir(parents=True)
            for i in range(n):
                _png(d / f"{i}.png", level)
    return root


def test_bad_images_are_skipped_and_reported(tmp_path):
    data = image_folder(tmp_path / "imgs")
    bad = data / "train" / "dark"
    (bad / "empty.png").write_bytes(b"")
    (bad / "garbage.jpg").write_bytes(os.urandom(600))
    good = (data / "train" / "dark" / "0.png").read_bytes()
    (bad / "truncated.png").write_bytes(good[: len(good) // 2])
    Image.new("1", (10000, 10000)).save(bad / "bomb.png")   # 1e8 pixels: Pillow's warning size, 12 KB of PNG
    os.mkfifo(bad / "pipe.png")                           # opening it would block forever
    (data / "val" / "light" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    spec = tmp_path / "f.yaml"
    spec.write_text(FOLDERS)
    p = run_cli("train", str(spec), "--data", str(data), "--epochs", "2", "--batch-size", "4", "-o",
                str(tmp_path / "run"), timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "skipped 5 of 25 train images" in p.stderr, p.stderr
    for name in ("bomb.png", "empty.png", "garbage.jpg", "pipe.png", "truncated.png"):
        assert name in p.stderr, name
    assert "decompression bomb" in p.stderr and "not a regular file" in p.stderr
    assert p.stderr.count("skipped 5 of 25") == 1                # once a run, not every epoch
    assert "skipped 1 of 21 val images" in p.stderr and "broken.png" in p.stderr
    assert (tmp_path / "run" / "best.safetensors").exists()
    p = run_cli("eval", str(spec), "--weights", str(tmp_path / "run" / "last.safetensors"), "--data", str(data),
                "--split", "train", timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "skipped 5 of 25 train images" in p.stderr and "accuracy" in p.stdout


def test_a_folder_of_only_bad_images_is_a_user_error(tmp_path):
    for c in ("a", "b"):
        d = tmp_path / "imgs" / c
        d.mkdir(parents=True)
        for i in range(6):
            (d / f"{i}.png").write_bytes(b"not a png")
    spec = tmp_path / "f.yaml"
    spec.write_text(FOLDERS)
    p = run_inproc("train", str(spec), "--data", str(tmp_path / "imgs"), "--epochs", "1", "--batch-size", "2",
                "-o", str(tmp_path / "run"))
    user_error(p, "none of the", "training images can be used", "0.png")
    assert not (tmp_path / "run" / "last.safetensors").exists()


# --- 4. folder layouts ------------------------------------------------------------------------------

def test_train_without_val_and_eval_with_more_classes_than_outputs(tmp_path, small):
    spec = tmp_path / "f.yaml"
    spec.write_text(FOLDERS)
    data = image_folder(tmp_path / "imgs", n=3)
    import shutil
    shutil.rmtree(data / "val")
    p = run_inproc("train", str(spec), "--data", str(data), "--epochs", "1", "-o", str(tmp_path / "run"))
    user_error(p, "train/ but no val/", "hint:")
    p = run_inproc("init", str(spec), "-o", str(tmp_path / "w.safetensors"))
    assert p.returncode == 0, p.stderr
    three = image_folder(tmp_path / "three", classes=("a", "b", "c"), n=2, split=False)
    p = run_inproc("eval", str(spec), "--weights", str(tmp_path / "w.safetensors"), "--data", str(three),
                "--split", "train", "--val-split", "0")
    user_error(p, "three", "3 classes", "2 outputs")
    assert "accuracy" not in p.stdout


# --- 5. --resume with a damaged run folder -----------------------------------------------------------

def resume(spec, run, *extra):
    return run_inproc("train", spec, "--data", "digits", "--epochs", "2", "--batch-size", "64", "-o", str(run),
                      "--resume", *extra)


def test_resume_refuses_a_damaged_trainer_state(run1, tmp_path):
    run, spec = copy_run(run1, tmp_path)
    (run / "trainer.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    p = resume(spec, run)
    user_error(p, "trainer.safetensors", "trainer state is damaged", "--weights")


def test_resume_refuses_a_negative_epoch(run1, tmp_path):
    run, spec = copy_run(run1, tmp_path)

    def negative(meta):
        t = json.loads(meta["trainer"])
        t["epoch"] = -3
        meta["trainer"] = json.dumps(t)
    rewrite(run / "trainer.safetensors", change_meta=negative)
    p = resume(spec, run)
    user_error(p, "trainer.safetensors", "its epoch is -3")


def test_resume_refuses_nan_weights(run1, tmp_path):
    run, spec = copy_run(run1, tmp_path)
    rewrite(run / "trainer.safetensors",
            lambda t: t["model.conv1.weight"].view(-1).__setitem__(0, float("nan")))
    p = resume(spec, run)
    user_error(p, "trainer.safetensors", "NaN or inf", "conv1.weight", "earlier checkpoint")
    rewrite(run / "last.safetensors", lambda t: t["linear1.bias"].__setitem__(0, float("inf")))
    p = run_inproc("eval", spec, "--weights", str(run / "last.safetensors"), "--data", "digits")
    user_error(p, "last.safetensors", "not all finite", "linear1.bias")


def test_resume_refuses_a_damaged_metrics_file_it_needs_and_rewrites_one_it_does_not(run1, tmp_path):
    run, spec = copy_run(run1, tmp_path)
    (run / "metrics.csv").write_text("epoch,lr,train_loss\n1,zero,\x00\x01\n")
    # this version's state holds the metrics rows itself: a damaged metrics.csv is simply rewritten
    p = resume(spec, run)
    assert p.returncode == 0, p.stderr[-3000:]
    with open(run / "metrics.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2]
    # a state written before the rows went in reads metrics.csv: damaged, it is refused
    (tmp_path / "old").mkdir()
    run, spec = copy_run(run1, tmp_path / "old")
    tensors = load_file(str(run / "trainer.safetensors"))
    with safe_open(str(run / "trainer.safetensors"), framework="pt") as f:
        meta = json.loads(f.metadata()["trainer"])
    del meta["extra"]["rows"]
    save_file({k: v for k, v in tensors.items() if not k.startswith("model.")}, str(run / "trainer.safetensors"),
              metadata={"trainer": json.dumps(meta)})
    (run / "metrics.csv").write_text("epoch,lr,train_loss,train_acc,val_loss,val_acc,seconds\n1,0.1,oops,,,,\n")
    p = resume(spec, run)
    user_error(p, "metrics.csv", "line 2 is damaged")


# --- 6. no validation set ------------------------------------------------------------------------

def test_no_validation_set_is_said_and_best_is_by_training_loss(small, tmp_path):
    run = tmp_path / "run"
    p = run_inproc("train", small, "--data", "digits", "--epochs", "2", "--batch-size", "64", "--val-split", "0",
                "-o", str(run))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "no validation set" in p.stdout and "lowest training loss" in p.stdout
    with open(run / "metrics.csv", newline="") as f:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    assert all(math.isnan(r["val_acc"]) and math.isnan(r["val_loss"]) for r in rows)
    best_epoch = min(rows, key=lambda r: r["train_loss"])["epoch"]
    assert best_epoch == 2
    with safe_open(str(run / "best.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert meta["best_by"] == "train_loss" and meta["epoch"] == "2"
    p = run_inproc("eval", small, "--weights", str(run / "best.safetensors"), "--data", "digits", "--val-split", "0")
    user_error(p, "digits", "val split has no samples", "--split train")


# --- 7. writes that fail ------------------------------------------------------------------------

def run_limited(args, fsize, timeout=120):
    """The CLI with RLIMIT_FSIZE: a write past `fsize` bytes fails with EFBIG (Python ignores SIGXFSZ),
    as a write to a full disk fails with ENOSPC."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    return subprocess.run(resgraph_cmd() + list(args), capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}, preexec_fn=limit, check=False)


def test_a_failed_checkpoint_write_is_a_user_error_and_keeps_the_previous_files(run1, tmp_path):
    run, spec = copy_run(run1, tmp_path)
    before = {f: (run / f).read_bytes() for f in os.listdir(run) if (run / f).is_file()}
    assert len(before["last.safetensors"]) > 4096
    p = run_limited(["train", spec, "--data", "digits", "--epochs", "2", "--batch-size", "64", "-o", str(run),
                     "--resume"], fsize=4096)
    user_error(p, "cannot write", "File too large", "run/epoch-002.safetensors", "left as it was")
    assert sorted(f for f in os.listdir(run) if (run / f).is_file()) == sorted(before)   # no temporary file left
    for f, data in before.items():
        assert (run / f).read_bytes() == data, f                          # nothing half-written
    p = resume(spec, run)                                                 # and the run goes on from there
    assert p.returncode == 0, p.stderr[-3000:]


def test_an_output_name_too_long_is_a_user_error(small, tmp_path):
    p = run_inproc("train", small, "--data", "digits", "--epochs", "1", "-o", str(tmp_path / ("x" * 300)))
    user_error(p, "cannot write", "File name too long", "ENAMETOOLONG")


def test_a_diverging_run_stops_before_saving_nan_weights(tmp_path):
    """Not --resume's NaN checkpoint but its cause: a run whose weights go NaN used to go on, loss nan, exit 0."""
    spec = tmp_path / "mlp.yaml"
    spec.write_text("resgraph: 1\nname: digits_mlp\ninput: {shape: [1, 8, 8]}\nlayers:\n  - flatten\n"
                    "  - linear: {out: 32}\n  - relu\n  - linear: {out: 10}\n")
    p = run_inproc("train", str(spec), "--data", "digits", "--epochs", "2", "--lr", "1e30", "--momentum", "0",
                "--no-nesterov", "-o", str(tmp_path / "run"))
    user_error(p, "training diverged in epoch 1", "lower --lr")
    assert not list((tmp_path / "run").glob("*.safetensors"))


def test_a_long_list_in_an_error_says_how_many_more(tmp_path):
    """Ten class folders that are not the spec's labels: the error lists five and says there are five
    more, instead of looking like the whole list."""
    spec = tmp_path / "l.yaml"
    spec.write_text(FOLDERS.replace("linear: {out: 2}", "linear: {out: 10}") + "labels: [" +
                    ", ".join(f"digit{i}" for i in range(10)) + "]\n")
    data = tmp_path / "imgs"
    for i in range(10):
        (data / f"class{i}").mkdir(parents=True)
        _png(data / f"class{i}" / "0.png", 100)
    p = run_inproc("train", str(spec), "--data", str(data), "--epochs", "1", "-o", str(tmp_path / "run"))
    user_error(p, "class folders not in the spec's labels: class0, class1, class2, class3, class4 (+5 more)")
