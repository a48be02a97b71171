"""`resgraph train`, `init`, `eval`: real training on real data, resumption, torchrun, errors."""
import csv
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch", reason="the torch extra is not installed")
pytest.importorskip("sklearn", reason="scikit-learn (digits) is not installed")

import resgraph  # noqa: E402
from resgraph.backends.torch import read_checkpoint  # noqa: E402
from resgraph.training.loop import TrainConfig, train  # noqa: E402
from conftest import ROOT, run_cli, run_inproc, run_interrupted_and_resumed  # noqa: E402

SMALL = """resgraph: 1
name: digits_small
input: {shape: [1, 8, 8]}
preprocess: {mean: [0.3], std: [0.38]}
defaults:
  conv: {bias: false}
layers:
  - conv: {out: 8, kernel: 3}
  - bn
  - relu
  - residual:
      layers:
        - conv: {out: 16, kernel: 3, stride: 2}
        - bn
      post: relu
  - global_avgpool
  - flatten
  - linear: {out: 10}
"""
# no BatchNorm: one process and two must agree up to float rounding
MLP = """resgraph: 1
name: digits_mlp
input: {shape: [1, 8, 8]}
layers:
  - flatten
  - linear: {out: 32}
  - relu
  - residual:
      layers:
        - linear: {out: 32}
        - relu
        - linear: {out: 32}
      post: relu
  - linear: {out: 10}
"""


@pytest.fixture
def spec(tmp_path):
    def write(text=SMALL, name="net.yaml"):
        p = tmp_path / name
        p.write_text(text)
        return str(p)
    return write


def read_metrics(folder):
    with open(os.path.join(folder, "metrics.csv"), newline="") as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


def test_train_writes_checkpoints_and_metrics(spec, tmp_path):
    out = tmp_path / "run"
    rows = train(TrainConfig(spec=spec(), data="digits", out=str(out), epochs=2, batch_size=32, progress=False))
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] and rows[-1]["val_acc"] > 0.5
    for f in ("epoch-001.safetensors", "epoch-002.safetensors", "last.safetensors", "best.safetensors",
              "trainer.safetensors", "metrics.csv"):
        assert (out / f).exists(), f
    assert read_metrics(out)[-1]["val_acc"] == pytest.approx(rows[-1]["val_acc"], abs=1e-6)
    tensors, meta = read_checkpoint(str(out / "last.safetensors"))
    assert meta["spec"] == "digits_small" and meta["epoch"] == "2" and meta["untrained"] == "false"
    assert "residual1.shortcut.conv.weight" in tensors   # keys are the spec's paths


def test_resume_continues_exactly(spec, tmp_path):
    """A 3-epoch run killed after epoch 1 and resumed ends exactly where an uninterrupted run ends."""
    ta, tb = run_interrupted_and_resumed(tmp_path, spec=spec(), data="digits", batch_size=32, progress=False,
                                         optimizer="adamw", epochs=3)
    for k in ta:
        assert torch.allclose(ta[k].float(), tb[k].float(), atol=1e-6), k


def torchrun(n, spec_path, out, epochs=2, extra=()):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", str(n),
           "-m", "resgraph", "train", spec_path, "--data", "digits", "-o", str(out), "--epochs", str(epochs),
           "--batch-size", "64", "--device", "cpu", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return read_metrics(out)


def test_ddp_two_processes_match_one_without_batchnorm(spec, tmp_path):
    path = spec(MLP, "mlp.yaml")
    one = torchrun(1, path, tmp_path / "one")
    two = torchrun(2, path, tmp_path / "two")
    for r1, r2 in zip(one, two, strict=True):
        assert r2["train_loss"] == pytest.approx(r1["train_loss"], rel=1e-4)
        assert r2["val_loss"] == pytest.approx(r1["val_loss"], rel=1e-4)


def test_ddp_two_processes_with_batchnorm_within_tolerance(spec, tmp_path):
    path = spec()
    one = torchrun(1, path, tmp_path / "one")
    two = torchrun(2, path, tmp_path / "two")
    # BatchNorm statistics are per process (half batches), so the runs differ a little
    assert two[-1]["train_loss"] == pytest.approx(one[-1]["train_loss"], rel=0.1)
    assert two[-1]["val_acc"] == pytest.approx(one[-1]["val_acc"], abs=0.05)


