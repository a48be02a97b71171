"""Shipped specs against published figures: torchvision's ResNets and He et al.'s CIFAR ResNets."""
import json

import pytest

import resgraph
from conftest import ROOT, SPECS, run_cli

# params = trainable parameters (bn affine included); MACs = conv + linear multiply-accumulates
IMAGENET = {
    "resnet18": (11_689_512, 1_814_073_344, 3),
    "resnet34": (21_797_672, 3_663_761_408, 3),
    "resnet50": (25_557_032, 4_089_184_256, 4),
    "resnet101": (44_549_160, 7_801_405_440, 4),
    "resnet152": (60_192_808, 11_513_626_624, 4),
}
CIFAR_A = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962}
CIFAR_B = {20: 272_474, 32: 466_906, 44: 661_338, 56: 855_770, 110: 1_730_714}


def check(name):
    return resgraph.check(str(ROOT / "specs" / f"{name}.yaml"))


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_resnets(name):
    params, macs, n_ws = IMAGENET[name]
    c = check(name)
    assert (c.params, c.macs) == (params, macs)
    assert c.graph.nodes[0].shape == (3, 224, 224) and c.graph[c.graph.output].shape == (1000,)
    # Ws where a stage changes shape: layer2..4 always, layer1 too for bottlenecks (64 -> 256 channels)
    ats = [p.at for p in c.graph.projections]
    assert len(ats) == n_ws and all(p.kind == "conv1x1" for p in c.graph.projections)
    assert ats[-3:] == ["layer2.0", "layer3.0", "layer4.0"]
    assert not c.warnings


def test_resnet18_projection_matches_contract_example():
    p = check("resnet18").graph.projections[0].to_json()
    assert p == {"at": "layer2.0", "kind": "conv1x1", "from": [64, 56, 56], "to": [128, 28, 28],
                 "stride": 2, "params": 8448}


def test_resnet50_layer1_projection_is_stride_1():
    p = check("resnet50").graph.projections[0]
    assert (p.at, p.from_shape, p.to_shape, p.stride) == ("layer1.0", (64, 56, 56), (256, 56, 56), 1)


def test_parameter_names_follow_torchvision():
    g = check("resnet50").graph
    paths = {n.path for n in g.nodes}
    for p in ("conv1", "bn1", "layer1.0.conv1", "layer1.0.bn3", "layer3.5.conv2", "layer4.2.bn3", "fc",
              "layer2.0.shortcut.conv", "layer2.0.shortcut.bn"):
        assert p in paths, p


@pytest.mark.parametrize("depth", CIFAR_A)
def test_cifar_option_a(depth):
    c = check(f"cifar_resnet{depth}_a")
    assert c.params == CIFAR_A[depth]
    assert [(p.at, p.kind, p.params) for p in c.graph.projections] == [("layer2.0", "zeropad", 0), ("layer3.0", "zeropad", 0)]
    assert c.graph[c.graph.output].shape == (10,)


@pytest.mark.parametrize("depth", CIFAR_B)
def test_cifar_option_b(depth):
    c = check(f"cifar_resnet{depth}_b")
    assert c.params == CIFAR_B[depth]
    assert [(p.at, p.kind, p.from_shape, p.to_shape, p.stride) for p in c.graph.projections] == [
        ("layer2.0", "conv1x1", (16, 32, 32), (32, 16, 16), 2), ("layer3.0", "conv1x1", (32, 16, 16), (64, 8, 8), 2)]


@pytest.mark.parametrize("depth", [20, 56])
def test_plain_counterparts(depth):
    plain, res = check(f"cifar_plain{depth}"), check(f"cifar_resnet{depth}_a")
    assert plain.params == res.params and plain.macs == res.macs   # option A adds no parameters
    assert not plain.graph.projections
    assert not any(n.op == "add" for n in plain.graph.nodes)
    assert sum(n.op == "add" for n in res.graph.nodes) == 3 * (depth - 2) // 6


def test_residual_mlp_ws_is_256_by_128():
    c = check("residual_mlp")
    (p,) = c.graph.projections
    assert (p.at, p.kind, p.from_shape, p.to_shape, p.params) == ("block", "linear", (128,), (256,), 256 * 128)
    ws = c.graph["block.shortcut"]
    assert ws.op == "linear" and ws.args["bias"] is False and ws.inserted


