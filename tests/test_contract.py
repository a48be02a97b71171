"""The shared contract check (../shared/checks/check_contract.py) is part of the routine."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

CHECK = ROOT.parent / "shared" / "checks" / "check_contract.py"


@pytest.mark.skipif(not CHECK.exists(), reason=f"{CHECK} not present beside this checkout")
def test_contract_check_passes():
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}
    p = subprocess.run([sys.executable, str(CHECK)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert ", 0 problems" in p.stdout
