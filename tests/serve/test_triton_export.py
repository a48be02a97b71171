"""`export triton`'s fuller repository: versions and their policy, a warm-up sample, the onnxruntime
platform's TensorRT accelerator, and an ensemble that takes encoded images. Every config through
Triton's own ModelConfig parser; what the core nvidia-pytriton bundles can serve (the Python backend,
ensembles) served by it, and its answers checked against resgraph's own runtime and `run`."""
from __future__ import annotations

import glob
import json
import os
import subprocess

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, needs_triton, resgraph_cmd, run_cli

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="tritonclient[grpc] is not installed (pip install 'resgraph[serve]')")
from google.protobuf import text_format  # noqa: E402

from resgraph.backends.onnx.contract import Contract  # noqa: E402
from resgraph.compile import compile_spec  # noqa: E402
from resgraph.errors import OptionError  # noqa: E402
from resgraph.triton.export import TritonOptions, export_triton  # noqa: E402
from resgraph.triton.sections import Accelerator  # noqa: E402

SPEC, WEIGHTS = ROOT / "specs" / "digits_resnet.yaml", ROOT / "specs" / "weights" / "digits_resnet.safetensors"
SAMPLES = sorted(glob.glob(str(ROOT / "examples" / "digits" / "samples" / "*.png")))[:6]
DT = model_config_pb2.DataType.Name


def parse(path) -> "model_config_pb2.ModelConfig":
    with open(path) as f:
        return text_format.Parse(f.read(), model_config_pb2.ModelConfig())


def tree(path) -> dict:
    """Every file under `path` with its bytes: what an export that must write nothing leaves equal."""
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                out[os.path.relpath(os.path.join(root, f), path)] = fh.read()
    return out


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """The same spec, untrained: the same inputs and outputs, another model file (a new version)."""
    out = tmp_path_factory.mktemp("untrained") / "digits_resnet"
    compile_spec(str(SPEC), out=str(out))
    return str(out)


@pytest.fixture(scope="module")
def u8_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("u8") / "digits_resnet"
    compile_spec(str(SPEC), weights=str(WEIGHTS), out=str(out), contract=Contract("uint8-nhwc"))
    return str(out)


@pytest.fixture(scope="module")
def seg_folder(tmp_path_factory):
    from test_triton import SEG
    d = tmp_path_factory.mktemp("seg")
    (d / "tiny_seg.yaml").write_text(SEG)
    compile_spec(str(d / "tiny_seg.yaml"), out=str(d / "tiny_seg"))
    return str(d / "tiny_seg")


# --- versions -----------------------------------------------------------------------------------

def test_a_new_model_gets_the_next_free_version_and_a_reexport_keeps_its_own(digits_folder, untrained, tmp_path):
    """Without --version: a model file the folder does not hold yet goes to the next free version,
    the others left as they were; the same model exported again with other settings replaces its own
    version (no pile of identical versions); --version N writes N."""
    repo = tmp_path / "repo"
    export_triton(str(digits_folder), str(repo), TritonOptions())
    v1 = tree(repo / "digits_resnet" / "1")
    export_triton(untrained, str(repo), TritonOptions())
    assert sorted(os.listdir(repo / "digits_resnet")) == ["1", "2", "config.pbtxt", "labels.txt"]
    assert tree(repo / "digits_resnet" / "1") == v1
    assert open(repo / "digits_resnet" / "2" / "model.onnx", "rb").read() == open(f"{untrained}/model.onnx", "rb").read()
    export_triton(str(digits_folder), str(repo), TritonOptions(batching=None, instances=2))   # trained again: 1
    assert sorted(e for e in os.listdir(repo / "digits_resnet") if e.isdigit()) == ["1", "2"]
    assert not parse(repo / "digits_resnet" / "config.pbtxt").HasField("dynamic_batching")
    r = run_cli("export", "triton", str(digits_folder), "-o", str(repo), "--version", "7")
    assert r.returncode == 0, r.stderr
    assert sorted(e for e in os.listdir(repo / "digits_resnet") if e.isdigit()) == ["1", "2", "7"]


@pytest.mark.parametrize("policy, want", [
    ("latest:2", "latest { num_versions: 2 }"), ("all", "all { }"), ("specific:2,1", "specific { versions: 1 versions: 2 }")])
