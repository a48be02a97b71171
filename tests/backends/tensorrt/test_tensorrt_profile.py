"""An engine's optimisation profile without TensorRT: --shapes and trtexec's --min-shapes/--opt-shapes/
--max-shapes parsed, resolved against a model's inputs and valid sizes (the real front end's), recorded
in engine.json and checked against the model when an engine is opened, a request outside it refused,
the points the parity gate runs, ONNX Runtime's TensorRT provider options, and the commands' errors.
(Building and running such engines: test_tensorrt_gpu.py, where TensorRT and a GPU exist.)"""
from __future__ import annotations

import json
import os
import shutil

import pytest

from conftest import run_cli
from resgraph.backends.tensorrt.engine_json import EngineInfo, TensorSpec, io_mismatches, read_engine_info
from resgraph.backends.tensorrt.options import BatchProfile, BuildOptions, from_flags
from resgraph.backends.tensorrt.profile import (ShapeProfile, outside, parse_shapes, parse_trtexec, resolve)
from resgraph.errors import ArtifactError, OptionError

# two inputs sharing the size variables H and W, two outputs; the transposed convolution's join with
# the full-size branch takes even sizes only (check: multiples of 2 from 8 to 64)
TWO_STREAM = """\
resgraph: 1
name: two_stream
inputs:
  - {name: image, shape: [3, H, W]}
  - {name: mask, shape: [1, H, W]}
sizes: {H: {min: 8, max: 64}, W: {min: 8, max: 64}}
outputs:
  - {name: fused, from: s}
  - {name: emb, from: head}
layers:
  - conv: {out: 8, kernel: 3, id: a}
  - conv: {out: 8, kernel: 3, stride: 2, in: mask}
  - conv_transpose: {out: 8, kernel: 2, stride: 2}
  - add: {from: [a], id: s}
  - global_avgpool
  - flatten: {id: head}
"""


@pytest.fixture(scope="module")
def two_stream(tmp_path_factory):
    """The model's inputs and size ranges as compile records them (the real front end's valid sizes)."""
    from resgraph.compile import io_infos, size_ranges
    from resgraph.frontend import check_file
    path = tmp_path_factory.mktemp("spec") / "two_stream.yaml"
    path.write_text(TWO_STREAM)
    c = check_file(str(path))
    return io_infos(c)[0], size_ranges(c), str(path)


@pytest.fixture(scope="module")
def two_stream_folder(two_stream, tmp_path_factory):
    from resgraph.compile import compile_spec
    out = tmp_path_factory.mktemp("compiled") / "two_stream"
    compile_spec(two_stream[2], out=str(out))
    return out


def _opts(shapes: str | None = None, batch: str | None = None, **trtexec) -> BuildOptions:
    return from_flags(None, batch, None, None, None, False, None, None, shapes=shapes, **trtexec)


# --- parsing ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, want", [
    ("image:1x3x224x224:8x3x512x512:32x3x1024x1024", [("image", (1, 3, 224, 224), (8, 3, 512, 512), (32, 3, 1024, 1024))]),
    ("image:8x3x64x64", [("image", (8, 3, 64, 64), (8, 3, 64, 64), (8, 3, 64, 64))]),      # trtexec's --shapes: fixed
    ("image:1x3x32x32:4x3x64x64", [("image", (1, 3, 32, 32), (4, 3, 64, 64), (4, 3, 64, 64))]),   # MIN:MAX: opt = max
    ("image:1x3x8x8:2x3x16x16:4x3x32x32, mask:1x1x8x8:2x1x16x16:4x1x32x32",
     [("image", (1, 3, 8, 8), (2, 3, 16, 16), (4, 3, 32, 32)), ("mask", (1, 1, 8, 8), (2, 1, 16, 16), (4, 1, 32, 32))]),
])
def test_shapes_forms(text, want):
    got = parse_shapes(text)
    assert [(p.name, p.min, p.opt, p.max) for p in got] == want
    assert parse_shapes(",".join(map(str, got))) == got        # str() is what --shapes takes


