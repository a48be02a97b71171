import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.yaml"))


def check_small(path):
    """A shipped spec, checked; one with size variables at a small valid size (the first one from 64,
    per axis): its check's graph is at the largest size (unet: 1024 x 1024), slow to run on a CPU."""
    import resgraph
    checked = resgraph.check(str(path))
    if checked.sizes is None:
        return checked
    from resgraph.frontend import check_at
    names = checked.spec.inputs[0].vars[1:]
    small = [next((n for n in checked.sizes.valid[v] if n >= 64), checked.sizes.valid[v][-1]) for v in names]
    return check_at(checked, tuple(small))

# tests/ mirrors the package (tests/spec, tests/backends/onnx, tests/runtime, ...), and a test module may
# take a helper from another folder's by module name (test_onnx_backend's ALL_OPS, test_torchvision_import's
# assert_same_outputs): every folder that holds test modules is on the path, as pytest puts each one there
# when it collects it. Only those: a folder above them (tests/backends) on the path would make its
# subfolders importable as namespace packages, and tests/backends/tensorrt would pass for TensorRT
for _folder in sorted({p.parent for p in Path(__file__).parent.rglob("*.py")}):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A skip that skip_policy refuses (under CI, or with RESGRAPH_REQUIRE_GPU) fails the test."""
    report = (yield).get_result()
    _hold_to_policy(report)


_REFUSED_MODULE_SKIPS: list[str] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """The same for a module that skips as a whole (importorskip at its top): the run goes on (a
    failed collection would interrupt it) and fails at its end, naming the module."""
    report = (yield).get_result()
    why = _refused(report)
    if why is not None:
        _REFUSED_MODULE_SKIPS.append(f"{report.nodeid}: {why}")


def pytest_terminal_summary(terminalreporter):
    for line in _REFUSED_MODULE_SKIPS:
        terminalreporter.write_line(f"FAILED (a module skipped) {line}", red=True)


def pytest_sessionfinish(session, exitstatus):
    if hasattr(session.config, "workeroutput"):   # an xdist worker: its controller decides
        session.config.workeroutput["refused_module_skips"] = list(_REFUSED_MODULE_SKIPS)
    elif _REFUSED_MODULE_SKIPS and exitstatus in (0, 5):   # 5: nothing else was collected
        session.exitstatus = 1


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """xdist's controller: the module skips a worker refused (collection runs in the workers)."""
    _REFUSED_MODULE_SKIPS.extend(getattr(node, "workeroutput", {}).get("refused_module_skips", []))


def _hold_to_policy(report) -> None:
    why = _refused(report)
    if why is not None:
        report.outcome, report.longrepr = "failed", why


def _refused(report) -> str | None:
    from skip_policy import reason_of, verdict
    if report.skipped and not hasattr(report, "wasxfail"):
        return verdict(reason_of(report))
    return None


def resgraph_cmd():
    """The installed console script if present (what users run), else `python -m resgraph`."""
    exe = Path(sys.executable).with_name("resgraph")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "resgraph"]


def run_cli(*args, cwd=ROOT, timeout=60):
    return subprocess.run(resgraph_cmd() + list(args), capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})


def run_inproc(*args, timeout=None):
    """The command line in this process (click's CliRunner: resgraph's own error handling, exit code,
    stdout and stderr), as a CompletedProcess-like result; for refusals that need no separate process
    (a hang, a resource limit or a crash do: run_cli). `timeout` is accepted for run_cli's signature
    and not enforced."""
    import types

    from click.testing import CliRunner

    from resgraph.cli import cli
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return types.SimpleNamespace(returncode=r.exit_code, stdout=r.stdout, stderr=r.stderr)


