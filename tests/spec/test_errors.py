"""The broken-spec corpus: every file in tests/broken/ names the errors it must produce.

Each file starts with lines `# expect: LINE: TEXT`: some diagnostic must be at LINE and contain TEXT
in its message or hint. Each must also fail cleanly from the command line: exit 1, the compiler
format FILE:LINE:COL: error:, the offending source line, and no traceback.
"""
import json
import re
from pathlib import Path

import pytest

import resgraph
from conftest import ROOT, run_cli

BROKEN = sorted((ROOT / "tests" / "broken").glob("*.yaml"))
EXPECT = re.compile(r"^# expect: (\d+): (.+)$", re.M)
COUNT = re.compile(r"^# errors: (\d+)$", re.M)   # optional: exactly this many (no follow-on errors)


def expectations(path: Path):
    return [(int(line), text) for line, text in EXPECT.findall(path.read_text())]


def test_corpus_is_large():
    assert len(BROKEN) >= 25
    assert all(expectations(p) for p in BROKEN), "every broken spec states what it expects"


@pytest.mark.parametrize("path", BROKEN, ids=lambda p: p.stem)
def test_error_and_line(path):
    with pytest.raises(resgraph.SpecError) as info:
        resgraph.check(str(path))
    diags = info.value.diagnostics
    for line, text in expectations(path):
        hits = [d for d in diags if d.loc.line == line and text in d.message + " " + d.hint]
        assert hits, f"want line {line} with {text!r}; got " + "; ".join(f"{d.loc.line}: {d.message} | {d.hint}" for d in diags)
    for d in diags:
        assert d.loc.file == str(path) and d.loc.line >= 1 and d.loc.col >= 1
        assert d.hint, f"every error carries a hint: {d.message}"
        assert "Y(" not in d.message and "<failed>" not in d.message, "no internal objects in messages"
    count = COUNT.search(path.read_text())
    if count:
        assert len(diags) == int(count.group(1)), [d.message for d in diags]


@pytest.mark.parametrize("path", BROKEN, ids=lambda p: p.stem)
def test_cli_json(path):
    p = run_cli("check", str(path), "--json")
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr
    errors = json.loads(p.stdout)["errors"]
    assert errors and all(set(e) == {"file", "line", "column", "message", "hint"} for e in errors)
    first_line = expectations(path)[0][0]
    assert any(e["line"] == first_line for e in errors)


@pytest.mark.parametrize("name", ["unknown_op", "no_integer_stride", "multiple_errors", "python_tag"])
def test_cli_human(name):
    path = ROOT / "tests" / "broken" / f"{name}.yaml"
    p = run_cli("check", str(path))
    assert p.returncode == 1 and p.stdout == ""
    assert "Traceback" not in p.stderr
    lines = path.read_text().splitlines()
    for line, _ in expectations(path):
        assert re.search(rf"^{re.escape(str(path))}:{line}:\d+: error: ", p.stderr, re.M), p.stderr
        assert lines[line - 1].strip() in p.stderr, "the offending source line is shown"
    assert re.search(r"^\s+\|\s+\^", p.stderr, re.M), "a caret points at the column"
    assert "hint: " in p.stderr
    n = len(expectations(path))
    assert re.search(rf"{n} errors?$", p.stderr.strip()), p.stderr


def test_every_error_in_one_run():
    path = ROOT / "tests" / "broken" / "multiple_errors.yaml"
    with pytest.raises(resgraph.SpecError) as info:
        resgraph.check(str(path))
    assert sorted({d.loc.line for d in info.value.diagnostics}) == [8, 9, 10]


def test_missing_file_is_a_clean_error(tmp_path):
    p = run_cli("check", str(tmp_path / "nope.yaml"))
    assert p.returncode == 1 and "cannot read spec" in p.stderr and "Traceback" not in p.stderr


def test_not_utf8(tmp_path):
    f = tmp_path / "latin1.yaml"
    f.write_bytes("resgraph: 1\nname: caf\xe9\n".encode("latin-1"))
    p = run_cli("check", str(f))
    assert p.returncode == 1 and "UTF-8" in p.stderr


def test_nothing_is_executed(tmp_path):
    """The !!python tag and the __import__ expression must not run: the file they would create stays absent."""
    marker = Path("/tmp/resgraph-pwned")
    marker.unlink(missing_ok=True)
    for name in ("python_tag", "expr_import"):
        run_cli("check", str(ROOT / "tests" / "broken" / f"{name}.yaml"))
    assert not marker.exists()
