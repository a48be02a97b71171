"""`resgraph compile`: artifacts, manifest, atomicity under kill -9 and Ctrl-C, errors, no torch with weights."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("onnx", reason="the onnx extra is not installed")
pytest.importorskip("safetensors", reason="safetensors is not installed")

from conftest import ROOT, resgraph_cmd, run_cli  # noqa: E402

DIGITS_W = str(ROOT / "specs" / "weights" / "digits_resnet.safetensors")


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_compile_writes_four_artifacts_and_an_honest_manifest(tmp_path):
    out = tmp_path / "digits"
    p = run_cli("compile", "specs/digits_resnet.yaml", "--weights", DIGITS_W, "-o", str(out))
    assert p.returncode == 0, p.stderr
    assert sorted(os.listdir(out)) == ["manifest.json", "model.onnx", "spec.yaml", "weights.safetensors"]
    m = json.loads((out / "manifest.json").read_text())
    assert m["name"] == "digits_resnet" and m["trained"] is True and m["precision"] == "fp32" and m["opset"] == 17
    assert m["folded"] is True and m["input"] == {"name": "image", "shape": ["batch", 1, 8, 8], "dtype": "float32"}
    assert m["output"] == {"name": "logits", "shape": ["batch", 10], "dtype": "float32"} and m["labels"][3] == "3"
    assert m["format"] == 4 and m["quantization"] is None and m["spec"] == "spec.yaml" and m["spec_sha256"] == sha(out / "spec.yaml")
    assert [p["at"] for p in m["projections"]] == ["layer2", "layer3"] and m["params"] == 77_754
    for name, info in m["artifacts"].items():
        assert info["sha256"] == sha(out / name) and info["bytes"] == os.path.getsize(out / name)
    assert sha(out / "weights.safetensors") == sha(DIGITS_W)   # the checked checkpoint, byte for byte
    assert oct(os.stat(out / "model.onnx").st_mode & 0o777) == "0o644"
    with pytest.raises(AssertionError, match="FLOAT16"):   # the fp16 check below refuses this fp32 model
        assert_fp16_model(out / "model.onnx", 17)
    # an untrained compile says so
    p = run_cli("compile", "specs/residual_mlp.yaml", "-o", str(tmp_path / "mlp"), "--precision", "fp16", "--opset", "21", "--no-fold")
    assert p.returncode == 0 and "untrained" in p.stdout
    m = json.loads((tmp_path / "mlp" / "manifest.json").read_text())
    assert (m["trained"], m["precision"], m["opset"], m["folded"]) == (False, "fp16", 21, False)
    assert_fp16_model(tmp_path / "mlp" / "model.onnx", 21)   # and the model itself says so


def assert_fp16_model(path, opset):
    """What --precision fp16 --opset N promise, read from the ONNX file: every floating initializer FLOAT16,
    the graph's input and output FLOAT (a Cast at each edge), the default domain at version N."""
    import onnx
    from onnx import TensorProto
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", opset)]
    floating = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
    types = {t.name: t.data_type for t in model.graph.initializer if t.data_type in floating}
    assert types and set(types.values()) == {TensorProto.FLOAT16}, \
        f"not FLOAT16: { {k: TensorProto.DataType.Name(v) for k, v in types.items() if v != TensorProto.FLOAT16} }"
    ends = list(model.graph.input) + list(model.graph.output)
    assert len(ends) == 2 and all(v.type.tensor_type.elem_type == TensorProto.FLOAT for v in ends), ends
    first = next(n for n in model.graph.node if model.graph.input[0].name in n.input)
    assert first.op_type == "Cast" and cast_to(first) == TensorProto.FLOAT16
    last = next(n for n in model.graph.node if model.graph.output[0].name in n.output)
    assert last.op_type == "Cast" and cast_to(last) == TensorProto.FLOAT
    return model


def cast_to(node):
    import onnx
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}["to"]


