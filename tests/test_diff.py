"""`resgraph diff`: six pairs of specs compared, their deltas checked against `check`'s own counts
and against the arithmetic of the layers that changed; weights carried over for network surgery
(unchanged layers bit for bit, the rest initialised by B's init:, an unchanged prefix computing the
same); bad input refused with nothing written."""
import json
import re

import pytest
from conftest import ROOT, run_cli

import resgraph
import resgraph.weights
from resgraph.diff import diff_files
from resgraph.errors import SpecError, WeightsError

SPECS = ROOT / "specs"
R18 = re.sub(r"(?m)^labels:.*\n", "", (SPECS / "resnet18.yaml").read_text())   # no labels file beside the copies


@pytest.fixture
def variants(tmp_path):
    """resnet18 and three surgeries on it: layer3 widened 256 -> 384, one more block in layer3, the
    head swapped for 10 classes; and a resnet18 on a smaller input."""
    out = {}
    for name, text in {"r18": R18, "wide": R18.replace("layer3, out: 256", "layer3, out: 384"),
                       "deeper": R18.replace("layer3, out: 256, repeat: 2", "layer3, out: 256, repeat: 3"),
                       "head": R18.replace("linear: {id: fc, out: 1000}", "linear: {id: fc, out: 10}"),
                       "small": R18.replace("[3, 224, 224]", "[3, 160, 160]").replace("crop: 224", "crop: 160")}.items():
        p = tmp_path / f"{name}.yaml"
        p.write_text(text)
        out[name] = str(p)
    return out


def _diff(a, b, depth=None):
    """The diff, with its totals checked against check's of each spec and the listed deltas summed."""
    d = diff_files(a, b, depth)
    ca, cb = resgraph.check(a), resgraph.check(b)
    assert d.params == (ca.params, cb.params) and d.macs == (ca.macs, cb.macs)
    assert sum(e.params_delta for e in d.entries) == cb.params - ca.params
    assert sum(e.macs_delta for e in d.entries) == cb.macs - ca.macs
    return d, {e.path: e for e in d.entries}


def conv(cin, cout, k=3):
    return cin * cout * k * k


def test_resnet34_to_resnet50():
    d, e = _diff(str(SPECS / "resnet34.yaml"), str(SPECS / "resnet50.yaml"))
    blocks = [f"layer{s}.{i}" for s, n in zip((1, 2, 3, 4), (3, 4, 6, 3)) for i in range(n)]
    assert list(e) == blocks + ["avgpool", "flatten1", "fc"] and d.unchanged == 4   # conv1 bn1 relu maxpool alike
    assert all(x.status == "changed" for x in d.entries)
    assert [w.status for w in e["layer1.0"].ws] == ["appears"]        # 64 -> 256 channels: a Ws at layer1.0
    assert e["layer1.0"].ws[0].b.params == conv(64, 256, 1) + 2 * 256
    assert [w.status for b in ("layer2.0", "layer3.0", "layer4.0") for w in e[b].ws] == ["changes"] * 3
    assert e["fc"].params == (512 * 1000 + 1000, 2048 * 1000 + 1000)
    assert e["layer1.0"].shape_a == (64, 56, 56) and e["layer1.0"].shape_b == (256, 56, 56)
    changed = {n.path: n for n in e["layer2.0"].nodes}
    assert changed["layer2.0.conv1"].reasons[:2] == ("kernel 3 -> 1", "stride 2 -> 1")
    assert changed["layer2.0.conv3"].status == "added"


def test_resnet18_to_resnet34_adds_whole_blocks():
    _, e = _diff(str(SPECS / "resnet18.yaml"), str(SPECS / "resnet34.yaml"))
    added = ["layer1.2", "layer2.2", "layer2.3", "layer3.2", "layer3.3", "layer3.4", "layer3.5", "layer4.2"]
    assert list(e) == added and all(e[b].status == "added" for b in added)   # the rewired edges are not changes
    for b in added:
        c = (64, 128, 256, 512)[int(b[5]) - 1]
        assert e[b].params_delta == 2 * conv(c, c) + 4 * c and e[b].size == (0, 7)
        assert e[b].shape_a is None and e[b].shape_b[0] == c


def test_cifar_zeropad_to_projection_ws():
    _, e = _diff(str(SPECS / "cifar_resnet20_a.yaml"), str(SPECS / "cifar_resnet20_b.yaml"))
    assert list(e) == ["layer2.0", "layer3.0"]
    for b, (cin, cout) in zip(e, ((16, 32), (32, 64))):
        (w,) = e[b].ws
        assert (w.status, w.a.kind, w.b.kind) == ("changes", "zeropad", "conv1x1")
        assert e[b].params_delta == conv(cin, cout, 1) + 2 * cout == w.b.params
        assert {(n.path, n.status) for n in e[b].nodes} == {
            (f"{b}.shortcut", "removed"), (f"{b}.shortcut.conv", "added"), (f"{b}.shortcut.bn", "added")}