@pytest.mark.parametrize("text, says", [
    ("image:1x3x8", None), ("image", "is not NAME:SHAPE"), ("image:", "is not NAME:SHAPE"),
    ("image:1x3xHx8", "'1x3xHx8' is not a shape"), ("image:0x3x8x8", "is not a shape"),
    ("image:2x3x8x8:1x3x8x8", "MIN <= OPT <= MAX"), ("image:1x3x8x8:1x3x8", "different numbers of dims"),
    ("image:1x3x8x8:1x3x8x8:1x3x8x8:1x3x8x8", "4 shapes"), ("image:1x3x8x8,image:1x3x8x8", "given twice"),
    ("image:1x3x8x8:1x3x8x8:100000x3x8x8", "is not a profile"), ("image:1x3x8x8x8x8", "is not a profile"),
])
def test_shapes_errors_name_the_option_and_the_form(text, says):
    if says is None:      # a rank-3 shape parses; the model's rank is checked by resolve (below)
        assert parse_shapes(text)[0].min == (1, 3, 8)
        return
    with pytest.raises(OptionError) as e:
        parse_shapes(text)
    assert e.value.file == "--shapes" and says in e.value.message, e.value.message


@pytest.mark.parametrize("given, want, sources", [
    (("1x3x8x8", "2x3x16x16", "4x3x32x32"), "1x3x8x8:2x3x16x16:4x3x32x32", "min opt max"),
    # a point not given, as trtexec's processShapes fills it: MIN from OPT, else MAX; OPT from MAX,
    # else MIN; MAX from OPT, else MIN (a problem with it is shown at the option it came from)
    ((None, "2x3x16x16", None), "2x3x16x16:2x3x16x16:2x3x16x16", "opt opt opt"),
    (("1x3x8x8", None, "4x3x32x32"), "1x3x8x8:4x3x32x32:4x3x32x32", "min max max"),
    (("1x3x8x8", "2x3x16x16", None), "1x3x8x8:2x3x16x16:2x3x16x16", "min opt opt"),
    ((None, "2x3x16x16", "4x3x32x32"), "2x3x16x16:2x3x16x16:4x3x32x32", "opt opt max"),
    (("1x3x8x8", None, None), "1x3x8x8:1x3x8x8:1x3x8x8", "min min min"),
    ((None, None, "4x3x32x32"), "4x3x32x32:4x3x32x32:4x3x32x32", "max max max"),
])
def test_trtexecs_three_options_as_trtexec_takes_them(given, want, sources):
    got, came = parse_trtexec(*(None if g is None else f"image:{g},mask:{g.replace('x3x', 'x1x', 1)}" for g in given))
    assert [str(p) for p in got] == [f"image:{want}", "mask:" + ":".join(s.replace("x3x", "x1x", 1)
                                                                         for s in want.split(":"))]
    assert came == tuple(f"--{p}-shapes" for p in sources.split())


@pytest.mark.parametrize("args, where, says", [
    (("image:1x3x8x8", "image:2x3x8x8,mask:2x1x8x8", "image:4x3x8x8"), "--min-shapes", "input 'mask' has no shape here"),
    ((None, "image:1x3x8x8:2x3x8x8", None), "--opt-shapes", "one shape per input"),
    (("image:1x3x8x8", "image:2x3x8x8", "image:1x3x8x8"), "--opt-shapes", "MIN <= OPT <= MAX"),
    (("image:1x3x8x8", None, "image:1x3x8"), "--max-shapes", "different numbers of dims"),
    (("image:1x3x8x8", None, "image:4x3x8xW"), "--max-shapes", "'4x3x8xW' is not a shape"),
])
def test_trtexecs_three_options_errors(args, where, says):
    with pytest.raises(OptionError) as e:
        parse_trtexec(*args)
    assert (e.value.file, says in e.value.message) == (where, True), (e.value.file, e.value.message)


def test_the_batch_comes_from_the_shapes_or_from_batch_never_two():
    o = _opts("image:1x3x8x8:2x3x16x16:4x3x32x32")
    assert o.batch == BatchProfile(1, 2, 4) and o.command_flags() == "--precision fp32 --shapes image:1x3x8x8:2x3x16x16:4x3x32x32"
    assert _opts("image:1x3x8x8:2x3x16x16:4x3x32x32", batch="1:2:4").batch == BatchProfile(1, 2, 4)
    for kw, where, says in [({"shapes": "image:1x3x8x8:4x3x8x8", "batch": "1:32:32"}, "--batch", "--batch 1:32:32, but "
                             "the shapes give the batch 1:4:4"),
                            ({"shapes": "image:1x3x8x8,mask:2x1x8x8"}, "--shapes", "the inputs' batches differ"),
                            ({"shapes": "image:1x3x8x8", "opt_shapes": "image:1x3x8x8"}, "--shapes", "together")]:
        with pytest.raises(OptionError) as e:
            _opts(**kw)
        assert e.value.file == where and says in e.value.message, e.value.message
    # rebuilding with --batch alone keeps the recorded shapes, at the new batch
    base = _opts("image:1x3x8x8:2x3x16x16:4x3x32x32")
    again = from_flags(None, "2:8:16", None, None, None, False, None, None, base=base)
    assert [str(p) for p in again.shapes] == ["image:2x3x8x8:8x3x16x16:16x3x32x32"] and again.batch == BatchProfile(2, 8, 16)
    assert from_flags(None, None, None, None, None, False, None, None, base=base) == base


