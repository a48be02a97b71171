"""`resgraph graph -o`: the drawing shows every block as a cluster, every skip edge, every inserted Ws
(with its kind and stride) and the shapes on the edges; the real Graphviz `dot` renders it."""
from __future__ import annotations

import os
import re
import shutil

import pytest

from conftest import ROOT, SPECS, run_cli
from resgraph.frontend import check_file
from resgraph.draw import to_dot

# CI installs Graphviz (.ci/run): there, a missing dot fails the rendering tests instead of skipping them
needs_dot = pytest.mark.skipif(shutil.which("dot") is None and not os.environ.get("CI"),
                               reason="Graphviz's dot is not installed (CI's .ci/run installs it: apt-get install graphviz)")


def ids_of(dot: str) -> dict[str, str]:
    """node id -> its label, from the DOT text."""
    return {m.group(1): m.group(2) for m in re.finditer(r'^\s*(n\d+) \[label="((?:[^"\\]|\\.)*)"', dot, re.M)}


@pytest.mark.parametrize("spec", SPECS, ids=[s.stem for s in SPECS])
def test_every_ws_block_and_skip_edge_is_drawn(spec):
    g = check_file(str(spec)).graph
    dot = to_dot(g)
    labels = ids_of(dot)
    inserted = [n for n in g.nodes if n.inserted]
    ws_labels = [lab for lab in labels.values() if lab.startswith("Ws ")]
    assert len(ws_labels) == len(inserted)
    for p in g.projections:
        assert any(lab.startswith(f"Ws {p.kind} /{p.stride}") for lab in ws_labels), p
    blocks = {n.block for n in g.nodes if n.block}
    assert {m for m in re.findall(r'subgraph "cluster_([^"]+)"', dot)} == blocks
    skips = sum(1 for n in g.nodes for i in n.inputs if i != n.inputs[0] or n.inserted or n.role == "shortcut")
    assert dot.count("style=dashed, color=\"#1f5fbf\"") == skips
    assert dot.count(" -> ") == sum(len(n.inputs) for n in g.nodes)
    last = g.nodes[-1]
    assert f'label="[{", ".join(map(str, g[last.inputs[0]].shape))}]"' in dot   # shapes on the edges


def test_collapsed_blocks_keep_their_ws():
    g = check_file(str(ROOT / "specs" / "resnet50.yaml")).graph
    dot = to_dot(g, collapse=True)
    assert dot.count("+ Ws conv1x1") == len(g.projections) == 4
    assert "subgraph" not in dot and dot.count("[label=") < len(g.nodes) // 3


@needs_dot
@pytest.mark.parametrize("fmt, magic", [("svg", b"<?xml"), ("png", b"\x89PNG"), ("pdf", b"%PDF")])
def test_graphviz_renders_it(tmp_path, fmt, magic):
    out = tmp_path / f"net.{fmt}"
    r = run_cli("graph", "specs/digits_resnet.yaml", "-o", str(out))
    assert r.returncode == 0, r.stderr
    data = out.read_bytes()
    assert data.startswith(magic)
    if fmt == "svg":   # every inserted Ws is in the picture, by its text
        assert data.decode().count("Ws conv1x1 /2") == 4
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_drawing_errors(tmp_path):
    r = run_cli("graph", "specs/digits_resnet.yaml", "-o", str(tmp_path / "net.jpg"))
    assert r.returncode == 1 and "cannot draw to a .jpg file" in r.stderr and "hint:" in r.stderr
    r = run_cli("graph", "specs/digits_resnet.yaml", "-o", str(tmp_path / "net.dot"), "--collapse")
    assert r.returncode == 0 and (tmp_path / "net.dot").read_text().startswith('digraph "digits_resnet"')


def test_without_graphviz_the_error_says_what_to_install(tmp_path):
    import subprocess

    from conftest import resgraph_cmd
    env = {**os.environ, "PATH": str(tmp_path)}            # no dot on this PATH
    r = subprocess.run(resgraph_cmd() + ["graph", "specs/digits_resnet.yaml", "-o", str(tmp_path / "n.svg")],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert r.returncode == 1 and "needs Graphviz's `dot`" in r.stderr and "apt-get install graphviz" in r.stderr
    assert not (tmp_path / "n.svg").exists()