def test_widened_stage(variants):
    _, e = _diff(variants["r18"], variants["wide"])
    assert list(e) == ["layer3.0", "layer3.1", "layer4.0"]
    assert e["layer3.1"].params_delta == 2 * (conv(384, 384) - conv(256, 256)) + 4 * (384 - 256)
    assert e["layer3.1"].macs_delta == 2 * (conv(384, 384) - conv(256, 256)) * 14 * 14
    assert e["layer4.0"].params_delta == conv(384, 512) - conv(256, 512) + conv(384, 512, 1) - conv(256, 512, 1)
    assert [(w.at, w.a.to_shape, w.b.to_shape) for w in e["layer3.0"].ws] == [("layer3.0", (256, 14, 14), (384, 14, 14))]
    assert [w.b.from_shape for w in e["layer4.0"].ws] == [(384, 14, 14)]
    assert {n.path: n.reasons for n in e["layer3.1"].nodes}["layer3.1.conv1"][0] == "out 256 -> 384"


def test_added_block_and_depth(variants):
    _, e = _diff(variants["r18"], variants["deeper"])
    assert list(e) == ["layer3.2"] and e["layer3.2"].status == "added"
    assert e["layer3.2"].params_delta == 2 * conv(256, 256) + 4 * 256
    assert e["layer3.2"].macs_delta == 2 * conv(256, 256) * 14 * 14
    _, e1 = _diff(variants["r18"], variants["deeper"], depth=1)   # a stage as one unit
    assert list(e1) == ["layer3"] and e1["layer3"].status == "changed" and e1["layer3"].size == (16, 23)   # two blocks and a Ws; one more block


def test_swapped_head(variants):
    _, e = _diff(variants["r18"], variants["head"])
    assert list(e) == ["fc"] and e["fc"].nodes[0].reasons == ("out 1000 -> 10",)
    assert e["fc"].params == (512 * 1000 + 1000, 512 * 10 + 10) and e["fc"].shape_b == (10,)


def test_cli_text_and_json(variants):
    p = run_cli("diff", str(SPECS / "resnet34.yaml"), str(SPECS / "resnet50.yaml"))
    assert p.returncode == 0, p.stderr
    assert "19 blocks or layers differ, 4 alike" in p.stdout
    assert re.search(r"\+ Ws +appears: conv1x1 \+ bn +\[64, 56, 56\] -> \[256, 56, 56\]", p.stdout)
    assert "Params: 21,797,672 -> 25,557,032 (+3,759,360)" in p.stdout
    j = json.loads(run_cli("diff", variants["r18"], variants["head"], "--json").stdout)
    assert j["totals"]["params_delta"] == -507870 and [x["path"] for x in j["entries"]] == ["fc"]


def _carry(variants, tmp_path, b, seed=0):
    from resgraph.carry import carry_weights
    from resgraph.weights import init_file
    wa = tmp_path / "wa.safetensors"
    init_file(variants["r18"], str(wa), seed=1)
    wb = tmp_path / f"{b}.safetensors"
    r = carry_weights(resgraph.check(variants["r18"]), resgraph.check(variants[b]), str(wa), str(wb), seed)
    return wa, wb, r


def test_carry_widened_stage(variants, tmp_path):
    import torch
    from safetensors.torch import load_file

    from resgraph.weights import init_file
    wa, wb, r = _carry(variants, tmp_path, "wide")
    init = [x["layer"] for x in r["initialised"]]
    assert init == [f"layer3.{i}.{n}" for i, ns in ((0, ("conv1", "bn1", "conv2", "bn2", "shortcut.conv", "shortcut.bn")),
                                                    (1, ("conv1", "bn1", "conv2", "bn2"))) for n in ns] \
        + ["layer4.0.conv1", "layer4.0.shortcut.conv"]
    A, B = load_file(str(wa)), load_file(str(wb))
    fresh = tmp_path / "fresh.safetensors"
    init_file(variants["wide"], str(fresh), seed=0)
    F = load_file(str(fresh))
    copied = [k for k in B if k.rsplit(".", 1)[0] not in init]
    assert len(copied) == r["tensors_copied"] == 90
    assert [k for k in copied if not (torch.equal(A[k], B[k]) and A[k].dtype == B[k].dtype)] == []   # bit for bit
    assert all(torch.equal(F[k], B[k]) for k in B if k not in copied)                   # B's init:, seed 0
    assert r["params_copied"] + r["params_initialised"] == resgraph.check(variants["wide"]).params
    # the prefix before layer3 is unchanged: its output (what layer3.0.conv1 reads) is the same
    seen = {}
    for name, weights in (("r18", wa), ("wide", wb)):
        m = resgraph.to_torch(variants[name], weights=str(weights)).eval()
        m.get_submodule("layer3.0.conv1").register_forward_pre_hook(lambda mod, args, name=name: seen.update({name: args[0]}))
        with torch.no_grad():
            m(torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)))
    assert seen["r18"].shape == (2, 128, 28, 28) and torch.equal(seen["r18"], seen["wide"])