def test_version_policy_is_tritons(digits_folder, untrained, tmp_path, policy, want):
    repo = tmp_path / "repo"
    export_triton(str(digits_folder), str(repo), TritonOptions())
    path = export_triton(untrained, str(repo), TritonOptions(version_policy=policy))
    c = parse(os.path.join(path, "config.pbtxt"))
    assert text_format.MessageToString(c.version_policy, as_one_line=True) == want


@pytest.mark.parametrize("policy, says", [("latest", "not a version policy"), ("latest:0", "not a version policy"),
                                          ("specific:", "not a version policy"), ("newest:1", "not a version policy"),
                                          ("specific:1,3", "version 3 would not exist")])
def test_a_bad_version_policy_is_refused_and_writes_nothing(digits_folder, tmp_path, policy, says):
    r = run_cli("export", "triton", str(digits_folder), "-o", str(tmp_path / "repo"), "--version-policy", policy)
    assert r.returncode == 1 and says in r.stderr and "hint:" in r.stderr, r.stderr
    assert not (tmp_path / "repo").exists() or os.listdir(tmp_path / "repo") == []


@pytest.mark.parametrize("args, says", [
    (["--version", "2", "--max-batch", "8"], "max_batch_size 32 here, 8 in the new export"),
    (["--version", "2", "--platform", "python"], "platform 'onnxruntime_onnx' here, '' in the new export"),
    (["--max-batch", "8"], "max_batch_size 32 here, 8 in the new export"),   # the next free version, 2
])
def test_a_version_whose_config_clashes_is_refused_and_writes_nothing(digits_folder, untrained, tmp_path, args, says):
    """Version 1 is served with the folder's config.pbtxt: a new version whose config would serve it
    as something else is a clean error, naming the difference, and the repository is left byte for
    byte as it was; --force replaces the config."""
    repo = tmp_path / "repo"
    export_triton(str(digits_folder), str(repo), TritonOptions())
    before = tree(repo)
    r = run_cli("export", "triton", untrained, "-o", str(repo), *args)
    assert r.returncode == 1 and "serves version 1 differently" in r.stderr and says in r.stderr, r.stderr
    assert "--force" in r.stderr and "Traceback" not in r.stderr
    assert tree(repo) == before and sorted(os.listdir(tmp_path)) == ["repo"]
    r = run_cli("export", "triton", untrained, "-o", str(repo), *args, "--force")
    assert r.returncode == 0 and os.path.isdir(repo / "digits_resnet" / "2"), r.stderr


# --- warm-up ------------------------------------------------------------------------------------

def _warmup(c) -> list:
    return [(w.name, w.batch_size, w.count, {k: (DT(v.data_type), list(v.dims), v.WhichOneof("input_data_type"))
                                             for k, v in w.inputs.items()}) for w in c.model_warmup]


def test_warmup_is_one_sample_of_the_inputs_own_shape_and_dtype(digits_folder, u8_folder, seg_folder, tmp_path):
    c = parse(os.path.join(export_triton(str(digits_folder), str(tmp_path / "a"), TritonOptions()), "config.pbtxt"))
    assert _warmup(c) == [("resgraph zero sample", 1, 1, {"image": ("TYPE_FP32", [1, 8, 8], "zero_data")})]
    path = export_triton(u8_folder, str(tmp_path / "b"), TritonOptions(platform="python", warmup="random"))
    assert _warmup(parse(os.path.join(path, "config.pbtxt"))) == \
        [("resgraph random sample", 1, 1, {"image": ("TYPE_UINT8", [8, 8, 1], "random_data")})]
    # size variables: the smallest valid sizes (H, W even from 8: 8), every input
    c = parse(os.path.join(export_triton(seg_folder, str(tmp_path / "c"), TritonOptions()), "config.pbtxt"))
    assert _warmup(c)[0][3] == {"image": ("TYPE_FP32", [3, 8, 8], "zero_data"), "mask": ("TYPE_FP32", [1, 8, 8], "zero_data")}
    c = parse(os.path.join(export_triton(seg_folder, str(tmp_path / "d"), TritonOptions(warmup="none")), "config.pbtxt"))
    assert list(c.model_warmup) == []


# --- the TensorRT accelerator -------------------------------------------------------------------

