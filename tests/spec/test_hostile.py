"""Hostile input: every attack ends in a clean error, quickly, in bounded memory, and runs nothing.

Each case gets a fresh folder (the spec is copied or written there, and the child runs in it) and a
fresh process that reports its own check's CPU time and peak memory, so one case's allocations cannot
hide in another's. Times are CPU seconds, not wall time, so a loaded machine does not fail the test:
the point is that nothing blows up. The bounds are generous safety limits (10x what a check takes),
not speed targets: those live in bench/.
"""
import json
import os
import resource
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import ROOT, resgraph_cmd

BROKEN = ROOT / "tests" / "broken"
CHECK_CPU_S = 1.0        # the check itself, measured in the child
PROCESS_CPU_S = 20.0     # a whole child process: interpreter start-up, imports, the check (a hang guard, not a target)
PROBE = textwrap.dedent("""
    import json, resource, sys, time
    import resgraph
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.process_time()
    try:
        resgraph.check(sys.argv[1])
        outcome = "ok"
    except resgraph.SpecError as e:
        outcome = e.diagnostics[0].message
    dt = time.process_time() - t
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    print(json.dumps({"outcome": outcome, "cpu_seconds": dt, "kib": grew}))
""")
PWNED = Path("/tmp/resgraph-pwned")   # what the python-tag and expression attacks in tests/broken/ try to create


def child(args, cwd):
    """Run a child process to its end; (its result, the CPU seconds it used, user + system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=120,
                       env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return p, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def stamp():
    return PWNED.stat().st_mtime_ns if PWNED.exists() else None


def case(tmp_path, name) -> Path:
    """The case's spec, alone in a fresh folder of its own."""
    folder = tmp_path / name
    folder.mkdir()
    f = folder / f"{name}.yaml"
    if CASES[name] is None:
        shutil.copyfile(BROKEN / f"{name}.yaml", f)
    else:
        f.write_text(CASES[name])
    return f


def probe(path):
    before = stamp()
    p, cpu = child([sys.executable, "-c", PROBE, str(path)], cwd=path.parent)
    assert p.returncode == 0, p.stderr          # the probe ran to its end: no crash, no other exception
    assert stamp() == before, f"{path.name} ran a command: {PWNED} was written"
    assert os.listdir(path.parent) == [path.name], os.listdir(path.parent)   # it wrote nothing either
    assert cpu < PROCESS_CPU_S, (path.name, cpu)
    return json.loads(p.stdout)


HEAD = "resgraph: 1\nname: t\ninput: {shape: [3, 8, 8]}\n"
CASES = {
    "python_tag": None, "python_tag_deep": None, "expr_import": None, "alias_bomb": None,
    "recursive_alias": None, "huge_repeat": None, "nested_repeat_bomb": None, "absurd_channels": None,
    "absurd_input": None,
    "deep_nesting": "resgraph: 1\nname: t\nvars: {x: " + "[" * 5000 + "]" * 5000 + "}\n",
    "huge_file": HEAD + "layers:\n" + "  - relu\n" * 200_000,
    "wide_bomb": HEAD + "vars:\n  a: &a [" + ",".join(["1"] * 1000) + "]\n  b: [" + ",".join(["*a"] * 1000) + "]\nlayers: [relu]\n",
    "huge_int": HEAD + "layers:\n  - conv: {out: " + "9" * 10000 + ", kernel: 3}\n",
    "long_expr": HEAD + "vars: {w: 2}\nlayers:\n  - conv: {out: \"" + " * ".join(["$w"] * 2000) + "\", kernel: 3}\n",
    "expr_growth": HEAD + "vars: {a: 1000000, b: \"$a * $a\", c: \"$b * $b\", d: \"$c * $c\"}\nlayers: [relu]\n",
    "params_bomb": "resgraph: 1\nname: t\ninput: {shape: [1000000]}\nlayers:\n  - linear: {out: 1000000}\n",
    "upsample_bomb": HEAD + "layers:\n  - upsample: {scale: 64}\n  - upsample: {scale: 64}\n  - upsample: {scale: 64}\n",
    "many_blocks": HEAD + "blocks:\n" + "".join(f"  b{i}:\n    layers: [b{i + 1}, b{i + 1}]\n" for i in range(40))
                   + "  b40:\n    layers: [relu]\nlayers: [b0]\n",
}


@pytest.mark.parametrize("name", CASES)
def test_hostile_input_is_refused_quickly_in_bounded_memory(name, tmp_path):
    r = probe(case(tmp_path, name))
    assert r["outcome"] != "ok", f"{name} was accepted"
    assert r["cpu_seconds"] < CHECK_CPU_S, r
    assert r["kib"] < 64 * 1024, r       # under 64 MiB more than an idle interpreter


@pytest.mark.parametrize("name", CASES)
def test_the_command_line_refuses_it_with_exit_code_1(name, tmp_path):
    """What a user sees: `resgraph check` exits 1 (a spec error), not 0, not 70 (a bug), no traceback."""
    path = case(tmp_path, name)
    before = stamp()
    p, cpu = child(resgraph_cmd() + ["check", path.name], cwd=path.parent)
    assert p.returncode == 1, (p.returncode, p.stderr[-2000:])
    assert f"{path.name}:" in p.stderr and "error:" in p.stderr, p.stderr[-2000:]
    assert "Traceback" not in p.stderr and "internal error" not in p.stderr and not p.stdout.startswith("ok")
    assert stamp() == before and os.listdir(path.parent) == [path.name]
    assert cpu < PROCESS_CPU_S, cpu


def test_messages_name_the_attack(tmp_path):
    assert "alias bomb" not in probe(case(tmp_path, "alias_bomb"))["outcome"]   # it says what, the hint says why
    msgs = {n: probe(case(tmp_path, n))["outcome"] for n in ("deep_nesting", "huge_file", "expr_growth",
                                                              "params_bomb", "upsample_bomb", "many_blocks")}
    assert "nest" in msgs["deep_nesting"].lower() or "invalid YAML" in msgs["deep_nesting"], msgs
    assert "larger than" in msgs["huge_file"]
    assert "evaluates beyond" in msgs["expr_growth"]
    assert "parameters in one layer" in msgs["params_bomb"]
    assert "pixels per side" in msgs["upsample_bomb"] or "elements" in msgs["upsample_bomb"]
    assert "nodes" in msgs["many_blocks"]
