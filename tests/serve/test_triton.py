"""Triton Inference Server: exported repositories parsed by Triton's own ModelConfig protobuf, and a real
Triton core (nvidia-pytriton's) serving the trained digits model over HTTP and gRPC, under load."""
from __future__ import annotations

import json
import re
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import numpy as np
import pytest

from conftest import needs_triton, resgraph_cmd, run_cli

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="tritonclient[grpc] is not installed (pip install 'resgraph[serve]')")
from google.protobuf import text_format  # noqa: E402

from resgraph.errors import ArtifactError, BackendError, OptionError  # noqa: E402
from resgraph.triton.export import Batching, TritonOptions, export_triton  # noqa: E402


def parse(path) -> "model_config_pb2.ModelConfig":
    """Triton's own parser: unknown fields and bad enum values are errors."""
    with open(path) as f:
        return text_format.Parse(f.read(), model_config_pb2.ModelConfig())


def test_onnxruntime_repository(digits_folder, tmp_path):
    path = export_triton(str(digits_folder), str(tmp_path / "repo"),
                         TritonOptions(max_batch=64, instances=2, kind="cpu", batching=Batching(250, (8, 16))))
    c = parse(os.path.join(path, "config.pbtxt"))
    assert (c.name, c.platform, c.max_batch_size) == ("digits_resnet", "onnxruntime_onnx", 64)
    assert [(t.name, list(t.dims), model_config_pb2.DataType.Name(t.data_type)) for t in c.input] == \
        [("image", [1, 8, 8], "TYPE_FP32")]
    assert [(t.name, list(t.dims), t.label_filename) for t in c.output] == [("logits", [10], "labels.txt")]
    assert [(model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind), g.count) for g in c.instance_group] == \
        [("KIND_CPU", 2)]
    assert list(c.dynamic_batching.preferred_batch_size) == [8, 16]
    assert c.dynamic_batching.max_queue_delay_microseconds == 250
    assert open(os.path.join(path, "labels.txt")).read().split() == [str(i) for i in range(10)]
    assert open(os.path.join(path, "1", "model.onnx"), "rb").read() == (digits_folder / "model.onnx").read_bytes()
    # exported again without batching: replaced whole, nothing else left in the repository
    path = export_triton(str(digits_folder), str(tmp_path / "repo"), TritonOptions(batching=None))
    assert not parse(os.path.join(path, "config.pbtxt")).HasField("dynamic_batching")
    assert os.listdir(tmp_path / "repo") == ["digits_resnet"] and sorted(os.listdir(tmp_path)) == ["repo"]


def test_a_model_folder_with_other_versions_keeps_them(digits_folder, tmp_path):
    """Published by the compiled folder's publisher (publish.Stage): where the model folder holds more
    than an export writes (another version, the user's notes), only version 1, labels.txt and
    config.pbtxt are replaced, and the rest stays as it was."""
    repo = tmp_path / "repo"
    path = export_triton(str(digits_folder), str(repo), TritonOptions())
    (repo / "digits_resnet" / "2").mkdir()
    (repo / "digits_resnet" / "2" / "model.onnx").write_bytes(b"the user's version 2")
    (repo / "digits_resnet" / "NOTES.md").write_text("kept")
    (repo / "digits_resnet" / "1" / "stale.bin").write_bytes(b"from an older export")
    path = export_triton(str(digits_folder), str(repo), TritonOptions(batching=None))
    assert not parse(os.path.join(path, "config.pbtxt")).HasField("dynamic_batching")
    assert (repo / "digits_resnet" / "2" / "model.onnx").read_bytes() == b"the user's version 2"
    assert (repo / "digits_resnet" / "NOTES.md").read_text() == "kept"
    assert sorted(os.listdir(repo / "digits_resnet" / "1")) == ["model.onnx"]   # version 1 replaced whole
    assert sorted(os.listdir(repo)) == ["digits_resnet"] and sorted(os.listdir(tmp_path)) == ["repo"]


def test_a_config_that_would_serve_other_versions_differently_is_refused_unless_forced(digits_folder, tmp_path):
    """Another version (2) is served with the folder's config: an export whose config changes what
    every version is served with (platform, max_batch_size, inputs, outputs) is refused, naming what
    differs, with nothing written; --force replaces it. Changing only batching or instances is fine."""
    repo = tmp_path / "repo"
    export_triton(str(digits_folder), str(repo), TritonOptions())
    (repo / "digits_resnet" / "2").mkdir()
    (repo / "digits_resnet" / "2" / "model.onnx").write_bytes(b"version 2")
    before = (repo / "digits_resnet" / "config.pbtxt").read_text()
    export_triton(str(digits_folder), str(repo), TritonOptions(batching=None, instances=2))   # compatible
    for o, says in ((TritonOptions(platform="python"), "platform 'onnxruntime_onnx' here, '' in the new export"),
                    (TritonOptions(max_batch=8), "max_batch_size 32 here, 8 in the new export")):
        compatible = (repo / "digits_resnet" / "config.pbtxt").read_text()
        with pytest.raises(OptionError, match="serves version 2 differently") as e:
            export_triton(str(digits_folder), str(repo), o)
        assert says in str(e.value) and "--force" in e.value.diagnostics[0].hint
        assert (repo / "digits_resnet" / "config.pbtxt").read_text() == compatible
    r = run_cli("export", "triton", str(digits_folder), "-o", str(repo), "--max-batch", "8")
    assert r.returncode == 1 and "max_batch_size 32 here, 8" in r.stderr and "--force" in r.stderr, r.stderr
    r = run_cli("export", "triton", str(digits_folder), "-o", str(repo), "--max-batch", "8", "--force")
    assert r.returncode == 0, r.stderr
    assert parse(repo / "digits_resnet" / "config.pbtxt").max_batch_size == 8 != parse_text(before).max_batch_size
    assert (repo / "digits_resnet" / "2" / "model.onnx").read_bytes() == b"version 2"


