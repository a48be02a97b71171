"""`import resgraph` and `resgraph check` must not pull in torch, onnx, onnxruntime or tensorrt.

The probe runs `check --json` and `summary` in one fresh interpreter, captures what each printed and
how it ended, and lists the heavy modules loaded at the end. `lean_failures` judges a probe's report;
the tests below show that it refuses a report where a heavy module was loaded, and one where a command
did not run to its end (so a `check` that exits early, before loading anything, cannot pass).
"""
import importlib.util
import json
import subprocess
import sys

import pytest

from conftest import ROOT

HEAVY = ("torch", "onnx", "onnxruntime", "tensorrt", "numpy")
CHECK = ["check", "specs/resnet152.yaml", "--json"]
SUMMARY = ["summary", "specs/resnet18.yaml"]

PROBE = """
import contextlib, io, json, sys
{inject}
import resgraph
from resgraph.cli import cli


def run(args):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = cli(args, standalone_mode=False)
        except SystemExit as e:
            code = e.code
        except BaseException as e:   # click's usage errors, or a bug: the test shows it
            code = type(e).__name__ + ": " + str(e)
    return {{"code": code, "out": out.getvalue()}}


report = {{"check": run({check!r}), "summary": run({summary!r})}}
report["loaded"] = sorted(m for m in {heavy!r} if m in sys.modules)
print(json.dumps(report))
"""


def probe(inject="", check=CHECK, summary=SUMMARY):
    code = PROBE.format(inject=inject, check=check, summary=summary, heavy=HEAVY)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def lean_failures(r) -> list[str]:
    """Everything wrong with a probe's report: a heavy import, or a command that did not do its job."""
    bad = []
    if r["loaded"]:
        bad.append(f"heavy modules loaded: {r['loaded']}")
    if r["check"]["code"] not in (0, None):
        bad.append(f"check ended with {r['check']['code']!r}: {r['check']['out'][-300:]}")
    else:
        try:
            d = json.loads(r["check"]["out"])
        except ValueError:
            d = None
        if not (isinstance(d, dict) and d.get("name") == "resnet152" and d.get("params") == 60_192_808
                and d.get("macs") == 11_513_626_624 and len(d.get("projections", ())) == 4):
            bad.append(f"check did not print resnet152's report: {r['check']['out'][:300]!r}")
    s = r["summary"]
    if s["code"] not in (0, None):
        bad.append(f"summary ended with {s['code']!r}: {s['out'][-300:]}")
    elif not ("layer4.1.conv2" in s["out"] and "Params: 11,689,512" in s["out"] and "MACs: 1,814,073,344" in s["out"]):
        bad.append(f"summary did not print resnet18's table: {s['out'][-300:]!r}")
    return bad


def test_no_heavy_imports():
    # the test means something only if torch could have been imported
    assert importlib.util.find_spec("torch") is not None, "install torch (the CI does) so this test can fail"
    r = probe()
    assert lean_failures(r) == []
    assert r["check"]["code"] == 0 and r["summary"]["code"] is None   # check exits 0; summary returns


@pytest.mark.parametrize("heavy", ["torch", "onnx", "numpy"])
def test_probe_detects_a_heavy_import(heavy):
    """The same probe, with the heavy module imported before the commands run, reports it."""
    if importlib.util.find_spec(heavy) is None:
        pytest.skip(f"{heavy} is not installed")
    r = probe(inject=f"import {heavy}")
    assert heavy in r["loaded"]
    assert lean_failures(r) == [f"heavy modules loaded: {r['loaded']}"]   # and nothing else was wrong


def test_probe_detects_a_heavy_import_on_the_check_path():
    """A heavy import made by check itself (resgraph.frontend.check_file patched to import torch) shows up."""
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed")
    inject = ("import resgraph.frontend as _c\n_orig = _c.check_file\n"
              "def _heavy(*a, **k):\n    import torch\n    return _orig(*a, **k)\n_c.check_file = _heavy")
    r = probe(inject=inject)
    assert "torch" in r["loaded"]
    assert lean_failures(r) == [f"heavy modules loaded: {r['loaded']}"]


@pytest.mark.parametrize("check,summary,why", [
    (["check", "--jsn", "specs/resnet152.yaml"], SUMMARY, "check ended with"),          # a usage error, nothing loaded
    (["check", "specs/no_such_spec.yaml", "--json"], SUMMARY, "check ended with 1"),   # exits 1 early
    (["check", "specs/resnet18.yaml", "--json"], SUMMARY, "check did not print"),       # ok, but another spec
    (["check", "specs/resnet152.yaml"], SUMMARY, "check did not print"),                # not the JSON
    (CHECK, ["summary", "specs/no_such_spec.yaml"], "summary ended with 1"),
    (CHECK, ["--version"], "summary did not print"),
])
def test_probe_refuses_a_command_that_did_not_run(check, summary, why):
    r = probe(check=check, summary=summary)
    assert r["loaded"] == []
    failures = lean_failures(r)
    assert len(failures) == 1 and failures[0].startswith(why), failures