def test_carry_added_block_and_head_cli(variants, tmp_path):
    wa, _, r = _carry(variants, tmp_path, "deeper")
    assert [x["layer"] for x in r["initialised"]] == [f"layer3.2.{n}" for n in ("conv1", "bn1", "conv2", "bn2")]
    assert all(x["reason"] == "new layer" for x in r["initialised"])
    out = tmp_path / "head.safetensors"
    p = run_cli("diff", variants["r18"], variants["head"], "--carry-weights", str(wa), "-o", str(out), "--seed", "3")
    assert p.returncode == 0, p.stderr
    assert "120 tensors (40 layers, 11,176,512 params) copied" in p.stdout and "2 (1 layer, 5,130 params) initialised by B's init: (seed 3)" in p.stdout
    assert "initialised fc: weight [1000, 512] -> [10, 512]" in p.stdout
    assert out.exists()


def test_broken_b_names_the_first_broken_edge(tmp_path, variants):
    a = tmp_path / "a.yaml"
    a.write_text(R18.replace("shortcut: projection ", "shortcut: error ").replace("first: {stride: 2}", "")
                 .replace("out: 128", "out: 64").replace("out: 256", "out: 64").replace("out: 512", "out: 64"))
    b = tmp_path / "b.yaml"    # the stem widened: the add of layer1.0 (shortcut: error) breaks downstream
    b.write_text(a.read_text().replace("id: conv1, out: 64", "id: conv1, out: 96"))
    resgraph.check(str(a))
    with pytest.raises(SpecError) as e:
        diff_files(str(a), str(b))
    (d,) = e.value.diagnostics
    assert d.loc.file == str(b) and d.loc.line == 14   # the residual: line of basic's block
    assert "B does not check" in d.message and "the add at 'layer1.0'" in d.message and "[96, 56, 56]" in d.message
    wa = tmp_path / "wa.safetensors"
    resgraph.weights.init_file(str(a), str(wa))
    out = tmp_path / "wb.safetensors"
    p = run_cli("diff", str(a), str(b), "--carry-weights", str(wa), "-o", str(out))
    assert p.returncode == 1 and f"{b}:14:5: error: B does not check" in p.stderr and "Traceback" not in p.stderr
    assert not out.exists()


def test_different_inputs_and_unfit_weights_write_nothing(variants, tmp_path):
    with pytest.raises(SpecError, match=r"B's input \(image \[3, 160, 160\]\) differs from A's \(image \[3, 224, 224\]"):
        diff_files(variants["r18"], variants["small"])
    wa = tmp_path / "wa.safetensors"
    resgraph.weights.init_file(variants["r18"], str(wa))
    out = tmp_path / "wb.safetensors"
    p = run_cli("diff", variants["r18"], variants["small"], "--carry-weights", str(wa), "-o", str(out))
    assert p.returncode == 1 and "small.yaml:5:29: error: B's input" in p.stderr and not out.exists()
    wide_w = tmp_path / "wide_w.safetensors"     # weights of another spec given as A's
    resgraph.weights.init_file(variants["wide"], str(wide_w))
    from resgraph.carry import carry_weights
    with pytest.raises(WeightsError, match="does not fit the spec: shape mismatch"):
        carry_weights(resgraph.check(variants["r18"]), resgraph.check(variants["head"]), str(wide_w), str(out))
    p = run_cli("diff", variants["r18"], variants["head"], "--carry-weights", str(wide_w), "-o", str(out))
    assert p.returncode == 1 and "does not fit the spec" in p.stderr and not out.exists()
    p = run_cli("diff", variants["r18"], variants["head"], "-o", str(out))
    assert p.returncode == 1 and "--output: error" in p.stderr and not out.exists()


def test_diff_without_weights_stays_torch_free():
    import subprocess
    import sys
    code = ("import sys; from click.testing import CliRunner; from resgraph.cli import cli; "
            "r = CliRunner().invoke(cli, ['diff', 'specs/resnet18.yaml', 'specs/resnet34.yaml']); "
            "assert r.exit_code == 0, r.output; "
            "print([m for m in ('torch', 'numpy', 'onnx', 'safetensors') if m in sys.modules])")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stdout + p.stderr