@pytest.mark.parametrize("opset", [18, 21])
def test_fp16_opset_and_folding_are_in_the_onnx_file(tmp_path, opset):
    """digits_resnet has 9 bn: bn1, two in each of the 3 blocks, one in each of the 2 inserted Ws (conv1x1 + bn)."""
    for fold in (False, True):
        out = tmp_path / f"fold_{fold}"
        p = run_cli("compile", "specs/digits_resnet.yaml", "--weights", DIGITS_W, "-o", str(out), "--precision", "fp16",
                    "--opset", str(opset), *([] if fold else ["--no-fold"]))
        assert p.returncode == 0, p.stderr
        model = assert_fp16_model(out / "model.onnx", opset)
        ops = [n.op_type for n in model.graph.node]
        assert ops.count("BatchNormalization") == (0 if fold else 9), ops
        assert ops.count("Conv") == 9 and ops.count("Gemm") == 1, ops   # 7 written + 2 Ws convs; fc
        m = json.loads((out / "manifest.json").read_text())
        assert (m["precision"], m["opset"], m["folded"]) == ("fp16", opset, fold)


def test_compiled_model_classifies_digits_with_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    np = pytest.importorskip("numpy")
    from sklearn.datasets import load_digits
    run_cli("compile", "specs/digits_resnet.yaml", "--weights", DIGITS_W, "-o", str(tmp_path / "d"))
    s = ort.InferenceSession(str(tmp_path / "d" / "model.onnx"), providers=["CPUExecutionProvider"])
    d = load_digits()
    x = ((d.images / 16.0 - 0.3) / 0.38).astype(np.float32)[:, None]
    acc = (s.run(None, {"image": x})[0].argmax(1) == d.target).mean()
    assert acc > 0.97


def test_no_torch_when_weights_come_from_a_file(tmp_path):
    probe = ("import sys\nfrom resgraph.cli import cli\n"
             f"try:\n    cli(['compile', 'specs/digits_resnet.yaml', '--weights', {DIGITS_W!r}, '-o', {str(tmp_path / 'x')!r}],"
             " standalone_mode=False)\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
             "print('TORCH', 'torch' in sys.modules)\n")
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().endswith("TORCH False") and (tmp_path / "x" / "model.onnx").exists()


@pytest.mark.parametrize("args,fragment", [
    (["--weights", "nope.safetensors"], "no such weights file"),
    (["--weights", "specs/cifar_resnet20_a.yaml"], "not a readable safetensors file"),
    (["--opset", "12"], "opset 12 is not supported"),
])
def test_bad_input_is_a_clean_error_with_no_output(tmp_path, args, fragment):
    out = tmp_path / "o"
    p = run_cli("compile", "specs/digits_resnet.yaml", "-o", str(out), *args)
    assert p.returncode == 1 and fragment in p.stderr and "Traceback" not in p.stderr
    assert not out.exists() and not [e for e in os.listdir(tmp_path) if e.startswith(".")]


def test_mismatched_weights_and_unwritable_places(tmp_path):
    p = run_cli("compile", "specs/resnet18.yaml", "--weights", DIGITS_W, "-o", str(tmp_path / "o"))
    assert p.returncode == 1 and "the checkpoint does not fit the spec" in p.stderr and "missing (" in p.stderr
    blocker = tmp_path / "file"
    blocker.write_text("x")
    p = run_cli("compile", "specs/digits_resnet.yaml", "--weights", DIGITS_W, "-o", str(blocker))
    assert p.returncode == 2 and "is a file" in p.stderr   # click refuses it as a usage error
    p = run_cli("compile", "specs/digits_resnet.yaml", "--weights", DIGITS_W, "-o", str(blocker / "sub" / "o"))
    assert p.returncode == 1 and "cannot create the output folder" in p.stderr


@pytest.fixture(scope="module")
def big_weights(tmp_path_factory):
    """resnet50 weights (100 MB), so that a compile spends long enough writing to be caught in the act."""
    pytest.importorskip("torch")
    w = tmp_path_factory.mktemp("w") / "r50.safetensors"
    assert run_cli("init", "specs/resnet50.yaml", "-o", str(w)).returncode == 0
    return str(w)