def parse_text(text: str):
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_external_data_is_a_model_folder(tmp_path):
    from conftest import ROOT
    from resgraph.compile import compile_spec
    folder = tmp_path / "ext"
    compile_spec(str(ROOT / "specs" / "digits_resnet.yaml"), out=str(folder), external_data=True)
    path = export_triton(str(folder), str(tmp_path / "repo"), TritonOptions(name="digits.v2-ext"))
    assert sorted(os.listdir(os.path.join(path, "1", "model.onnx"))) == ["model.onnx", "model.onnx.data"]
    assert parse(os.path.join(path, "config.pbtxt")).name == "digits.v2-ext"


@pytest.mark.parametrize("name", ['a"b\\c', "x\ny", "../x", ".hidden", "-x", "", "a/b", "a b", "n" * 129, "caf\u00e9",
                                  "\x1b]0;pwn\x07"])
def test_one_name_rule_for_the_option_and_the_manifest(digits_folder, tmp_path, name):
    """A model's name is a folder of the repository and a segment of Triton's URLs: --name and the
    manifest's name follow one rule, and nothing is written for a name outside it (a name with a
    newline used to export, rc 0, a config Triton refuses)."""
    with pytest.raises(OptionError) as e:
        export_triton(str(digits_folder), str(tmp_path / "repo"), TritonOptions(name=name))
    assert e.value.diagnostics[0].loc.file == "--name" and "cannot name a Triton model" in e.value.message
    assert "\n" not in e.value.message and "\x1b" not in e.value.message   # shown escaped
    forged = tmp_path / "forged"
    shutil.copytree(digits_folder, forged)
    m = json.loads((forged / "manifest.json").read_text())
    m["name"] = name
    (forged / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="cannot name a Triton model") as e:
        export_triton(str(forged), str(tmp_path / "repo"), TritonOptions())
    assert "--name" in e.value.hint
    assert not (tmp_path / "repo").exists() or os.listdir(tmp_path / "repo") == []


def test_the_config_goes_through_tritons_parser_before_anything_is_written(digits_folder, tmp_path, monkeypatch):
    """The export's last check is Triton's own ModelConfig parser; a config it refuses (here: a batcher
    field Triton does not know, as a future resgraph bug would write) is an error and writes nothing."""
    import resgraph.triton.export as export
    real = export._config
    monkeypatch.setattr(export, "_config", lambda *a: real(*a) + "dynamic_batching { no_such_field: 1 }\n")
    with pytest.raises(ArtifactError, match="ModelConfig parser refuses"):
        export_triton(str(digits_folder), str(tmp_path / "repo"), TritonOptions())
    assert not (tmp_path / "repo").exists() or os.listdir(tmp_path / "repo") == []


def test_python_repository_carries_the_compiled_folder(digits_folder, tmp_path):
    path = export_triton(str(digits_folder), str(tmp_path / "repo"), TritonOptions(platform="python", backend="ort-cpu"))
    c = parse(os.path.join(path, "config.pbtxt"))
    assert c.backend == "python" and c.parameters["resgraph_backend"].string_value == "ort-cpu"
    art = os.path.join(path, "1", "artifact")
    assert sorted(os.listdir(art)) == sorted(os.listdir(digits_folder))
    from resgraph.manifest import read_manifest, verify_artifacts
    assert verify_artifacts(art, read_manifest(art)) == {}
    assert os.path.isfile(os.path.join(path, "1", "model.py"))


def test_tensorrt_repository_names_the_plan_by_compute_capability(digits_folder, tmp_path):
    import shutil

    from test_tensorrt import _info

    from resgraph.backends.tensorrt.engine_json import write_engine_info
    from resgraph.backends.tensorrt.options import BatchProfile, BuildOptions
    folder = tmp_path / "d"
    shutil.copytree(digits_folder, folder)
    (folder / "model.engine").write_bytes(b"a plan")
    write_engine_info(str(folder / "engine.json"), _info(options=BuildOptions(batch=BatchProfile(1, 16, 64))))
    path = export_triton(str(folder), str(tmp_path / "repo"), TritonOptions(platform="tensorrt"))
    c = parse(os.path.join(path, "config.pbtxt"))
    assert (c.platform, c.max_batch_size, dict(c.cc_model_filenames)) == ("tensorrt_plan", 64, {"9.0": "model.sm90.plan"})
    # the default file name is absent: a GPU of another capability finds nothing to load
    assert c.default_model_filename == "model.plan" and os.listdir(os.path.join(path, "1")) == ["model.sm90.plan"]
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(c.instance_group[0].kind) == "KIND_GPU"
    assert open(os.path.join(path, "1", "model.sm90.plan"), "rb").read() == b"a plan"
    with pytest.raises(OptionError, match="beyond the engine's batch profile 1:16:64"):
        export_triton(str(folder), str(tmp_path / "repo"), TritonOptions(platform="tensorrt", max_batch=128))
    with pytest.raises(OptionError, match="runs on GPUs"):
        export_triton(str(folder), str(tmp_path / "repo"), TritonOptions(platform="tensorrt", kind="cpu"))
    write_engine_info(str(folder / "engine.json"), _info(options=BuildOptions(batch=BatchProfile(4, 16, 64))))
    with pytest.raises(ArtifactError, match="does not take batches of 1"):
        export_triton(str(folder), str(tmp_path / "repo"), TritonOptions(platform="tensorrt"))