@pytest.fixture
def write_spec(tmp_path):
    def write(text: str, name: str = "spec.yaml") -> str:
        """A spec's text as a file; a shipped spec's labels file goes beside it, as a user copies it."""
        p = tmp_path / name
        p.write_text(text)
        if "imagenet_classes.txt" in text and not (tmp_path / "imagenet_classes.txt").exists():
            shutil.copy(ROOT / "specs" / "imagenet_classes.txt", tmp_path)
        return str(p)
    return write


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory):
    """The shipped digits ResNet, compiled with its trained weights (ONNX Runtime and torch read it)."""
    from resgraph.compile import compile_spec
    out = tmp_path_factory.mktemp("compiled") / "digits_resnet"
    compile_spec(str(ROOT / "specs" / "digits_resnet.yaml"), weights=str(ROOT / "specs" / "weights" / "digits_resnet.safetensors"),
                 out=str(out))
    return out


def assert_onnx_parity(checked, batch: int = 2, seed: int = 0, folds=(False, True), atol: float = 1e-4):
    """The compiler's proof for one spec: its PyTorch module (seeded init, eval) and ONNX Runtime on the
    emitted model agree within `atol` on normalised random input, with bn folded and not."""
    import numpy as np
    import onnxruntime as ort
    import torch

    import resgraph
    from resgraph.backends.onnx import to_onnx
    from resgraph.passes.inference import for_inference
    m = resgraph.to_torch(checked, seed=seed).eval()
    w = {k: v.numpy() for k, v in m.state_dict().items()}
    x = np.random.default_rng(seed).standard_normal((batch, *checked.graph.nodes[0].shape)).astype(np.float32)
    with torch.no_grad():
        ref = m(torch.from_numpy(x)).numpy()
    for fold in folds:
        s = ort.InferenceSession(to_onnx(*for_inference(checked.graph, w, fold=fold)).SerializeToString(),
                                 providers=["CPUExecutionProvider"])
        got = s.run(None, {s.get_inputs()[0].name: x})[0]
        assert np.abs(got - ref).max() <= atol, (fold, float(np.abs(got - ref).max()))
    return ref


def import_refusal(spec, model):
    """The one diagnostic of importing `model`'s weights into `spec`'s module, which must be refused
    (a WeightsError): both on the meta device, since matching fails before anything is copied or run."""
    import torch

    import resgraph
    from resgraph.backends.torch.importer import import_weights
    with torch.device("meta"):
        module = resgraph.to_torch(spec, init=False)
    with pytest.raises(resgraph.WeightsError) as e:
        import_weights(module, model)
    (d,) = e.value.diagnostics
    return d


def run_interrupted_and_resumed(tmp_path, **cfg):
    """The same run twice: once through, once stopped after epoch 1 (as Ctrl-C would) and resumed with
    --resume. Returns (uninterrupted, resumed): each the last.safetensors tensors, with the resumed
    run's rows checked to cover every epoch once."""
    from resgraph.backends.torch import read_checkpoint
    from resgraph.training.loop import TrainConfig, train
    a, b = tmp_path / "a", tmp_path / "b"
    train(TrainConfig(out=str(a), **cfg))

    def crash(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(out=str(b), on_epoch=crash, **cfg))
    with open(b / "metrics.csv") as f:
        assert f.read().strip().splitlines()[-1].startswith("1,"), "the stopped run kept epoch 1"
    rows = train(TrainConfig(out=str(b), resume=True, **cfg))
    assert [r["epoch"] for r in rows] == list(range(1, cfg["epochs"] + 1))
    return read_checkpoint(str(a / "last.safetensors"))[0], read_checkpoint(str(b / "last.safetensors"))[0]


def no_triton() -> str | None:
    """Why Triton's core (nvidia-pytriton's) cannot be started here, or None: the serve tests' skip reason."""
    from resgraph.errors import BackendError
    try:
        from resgraph.triton.server import _dist
        _dist()
    except (ImportError, BackendError) as e:
        return f"Triton's core is not installed (pip install 'resgraph[serve]'): {e}"
    return None


def needs_triton(test):
    """Skip `test` where Triton's core is not installed (the reason is no_triton()'s)."""
    why = no_triton()
    return pytest.mark.skipif(why is not None, reason=str(why))(test)
