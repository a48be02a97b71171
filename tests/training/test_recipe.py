"""The training recipe of `resgraph train`: --freeze (frozen tensors bit-identical after an epoch),
weight decay by the op table, --accumulate (a larger batch), --clip-grad, --ema (evaluated, saved,
resumed), --augment (the training split only), TensorBoard logs, --amp-dtype, and --resume keeping
all of it. Real training on scikit-learn's digits with small specs, one thread."""
import csv
import math

import pytest

torch = pytest.importorskip("torch", reason="the torch extra is not installed")
pytest.importorskip("sklearn", reason="scikit-learn (digits) is not installed")
pytest.importorskip("torchvision", reason="torchvision (augmentation) is not installed")

from conftest import ROOT, run_cli  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import resgraph  # noqa: E402
from resgraph.errors import OptionError  # noqa: E402
from resgraph.training.loop import TrainConfig, train  # noqa: E402

DIGITS = str(ROOT / "specs" / "digits_resnet.yaml")
LINEAR = """resgraph: 1
name: digits_linear
input: {shape: [1, 8, 8]}
preprocess: {mean: [0.3], std: [0.38]}
layers:
  - flatten
  - linear: {id: fc, out: 10}
"""
KINDS = """resgraph: 1
name: kinds
input: {shape: [1, 8, 8]}
layers:
  - conv: {id: c1, out: 8, kernel: 3}
  - groupnorm: {id: gn, groups: 2}
  - prelu: {id: pr}
  - scale: {id: sc}
  - project: {id: pj, out: 16, stride: 2}
  - layernorm: {id: ln}
  - conv: {id: c2, out: 16, kernel: 3, bias: false}
  - bn: {id: b2}
  - global_avgpool
  - flatten
  - linear: {id: fc, out: 10}
"""


def _cfg(out, spec=DIGITS, **kw):
    base = dict(spec=str(spec), data="digits", out=str(out), epochs=1, threads=1, progress=False, tensorboard=False,
                save_every=0)
    return TrainConfig(**{**base, **kw})


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_freeze_keeps_frozen_layers_bit_identical(tmp_path):
    from resgraph.backends.torch import save_checkpoint
    start = tmp_path / "start.safetensors"
    save_checkpoint(resgraph.to_torch(DIGITS, seed=3), str(start), {"spec": "digits_resnet"})
    train(_cfg(tmp_path / "run", weights=str(start), freeze="conv1, bn1,layer1"))
    before, after = load_file(str(start)), load_file(str(tmp_path / "run" / "last.safetensors"))
    frozen = [k for k in before if k.split(".")[0] in ("conv1", "bn1", "layer1")]
    assert any(k.endswith("running_var") for k in frozen) and any(k.endswith("num_batches_tracked") for k in frozen)
    assert all(torch.equal(before[k], after[k]) for k in frozen), "weights and bn statistics unchanged, bit for bit"
    others = [k for k in before if k not in frozen and not k.endswith("num_batches_tracked")]
    assert others and all(not torch.equal(before[k], after[k]) for k in others)
    # frozen parameters have no optimizer state: one momentum buffer per trainable parameter
    state = load_file(str(tmp_path / "run" / "trainer.safetensors"))
    trainable = [k for k in others if not k.endswith(("running_mean", "running_var"))]
    assert sum(k.startswith("state.") for k in state) == len(trainable)


def test_freeze_refusals(tmp_path):
    for paths, message, hint in (("layer9", "no layer or block 'layer9'", "'layer1'?"),
                                 ("relu", "'relu' (relu) holds no parameters", "name layers or blocks"),
                                 ("conv1,bn1,layer1,layer2,layer3,fc", "nothing left to train", "freeze fewer")):
        with pytest.raises(OptionError) as e:
            train(_cfg(tmp_path / "x", freeze=paths))
        assert message in e.value.message and hint in e.value.hint and e.value.file == "--freeze"
    assert not (tmp_path / "x").exists(), "nothing written"
    p = run_cli("train", DIGITS, "--data", "digits", "-o", str(tmp_path / "y"), "--freeze", "layer1,layer2,layer3,"
                "conv1,bn1,fc")
    assert p.returncode == 1 and "--freeze: error: nothing left to train" in p.stderr and "Traceback" not in p.stderr