def test_the_tensorrt_accelerator_uses_the_onnxruntime_backends_parameters(digits_folder, tmp_path):
    r = run_cli("export", "triton", str(digits_folder), "-o", str(tmp_path / "repo"), "--accelerator", "tensorrt",
                "--accelerator-fp16", "--accelerator-workspace", "2048", "--accelerator-cache", "/models/trt cache")
    assert r.returncode == 0, r.stderr
    c = parse(tmp_path / "repo" / "digits_resnet" / "config.pbtxt")
    (a,) = c.optimization.execution_accelerators.gpu_execution_accelerator
    assert a.name == "tensorrt" and dict(a.parameters) == {
        "precision_mode": "FP16", "max_workspace_size_bytes": str(2048 << 20),
        "trt_engine_cache_enable": "1", "trt_engine_cache_path": "/models/trt cache"}
    assert [model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind) for g in c.instance_group] == ["KIND_GPU"]
    path = export_triton(str(digits_folder), str(tmp_path / "fp32"), TritonOptions(accelerator=Accelerator()))
    (a,) = parse(os.path.join(path, "config.pbtxt")).optimization.execution_accelerators.gpu_execution_accelerator
    assert dict(a.parameters) == {"precision_mode": "FP32"}


@pytest.mark.parametrize("args, says", [
    (["--accelerator", "tensorrt", "--platform", "python"], "the python platform has no execution accelerators"),
    (["--accelerator", "tensorrt", "--platform", "tensorrt"], "the tensorrt platform has no execution accelerators"),
    (["--accelerator", "tensorrt", "--kind", "cpu"], "runs on GPU instances"),
    (["--accelerator-fp16"], "only with --accelerator tensorrt"),
    (["--with-preprocess", "--name", "n" * 120], "cannot name a Triton model"),
])
def test_accelerator_and_ensemble_errors(digits_folder, tmp_path, args, says):
    r = run_cli("export", "triton", str(digits_folder), "-o", str(tmp_path / "repo"), *args)
    assert r.returncode == 1 and says in r.stderr and "hint:" in r.stderr, r.stderr
    assert not (tmp_path / "repo").exists() or os.listdir(tmp_path / "repo") == []


# --- the ensemble: encoded images in ------------------------------------------------------------

def test_the_ensemble_configs_chain_the_steps_by_their_own_tensor_names(digits_folder, tmp_path):
    """Three configs through Triton's parser; every step's input_map names inputs of that step's model
    and output_map its outputs; the ensemble's tensors flow from its input to every model output."""
    repo = tmp_path / "repo"
    export_triton(str(digits_folder), str(repo), TritonOptions(with_preprocess=True))
    assert sorted(os.listdir(repo)) == ["digits_resnet", "digits_resnet_ensemble", "digits_resnet_preprocess"]
    c = {n: parse(repo / n / "config.pbtxt") for n in os.listdir(repo)}
    pre, ens = c["digits_resnet_preprocess"], c["digits_resnet_ensemble"]
    assert pre.backend == "python" and [(t.name, DT(t.data_type), list(t.dims)) for t in pre.input] == \
        [("encoded_image", "TYPE_STRING", [1])]
    assert [(t.name, DT(t.data_type), list(t.dims)) for t in pre.output] == [("image", "TYPE_FP32", [1, 8, 8])]
    assert ens.platform == "ensemble" and [t.name for t in ens.output] == ["logits"]
    known = {t.name for t in ens.input}
    for step in ens.ensemble_scheduling.step:
        model = c[step.model_name]
        assert set(step.input_map) == {t.name for t in model.input} and set(step.input_map.values()) <= known
        assert set(step.output_map) == {t.name for t in model.output}
        known |= set(step.output_map.values())
    assert {t.name for t in ens.output} <= known
    assert sorted(os.listdir(repo / "digits_resnet_preprocess" / "1")) == ["manifest.json", "model.py"]
    assert (repo / "digits_resnet_ensemble" / "labels.txt").read_text().split() == [str(i) for i in range(10)]


def test_with_preprocess_needs_one_image_input(seg_folder, tmp_path):
    with pytest.raises(OptionError, match="not one image input"):
        export_triton(seg_folder, str(tmp_path / "repo"), TritonOptions(with_preprocess=True))
    assert not (tmp_path / "repo").exists()


def _jpeg(path: str, tmp_path) -> str:
    out = tmp_path / (os.path.basename(path) + ".jpg")
    Image.open(path).convert("RGB").save(out, quality=90)
    return str(out)