@pytest.mark.parametrize("args, says", [
    (["--platform", "tensorrt"], "no model.engine"),
    (["--preferred-batch", "8,64"], "must lie in 1..32"),
    (["--preferred-batch", "x"], "not a list of batch sizes"),
    (["--name", ".."], "cannot name a Triton model"),
])
def test_export_errors(digits_folder, tmp_path, args, says):
    r = run_cli("export", "triton", str(digits_folder), "-o", str(tmp_path / "repo"), *args)
    assert r.returncode == 1 and says in r.stderr and "hint:" in r.stderr, r.stderr
    assert not (tmp_path / "repo").exists() or os.listdir(tmp_path / "repo") == []


# --- a real Triton core -------------------------------------------------------------------------



SERVED = TritonOptions(platform="python", backend="ort-cpu", max_batch=32, batching=Batching(200))


@pytest.fixture(scope="module")
def served(digits_folder):
    """What `resgraph serve` runs: the core behind resgraph's HTTP front (HTTP reaches the front)."""
    from resgraph.triton.server import serve
    with serve(str(digits_folder), SERVED, 0, 0, 0) as (_, service):
        yield service


@pytest.fixture(scope="module")
def direct(digits_folder):
    from resgraph.runtime import open_session
    with open_session(str(digits_folder), "ort-cpu") as s:
        yield s


@needs_triton
def test_http_and_grpc_answer_what_onnx_runtime_does(served, direct):
    import tritonclient.grpc as tg
    import tritonclient.http as th
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8), dtype=np.float32)
    want = direct.run(x)
    for mod, url in ((th, served.http_url), (tg, served.grpc_url)):
        c = mod.InferenceServerClient(url)
        i = mod.InferInput("image", list(x.shape), "FP32")
        i.set_data_from_numpy(x)
        got = c.infer("digits_resnet", [i]).as_numpy("logits")
        assert got.shape == (5, 10) and float(np.abs(got - want).max()) <= 1e-5
        assert c.is_model_ready("digits_resnet")
        c.close()