def test_weight_decay_groups_follow_the_op_table(write_spec):
    from resgraph.training.recipe import param_groups
    m = resgraph.to_torch(write_spec(KINDS))
    names = {id(p): n for n, p in m.named_parameters()}
    decayed, kept = ({names[id(p)] for p in g["params"]} for g in param_groups(m, 5e-4, wd_all=False))
    # norms (bn, groupnorm, layernorm, an explicit Ws's bn), a scale, a prelu slope, every bias: no decay
    assert kept == {"c1.bias", "gn.weight", "gn.bias", "pr.weight", "sc.weight", "pj.bn.weight", "pj.bn.bias",
                    "ln.weight", "ln.bias", "b2.weight", "b2.bias", "fc.bias"}
    assert decayed == {"c1.weight", "pj.conv.weight", "c2.weight", "fc.weight"}
    (one,) = param_groups(m, 5e-4, wd_all=True)
    assert len(one["params"]) == len(names) and one["weight_decay"] == 5e-4


def test_accumulation_is_a_larger_batch(write_spec, tmp_path):
    """Two micro-batches of 32 per step follow one batch of 64 (no bn: nothing depends on the split),
    with the schedule counting optimizer steps."""
    spec = write_spec(LINEAR)
    train(_cfg(tmp_path / "big", spec, batch_size=64, epochs=2))
    train(_cfg(tmp_path / "acc", spec, batch_size=32, accumulate=2, epochs=2))
    big, acc = (load_file(str(tmp_path / r / "last.safetensors")) for r in ("big", "acc"))
    assert all(torch.allclose(big[k], acc[k], atol=1e-6, rtol=1e-5) for k in big)
    assert [r["lr"] for r in _rows(tmp_path / "big" / "metrics.csv")] == \
        [r["lr"] for r in _rows(tmp_path / "acc" / "metrics.csv")]


def test_clip_grad_bounds_each_step(write_spec, tmp_path):
    spec = write_spec(LINEAR)
    start = resgraph.to_torch(spec, seed=0).state_dict()
    kw = dict(momentum=0.0, weight_decay=0.0, schedule="constant", lr=0.1)
    train(_cfg(tmp_path / "clip", spec, clip_grad=1e-3, **kw))
    train(_cfg(tmp_path / "free", spec, **kw))

    def moved(run):
        w = load_file(str(tmp_path / run / "last.safetensors"))
        return math.sqrt(sum(float((w[k] - start[k]).pow(2).sum()) for k in w))
    steps = 1438 // 64   # the digits' training split, batch 64
    assert moved("clip") <= steps * 0.1 * 1e-3 * (1 + 1e-4) < moved("free") / 10


def test_resume_keeps_the_recipe_and_is_exact(tmp_path):
    """Augmentation, EMA, accumulation and clipping given once: a run stopped after epoch 1 and resumed
    with no recipe flags ends bit-identical to an uninterrupted one, EMA included; another value for
    a kept flag is refused. The EMA is evaluated, saved and logged to TensorBoard beside the raw weights."""
    recipe = dict(augment="standard", ema=0.9, accumulate=2, clip_grad=5.0, epochs=2, batch_size=128)
    train(_cfg(tmp_path / "a", tensorboard=True, **recipe))

    def crash(row):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tmp_path / "b", on_epoch=crash, **recipe))
    train(_cfg(tmp_path / "b", epochs=2, batch_size=128, resume=True))   # not a recipe flag: given again
    for name in ("last", "ema-last", "ema-best"):
        a, b = (load_file(str(tmp_path / r / f"{name}.safetensors")) for r in "ab")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    # the EMA moved, and lags the raw weights
    init = resgraph.to_torch(DIGITS, seed=0).state_dict()
    ema, last = (load_file(str(tmp_path / "a" / f"{n}.safetensors")) for n in ("ema-last", "last"))
    assert not torch.equal(ema["fc.weight"], init["fc.weight"]) and not torch.equal(ema["fc.weight"], last["fc.weight"])
    ra, rb = _rows(tmp_path / "a" / "metrics.csv"), _rows(tmp_path / "b" / "metrics.csv")
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in ra] == \
           [{k: v for k, v in r.items() if k != "seconds"} for r in rb]
    with pytest.raises(OptionError) as e:
        train(_cfg(tmp_path / "b", epochs=3, batch_size=128, resume=True, ema=0.5))
    assert "trained with --ema 0.9, not --ema 0.5" in e.value.message and "leave out --ema" in e.value.hint
    # ema-best is the best EMA epoch; `resgraph eval` takes it and measures what train measured
    from resgraph.training.evaluate import evaluate_spec
    best = max(float(r["ema_val_acc"]) for r in ra)
    assert evaluate_spec(DIGITS, str(tmp_path / "a" / "ema-best.safetensors"), "digits")["accuracy"] == \
        pytest.approx(best, abs=1e-6)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path / "a" / "tensorboard")).Reload()
    assert {"loss/train", "accuracy/val", "accuracy/ema_val", "lr"} <= set(events.Tags()["scalars"])
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("accuracy/ema_val")] == \
        [(int(r["epoch"]), round(float(r["ema_val_acc"]), 4)) for r in ra]


