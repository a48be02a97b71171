"""The degradation experiment still runs end to end (one epoch, one seed): results and a plot appear."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT

pytest.importorskip("matplotlib", reason="matplotlib (the examples extra) is not installed")
pytest.importorskip("sklearn", reason="scikit-learn is not installed")


def test_degradation_smoke(tmp_path):
    p = subprocess.run([sys.executable, "examples/degradation/run.py", "--quick", "--out", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    summary = json.loads((tmp_path / "results.json").read_text())["summary"]
    assert set(summary) == {"plain20", "plain56", "resnet20", "resnet56"}
    assert all(0 <= s["final_train_error"]["mean"] <= 1 for s in summary.values())
    assert (tmp_path / "loss.png").stat().st_size > 10_000