def test_options_with_shapes_round_trip_and_reproduce_their_command():
    o = _opts("image:1x3x8x8:2x3x16x16:4x3x32x32,mask:1x1x8x8:2x1x16x16:4x1x32x32")
    assert BuildOptions.from_json(json.loads(json.dumps(o.to_json()))) == o
    words = o.command_flags().split()
    assert words[2] == "--shapes" and _opts(words[3]) == o
    with pytest.raises(OptionError, match="the batch profile is 1:32:32, but image"):
        BuildOptions(shapes=o.shapes)          # a record whose batch is not its shapes' (a forged engine.json)


# --- against the model -----------------------------------------------------------------------------

def test_inputs_not_named_take_the_batch_the_fixed_dims_and_the_whole_valid_range(two_stream):
    inputs, sizes, _ = two_stream
    assert sizes["H"].valid[:3] == (8, 10, 12) and sizes["H"].valid[-1] == 64      # the front end's: even sizes
    got = resolve(BuildOptions(), inputs, sizes)
    assert [str(p) for p in got] == ["image:1x3x8x8:32x3x64x64:32x3x64x64", "mask:1x1x8x8:32x1x64x64:32x1x64x64"]
    # one input named: the other follows it in H and W (one size variable, one value per point)
    got = resolve(_opts("image:1x3x16x32:2x3x32x32:4x3x48x64"), inputs, sizes)
    assert [str(p) for p in got] == ["image:1x3x16x32:2x3x32x32:4x3x48x64", "mask:1x1x16x32:2x1x32x32:4x1x48x64"]


@pytest.mark.parametrize("options, where, says, hint", [
    (dict(shapes="image:1x3x8x8:2x3x16x16:4x3x63x64"), "--shapes",
     "image: H = 63 at MAX is not a size the model takes (multiples of 2 from 8 to 64)", "62 or 64"),
    (dict(min_shapes="image:1x3x7x8", opt_shapes="image:2x3x16x16", max_shapes="image:4x3x32x32"), "--min-shapes",
     "image: H = 7 at MIN is not a size the model takes", "nearest valid sizes are 8"),
    (dict(min_shapes="image:1x3x8x8", opt_shapes="image:2x3x16x16", max_shapes="image:4x3x32x66"), "--max-shapes",
     "W = 66 at MAX", "64"),
    (dict(shapes="image:1x1x8x8:2x1x16x16:4x1x32x32"), "--shapes", "image: dim 1 is 3 in the model", "give 3"),
    (dict(shapes="image:1x3x8:2x3x16:4x3x32"), "--shapes", "3 dims given (1x3x8), but the model's input is [N, 3, H, W]",
     "N x 3 x H x W"),
    (dict(shapes="imag:1x3x8x8"), "--shapes", "'imag' is not an input of the model (it takes image, mask)",
     "did you mean 'image'?"),
    (dict(shapes="image:1x3x8x8:2x3x16x16:4x3x32x32,mask:1x1x8x8:2x1x16x16:4x1x16x16"), "--shapes",
     "H is 8:16:16 (MIN:OPT:MAX) for mask but 8:16:32 for image", "same MIN, OPT and MAX in every input"),
])
def test_a_profile_the_model_cannot_take_is_refused_at_its_option(two_stream, options, where, says, hint):
    inputs, sizes, _ = two_stream
    with pytest.raises(OptionError) as e:
        resolve(_opts(**options), inputs, sizes)
    assert (e.value.file, says in e.value.message, hint in e.value.hint) == (where, True, True), \
        (e.value.file, e.value.message, e.value.hint)