def test_augment_changes_the_training_split_only(tmp_path):
    from torchvision.transforms import v2

    from resgraph.training.augment import augmented, transform
    from resgraph.training.data import load_data
    spec = resgraph.check(str(ROOT / "specs" / "cifar_resnet20_b.yaml")).spec
    data = load_data("digits", spec)
    # digits upscaled bilinearly to the [3, 32, 32] input, grey repeated over the channels
    assert data.train.images.shape[1:] == (3, 32, 32) and torch.equal(data.train.images[:, 0], data.train.images[:, 2])
    aug = augmented(data, "standard", True, spec)
    assert aug.val is data.val and aug.train is not data.train
    torch.manual_seed(0)
    draws = [aug.train[5][0] for _ in range(4)]
    assert all(d.shape == (3, 32, 32) for d in draws) and not all(torch.equal(draws[0], d) for d in draws[1:])
    assert torch.equal(aug.train[5][1], data.train[5][1])
    small, large = transform("standard", (3, 32, 32)), transform("trivialaugment", (3, 224, 224), flip=False)
    assert [type(t) for t in small.transforms] == [v2.RandomCrop, v2.RandomHorizontalFlip]
    assert small.transforms[0].padding == [4, 4, 4, 4]
    assert [type(t) for t in large.transforms] == [v2.RandomResizedCrop, v2.TrivialAugmentWide]


def test_augment_image_folders_decode_at_their_own_size(tmp_path, write_spec):
    from PIL import Image

    from resgraph.training.augment import augmented
    from resgraph.training.data import load_data
    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (60, 40), (40 * i, 80, 120)).save(tmp_path / "imgs" / c / f"{i}.png")
    (tmp_path / "imgs" / "a" / "bad.png").write_bytes(b"not a png")
    spec = resgraph.check(write_spec("resgraph: 1\nname: f\ninput: {shape: [3, 48, 48]}\npreprocess: {resize: 48, "
                                     "crop: 48, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}\nlayers:\n"
                                     "  - global_avgpool\n  - flatten\n  - linear: {out: 2}\n")).spec
    data = augmented(load_data(str(tmp_path / "imgs"), spec, 0.0, 0), "standard", True, spec)
    items = [data.train[i] for i in range(len(data.train))]
    good = [x for x, _ in items if x is not None]
    assert len(good) == 6 and all(x.shape == (3, 48, 48) for x in good)
    assert [y[0].endswith("bad.png") for x, y in items if x is None] == [True], "an unusable file is skipped"
    # a flat image stays flat through crops and flips: (80 / 255 - 0.5) / 0.25 in the green channel
    assert torch.allclose(good[0][1], torch.full((48, 48), (80 / 255 - 0.5) / 0.25), atol=1e-5)


def test_amp_dtype(write_spec, tmp_path):
    spec = write_spec(LINEAR)
    with pytest.raises(OptionError) as e:
        train(_cfg(tmp_path / "fp16", spec, device="cpu", amp=True, amp_dtype="fp16"))
    assert "fp16 autocast runs on CUDA only" in e.value.message and "bf16" in e.value.hint
    rows = train(_cfg(tmp_path / "bf16", spec, device="cpu", amp=True, amp_dtype="bf16"))
    assert rows[0]["val_acc"] > 0.5


def test_checkpointing_trains_the_same_weights(tmp_path, monkeypatch):
    """--checkpointing recomputes each block in backward: one epoch gives the same weights and bn
    statistics as without it, and the checkpoint loads into a plain module."""
    from resgraph.backends.torch import recompute
    calls = []
    real = recompute.checkpoint
    monkeypatch.setattr(recompute, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    train(_cfg(tmp_path / "plain"))
    assert not calls
    train(_cfg(tmp_path / "ckpt", checkpointing=True))
    assert calls   # the blocks ran under torch.utils.checkpoint
    a, b = load_file(str(tmp_path / "plain" / "last.safetensors")), load_file(str(tmp_path / "ckpt" / "last.safetensors"))
    assert a.keys() == b.keys()
    worst = max(((a[k].float() - b[k].float()).abs().max().item(), k) for k in a)
    assert worst[0] <= 1e-5, worst
    resgraph.to_torch(DIGITS, weights=str(tmp_path / "ckpt" / "last.safetensors"))
