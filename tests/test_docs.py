"""docs/spec-language.md shows real outputs; this keeps them real.

Every ```text block that starts with `$ resgraph ...` is run again and must print exactly what the
doc shows. Spec files of an example are the code blocks just before it whose first line is
`# NAME` (that line is the doc's label, not part of the file).
"""
import os
import re
import subprocess

import pytest

from conftest import ROOT, resgraph_cmd

DOC = (ROOT / "docs" / "spec-language.md").read_text()
BLOCK = re.compile(r"```(\w*)\n(.*?)```", re.S)
COMMAND = re.compile(r"^\$ resgraph ((?:check|summary|graph) [^#(]*?)\s*$")


def examples():
    found, files = [], {}
    for m in BLOCK.finditer(DOC):
        body = m.group(2)
        first, _, rest = body.partition("\n")
        label = re.fullmatch(r"# ([\w.-]+\.(?:yaml|txt))", first)
        if label:
            files[label.group(1)] = rest
            continue
        cmd = COMMAND.match(first)
        if cmd:
            line = DOC[:m.start()].count("\n") + 1
            found.append(pytest.param(cmd.group(1).split(), dict(files), rest.rstrip("\n"), id=f"line{line}"))
        files = {}
    return found


EXAMPLES = examples()


def test_the_doc_has_examples():
    assert len(EXAMPLES) >= 45


@pytest.mark.parametrize("args,files,expected", EXAMPLES)
def test_doc_output_is_real(args, files, expected, tmp_path):
    cwd = ROOT
    if files:
        cwd = tmp_path
        for name, text in files.items():
            (tmp_path / name).write_text(text)
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    p = subprocess.run(resgraph_cmd() + args, capture_output=True, text=True, cwd=cwd, env=env, timeout=60)
    out = "\n".join(l.rstrip() for l in (p.stdout + p.stderr).splitlines())
    assert out == expected