@pytest.mark.parametrize("which", ["fp32", "uint8"])
def test_decoding_bytes_is_runs_decoding_of_the_file(digits_folder, u8_folder, tmp_path, which):
    """What the preprocess step computes from a file's bytes is what `run` computes from the file
    (Preprocess.load_file), exactly, for PNG and JPEG, fp32 and raw uint8 NHWC models."""
    from resgraph.manifest import read_manifest
    from resgraph.runtime.preprocess import InputError, Preprocess
    from resgraph.triton.ensemble import decoder
    folder = str(digits_folder) if which == "fp32" else u8_folder
    m = read_manifest(folder)
    pre = Preprocess.from_json(m.preprocess, m.input.chw, m.sizes, raw=m.input.layout if m.input.dtype == "uint8" else None)
    decode = decoder(folder)
    for f in [*SAMPLES[:3], _jpeg(SAMPLES[0], tmp_path)]:
        got, want = decode(open(f, "rb").read()), pre.file(f)
        assert got.dtype == want.dtype == np.dtype(m.input.dtype) and got.shape == tuple(m.input.sample_shape)
        assert np.array_equal(got, want), f
    with pytest.raises(InputError, match="not an image Pillow can read"):
        decode(b"not an image")


# --- the real core ------------------------------------------------------------------------------



