"""The loader's limits against hostile input (issue 10, item 3): a large document is refused fast and
as too large (not as an alias bomb), `labels:` cannot read outside the spec's folder or block on a
pipe, and diagnostics never print raw bidi overrides or control characters."""
import json
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import test_hostile
from conftest import resgraph_cmd, run_cli

import resgraph
from resgraph.limits import MAX_ALIAS_VALUES, MAX_NODES, MAX_SPEC_VALUES

HEAD = "resgraph: 1\nname: t\ninput: {shape: [3, 8, 8]}\n"
CONV = "  - conv: {out: 8, kernel: 3}\n"   # 7 values: a mapping, 'conv', a mapping, two keys, two numbers
# anchors that expand past the alias budget in a document of a few hundred values
ALIAS_BOMB = HEAD + "vars:\n  a: &a [" + ", ".join(["x"] * 150) + "]\n  b: [" + ", ".join(["*a"] * 150) + "]\nlayers: [relu]\n"
LARGE = {   # the probe's cases: big documents without a single alias
    "flow_list": HEAD + "layers: [" + "1, " * 300_000 + "]\n",
    "flow_names": HEAD + "layers: [" + "relu, " * 170_000 + "]\n",
    "flow_map": HEAD + "vars: {" + ", ".join(f"k{i}: 1" for i in range(80_000)) + "}\nlayers: [relu]\n",
    "long_layers": HEAD + "layers:\n" + "  - relu: {id: r}\n" * 40_000,
}