def test_every_shipped_spec_checks_and_is_listed():
    names = {p.stem for p in SPECS}
    want = set(IMAGENET) | {f"cifar_resnet{d}_{o}" for d in CIFAR_A for o in "ab"} | {
        "cifar_plain20", "cifar_plain56", "residual_mlp"}
    assert want <= names
    for p in SPECS:
        resgraph.check(str(p))


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_cli_json_matches_api(path):
    p = run_cli("check", str(path.relative_to(ROOT)), "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    c = resgraph.check(str(path))
    assert d == c.to_json()
    keys = {"name", "input", "output", "inputs", "outputs", "params", "macs", "projections", "warnings"}
    assert set(d) == keys | ({"valid_sizes", "macs_at"} if c.sizes is not None else set())
    # input and output: the first of each, in whole numbers (a sized spec's at macs_at)
    assert [d["input"]["name"], d["output"]["name"]] == [d["inputs"][0]["name"], d["outputs"][0]["name"]]
    assert all(isinstance(x, int) for x in d["input"]["shape"] + d["output"]["shape"])
    if c.sizes is None:
        assert d["inputs"][:1] == [d["input"]] and d["outputs"][:1] == [d["output"]]


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_schema_line_and_validity(path):
    jsonschema = pytest.importorskip("jsonschema")
    import yaml
    text = path.read_text()
    assert text.startswith("# yaml-language-server: $schema=../docs/resgraph.schema.json\n")
    schema = json.loads((ROOT / "docs" / "resgraph.schema.json").read_text())
    jsonschema.validate(yaml.safe_load(text), schema)


@pytest.mark.parametrize("doc,valid", [
    ({"resgraph": 1, "name": "t", "input": {"shape": [3, 8, 8]}, "layers": ["relu", {"conv": {"out": 4, "kernel": 3}}]}, True),
    ({"resgraph": 1, "name": "t", "input": {"shape": [3, 8, 8]}, "layers": [{"conv": {"out": "$w * 2", "kernel": 3}}]}, True),
    ({"resgraph": 1, "name": "t", "input": {"shape": [3, 8, 8]}, "layers": [{"basic": {"out": 4}}]}, True),
    ({"resgraph": 1, "name": "t", "input": {"shape": [3, 8, 8]}, "layers": [{"conv": {"out": 4, "kernal": 3}}]}, False),
    ({"resgraph": 1, "name": "t", "input": {"shape": [3, 8, 8]}, "layers": [{"conv": {"kernel": 3}}]}, False),
    ({"name": "t", "input": {"shape": [3, 8, 8]}, "layers": ["relu"]}, False),
    ({"resgraph": 1, "name": "t", "input": {"shape": [3, 8, 8]}, "layers": ["relu"], "shortcut": "zero_pad"}, False),
])
def test_schema_accepts_and_rejects(doc, valid):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "docs" / "resgraph.schema.json").read_text())
    assert jsonschema.Draft202012Validator(schema).is_valid(doc) is valid


# --- class names: `run` prints them, not indices ------------------------------------------------

IMAGENET_LABELS = ROOT / "specs" / "imagenet_classes.txt"
CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# shipped specs whose output names no classes, and why
UNLABELLED = {"residual_mlp": "a textbook residual block on 128 abstract features: no data set, no class names",
              "resnet50_backbone": "feature maps (C3-C5) for a detection neck: no classes"}


def imagenet_names():
    names = IMAGENET_LABELS.read_text(encoding="utf-8").splitlines()
    assert len(names) == len(set(names)) == 1000 and all(n and n == n.strip() for n in names), IMAGENET_LABELS
    return tuple(names)


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_every_classifier_spec_names_its_classes(path):
    c = resgraph.check(str(path))
    labels, shape = c.spec.labels, c.graph[c.graph.output].shape
    if path.stem in UNLABELLED:
        assert labels is None, f"{path.name} has labels now: take it out of UNLABELLED"
        return
    assert labels, (f"{path.name}: no labels, so `run` prints class indices; add `labels:` "
                    f"(a list, or a file beside the spec: labels: imagenet_classes.txt)")
    assert (len(labels),) == shape[:1] and len(shape) in (1, 3), \
        f"{path.name}: {len(labels)} labels for an output of shape {list(shape)}"   # classes, or per-pixel classes
    if shape == (1000,):
        assert labels == imagenet_names(), f"{path.name}: labels: imagenet_classes.txt, ImageNet's order"
    if path.stem.startswith("cifar_"):
        assert labels == CIFAR10, f"{path.name}: CIFAR-10's classes, in its order"


def test_the_imagenet_names_are_torchvisions_in_its_order():
    meta = pytest.importorskip("torchvision.models._meta",
                               reason="torchvision is not installed: nothing to compare the ImageNet names with")
    assert imagenet_names() == tuple(meta._IMAGENET_CATEGORIES)


def test_a_compiled_imagenet_folder_carries_the_names_and_run_prints_them(tmp_path):
    pytest.importorskip("onnxruntime")
    from PIL import Image

    from resgraph.compile import compile_spec
    from resgraph.manifest import read_manifest
    out = tmp_path / "mobilenet_v3_small"
    compile_spec(str(ROOT / "specs" / "mobilenet_v3_small.yaml"), out=str(out))
    assert read_manifest(str(out)).labels == imagenet_names()
    Image.new("RGB", (256, 256), (200, 40, 40)).save(tmp_path / "red.png")
    p = run_cli("run", str(out), str(tmp_path / "red.png"), "--top-k", "1", "--json")
    assert p.returncode == 0, p.stderr
    (top,) = json.loads(p.stdout)["top"]
    assert top["label"] == imagenet_names()[top["index"]], top
    p = run_cli("run", str(out), str(tmp_path / "red.png"), "--top-k", "1")
    assert top["label"] in p.stdout, p.stdout