def test_shipped_digits_model_is_accurate():
    p = run_cli("eval", "specs/digits_resnet.yaml", "--weights", "specs/weights/digits_resnet.safetensors",
                "--data", "digits")
    assert p.returncode == 0, p.stderr
    acc = float(p.stdout.split("accuracy ")[1].split(",")[0])
    assert acc >= 0.97, p.stdout
    assert os.path.getsize(ROOT / "specs" / "weights" / "digits_resnet.safetensors") <= 1 << 20


def test_init_command_and_checkpoint_checks(tmp_path):
    w = tmp_path / "w.safetensors"
    p = run_cli("init", "specs/cifar_resnet20_a.yaml", "-o", str(w), "--seed", "3")
    assert p.returncode == 0 and "269,722 parameters" in p.stdout
    tensors, meta = read_checkpoint(str(w))
    assert meta["untrained"] == "true" and meta["seed"] == "3"
    again = tmp_path / "again.safetensors"
    run_cli("init", "specs/cifar_resnet20_a.yaml", "-o", str(again), "--seed", "3")
    t2, _ = read_checkpoint(str(again))
    assert all(torch.equal(tensors[k], t2[k]) for k in tensors)
    # the same weights load into the module; weights of another spec are refused with the mismatches listed
    resgraph.to_torch(ROOT / "specs" / "cifar_resnet20_a.yaml", weights=str(w))
    with pytest.raises(resgraph.WeightsError) as info:
        resgraph.to_torch(ROOT / "specs" / "cifar_resnet32_a.yaml", weights=str(w))
    msg = info.value.message
    assert "does not fit the spec" in msg and "missing (" in msg and "layer1.3.conv1.weight" in msg
    p = run_cli("eval", "specs/cifar_resnet20_b.yaml", "--weights", str(w), "--data", "digits")
    assert p.returncode == 1 and "does not fit the spec" in p.stderr and "shape mismatch" not in p.stdout


def test_train_errors_are_clean(spec, tmp_path):
    """In process (the CLI's own error handling, exit code and stderr), as the subprocess tests above
    already show the command line itself."""
    def run(*args):
        p = run_inproc(*args)
        return p.returncode, p.stderr
    code, err = run("train", str(ROOT / "specs" / "residual_mlp.yaml"), "--data", "digits", "-o", str(tmp_path / "x"))
    assert code == 1 and "digits are [1, 8, 8] images" in err and "Traceback" not in err
    code, err = run("train", spec(SMALL.replace("out: 10", "out: 7")), "--data", "digits", "-o", str(tmp_path / "y"))
    assert code == 1 and "the data has 10 classes" in err
    code, err = run("train", spec(), "--data", str(tmp_path / "nowhere"))
    assert code == 1 and "no such data folder" in err
    code, err = run("train", spec(), "--data", "digits", "--resume", "-o", str(tmp_path / "fresh"))
    assert code == 1 and "nothing to resume" in err
    code, err = run("eval", spec(), "--weights", str(tmp_path / "missing.safetensors"), "--data", "digits")
    assert code == 1 and "no such checkpoint file" in err


def test_image_folder(tmp_path, spec):
    from PIL import Image
    rng = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c, level in (("dark", 40), ("light", 210)):
            d = tmp_path / "imgs" / split / c
            d.mkdir(parents=True)
            for i in range(12):
                noise = torch.randint(-30, 30, (12, 10), generator=rng)
                Image.fromarray((noise + level).clamp(0, 255).to(torch.uint8).numpy(), "L").save(d / f"{i}.png")
    text = ("resgraph: 1\nname: folders\ninput: {shape: [1, 8, 8]}\npreprocess: {resize: 9, crop: 8, mean: [0.5], std: [0.25]}\n"
            "labels: [dark, light]\nlayers:\n  - conv: {out: 4, kernel: 3}\n  - relu\n  - global_avgpool\n  - flatten\n"
            "  - linear: {out: 2}\n")
    rows = train(TrainConfig(spec=spec(text, "f.yaml"), data=str(tmp_path / "imgs"), out=str(tmp_path / "run"),
                             epochs=8, batch_size=8, progress=False, lr=0.05))
    assert rows[-1]["val_acc"] == 1.0


def test_cli_reports_the_folder_it_wrote_and_options(spec, tmp_path, monkeypatch):
    path = spec(SMALL.replace("name: digits_small", "name: othername"), "myfile.yaml")
    p = run_cli("train", path, "--data", "digits", "--epochs", "1", "--batch-size", "64", "--save-every", "0",
                "--no-nesterov", "--threads", "1", "--split-seed", "3", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "done: runs/othername" in p.stdout and (tmp_path / "runs" / "othername" / "last.safetensors").exists()
    assert not list((tmp_path / "runs" / "othername").glob("epoch-*.safetensors"))
