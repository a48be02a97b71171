import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.yaml"))


def resgraph_cmd():
    """The installed console script if present (what users run), else `python -m resgraph`."""
    exe = Path(sys.executable).with_name("resgraph")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "resgraph"]


def run_cli(*args, cwd=ROOT, timeout=60):
    return subprocess.run(resgraph_cmd() + list(args), capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})


@pytest.fixture
def write_spec(tmp_path):
    def write(text: str, name: str = "spec.yaml") -> str:
        p = tmp_path / name
        p.write_text(text)
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