def _run_json(folder: str, files: list[str]) -> list[dict]:
    r = subprocess.run(resgraph_cmd() + ["run", folder, *files, "--json", "--top-k", "1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return [json.loads(line)["top"][0] for line in r.stdout.splitlines()]


def _ask_bytes(client, files: list[str], model: str):
    import tritonclient.http as th
    data = np.array([[open(f, "rb").read()] for f in files], dtype=object)
    i = th.InferInput("encoded_image", list(data.shape), "BYTES")
    i.set_data_from_numpy(data)
    return client.infer(model, [i]).as_numpy("logits")


@needs_triton
@pytest.mark.parametrize("which", ["fp32", "uint8"])
def test_the_served_ensemble_answers_encoded_images_as_run_does(digits_folder, u8_folder, tmp_path, which):
    """A client sends PNG and JPEG bytes to <name>_ensemble on the real core: each answer equals a
    direct session on run's preprocessed file (1e-5), and run's own top-1 class and score; a request
    with bytes that are no image gets an error naming it, and the server goes on answering."""
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    from resgraph.runtime import open_session
    from resgraph.triton.server import TritonServer
    folder = str(digits_folder) if which == "fp32" else u8_folder
    files = [*SAMPLES, _jpeg(SAMPLES[1], tmp_path)]
    want = _run_json(folder, files)
    repo = tmp_path / "repo"
    export_triton(folder, str(repo), TritonOptions(platform="python", backend="ort-cpu", with_preprocess=True))
    from resgraph.triton.ensemble import decoder
    decode = decoder(folder)
    with open_session(folder, "ort-cpu") as s, TritonServer(str(repo)) as server:
        direct = s.run(np.stack([decode(open(f, "rb").read()) for f in files]))
        c = th.InferenceServerClient(server.http_url)
        logits = _ask_bytes(c, files, "digits_resnet_ensemble")
        assert logits.shape == (len(files), 10) and float(np.abs(logits - direct).max()) <= 1e-5
        e = np.exp(logits - logits.max(1, keepdims=True))
        p = e / e.sum(1, keepdims=True)
        assert [int(k) for k in p.argmax(1)] == [w["index"] for w in want]
        assert max(abs(float(p[n, w["index"]]) - w["score"]) for n, w in enumerate(want)) <= 1e-5
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"\x89PNG not really")
        with pytest.raises(InferenceServerException, match="image 1: "):
            _ask_bytes(c, [files[0], str(bad)], "digits_resnet_ensemble")
        assert float(np.abs(_ask_bytes(c, files[:1], "digits_resnet_ensemble") - direct[:1]).max()) <= 1e-5
        c.close()


@needs_triton
def test_serve_runs_the_warmup_at_load_and_answers(digits_folder, tmp_path):
    """The core runs model_warmup while loading (its log says so), and serve, whose config has it,
    answers; a warm-up sample the model cannot take fails the load (the warm-up really runs)."""
    import tritonclient.http as th

    from resgraph.runtime import open_session
    from resgraph.triton.server import TritonServer, serve
    from resgraph.errors import BackendError
    o = TritonOptions(platform="python", backend="ort-cpu", max_batch=8)
    with serve(str(digits_folder), o, 0, 0, 0) as (name, service), open_session(str(digits_folder), "ort-cpu") as s:
        c = th.InferenceServerClient(service.http_url)
        assert c.get_model_config(name)["model_warmup"][0]["inputs"]["image"]["dims"] == [1, 8, 8]
        x = np.random.default_rng(0).standard_normal((3, 1, 8, 8), dtype=np.float32)
        i = th.InferInput("image", list(x.shape), "FP32")
        i.set_data_from_numpy(x)
        assert float(np.abs(c.infer(name, [i]).as_numpy("logits") - s.run(x)).max()) <= 1e-5
        c.close()
    repo = tmp_path / "repo"
    path = export_triton(str(digits_folder), str(repo), o)
    with TritonServer(str(repo), log_verbose=1) as server:
        assert "running warmup sample 'resgraph zero sample'" in server.log_tail(1 << 22)
    config = os.path.join(path, "config.pbtxt")
    text = open(config).read()
    with open(config, "w") as f:   # a sample of another size: the model refuses it, so the load fails
        f.write(text.replace("dims: [1, 8, 8] zero_data", "dims: [1, 9, 9] zero_data"))
    with pytest.raises(BackendError, match="warmup|warm"):
        TritonServer(str(repo), ready_timeout=60).start()


@needs_triton
def test_the_core_serves_the_versions_the_policy_names(digits_folder, untrained, tmp_path):
    """Two versions of one model (trained, untrained) on the real core: with `all` each answers as its
    own model file does; with the default policy only the newest is served."""
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    from resgraph.runtime import open_session
    from resgraph.triton.server import TritonServer
    repo = tmp_path / "repo"
    o = TritonOptions(platform="python", backend="ort-cpu", max_batch=8)
    export_triton(str(digits_folder), str(repo), o)
    export_triton(untrained, str(repo), TritonOptions(platform="python", backend="ort-cpu", max_batch=8,
                                                      version_policy="all"))
    x = np.random.default_rng(1).standard_normal((2, 1, 8, 8), dtype=np.float32)
    with open_session(str(digits_folder), "ort-cpu") as a, open_session(untrained, "ort-cpu") as b:
        want = {"1": a.run(x), "2": b.run(x)}
    assert float(np.abs(want["1"] - want["2"]).max()) > 1e-2
    with TritonServer(str(repo)) as server:
        c = th.InferenceServerClient(server.http_url)
        for v, w in want.items():
            i = th.InferInput("image", list(x.shape), "FP32")
            i.set_data_from_numpy(x)
            assert float(np.abs(c.infer("digits_resnet", [i], model_version=v).as_numpy("logits") - w).max()) <= 1e-5
        c.close()
    export_triton(untrained, str(repo), o)   # the same model again, the default policy: the newest only
    with TritonServer(str(repo)) as server:
        c = th.InferenceServerClient(server.http_url)
        assert c.is_model_ready("digits_resnet", "2") and not c.is_model_ready("digits_resnet", "1")
        i = th.InferInput("image", list(x.shape), "FP32")
        i.set_data_from_numpy(x)
        with pytest.raises(InferenceServerException):
            c.infer("digits_resnet", [i], model_version="1")
        c.close()


@needs_triton
def test_serve_answers_through_the_ensemble_behind_its_front(digits_folder):
    """`serve --with-preprocess`: the front admits <name>_ensemble's encoded images (BYTES, bounded) as
    well as the model's own tensors, and refuses what fits neither, before the core sees it."""
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    from resgraph.triton.server import serve
    want = _run_json(str(digits_folder), SAMPLES)
    options = TritonOptions(platform="python", backend="ort-cpu", max_batch=8, with_preprocess=True)
    with serve(str(digits_folder), options, 0, 0, 0) as (name, service):
        c = th.InferenceServerClient(service.http_url)   # the front's port
        logits = _ask_bytes(c, SAMPLES, f"{name}_ensemble")
        assert [int(k) for k in logits.argmax(1)] == [w["index"] for w in want]
        x = np.zeros((1, 1, 8, 8), np.float32)
        i = th.InferInput("image", [1, 1, 8, 8], "FP32")
        i.set_data_from_numpy(x)
        assert c.infer(name, [i]).as_numpy("logits").shape == (1, 10)   # the model itself, as before
        with pytest.raises(InferenceServerException, match="this server serves 'digits_resnet' and "
                                                           "'digits_resnet_ensemble'"):
            c.infer(f"{name}_preprocess", [i])
        with pytest.raises(InferenceServerException, match="datatype 'FP32': the model takes BYTES"):
            f = th.InferInput("encoded_image", [1, 1], "FP32")
            f.set_data_from_numpy(np.zeros((1, 1), np.float32))
            c.infer(f"{name}_ensemble", [f])
        c.close()