def test_a_fixed_model_takes_its_own_dims_only(digits_folder):
    from resgraph.manifest import read_manifest
    m = read_manifest(str(digits_folder))
    assert [str(p) for p in resolve(BuildOptions(batch=BatchProfile(2, 8, 32)), m.inputs, m.sizes)] == \
        ["image:2x1x8x8:8x1x8x8:32x1x8x8"]
    with pytest.raises(OptionError, match="image: dim 2 is 8 in the model"):
        resolve(_opts("image:1x1x8x8:2x1x16x16:4x1x16x16"), m.inputs, m.sizes)


# --- engine.json and opening ------------------------------------------------------------------------

def _info(two_stream, options: BuildOptions, **kw) -> EngineInfo:
    inputs, sizes, _ = two_stream
    d = dict(tensorrt_version="10.16.1.11", gpu_name="NVIDIA H200", compute_capability="9.0", options=options,
             strongly_typed=True, inputs=(TensorSpec("image", (-1, 3, -1, -1), "float32"),
                                          TensorSpec("mask", (-1, 1, -1, -1), "float32")),
             outputs=(TensorSpec("fused", (-1, 8, -1, -1), "float32"), TensorSpec("emb", (-1, 8), "float32")),
             profile=resolve(options, inputs, sizes), onnx_sha256="a" * 64, engine_sha256="b" * 64,
             engine_bytes=1000, build_seconds=1.5, built_at="2026-12-01T01:00:00+00:00", resgraph_version="0.2.0")
    d.update(kw)
    return EngineInfo(**d)


def test_engine_json_records_every_inputs_profile_and_reads_it_back(two_stream):
    info = _info(two_stream, _opts("image:1x3x8x8:2x3x16x16:4x3x32x32"))
    d = json.loads(json.dumps(info.to_json()))
    assert EngineInfo.from_json(d, "engine.json") == info and d["format"] == 2
    assert d["profile"] == {"batch": [1, 2, 4], "inputs": [
        {"name": "image", "min": [1, 3, 8, 8], "opt": [2, 3, 16, 16], "max": [4, 3, 32, 32]},
        {"name": "mask", "min": [1, 1, 8, 8], "opt": [2, 1, 16, 16], "max": [4, 1, 32, 32]}]}
    assert d["build"]["shapes"] == [d["profile"]["inputs"][0]]      # what was asked for; the profile: what was built


def test_a_format_1_engine_json_is_read_with_its_batch_profile():
    from test_tensorrt import _info as fixed_info
    d = fixed_info().to_json()
    d["format"], d["profile"] = 1, {"batch": d["profile"]["batch"]}
    del d["build"]["shapes"]
    info = EngineInfo.from_json(d, "engine.json")
    assert [str(p) for p in info.profile] == ["input:1x3x224x224:32x3x224x224:256x3x224x224"]


@pytest.mark.parametrize("change, says", [
    (lambda d: d["profile"]["inputs"][0].update(min=[4, 3, 8, 8]), "is not a profile"),          # MIN > OPT
    (lambda d: d["profile"]["inputs"][0].update(max=[4, 3, 8, 8.5]), "is not a profile"),
    (lambda d: d["profile"]["inputs"][0].update(min=[2, 3, 8, 8], opt=[2, 3, 16, 16]), "is not the batch profile"),
    (lambda d: d["profile"].pop("inputs"), "KeyError"),
])
def test_a_forged_profile_is_a_damaged_engine_json(two_stream, change, says):
    d = _info(two_stream, _opts("image:1x3x8x8:2x3x16x16:4x3x32x32")).to_json()
    change(d)
    with pytest.raises(ArtifactError) as e:
        EngineInfo.from_json(d, "x/engine.json")
    assert "a damaged engine.json" in e.value.message and says in e.value.message, e.value.message


