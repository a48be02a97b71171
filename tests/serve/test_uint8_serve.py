"""A uint8 NHWC digits model (compile --input uint8-nhwc) exported and served by a real Triton core:
its config takes TYPE_UINT8 (parsed by Triton's own ModelConfig), a client sends raw pixel bytes, a
quarter of fp32's, and the answer equals run's on the same files; floats are refused before the core."""
from __future__ import annotations

import glob
import json
import subprocess

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, needs_triton, resgraph_cmd

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="tritonclient[grpc] is not installed (pip install 'resgraph[serve]')")
from google.protobuf import text_format  # noqa: E402

from resgraph.backends.onnx.contract import Contract  # noqa: E402
from resgraph.compile import compile_spec  # noqa: E402
from resgraph.triton.export import Batching, TritonOptions, export_triton  # noqa: E402

SAMPLES = sorted(glob.glob(str(ROOT / "examples" / "digits" / "samples" / "*.png")))[:8]


@pytest.fixture(scope="module")
def u8_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("u8") / "digits_resnet"
    compile_spec(str(ROOT / "specs" / "digits_resnet.yaml"), weights=str(ROOT / "specs" / "weights" / "digits_resnet.safetensors"),
                 out=str(out), contract=Contract("uint8-nhwc"))
    return str(out)


@pytest.mark.parametrize("platform", ["onnxruntime", "python"])
def test_the_config_takes_uint8_and_triton_parses_it(u8_folder, tmp_path, platform):
    repo = tmp_path / "repo"
    export_triton(u8_folder, str(repo), TritonOptions(platform=platform, backend="ort-cpu"))
    cfg = text_format.Parse((repo / "digits_resnet" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    (i,), (o,) = cfg.input, cfg.output
    assert (model_config_pb2.DataType.Name(i.data_type), list(i.dims)) == ("TYPE_UINT8", [8, 8, 1])
    assert model_config_pb2.DataType.Name(o.data_type) == "TYPE_FP32"


@needs_triton
def test_served_raw_bytes_answer_as_run_does_and_floats_are_refused(u8_folder):
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    from resgraph.triton.server import serve
    r = subprocess.run(resgraph_cmd() + ["run", u8_folder, *SAMPLES, "--json", "--top-k", "1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    want = [json.loads(line)["top"][0] for line in r.stdout.splitlines()]
    pixels = np.stack([np.asarray(Image.open(f).convert("L"))[..., None] for f in SAMPLES])   # [N, 8, 8, 1] uint8
    options = TritonOptions(platform="python", backend="ort-cpu", max_batch=32, batching=Batching(200))
    with serve(u8_folder, options, 0, 0, 0) as (_, service):
        c = th.InferenceServerClient(service.http_url)
        i = th.InferInput("image", list(pixels.shape), "UINT8")
        i.set_data_from_numpy(pixels, binary_data=True)
        logits = c.infer("digits_resnet", [i]).as_numpy("logits")
        e = np.exp(logits - logits.max(1, keepdims=True))
        p = e / e.sum(1, keepdims=True)
        assert [int(k) for k in p.argmax(1)] == [w["index"] for w in want]
        assert max(abs(float(p[n, w["index"]]) - w["score"]) for n, w in enumerate(want)) <= 1e-5
        f = th.InferInput("image", list(pixels.shape), "FP32")
        f.set_data_from_numpy(pixels.astype(np.float32), binary_data=True)
        with pytest.raises(InferenceServerException, match="datatype 'FP32': the model takes UINT8"):
            c.infer("digits_resnet", [f])
        c.close()


@needs_triton
def test_the_raw_pixel_client_of_the_deployment_guide_runs(u8_folder, capsys, monkeypatch):
    """docs/deploy.md's uint8 client, as written, against the real server (its folder and address
    replaced by the test's), printing the digit run finds."""
    import re

    from resgraph.triton.server import serve
    text = (ROOT / "docs" / "deploy.md").read_text()
    section = text[text.index("### Raw pixels: a uint8 model"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    code = code.replace('"compiled/digits_resnet_u8"', repr(u8_folder))
    monkeypatch.chdir(ROOT)
    options = TritonOptions(platform="python", backend="ort-cpu", max_batch=8)
    with serve(u8_folder, options, 0, 0, 0) as (_, service):
        exec(compile(code.replace('"localhost:8000"', repr(service.http_url)), "docs/deploy.md", "exec"), {})
    assert capsys.readouterr().out.strip() == "2"
