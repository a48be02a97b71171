"""`import resgraph` and `resgraph check` must not pull in torch, onnx, onnxruntime or tensorrt."""
import importlib.util
import subprocess
import sys

import pytest

from conftest import ROOT

HEAVY = ("torch", "onnx", "onnxruntime", "tensorrt", "numpy")

PROBE = """
import sys, resgraph
from resgraph.cli import cli
try:
    cli(["check", "specs/resnet152.yaml", "--json"], standalone_mode=False)
except SystemExit:
    pass
try:
    cli(["summary", "specs/resnet18.yaml"], standalone_mode=False)
except SystemExit:
    pass
print("LOADED", sorted(m for m in {heavy!r} if m in sys.modules))
"""


def test_no_heavy_imports():
    # the test means something only if torch could have been imported
    assert importlib.util.find_spec("torch") is not None, "install torch (the CI does) so this test can fail"
    p = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY)], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().endswith("LOADED []"), p.stdout[-500:]


@pytest.mark.parametrize("heavy", ["torch", "onnx"])
def test_probe_detects_a_heavy_import(heavy):
    """The probe itself works: importing a heavy module shows up."""
    if importlib.util.find_spec(heavy) is None:
        pytest.skip(f"{heavy} is not installed")
    p = subprocess.run([sys.executable, "-c", f"import {heavy}, sys; print({heavy!r} in sys.modules)"],
                       capture_output=True, text=True)
    assert p.stdout.strip().endswith("True")
