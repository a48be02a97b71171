"""Hostile input: every attack ends in a clean error, quickly, in bounded memory, and runs nothing.

Each case runs in a fresh process that reports its own check time and peak memory, so one case's
allocations cannot hide in another's. The bounds are generous safety limits (10x what a check
takes), not speed targets: those live in bench/.
"""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BROKEN = Path(__file__).parent / "broken"
PROBE = textwrap.dedent("""
    import json, resource, sys, time
    import resgraph
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    try:
        resgraph.check(sys.argv[1])
        outcome = "ok"
    except resgraph.SpecError as e:
        outcome = e.diagnostics[0].message
    dt = time.perf_counter() - t
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    print(json.dumps({"outcome": outcome, "seconds": dt, "kib": grew}))
""")


def probe(path):
    p = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def generated(tmp_path, name, text):
    f = tmp_path / f"{name}.yaml"
    f.write_text(text)
    return f


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
    text = CASES[name]
    path = BROKEN / f"{name}.yaml" if text is None else generated(tmp_path, name, text)
    r = probe(path)
    assert r["outcome"] != "ok", f"{name} was accepted"
    assert r["seconds"] < 1.0, r
    assert r["kib"] < 64 * 1024, r       # under 64 MiB more than an idle interpreter


def test_messages_name_the_attack(tmp_path):
    assert "alias bomb" not in probe(BROKEN / "alias_bomb.yaml")["outcome"]   # it says what, the hint says why
    msgs = {n: probe(generated(tmp_path, n, CASES[n]))["outcome"] for n in ("deep_nesting", "huge_file", "expr_growth",
                                                                              "params_bomb", "upsample_bomb", "many_blocks")}
    assert "nest" in msgs["deep_nesting"].lower() or "invalid YAML" in msgs["deep_nesting"], msgs
    assert "larger than" in msgs["huge_file"]
    assert "evaluates beyond" in msgs["expr_growth"]
    assert "parameters in one layer" in msgs["params_bomb"]
    assert "pixels per side" in msgs["upsample_bomb"] or "elements" in msgs["upsample_bomb"]
    assert "nodes" in msgs["many_blocks"]