def test_opening_checks_the_recorded_io_and_profile_against_the_model(two_stream, two_stream_folder):
    from resgraph.manifest import read_manifest
    m = read_manifest(str(two_stream_folder))
    info = _info(two_stream, _opts("image:1x3x8x8:2x3x16x16:4x3x32x32"))
    assert io_mismatches(info, m) == []
    renamed = _info(two_stream, info.options, outputs=(TensorSpec("fused", (-1, 8, -1, -1), "float32"),
                                                       TensorSpec("embedding", (-1, 8), "float32")))
    assert io_mismatches(renamed, m) == [("outputs", "the engine's outputs are fused, embedding, the manifest's fused, emb")]
    half = _info(two_stream, info.options, inputs=(TensorSpec("image", (-1, 3, -1, -1), "float16"), info.inputs[1]))
    assert [w for w, _ in io_mismatches(half, m)] == ["image"]
    odd = ShapeProfile("image", (1, 3, 8, 8), (2, 3, 16, 16), (4, 3, 33, 32))
    found = io_mismatches(_info(two_stream, info.options, profile=(odd, info.profile[1])), m)
    assert found == [("image", "image: H = 33 at MAX is not a size the model takes (multiples of 2 from 8 to 64)")]
    assert [w for w, _ in io_mismatches(_info(two_stream, info.options, profile=info.profile[:1]), m)] == ["mask"]
    split = ShapeProfile("mask", (1, 1, 8, 8), (2, 1, 16, 16), (4, 1, 16, 32))
    assert [w for w, _ in io_mismatches(_info(two_stream, info.options, profile=(info.profile[0], split)), m)] == ["mask"]


def test_an_engine_json_that_does_not_fit_the_folder_is_refused_before_tensorrt(two_stream, two_stream_folder, tmp_path):
    """check_io, as the tensorrt back end runs it at open (after the machine checks, which need TensorRT)."""
    from resgraph.backends.tensorrt.engine_json import EngineMismatch, check_io
    from resgraph.manifest import read_manifest
    folder = tmp_path / "f"
    shutil.copytree(two_stream_folder, folder)
    odd = ShapeProfile("image", (1, 3, 8, 8), (2, 3, 16, 16), (4, 3, 33, 32))
    info = _info(two_stream, _opts("image:1x3x8x8:2x3x16x16:4x3x32x32"))
    with pytest.raises(EngineMismatch) as e:
        check_io(str(folder), _info(two_stream, info.options, profile=(odd, info.profile[1])),
                 read_manifest(str(folder)))
    assert e.value.file == str(folder / "engine.json") and "H = 33 at MAX" in e.value.message
    assert "resgraph engine build" in e.value.hint


def test_a_request_outside_the_profile_names_the_input_and_the_range(two_stream):
    inputs, sizes, _ = two_stream
    profile = {p.name: p for p in resolve(_opts("image:1x3x8x8:2x3x16x16:4x3x32x32"), inputs, sizes)}
    assert outside(profile, inputs, {"image": (64, 3, 32, 8), "mask": (64, 1, 32, 8)}) is None   # the batch: chunked
    name, why, hint = outside(profile, inputs, {"image": (1, 3, 34, 8), "mask": (1, 1, 34, 8)})
    assert name == "image" and why == ("H = 34 is outside the engine's profile, which takes image's H from 8 to 32 "
                                       "(image:1x3x8x8:2x3x16x16:4x3x32x32)")
    assert "--shapes" in hint and "other back ends take every valid size" in hint


# --- the gate's points and ONNX Runtime's TensorRT provider ----------------------------------------

def test_the_gate_runs_every_input_at_min_opt_and_max(two_stream):
    from resgraph.runtime.gate import profile_points
    inputs, sizes, _ = two_stream
    points = profile_points(resolve(_opts("image:1x3x8x8:2x3x16x16:4x3x32x32"), inputs, sizes))
    assert points == [("MIN image 1x3x8x8, mask 1x1x8x8", {"image": (1, 3, 8, 8), "mask": (1, 1, 8, 8)}),
                      ("OPT image 2x3x16x16, mask 2x1x16x16", {"image": (2, 3, 16, 16), "mask": (2, 1, 16, 16)}),
                      ("MAX image 4x3x32x32, mask 4x1x32x32", {"image": (4, 3, 32, 32), "mask": (4, 1, 32, 32)})]
    fixed = profile_points(resolve(_opts("image:8x3x16x16"), inputs, sizes))     # one point: run once
    assert [label for label, _ in fixed] == ["MIN image 8x3x16x16, mask 8x1x16x16"]