def cpu_seconds(*args, **kw):
    """The CPU time (user + system) of `resgraph ARGS` as a whole process: start-up, imports and all."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run(resgraph_cmd() + [str(a) for a in args], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "NO_COLOR": "1"}, **kw)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, p


PROBE = textwrap.dedent("""
    import json, resource, sys
    import resgraph
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        resgraph.check(sys.argv[1])
        d = None
    except resgraph.SpecError as e:
        d = e.diagnostics[0]
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    print(json.dumps({"kib": grew, "diag": d and [d.loc.line, d.loc.col, d.message, d.hint]}))
""")


def probe(path):
    """check in a fresh process: the first diagnostic and how much the peak memory grew."""
    p = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def spec_file(tmp_path, name, text):
    f = tmp_path / f"{name}.yaml"
    f.write_text(text)
    return f


# -- 1. size: counted before the tree is built, told apart from alias bombs -------------------------

def test_limits_are_consistent():
    assert MAX_SPEC_VALUES >= MAX_NODES   # one value per bare layer: the node limit is reachable written out
    assert MAX_ALIAS_VALUES <= MAX_SPEC_VALUES


@pytest.mark.parametrize("name", LARGE)
def test_a_large_document_is_refused_as_too_large_fast_in_little_memory(name, tmp_path):
    f = spec_file(tmp_path, name, LARGE[name])
    r = probe(f)
    line, col, message, hint = r["diag"]
    assert message.startswith("the spec is too large: ") and f"the limit is {MAX_SPEC_VALUES:,}" in message
    assert "alias" not in message + hint and "repeat" in hint and "blocks" in hint
    assert line >= 4 and col >= 1                  # where the limit was crossed
    assert r["kib"] < 24 * 1024, r                 # no tree of 300,000 nodes (it took 180 MB)
    cpu, p = cpu_seconds("check", f)
    assert p.returncode == 1 and "too large" in p.stderr and "Traceback" not in p.stderr
    assert cpu < 1.0, (name, cpu)


def test_the_size_is_counted_exactly(tmp_path):
    n = MAX_SPEC_VALUES + 1_000
    f = spec_file(tmp_path, "n", "a: [" + "1, " * (n - 2) + "]\n")   # the mapping, 'a', the list: n values
    with pytest.raises(resgraph.SpecError) as info:
        resgraph.check(str(f))
    assert info.value.message == f"the spec is too large: {n + 1:,} values, the limit is {MAX_SPEC_VALUES:,}"


def test_thousands_of_explicit_layers_are_a_legal_spec(tmp_path):
    """6,600 convs written out (46,000 values, 200 KB): refused as an alias bomb before."""
    f = spec_file(tmp_path, "explicit", HEAD + "layers:\n" + CONV * 6_600)
    c = resgraph.check(str(f))
    assert len(c.graph.nodes) == 6_601
    p = run_cli("check", str(f))
    assert p.returncode == 0, p.stderr


def test_an_alias_bomb_is_still_an_alias_bomb(tmp_path):
    f = spec_file(tmp_path, "bomb", ALIAS_BOMB)   # 300 values as written, 22,500 once expanded
    line, col, message, hint = probe(f)["diag"]
    assert f"aliases expand the document by more than {MAX_ALIAS_VALUES:,} values" == message
    assert "alias bomb" in hint and (line, col) == (6, 3)   # the key whose value blows up
    assert "too large" not in message


def test_aliases_within_budget_are_fine(tmp_path):
    """2,800 aliases of one layer: 11,200 values added by aliases, under the budget."""
    f = spec_file(tmp_path, "ok", HEAD + "layers:\n  - &c {conv: {out: 8, kernel: 3}}\n" + "  - *c\n" * 2_800)
    assert len(resgraph.check(str(f)).graph.nodes) == 2_802


HOSTILE = {**test_hostile.CASES, **LARGE, "alias_bomb_small": ALIAS_BOMB}


@pytest.mark.parametrize("name", HOSTILE)
def test_every_hostile_case_costs_under_a_second_of_cpu(name, tmp_path):
    text = HOSTILE[name]
    f = test_hostile.BROKEN / f"{name}.yaml" if text is None else spec_file(tmp_path, name, text)
    cpu, p = cpu_seconds("check", f)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert cpu < 1.0, (name, cpu)


# -- 2. labels files: inside the spec's folder, regular, bounded ------------------------------------

LABELLED = HEAD.replace("{", "{{").replace("}", "}}") + "labels: {}\nlayers:\n  - global_avgpool\n  - flatten\n  - linear: {{out: 2}}\n"


def labels_error(spec: Path, where: str):
    spec.write_text(LABELLED.format(json.dumps(where)))
    with pytest.raises(resgraph.SpecError) as info:
        resgraph.check(str(spec))
    d = info.value.diagnostics[0]
    assert (d.loc.file, d.loc.line, d.loc.col) == (str(spec), 4, 9), d
    return d


def test_labels_file_beside_the_spec_and_below_it(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "classes.txt").write_text("cat\n  dog \n\n")
    (tmp_path / "link.txt").symlink_to(tmp_path / "sub" / "classes.txt")   # a link that stays inside: fine
    spec = tmp_path / "net.yaml"
    for where in ("sub/classes.txt", "link.txt", "sub/../sub/classes.txt"):
        spec.write_text(LABELLED.format(where))
        assert resgraph.check(str(spec)).spec.labels == ("cat", "dog")


def test_labels_file_may_not_be_an_absolute_path(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2\nswordfish\n")
    (tmp_path / "specs").mkdir()
    d = labels_error(tmp_path / "specs" / "net.yaml", str(secret))
    assert "is an absolute path" in d.message and "hunter2" not in d.message
    assert "spec's folder" in d.hint and "labels: [" in d.hint


@pytest.mark.parametrize("where", ["../secret.txt", "sub/../../secret.txt", "escape.txt"])
def test_labels_file_may_not_leave_the_spec_folder(tmp_path, where):
    (tmp_path / "secret.txt").write_text("hunter2\nswordfish\n")
    (tmp_path / "specs" / "sub").mkdir(parents=True)
    (tmp_path / "specs" / "escape.txt").symlink_to(tmp_path / "secret.txt")   # a link that leads out
    d = labels_error(tmp_path / "specs" / "net.yaml", where)
    assert "is outside the spec's folder" in d.message, d
    assert "labels: [" in d.hint


def test_a_fifo_labels_file_does_not_hang_check(tmp_path):
    os.mkfifo(tmp_path / "classes.txt")   # nobody ever writes to it: opening it for reading blocks
    spec = tmp_path / "net.yaml"
    spec.write_text(LABELLED.format("classes.txt"))
    p = run_cli("check", str(spec), timeout=30)   # hung here before
    assert p.returncode == 1 and "is not a regular file" in p.stderr, p.stderr
    assert "4:9: error: labels file 'classes.txt'" in p.stderr


def test_dev_stdin_labels_do_not_hang_check(tmp_path):
    spec = tmp_path / "net.yaml"
    spec.write_text(LABELLED.format("/dev/stdin"))
    with subprocess.Popen(resgraph_cmd() + ["check", str(spec)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:   # stdin stays open and empty
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("check waited on /dev/stdin")
    assert proc.returncode == 1 and "is an absolute path" in err, err


def test_a_folder_is_not_a_labels_file(tmp_path):
    (tmp_path / "classes").mkdir()
    d = labels_error(tmp_path / "net.yaml", "classes")
    assert "is not a regular file" in d.message


def test_labels_file_size_is_bounded(tmp_path):
    (tmp_path / "classes.txt").write_text("a-fairly-long-class-name\n" * 50_000)   # 1.25 MB
    d = labels_error(tmp_path / "net.yaml", "classes.txt")
    assert "is too large: 1,250,000 bytes, the limit is 1 MiB" in d.message


def test_number_of_labels_is_bounded(tmp_path, monkeypatch):
    import resgraph.limits
    monkeypatch.setattr(resgraph.limits, "MAX_LABELS", 3)
    (tmp_path / "classes.txt").write_text("a\nb\nc\nd\n")
    d = labels_error(tmp_path / "net.yaml", "classes.txt")
    assert "has 4 labels, the limit is 3" in d.message
    spec = tmp_path / "inline.yaml"
    spec.write_text(LABELLED.format("[a, b, c, d]"))
    with pytest.raises(resgraph.SpecError) as info:
        resgraph.check(str(spec))
    assert "4 labels, the limit is 3" in info.value.message


# -- 3. diagnostics escape bidi overrides and control characters ------------------------------------

BIDI = [chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))]


def test_escape_follows_python_string_literals():
    from resgraph.render import escape
    assert escape("conv1 café 卷积 αβ") == "conv1 café 卷积 αβ"   # printable text is left alone
    assert escape("a\u202eb\u2066c") == "a\\u202eb\\u2066c"
    assert escape("\x1b[31m\t\x00\u200b\U000e0041") == "\\x1b[31m\\t\\x00\\u200b\\U000e0041"
    assert all(escape(c) == f"\\u{ord(c):04x}" for c in BIDI)


def test_diagnostics_escape_ids_in_message_and_source_line(tmp_path):
    spec = tmp_path / "bidi.yaml"
    # a raw ESC is not YAML: the file spells it \\x1b, the id holds it; the bidi characters are raw
    spec.write_text(HEAD + "layers:\n  - relu\n  - conv: {in: \"evil\u202e\u2066lirt\\x1b[2J\", out: 4, kernel: 3}\n",
                    encoding="utf-8")
    p = run_cli("check", str(spec))
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert not any(c in p.stderr for c in BIDI) and "\x1b" not in p.stderr, ascii(p.stderr)
    lines = p.stderr.splitlines()
    message = next(line for line in lines if ":6:" in line and "error:" in line)
    assert "unknown id 'evil\\u202e\\u2066lirt\\x1b[2J'" in message
    src = lines[lines.index(message) + 1]
    assert src == ' 6 |   - conv: {in: "evil\\u202e\\u2066lirt\\x1b[2J", out: 4, kernel: 3}'
    caret = lines[lines.index(message) + 2]
    assert caret.index("^") == src.index('"evil'), "the caret still points at the value"
    # --json: the text as it is, escaped only as JSON escapes it (the contract's consumers decode it)
    p = run_cli("check", str(spec), "--json")
    assert not any(c in p.stdout for c in BIDI)
    errors = json.loads(p.stdout)["errors"]
    assert any("evil\u202e\u2066lirt\x1b[2J" in e["message"] for e in errors), errors


def test_escaping_moves_the_caret_with_the_widened_line(tmp_path):
    from resgraph.errors import Diagnostic, Loc
    from resgraph.render import diagnostic, remember_source
    remember_source("<mem>", "x: [\u202e\u202e, bad]")
    text = diagnostic(Diagnostic(Loc("<mem>", 1, 9), "oops", "hint", span=3)).plain
    src, caret = text.splitlines()[1:3]
    assert src == " 1 | x: [\\u202e\\u202e, bad]"
    assert caret[caret.index("^"):] == "^~~" and src[caret.index("^"):].startswith("bad")