@needs_triton
def test_nan_or_inf_over_http_is_refused_as_run_refuses_it(served, direct):
    """A request holding NaN or inf gets an error naming it (run refuses such an input too); a good
    request beside it still gets its own answer."""
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException
    c = th.InferenceServerClient(served.http_url)
    for bad in (np.nan, np.inf):
        x = np.zeros((2, 1, 8, 8), np.float32)
        x[1, 0, 3, 3] = bad
        i = th.InferInput("image", list(x.shape), "FP32")
        i.set_data_from_numpy(x)
        with pytest.raises(InferenceServerException, match="holds NaN or inf"):
            c.infer("digits_resnet", [i])
    x = np.random.default_rng(3).standard_normal((3, 1, 8, 8), dtype=np.float32)
    i = th.InferInput("image", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    assert float(np.abs(c.infer("digits_resnet", [i]).as_numpy("logits") - direct.run(x)).max()) <= 1e-5
    c.close()


@needs_triton
def test_under_load_every_response_is_its_requests(served, direct):
    """16 clients x 100 requests of batch 1 to 8, each with its own inputs: every answer checked against
    a direct session on the same inputs (nothing lost, nothing swapped between requests that Triton's
    dynamic batcher ran together)."""
    import tritonclient.http as th
    failures, done = [], [0]
    lock = threading.Lock()

    def client(k):
        rng = np.random.default_rng(k)
        c = th.InferenceServerClient(served.http_url, connection_timeout=60, network_timeout=60)
        try:
            for _ in range(100):
                n = int(rng.integers(1, 9))
                x = rng.standard_normal((n, 1, 8, 8), dtype=np.float32)
                i = th.InferInput("image", list(x.shape), "FP32")
                i.set_data_from_numpy(x)
                got = c.infer("digits_resnet", [i]).as_numpy("logits")
                with lock:
                    want = direct.run(x)
                    if got.shape != want.shape or float(np.abs(got - want).max()) > 1e-5:
                        failures.append((k, n))
                    done[0] += 1
        except Exception as e:  # noqa: BLE001
            failures.append((k, repr(e)))
        finally:
            c.close()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert failures == [] and done[0] == 1600, failures[:5]
    assert time.monotonic() - t0 < 300
    # the dynamic batcher did run requests together (the case where rows could be swapped)
    c = th.InferenceServerClient(served.http_url)
    stats = c.get_inference_statistics("digits_resnet")["model_stats"][0]
    c.close()
    requests = stats["inference_stats"]["success"]["count"]     # this test's 1600 (and earlier tests')
    assert requests >= 1600 and stats["execution_count"] < requests * 0.9, stats


@needs_triton
def test_a_client_that_disconnects_mid_request_leaves_the_server_healthy(served, direct):
    import tritonclient.http as th
    host, port = served.http_url.split(":")
    body = json.dumps({"inputs": [{"name": "image", "shape": [4, 1, 8, 8], "datatype": "FP32",
                                   "data": [0.5] * 256}]}).encode()
    for cut in (len(body) // 2, len(body)):     # half a body; a whole request, then gone before the answer
        s = socket.create_connection((host, int(port)), timeout=10)
        s.sendall(b"POST /v2/models/digits_resnet/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:cut])
        s.close()
    time.sleep(0.5)
    c = th.InferenceServerClient(served.http_url)
    assert c.is_server_live() and c.is_server_ready()
    x = np.ones((2, 1, 8, 8), np.float32)
    i = th.InferInput("image", [2, 1, 8, 8], "FP32")
    i.set_data_from_numpy(x)
    assert float(np.abs(c.infer("digits_resnet", [i]).as_numpy("logits") - direct.run(x)).max()) <= 1e-5
    c.close()


@needs_triton
def test_serve_command_starts_answers_and_stops_cleanly_leaving_nothing(digits_folder):
    import tritonclient.http as th
    tmp = tempfile.gettempdir()
    before = {e for e in os.listdir(tmp) if e.startswith("resgraph-triton-")}
    p = subprocess.Popen(resgraph_cmd() + ["serve", str(digits_folder), "--port", "0", "--grpc-port", "0",
                                           "--metrics-port", "0", "--backend", "ort-cpu"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        http = int(_read_ready(p).split()[1])
        c = th.InferenceServerClient(f"127.0.0.1:{http}")
        assert c.is_server_ready() and c.is_model_ready("digits_resnet")
        c.close()
        p.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        p.send_signal(signal.SIGTERM)            # impatient: a second one must not cut the clean-up short
        assert p.wait(60) == 0
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", http), timeout=2)
    finally:
        if p.poll() is None:
            p.kill()
    after = {e for e in os.listdir(tmp) if e.startswith("resgraph-triton-")}
    # its own workspace is gone: a new one here can only be another test's serve, running beside this
    # one in another process, and says so in its owner.pid
    left = {e: _owner(os.path.join(tmp, e)) for e in after - before}
    assert all(owner not in (None, str(p.pid)) for owner in left.values()), left


def _owner(folder: str) -> str | None:
    try:
        with open(os.path.join(folder, "owner.pid")) as f:
            return f.read().strip()
    except OSError:
        return None


@needs_triton
def test_bench_measures_a_triton_endpoint_beside_the_in_process_session(served, digits_folder):
    for url in (f"http://{served.http_url}", f"grpc://{served.grpc_url}"):
        r = run_cli("bench", str(digits_folder), "--backend", "ort-cpu", "--batch", "1,8", "--duration", "0.3",
                    "--warmup", "0.1", "--triton", url, "--json", timeout=120)
        assert r.returncode == 0, r.stderr
        rows = json.loads(r.stdout)["results"]
        assert [(x["backend"], x["batch"]) for x in rows] == [("ort-cpu", 1), ("ort-cpu", 8), ("triton", 1), ("triton", 8)]
        assert all(x["iterations"] >= 10 and x["throughput"]["images_per_s"] > 0 for x in rows)
    r = run_cli("bench", str(digits_folder), "--backend", "ort-cpu", "--triton", f"http://{served.http_url}",
                "--triton-model", "nope", "--duration", "0.1")
    assert r.returncode == 1 and "no ready model 'nope'" in r.stderr
    from resgraph.triton.server import free_port
    r = run_cli("bench", str(digits_folder), "--backend", "ort-cpu", "--triton", f"http://127.0.0.1:{free_port()}",
                "--duration", "0.1")
    assert r.returncode == 1 and "no Triton server answers there" in r.stderr and "resgraph serve" in r.stderr


@needs_triton
def test_serve_refuses_a_port_in_use_and_dies_with_its_parent(digits_folder):
    import tritonclient.http as th
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run_cli("serve", str(digits_folder), "--port", str(port), "--grpc-port", "0", "--metrics-port", "0",
                    timeout=60)
        assert r.returncode == 1 and "port is in use" in r.stderr, r.stderr
    # kill -9 of serve: its Triton gets SIGTERM from the kernel (PR_SET_PDEATHSIG) and goes too
    p = subprocess.Popen(resgraph_cmd() + ["serve", str(digits_folder), "--port", "0", "--grpc-port", "0",
                                           "--metrics-port", "0", "--backend", "ort-cpu"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        ready = _read_ready(p)
        http = int(ready.split()[1])
        assert th.InferenceServerClient(f"127.0.0.1:{http}").is_server_ready()
        p.kill()
        p.wait(10)
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", http), timeout=1).close()
            except OSError:
                break
            time.sleep(0.5)
        else:
            pytest.fail("Triton outlived its serve process")
        # what the killed serve left (its repository, Triton's workspace) goes with the next server
        tmp = tempfile.gettempdir()

        def owned_by_serve():
            out = []
            for e in os.listdir(tmp):
                pid = os.path.join(tmp, e, "owner.pid")
                if e.startswith("resgraph-triton-") and os.path.isfile(pid) and open(pid).read().strip() == str(p.pid):
                    out.append(e)
            return out
        assert len(owned_by_serve()) == 2                     # its repository, and Triton's workspace
        from resgraph.triton.server import clean_stale_workspaces
        clean_stale_workspaces()
        assert owned_by_serve() == []
    finally:
        if p.poll() is None:
            p.kill()


def _read_ready(p, timeout: float = 120.0) -> str:
    """serve's `ready ...` line, within a bound (readline alone could block forever)."""
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sel.select(timeout=1):
            line = p.stdout.readline()
            if line.startswith("ready"):
                return line
            if not line:
                break
        if p.poll() is not None:
            break
    pytest.fail("serve never said it was ready")


def test_a_port_in_time_wait_counts_as_free():
    """After a server exits, its port's connections sit in TIME_WAIT for about a minute; servers bind
    with SO_REUSEADDR and can listen at once, so the pre-check must not call the port taken (it did)."""
    from resgraph.triton.server import _port_free
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = listener.accept()
    assert not _port_free("127.0.0.1", port)      # a listener holds it
    conn.close()                                  # the server side closes first: its end goes to TIME_WAIT
    client.close()
    listener.close()
    time.sleep(0.1)
    assert _port_free("127.0.0.1", port)


@needs_triton
def test_the_client_example_of_the_deployment_guide_runs(served, digits_folder, capsys, monkeypatch):
    """docs/deploy.md's Python client, as written, against the real server (its folder and address
    swapped for the test's): resgraph's preprocess, one request, the right digit."""
    import re

    from conftest import ROOT
    text = (ROOT / "docs" / "deploy.md").read_text()
    code = re.search(r"### A client\n.*?```python\n(.*?)```", text, re.S).group(1)
    code = code.replace('"compiled/digits_resnet"', repr(str(digits_folder))).replace('"localhost:8000"',
                                                                                          repr(served.http_url))
    monkeypatch.chdir(ROOT)   # the example's image path is the repository's
    exec(compile(code, "docs/deploy.md", "exec"), {})
    assert capsys.readouterr().out.strip() == "2"


# --- resgraph's HTTP front: what does not fit the model never reaches the core ---------------------

def _post(url: str, path: str, body: bytes, headers: dict | None = None) -> tuple[int, str]:
    import http.client
    host, port = url.split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        c.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})},
                  encode_chunked="Transfer-Encoding" in (headers or {}))
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        c.close()


def _infer(shape, data=None, datatype="FP32", name="image", **params) -> bytes:
    t = {"name": name, "shape": shape, "datatype": datatype}
    if params:
        t["parameters"] = params
    if data is not None:
        t["data"] = data
    return json.dumps({"inputs": [t]}).encode()


INFER = "/v2/models/digits_resnet/infer"
# (what is sent, the status, what the answer says): each would reach Triton's core otherwise
UNFIT = [
    ("the shape that aborts the core", INFER, _infer([32, 1, 100000, 100000], [0]), {}, 400,
     "has shape [32, 1, 100000, 100000]: the model takes [batch, 1, 8, 8] with batch 1 to 32"),
    ("the same, its path %-encoded", "/v2/models/digits%5Fresnet/infer", _infer([32, 1, 100000, 100000], [0]),
     {}, 400, "the model takes [batch, 1, 8, 8]"),
    ("a batch beyond max_batch", INFER, _infer([33, 1, 8, 8], [0.0] * 33 * 64), {}, 400, "batch 1 to 32"),
    ("a batch of 0", INFER, _infer([0, 1, 8, 8], []), {}, 400, "batch 1 to 32"),
    ("dims as strings", INFER, _infer(["1", 1, 8, 8], [0.0] * 64), {}, 400, "has shape"),
    ("another datatype", INFER, _infer([1, 1, 8, 8], [0] * 64, "FP64"), {}, 400, "the model takes FP32"),
    ("another input", INFER, _infer([1, 1, 8, 8], [0.0] * 64, name="x"), {}, 400, "unknown input 'x'"),
    ("too few values", INFER, _infer([2, 1, 8, 8], [0.0] * 64), {}, 400, "needs 128 numbers in \"data\", it holds 64"),
    ("NaN in the JSON", INFER, _infer([1, 1, 8, 8], [0.0] * 64).replace(b"0.0", b"NaN", 1), {}, 400,
     "NaN is not a number"),
    ("a binary size that is not the shape's", INFER, _infer([2, 1, 8, 8], binary_data_size=4) + b"\0" * 4,
     {"Inference-Header-Content-Length": str(len(_infer([2, 1, 8, 8], binary_data_size=4)))}, 400,
     "is 512 bytes, its binary_data_size says 4"),
    ("a binary header longer than the body", INFER, _infer([1, 1, 8, 8], binary_data_size=256),
     {"Inference-Header-Content-Length": "999999"}, 400, "is not a length within the body"),
    ("another model", "/v2/models/other/infer", _infer([1, 1, 8, 8], [0.0] * 64), {}, 404, "serves 'digits_resnet'"),
    ("no inputs", INFER, b"{}", {}, 400, "no \"inputs\" list"),
    ("a body too large", INFER, b" " * 200_000, {}, 413, "more than the 131,072 that a batch of 32 inputs takes"),
    ("a gzip bomb", INFER, __import__("gzip").compress(b" " * 50_000_000), {"Content-Encoding": "gzip"}, 413,
     "body (inflated) is more than the 131,072"),
    ("a chunked body too large", INFER, iter([b" " * 100_000] * 3), {"Transfer-Encoding": "chunked"}, 413,
     "is more than the 131,072"),
    ("an unknown encoding", INFER, b"{}", {"Content-Encoding": "br"}, 415, "gzip, deflate or none"),
]


@needs_triton
def test_requests_that_do_not_fit_the_model_are_refused_before_the_core_sees_them(served, direct):
    """Triton's HTTP endpoint allocates what a request's shape says: [32, 1, 100000, 100000] aborted the
    core (std::bad_alloc). Through serve's front, each unfit request gets Triton's error form with the
    reason, and the server goes on answering, in JSON, gzip and binary form."""
    for what, path, body, headers, status, says in UNFIT:
        got, text = _post(served.http_url, path, body, headers)
        error = json.loads(text)["error"]
        assert (got, says in error, error.startswith("resgraph: ")) == (status, True, True), (what, got, text)
    x = np.random.default_rng(5).standard_normal((3, 1, 8, 8), dtype=np.float32)
    want = direct.run(x)
    for body, headers in ((_infer([3, 1, 8, 8], x.reshape(3, 1, 8, 8).tolist()), {}),
                          (__import__("gzip").compress(_infer([3, 1, 8, 8], x.ravel().tolist())),
                           {"Content-Encoding": "gzip"})):
        got, text = _post(served.http_url, INFER, body, headers)
        assert got == 200, text
        y = np.array(json.loads(text)["outputs"][0]["data"], np.float32).reshape(3, 10)
        assert float(np.abs(y - want).max()) <= 1e-5
    assert served.core.proc.poll() is None


@needs_triton
def test_a_core_that_dies_is_started_again_then_given_up_on_with_its_cause(digits_folder):
    """The request that aborts Triton's core, sent to the core itself (what the front keeps out): serve
    reports the cause from the core's log, starts the core again with nothing of the dead one left
    (no <defunct> stub), and after more deaths than --restarts allows, stops with the cause."""
    from resgraph.triton.server import _group_members, serve, wait
    reports, outcome = [], []
    with serve(str(digits_folder), SERVED, 0, 0, 0) as (_, service):
        watcher = threading.Thread(target=lambda: outcome.append(_catch(wait, service, lambda lines, m:
                                                                         reports.append(m), restarts=1)))
        watcher.start()
        for death in (1, 2):
            core = service.core.proc.pid
            with pytest.raises(OSError):   # the core aborts while it answers
                _post(service.core.http_url, INFER, _infer([32, 1, 100000, 100000], [0]))
            deadline = time.monotonic() + 120
            while (service.core.proc is None or service.core.proc.pid == core) and watcher.is_alive() \
                    and time.monotonic() < deadline:
                time.sleep(0.2)
            if death == 1:
                _wait_http(service.http_url)      # the same port, answering again
                assert _group_members(core) == []  # the dead core's stubs: killed and reaped
        watcher.join(60)
    assert "Triton's core died (killed by SIGABRT: what():  std::bad_alloc)" in reports[0], reports
    assert "starting it again (1 of 1 restarts" in reports[1]
    assert isinstance(outcome[0], BackendError) and "died 2 times" in str(outcome[0]) \
        and "SIGABRT" in str(outcome[0]), outcome


def _catch(f, *args, **kwargs):
    try:
        return f(*args, **kwargs)
    except Exception as e:  # noqa: BLE001
        return e


def _wait_http(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got, _ = _post(url, INFER, _infer([1, 1, 8, 8], [0.0] * 64))
        if got == 200:
            return
        assert got == 503
        time.sleep(0.3)
    pytest.fail("the core did not come back")


def test_a_large_body_is_checked_off_the_event_loop_with_the_same_verdicts():
    """Bodies over 1 MB are parsed on a worker thread (megabytes of JSON would hold up every other
    connection): the same refusals, and what fits goes on to the core (none here: 503)."""
    from resgraph.triton.front import Fit, Front
    from resgraph.triton.server import free_port   # bound, then released: a core that is not there
    fit = Fit("big", {"image": ("FP32", (3, 64, 64))}, 8, max_body=(64 << 10) + 8 * 3 * 64 * 64 * 32)
    front = Front("127.0.0.1", 0, fit, free_port()).start()
    try:
        url, path = f"127.0.0.1:{front.port}", "/v2/models/big/infer"
        good = json.dumps({"inputs": [{"name": "image", "shape": [8, 3, 64, 64], "datatype": "FP32",
                                       "data": [0.1234567891] * (8 * 3 * 64 * 64)}]}).encode()
        assert len(good) > 1 << 20
        status, text = _post(url, path, good)
        assert status == 503 and "not answering" in text, text            # it fit: on to the (absent) core
        status, text = _post(url, path, good.replace(b"[8, 3, 64, 64]", b"[8, 3, 64, 65]"))
        assert status == 400 and "the model takes [batch, 3, 64, 64]" in text, text
    finally:
        front.stop()


# --- several inputs and outputs, and size variables ----------------------------------------------

# two inputs, three outputs (a map at the input's size, one at half of it, a vector), and sizes H, W
# that the graph takes only where they are even (the upsampled stride-2 path meets the full-size one)
SEG = """\
resgraph: 1
name: tiny_seg
inputs:
  - {name: image, shape: [3, H, W]}
  - {name: mask, shape: [1, H, W]}
sizes: {H: {min: 8, max: 40}, W: {min: 8, max: 40}}
outputs:
  - {name: seg, from: full}
  - {name: c2, from: s1}
  - {name: emb, from: head}
layers:
  - conv: {out: 4, kernel: 3, id: f}
  - conv: {out: 4, kernel: 3, stride: 2, id: a, in: image}
  - conv: {out: 4, kernel: 3, stride: 2, in: mask}
  - add: {from: [a], id: s1}
  - upsample: {scale: 2}
  - add: {from: [f], id: full}
  - global_avgpool: {in: s1}
  - flatten: {id: head}
"""
SEG_IO = ([("image", [3, -1, -1]), ("mask", [1, -1, -1])],
          [("seg", [4, -1, -1]), ("c2", [4, -1, -1]), ("emb", [4])])


@pytest.fixture(scope="module")
def seg_folder(tmp_path_factory):
    from resgraph.compile import compile_spec
    d = tmp_path_factory.mktemp("seg")
    (d / "tiny_seg.yaml").write_text(SEG)
    compile_spec(str(d / "tiny_seg.yaml"), out=str(d / "tiny_seg"))
    return d / "tiny_seg"


def _io(tensors) -> list:
    return [(t.name, list(t.dims), model_config_pb2.DataType.Name(t.data_type)) for t in tensors]


@pytest.mark.parametrize("platform", ["onnxruntime", "python"])
def test_a_multi_output_dynamic_size_model_exports_every_tensor_with_dynamic_dims(seg_folder, tmp_path, platform):
    """Every input and output by name, in spec order, TYPE_FP32, -1 where a size variable sets the dim
    (an input's H, an output's ceil(H / 2)), through Triton's own parser; for onnxruntime_onnx, the
    config's dims are model.onnx's (what Triton's onnxruntime backend checks at load): -1 exactly
    where the ONNX dim is symbolic."""
    import onnx
    path = export_triton(str(seg_folder), str(tmp_path / "repo"), TritonOptions(platform=platform))
    c = parse(os.path.join(path, "config.pbtxt"))
    want_in, want_out = SEG_IO
    assert _io(c.input) == [(n, d, "TYPE_FP32") for n, d in want_in]
    assert _io(c.output) == [(n, d, "TYPE_FP32") for n, d in want_out]
    assert not any(t.label_filename for t in c.output) and not os.path.exists(os.path.join(path, "labels.txt"))
    g = onnx.load(str(seg_folder / "model.onnx")).graph

    def dims(values):
        return [(v.name, [-1 if d.dim_param else d.dim_value for d in v.type.tensor_type.shape.dim][1:]) for v in values]
    assert (dims(g.input), dims(g.output)) == SEG_IO


SERVED_SEG = TritonOptions(platform="python", backend="ort-cpu", max_batch=32, batching=Batching(2000))


@pytest.fixture(scope="module")
def served_seg(seg_folder):
    from resgraph.triton.server import serve
    with serve(str(seg_folder), SERVED_SEG, 0, 0, 0) as (_, service):
        yield service


def _seg_feeds(n: int, h: int, w: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"image": rng.standard_normal((n, 3, h, w), dtype=np.float32),
            "mask": rng.standard_normal((n, 1, h, w), dtype=np.float32)}


def _ask(mod, client, feeds: dict, outputs=None):
    inputs = []
    for name, x in feeds.items():
        i = mod.InferInput(name, list(x.shape), "FP32")
        i.set_data_from_numpy(x)
        inputs.append(i)
    asked = [mod.InferRequestedOutput(o) for o in outputs] if outputs else None
    return client.infer("tiny_seg", inputs, outputs=asked)


@needs_triton
def test_serve_answers_a_dynamic_multi_output_model_at_two_sizes(served_seg, seg_folder):
    """Over HTTP (through serve's front) and gRPC, at 16x24 and 40x8: every output by name equals ONNX
    Runtime's run_all on the same inputs (abs <= 1e-5); a request may ask for one output only. Then 4
    clients at once, each alternating the two sizes, every answer its own request's (requests of both
    sizes wait in the dynamic batcher together)."""
    import tritonclient.grpc as tg
    import tritonclient.http as th
    from resgraph.runtime import open_session
    with open_session(str(seg_folder), "ort-cpu") as direct:
        for h, w in ((16, 24), (40, 8)):
            feeds = _seg_feeds(2, h, w)
            want = direct.run_all(feeds)
            assert [want[k].shape for k in want] == [(2, 4, h, w), (2, 4, h // 2, w // 2), (2, 4)]
            for mod, url in ((th, served_seg.http_url), (tg, served_seg.grpc_url)):
                c = mod.InferenceServerClient(url)
                r = _ask(mod, c, feeds)
                for name, y in want.items():
                    assert r.as_numpy(name).shape == y.shape and float(np.abs(r.as_numpy(name) - y).max()) <= 1e-5
                one = _ask(mod, c, feeds, ["c2"])
                assert one.as_numpy("seg") is None and float(np.abs(one.as_numpy("c2") - want["c2"]).max()) <= 1e-5
                c.close()
        failures, lock = [], threading.Lock()

        def client(k):
            c = th.InferenceServerClient(served_seg.http_url, connection_timeout=60, network_timeout=60)
            try:
                for j in range(8):
                    feeds = _seg_feeds(1 + j % 3, *((16, 24), (40, 8))[(j + k) % 2], seed=10 * k + j)
                    got = _ask(th, c, feeds)
                    with lock:
                        want = direct.run_all(feeds)
                    if any(float(np.abs(got.as_numpy(n) - y).max()) > 1e-5 for n, y in want.items()):
                        failures.append((k, j))
            except Exception as e:  # noqa: BLE001
                failures.append((k, repr(e)))
            finally:
                c.close()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads) and failures == [], failures[:5]


@needs_triton
def test_a_triton_session_runs_every_input_and_output_of_a_served_model(served_seg, seg_folder):
    """bench --triton's Session: run_all sends every input in one request and returns every output by
    name, as the in-process session does; run() of a two-input model says what to call instead."""
    from resgraph.errors import DataError
    from resgraph.manifest import read_manifest
    from resgraph.runtime import open_session
    from resgraph.runtime.triton_client import TritonSession
    remote = TritonSession(str(seg_folder), read_manifest(str(seg_folder)), f"http://{served_seg.http_url}", "tiny_seg")
    with open_session(str(seg_folder), "ort-cpu") as direct:
        feeds = _seg_feeds(3, 24, 16, seed=5)
        got, want = remote.run_all(feeds), direct.run_all(feeds)
    assert list(got) == list(want) == ["seg", "c2", "emb"]
    assert all(got[k].shape == want[k].shape and float(np.abs(got[k] - want[k]).max()) <= 1e-5 for k in want)
    with pytest.raises(DataError, match="takes 2 input"):
        remote.run(feeds["image"])
    with pytest.raises(DataError, match="H = 17 is not a size the model takes"):
        remote.run_all(_seg_feeds(1, 17, 16))
    remote.close()


def _seg_infer(*tensors) -> bytes:
    """An inference request of (name, shape) tensors, each with one value in "data" (a shape refused
    is refused before its values are counted)."""
    return json.dumps({"inputs": [{"name": n, "shape": s, "datatype": "FP32", "data": [0]} for n, s in tensors]}).encode()


SEG_INFER = "/v2/models/tiny_seg/infer"
NEAREST = "is not a size the model takes (multiples of 2 from 8 to 40); the nearest valid sizes are"
UNFIT_SIZES = [
    ("an odd H", _seg_infer(("image", [1, 3, 17, 16]), ("mask", [1, 1, 17, 16])),
     f"input 'image': H = 17 {NEAREST} 16 or 18: resize or pad to one"),
    ("an odd H, every value sent", json.dumps({"inputs": [
        {"name": n, "shape": [1, c, 17, 16], "datatype": "FP32", "data": [0.5] * (c * 17 * 16)}
        for n, c in (("image", 3), ("mask", 1))]}).encode(), f"input 'image': H = 17 {NEAREST} 16 or 18"),
    ("W below the range, the mask sent first", _seg_infer(("mask", [1, 1, 16, 7]), ("image", [1, 3, 16, 7])),
     f"input 'mask': W = 7 {NEAREST} 8 or 10"),
    ("the shape that aborts the core", _seg_infer(("image", [32, 3, 100000, 100000]), ("mask", [32, 1, 8, 8])),
     f"input 'image': H = 100000 {NEAREST} 38 or 40"),
    ("H not the same in both inputs", _seg_infer(("image", [1, 3, 16, 16]), ("mask", [1, 1, 18, 16])),
     "input 'mask': H is 18 here but 16 in input 'image': every input's H is the same size"),
    ("batches that differ", _seg_infer(("image", [2, 3, 16, 16]), ("mask", [1, 1, 16, 16])),
     "input 'mask' has a batch of 1, but 'image' has 2"),
    ("a fixed dim not the model's", _seg_infer(("image", [1, 1, 16, 16]), ("mask", [1, 1, 16, 16])),
     "input 'image' has shape [1, 1, 16, 16]: the model takes [batch, 3, H, W] with batch 1 to 32"),
    ("an input missing", _seg_infer(("image", [1, 3, 16, 16])), "the model takes image, mask; mask not given"),
    ("an input twice", _seg_infer(("image", [1, 3, 16, 16]), ("image", [1, 3, 16, 16])), "input 'image' is given twice"),
    ("a body beyond a full batch at the largest sizes", b" " * 6_700_000,
     "more than the 6,619,136 that a batch of 32 inputs at the largest valid sizes takes"),
]


def test_the_front_bounds_a_dynamic_model_by_its_largest_valid_sizes(seg_folder):
    """Fit (what serve's front admits) from the manifest: every input by name with its size variables,
    and the largest body a full batch of every input at the largest valid sizes (40x40) as JSON."""
    from resgraph.manifest import read_manifest
    from resgraph.triton.front import JSON_BYTES_PER_VALUE, Fit
    fit = Fit.of("tiny_seg", read_manifest(str(seg_folder)), 32)
    assert fit.inputs == {"image": ("FP32", (3, "H", "W")), "mask": ("FP32", (1, "H", "W"))}
    assert fit.max_body == (64 << 10) + 32 * (3 + 1) * 40 * 40 * JSON_BYTES_PER_VALUE == 6_619_136
    assert fit.sizes["H"].valid == tuple(range(8, 41, 2))


@needs_triton
def test_sizes_a_dynamic_model_does_not_take_are_refused_per_input_before_the_core(served_seg):
    """Through serve's front, a size outside the valid ones is refused (400) naming the input and the
    nearest valid sizes, in run's words, and so is what else does not fit the inputs together; the
    core's statistics show none of it reached it (a request the model refuses counts as one there). Over gRPC (the core's own port) the model refuses
    the odd H with the same words."""
    import tritonclient.grpc as tg
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException
    c = th.InferenceServerClient(served_seg.http_url)
    before = c.get_inference_statistics("tiny_seg")["model_stats"][0]["inference_stats"]
    for what, body, says in UNFIT_SIZES:
        got, text = _post(served_seg.http_url, SEG_INFER, body)
        error = json.loads(text)["error"]
        assert (got, says in error) == (413 if "body" in what else 400, True), (what, got, text)
    after = c.get_inference_statistics("tiny_seg")["model_stats"][0]["inference_stats"]
    assert (after["success"], after["fail"]) == (before["success"], before["fail"])
    g = tg.InferenceServerClient(served_seg.grpc_url)
    with pytest.raises(InferenceServerException, match=f"input 'image': H = 17 {re.escape(NEAREST)} 16 or 18"):
        _ask(tg, g, _seg_feeds(1, 17, 16))
    g.close()
    assert float(np.abs(_ask(th, c, _seg_feeds(1, 8, 40)).as_numpy("emb")).max()) >= 0   # still answering
    c.close()


@needs_triton
def test_the_multi_output_example_of_the_deployment_guide_is_what_resgraph_does(served_seg, seg_folder, tmp_path,
                                                                                 capsys):
    """docs/deploy.md's size-variable example, block by block: its spec is this file's SEG, its
    config.pbtxt is what `export triton` writes for it, its client (folder and address swapped for the
    test's) prints what the guide shows against the real server, and its curl gets the refusal shown."""
    from conftest import ROOT
    text = (ROOT / "docs" / "deploy.md").read_text()
    section = text[text.index("### Several inputs and outputs, any valid size"):]
    yaml_, config, code, printed, curl = (m.group(2) for m in re.finditer(r"```(yaml|python|bash|)\n(.*?)```",
                                                                         section, re.S))
    assert yaml_ == SEG
    path = export_triton(str(seg_folder), str(tmp_path / "repo"), TritonOptions())
    assert open(os.path.join(path, "config.pbtxt")).read() == config
    code = code.replace('"compiled/tiny_seg"', repr(str(seg_folder))).replace('"localhost:8000"',
                                                                              repr(served_seg.http_url))
    exec(compile(code, "docs/deploy.md", "exec"), {})
    assert capsys.readouterr().out == printed
    request, answer = re.fullmatch(r"\$ curl -s \S+ -d '(.*?)'\n(.*)\n", curl, re.S).groups()
    assert _post(served_seg.http_url, SEG_INFER, request.encode()) == (400, answer)