def test_ort_trt_takes_engine_jsons_profile_else_the_default(two_stream, two_stream_folder, tmp_path):
    from resgraph.backends.tensorrt.engine_json import write_engine_info
    from resgraph.runtime import open_session
    folder = tmp_path / "f"
    shutil.copytree(two_stream_folder, folder)
    s = open_session(str(folder), "ort-cpu")            # the method reads the folder, not the provider
    o = s._trt_options()
    assert (o["trt_profile_min_shapes"], o["trt_profile_opt_shapes"], o["trt_profile_max_shapes"]) == (
        "image:1x3x8x8,mask:1x1x8x8", "image:32x3x64x64,mask:32x1x64x64", "image:32x3x64x64,mask:32x1x64x64")
    (folder / "model.engine").write_bytes(b"plan")
    write_engine_info(str(folder / "engine.json"), _info(two_stream, _opts("mask:2x1x8x8:4x1x16x16:8x1x32x32")))
    o = s._trt_options()
    assert (o["trt_profile_min_shapes"], o["trt_profile_opt_shapes"], o["trt_profile_max_shapes"]) == (
        "image:2x3x8x8,mask:2x1x8x8", "image:4x3x16x16,mask:4x1x16x16", "image:8x3x32x32,mask:8x1x32x32")
    assert read_engine_info(str(folder)).options.batch == BatchProfile(2, 4, 8)


# --- the commands ------------------------------------------------------------------------------------

def test_compile_engine_refuses_a_profile_the_model_cannot_take_before_any_work(two_stream, tmp_path):
    """Checked against the spec's valid sizes before anything else (TensorRT present or not), nothing written."""
    r = run_cli("compile", two_stream[2], "-o", str(tmp_path / "out"), "--engine", "--shapes",
                "image:1x3x8x8:2x3x16x16:4x3x31x32")
    assert r.returncode == 1, r.stderr
    assert "--shapes: error: image: H = 31 at MAX is not a size the model takes (multiples of 2 from 8 to 64)" in r.stderr
    assert "hint: the nearest valid sizes are 30 or 32" in r.stderr
    assert not (tmp_path / "out").exists()
    r = run_cli("compile", two_stream[2], "-o", str(tmp_path / "out"), "--shapes", "image:1x3x8x8")
    assert r.returncode == 1 and "--shapes: error: an engine option without --engine" in r.stderr, r.stderr
    r = run_cli("compile", two_stream[2], "-o", str(tmp_path / "out"), "--engine", "--max-shapes", "image:1x3x8x7")
    assert r.returncode == 1 and "--max-shapes: error: image: W = 7 at MIN is not a size" in r.stderr, r.stderr


def test_engine_build_refuses_a_profile_the_model_cannot_take_and_leaves_the_folder(two_stream_folder, tmp_path):
    folder = tmp_path / "f"
    shutil.copytree(two_stream_folder, folder)
    before = {p: (folder / p).read_bytes() for p in os.listdir(folder)}
    r = run_cli("engine", "build", str(folder), "--min-shapes", "image:1x3x8x8,mask:1x1x8x8", "--opt-shapes",
                "image:2x3x16x16,mask:2x1x16x16", "--max-shapes", "image:4x3x32x32,mask:4x1x32x65")
    assert r.returncode == 1, r.stderr
    assert "--max-shapes: error: mask: W = 65 at MAX is not a size the model takes" in r.stderr
    assert "hint: the nearest valid sizes are 62 or 64" in r.stderr
    assert {p: (folder / p).read_bytes() for p in os.listdir(folder)} == before and os.listdir(tmp_path) == ["f"]


def test_engine_info_shows_every_inputs_profile(two_stream, two_stream_folder, tmp_path):
    from resgraph.backends.tensorrt.engine_json import write_engine_info
    folder = tmp_path / "f"
    shutil.copytree(two_stream_folder, folder)
    (folder / "model.engine").write_bytes(b"plan")
    write_engine_info(str(folder / "engine.json"), _info(two_stream, _opts("image:1x3x8x8:2x3x16x16:4x3x32x32")))
    r = run_cli("engine", "info", str(folder))
    assert "TensorRT 10.16.1.11, fp32 (strongly typed), shapes image:1x3x8x8:2x3x16x16:4x3x32x32,mask:1x1x8x8:" \
           "2x1x16x16:4x1x32x32, NVIDIA H200 (sm 9.0)" in r.stdout, r.stdout + r.stderr
    assert "  inputs  image [-1, 3, -1, -1] float32, mask [-1, 1, -1, -1] float32" in r.stdout
    d = json.loads(run_cli("engine", "info", str(folder), "--json").stdout)
    assert d["here"]["rebuild"] == f"resgraph engine build {folder} --precision fp32 --shapes image:1x3x8x8:2x3x16x16:4x3x32x32"