def start_compile(out, weights):
    return subprocess.Popen(resgraph_cmd() + ["compile", "specs/resnet50.yaml", "--weights", weights, "-o", str(out)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_staging(parent, proc, timeout=120):
    """Until the compile has begun writing into its staging folder."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        for e in os.scandir(parent):
            if e.name.startswith(".") and "staging" in e.name and e.is_dir() and os.listdir(e.path):
                return True
        time.sleep(0.002)
    return False


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_killed_mid_write_leaves_previous_artifacts_intact(tmp_path, big_weights, sig):
    out = tmp_path / "r50"
    assert run_cli("compile", "specs/resnet50.yaml", "--weights", big_weights, "-o", str(out)).returncode == 0
    before = {f: sha(out / f) for f in os.listdir(out)}
    caught = 0
    for _ in range(5):   # the write phase is short: try a few times to land inside it
        proc = start_compile(out, big_weights)
        if wait_for_staging(tmp_path, proc):
            proc.send_signal(sig)
            caught += 1
        proc.wait(timeout=120)
        assert {f: sha(out / f) for f in os.listdir(out)} == before, "the previous artifacts changed"
        assert sorted(os.listdir(out)) == sorted(before), "a partial file appeared"
        if caught:
            break
    assert caught, "never caught the compile while it was writing"
    if sig == signal.SIGINT:   # Ctrl-C cleans up its staging folder itself
        assert not [e for e in os.listdir(tmp_path) if "staging" in e]
    # the next compile succeeds and removes any stale staging folder left by kill -9
    assert run_cli("compile", "specs/resnet50.yaml", "--weights", big_weights, "-o", str(out)).returncode == 0
    assert not [e for e in os.listdir(tmp_path) if "staging" in e]


def compile_digits(out, weights=DIGITS_W, **kw):
    from resgraph.compile import compile_spec
    return compile_spec(str(ROOT / "specs" / "digits_resnet.yaml"), weights=str(weights), out=str(out), **kw)


def hidden(folder):
    from resgraph.compile import wait_for_cleanup
    wait_for_cleanup()   # the replaced set is deleted in the background
    return [e for e in os.listdir(folder) if e.startswith(".")]


def test_a_new_output_folder_appears_whole_with_ordinary_permissions(tmp_path):
    out = tmp_path / "new"
    compile_digits(out)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(out).st_mode & 0o777 == 0o777 & ~umask   # not the staging folder's owner-only mode
    assert sorted(os.listdir(out)) == ["manifest.json", "model.onnx", "spec.yaml", "weights.safetensors"] and not hidden(tmp_path)


def test_recompiling_swaps_the_whole_set_and_keeps_the_folder_mode(tmp_path):
    out = tmp_path / "d"
    compile_digits(out)
    os.chmod(out, 0o750)
    inode = os.stat(out).st_ino
    compile_digits(out, fold=False)
    assert os.stat(out).st_ino != inode, "expected the staging folder to be exchanged in"
    assert os.stat(out).st_mode & 0o777 == 0o750
    m = json.loads((out / "manifest.json").read_text())
    assert m["folded"] is False and all(info["sha256"] == sha(out / n) for n, info in m["artifacts"].items())
    assert sorted(os.listdir(out)) == ["manifest.json", "model.onnx", "spec.yaml", "weights.safetensors"] and not hidden(tmp_path)
    # a compile process deletes the replaced set before it exits
    assert run_cli("compile", "specs/digits_resnet.yaml", "--weights", DIGITS_W, "-o", str(out)).returncode == 0
    assert not [e for e in os.listdir(tmp_path) if e.startswith(".")]


def test_recompiling_keeps_other_files_in_the_folder(tmp_path):
    out = tmp_path / "d"
    compile_digits(out)
    (out / "notes.txt").write_text("mine")
    compile_digits(out, fold=False)   # file by file: the folder is not swapped away with notes.txt in it
    assert (out / "notes.txt").read_text() == "mine"
    m = json.loads((out / "manifest.json").read_text())
    assert m["folded"] is False and all(info["sha256"] == sha(out / n) for n, info in m["artifacts"].items())
    assert not hidden(tmp_path)


def test_a_symlinked_output_folder_stays_a_link(tmp_path):
    real = tmp_path / "store" / "digits-v1"
    real.mkdir(parents=True)
    link = tmp_path / "current"
    link.symlink_to(real, target_is_directory=True)
    compile_digits(link)
    compile_digits(link, fold=False)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert json.loads((real / "manifest.json").read_text())["folded"] is False
    assert not hidden(tmp_path) and not hidden(real.parent)


def test_weights_from_resgraph_init_are_flagged_untrained(tmp_path):
    pytest.importorskip("torch")
    w = tmp_path / "w.safetensors"
    assert run_cli("init", "specs/digits_resnet.yaml", "-o", str(w)).returncode == 0
    m = compile_digits(tmp_path / "o", weights=w).manifest
    assert m.trained is False and m.weights_source == str(w)


def test_exchange_swaps_two_folders_in_one_step(tmp_path):
    from resgraph.fileio import exchange
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("from a")
    (b / "y").write_text("from b")
    if not exchange(str(a), str(b)):
        pytest.skip("this filesystem cannot exchange paths (renameat2 RENAME_EXCHANGE)")
    assert os.listdir(a) == ["y"] and os.listdir(b) == ["x"]
    with pytest.raises(FileNotFoundError):
        exchange(str(a), str(tmp_path / "missing"))


def test_external_data_gives_the_same_model_with_mapped_weights(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    np = pytest.importorskip("numpy")
    import onnx
    pytest.importorskip("torch")
    w = tmp_path / "r18.safetensors"
    assert run_cli("init", "specs/resnet18.yaml", "-o", str(w)).returncode == 0
    one, ext = tmp_path / "one", tmp_path / "ext"
    p = run_cli("compile", "specs/resnet18.yaml", "--weights", str(w), "-o", str(ext), "--external-data")
    assert p.returncode == 0, p.stderr
    assert "model.onnx.data" in p.stdout
    from resgraph.compile import compile_spec
    compile_spec(str(ROOT / "specs" / "resnet18.yaml"), weights=str(w), out=str(one))
    m = json.loads((ext / "manifest.json").read_text())
    assert m["external_data"] == "model.onnx.data" and set(m["artifacts"]) == {"model.onnx", "model.onnx.data", "weights.safetensors", "spec.yaml"}
    assert all(info["sha256"] == sha(ext / n) and info["bytes"] == os.path.getsize(ext / n) for n, info in m["artifacts"].items())
    assert json.loads((one / "manifest.json").read_text())["external_data"] is None
    assert os.path.getsize(ext / "model.onnx") < 100_000 < os.path.getsize(ext / "model.onnx.data")
    # every large tensor where ONNX Runtime can map it; the same initializers as the one-file model
    meta = onnx.load(str(ext / "model.onnx"), load_external_data=False)
    for t in meta.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in t.external_data}
            assert info["location"] == "model.onnx.data"
            assert int(info["length"]) < 1 << 20 or int(info["offset"]) % (1 << 16) == 0, t.name
    a, b = onnx.load(str(one / "model.onnx")), onnx.load(str(ext / "model.onnx"))
    assert {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in a.graph.initializer} == \
           {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in b.graph.initializer}
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    outs = [ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
            for d in (one, ext)]
    assert np.array_equal(outs[0], outs[1])
    # back to one file: the side file goes, whether the folder is swapped or updated file by file
    compile_spec(str(ROOT / "specs" / "resnet18.yaml"), weights=str(w), out=str(ext))
    assert not (ext / "model.onnx.data").exists()
    compile_spec(str(ROOT / "specs" / "resnet18.yaml"), weights=str(w), out=str(ext), external_data=True)
    (ext / "notes.txt").write_text("mine")
    compile_spec(str(ROOT / "specs" / "resnet18.yaml"), weights=str(w), out=str(ext))
    assert sorted(os.listdir(ext)) == ["manifest.json", "model.onnx", "notes.txt", "spec.yaml", "weights.safetensors"]


def test_a_model_too_large_for_one_protobuf_keeps_its_weights_beside_it(tmp_path, monkeypatch):
    """Protobuf cannot parse 2 GiB: past the limit compile switches to external data by itself (the
    limit lowered here to the digits model's size; the real limit is exercised by the next test)."""
    import resgraph.backends.onnx.writer as writer
    monkeypatch.setattr(writer, "PROTOBUF_LIMIT", 300_000)   # the digits model is ~313 kB
    m = compile_digits(tmp_path / "d").manifest
    assert m.external_data == "model.onnx.data" and (tmp_path / "d" / "model.onnx.data").exists()


def test_a_model_over_2_gib_compiles_and_runs(tmp_path):
    """A real 2.15 GB linear layer (538M parameters): one .onnx cannot hold it, so its weights go
    to model.onnx.data, and ONNX Runtime loads and runs it. ~6 GB of temporary files."""
    ort = pytest.importorskip("onnxruntime")
    np = pytest.importorskip("numpy")
    from safetensors.numpy import save_file
    n = 23_200
    spec = tmp_path / "huge.yaml"
    spec.write_text(f"resgraph: 1\nname: huge\ninput: {{name: x, shape: [{n}]}}\nlayers:\n  - linear: {{id: fc, out: {n}}}\n")
    w = np.empty((n, n), np.float32)
    w[:] = ((np.arange(n, dtype=np.float32) % 7 - 3) / n)[:, None]   # row i: (i mod 7 - 3) / n
    b = np.linspace(-1, 1, n, dtype=np.float32)
    save_file({"fc.weight": w, "fc.bias": b}, str(tmp_path / "w.safetensors"))
    del w
    from resgraph.compile import compile_spec
    c = compile_spec(str(spec), weights=str(tmp_path / "w.safetensors"), out=str(tmp_path / "out"))
    (tmp_path / "w.safetensors").unlink()
    assert c.manifest.external_data == "model.onnx.data" and c.manifest.artifacts["model.onnx.data"].bytes > 2**31
    assert os.path.getsize(tmp_path / "out" / "model.onnx") < 10_000
    x = np.random.default_rng(0).standard_normal((2, n)).astype(np.float32)
    y = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    want = ((np.arange(n) % 7 - 3) / n)[None, :] * x.astype(np.float64).sum(1, keepdims=True) + b
    assert np.abs(y - want).max() <= 1e-4


def test_a_bfloat16_checkpoint_compiles_to_fp32(tmp_path):
    torch = pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    np = pytest.importorskip("numpy")
    from safetensors.torch import load_file, save_file
    from sklearn.datasets import load_digits
    bf16 = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in load_file(DIGITS_W).items()}
    save_file(bf16, str(tmp_path / "bf16.safetensors"))
    p = run_cli("compile", "specs/digits_resnet.yaml", "--weights", str(tmp_path / "bf16.safetensors"), "-o", str(tmp_path / "o"))
    assert p.returncode == 0, p.stderr
    s = ort.InferenceSession(str(tmp_path / "o" / "model.onnx"), providers=["CPUExecutionProvider"])
    d = load_digits()
    x = ((d.images / 16.0 - 0.3) / 0.38).astype(np.float32)[:, None]
    assert (s.run(None, {"image": x})[0].argmax(1) == d.target).mean() > 0.97


def test_weights_with_nan_or_inf_are_refused(tmp_path):
    np = pytest.importorskip("numpy")
    from safetensors.numpy import load_file, save_file
    w = load_file(DIGITS_W)
    w["layer2.conv1.weight"][0, 0, 0, 0] = np.nan
    w["fc.bias"][3] = np.inf
    save_file(w, str(tmp_path / "nan.safetensors"))
    p = run_cli("compile", "specs/digits_resnet.yaml", "--weights", str(tmp_path / "nan.safetensors"), "-o", str(tmp_path / "o"))
    assert p.returncode == 1 and "not all finite" in p.stderr and "2 tensor(s)" in p.stderr
    assert "layer2.conv1.weight" in p.stderr and "fc.bias" in p.stderr and "diverged" in p.stderr
    assert not (tmp_path / "o").exists() and not [e for e in os.listdir(tmp_path) if e.startswith(".")]


def test_weights_that_overflow_fp16_after_folding_are_refused(tmp_path):
    from safetensors.numpy import load_file, save_file
    w = load_file(DIGITS_W)
    w["layer2.conv1.weight"][0] = 1000.0
    w["layer2.bn1.running_var"][0] = 1e-6   # folded: 1000 * gamma / sqrt(1e-6 + 1e-5) ~ 3e5
    save_file(w, str(tmp_path / "big.safetensors"))
    args = ["compile", "specs/digits_resnet.yaml", "--weights", str(tmp_path / "big.safetensors"), "--precision", "fp16"]
    p = run_cli(*args, "-o", str(tmp_path / "o"))
    assert p.returncode == 1 and "overflow fp16" in p.stderr and "layer2.conv1.weight" in p.stderr and "--no-fold" in p.stderr
    assert not (tmp_path / "o").exists()
    # fp32 is fine; unfolded fp16 too (1000 fits)
    assert run_cli(*args[:4], "-o", str(tmp_path / "o32")).returncode == 0
    assert run_cli(*args, "--no-fold", "-o", str(tmp_path / "o16")).returncode == 0


EPS0 = """resgraph: 1
name: eps0
input: {shape: [3, 8, 8]}
layers:
  - conv: {id: conv1, out: 8, kernel: 3, bias: false}
  - bn: {id: bn1}
  - relu
  - conv: {id: conv2, out: 8, kernel: 3, bias: false}
  - bn: {id: bn2, eps: 0}
  - relu
  - global_avgpool
  - flatten
  - linear: {id: fc, out: 4}
"""


def test_a_fold_that_gives_nan_or_inf_is_refused_and_publishes_nothing(tmp_path, write_spec):
    """bn2 has eps 0 (bn accepts it) and one channel's running_var is 0: every value of the checkpoint is
    finite and every variance >= 0, so load's checks pass, but gamma / sqrt(0 + 0) is inf, and folding
    puts inf (and NaN) in conv2's weight and bias. compile must refuse the folded tensors by name, with
    --no-fold in the hint, exit 1, and publish nothing: no folder where there was none, and a folder
    compiled before unchanged."""
    np = pytest.importorskip("numpy")
    from safetensors.numpy import save_file

    from resgraph.frontend import check_file
    from resgraph.ops.count import state_dict_shapes
    spec = write_spec(EPS0)
    shapes = state_dict_shapes(check_file(spec).graph)
    rng = np.random.default_rng(0)
    w = {k: (np.array(0, np.int64) if k.endswith("num_batches_tracked") else
             (rng.random(s) + 0.5).astype(np.float32) if k.endswith(("running_var", "bn1.weight", "bn2.weight")) else
             rng.standard_normal(s).astype(np.float32)) for k, s in shapes.items()}
    save_file(w, str(tmp_path / "good.safetensors"))
    w["bn2.running_var"][3] = 0.0
    save_file(w, str(tmp_path / "zero_var.safetensors"))

    out = tmp_path / "o"
    p = run_cli("compile", spec, "--weights", str(tmp_path / "zero_var.safetensors"), "-o", str(out))
    assert p.returncode == 1, p.stderr
    assert "folding batch norm gives NaN or inf in 2 tensor(s): conv2.weight, conv2.bias" in p.stderr, p.stderr
    assert "conv1." not in p.stderr and "--no-fold" in p.stderr and "Traceback" not in p.stderr
    assert "RuntimeWarning" not in p.stderr   # numpy's divide-by-zero warning is not the user's message
    assert not out.exists() and not [e for e in os.listdir(tmp_path) if e.startswith(".")]

    # over a folder compiled before: refused the same way, and the folder as it was, byte for byte
    assert run_cli("compile", spec, "--weights", str(tmp_path / "good.safetensors"), "-o", str(out)).returncode == 0
    before = {e: sha(out / e) for e in os.listdir(out)}
    p = run_cli("compile", spec, "--weights", str(tmp_path / "zero_var.safetensors"), "-o", str(out))
    assert p.returncode == 1 and "conv2.weight" in p.stderr and "--no-fold" in p.stderr, p.stderr
    assert {e: sha(out / e) for e in os.listdir(out)} == before
    assert not [e for e in os.listdir(tmp_path) if e.startswith(".")]
    # unfolded, the bn stays a BatchNormalization node with the checkpoint's statistics: it compiles
    assert run_cli("compile", spec, "--weights", str(tmp_path / "zero_var.safetensors"), "--no-fold",
                   "-o", str(tmp_path / "unfolded")).returncode == 0
