"""What a compiled folder, an input's file name or an engine.json says reaches the terminal escaped:
no escape sequence (ESC, an OSC window-title change), no bidi override (U+202E) and no other control
character is printed raw by any human-readable output (--json leaves it to JSON's escaping)."""
from __future__ import annotations

import json
import shutil

import numpy as np

from conftest import run_cli

EVIL = ["\x1b[2J\x1b]0;pwned\x07zero", "\u202eeno", "two\rthree", "\x9bthree"] + [str(i) for i in range(4, 10)]
RAW = ("\x1b", "\x07", "\u202e", "\r", "\x9b")


def raw_controls(text: str) -> list[str]:
    return [repr(c) for c in RAW if c in text]


def forged(digits_folder, tmp_path):
    folder = tmp_path / "forged"
    shutil.copytree(digits_folder, folder)
    m = json.loads((folder / "manifest.json").read_text())
    m["labels"] = EVIL
    (folder / "manifest.json").write_text(json.dumps(m))
    return folder


def test_run_escapes_labels_and_input_names(digits_folder, tmp_path):
    folder = forged(digits_folder, tmp_path)
    inputs = tmp_path / "in"
    inputs.mkdir()
    x = np.zeros((1, 8, 8), np.float32)
    for name in ("plain.npy", "\x1b]0;title\x07.npy", "\u202egnp.npy"):
        np.save(inputs / name, x)
    (inputs / "\x1b[31mbroken.npy").write_bytes(b"not an npy file")
    r = run_cli("run", str(folder), str(inputs), "--backend", "ort-cpu", "--top-k", "10")
    assert r.returncode == 1, r.stderr              # the broken file failed, the others ran
    assert not raw_controls(r.stdout) and not raw_controls(r.stderr), (raw_controls(r.stdout), r.stdout)
    assert "\\x1b[2J\\x1b]0;pwned\\x07zero" in r.stdout and "\\u202eeno" in r.stdout and "\\x9bthree" in r.stdout
    assert "\\x1b]0;title\\x07.npy" in r.stdout and "\\x1b[31mbroken.npy  error:" in r.stdout
    j = run_cli("run", str(folder), str(inputs), "--backend", "ort-cpu", "--json", "--top-k", "10")
    rows = [json.loads(line) for line in j.stdout.splitlines()]
    assert {t["label"] for t in rows[-1]["top"]} == set(EVIL)   # JSON carries the labels as they are


def test_engine_info_escapes_what_engine_json_says(digits_folder, tmp_path):
    from test_tensorrt import _info
    folder = tmp_path / "d"
    shutil.copytree(digits_folder, folder)
    (folder / "model.engine").write_bytes(b"plan")
    (folder / "engine.json").write_text(json.dumps(_info(gpu_name="\x1b]0;pwned\x07GPU\u202e").to_json()))
    r = run_cli("engine", "info", str(folder))
    assert r.returncode == 0 and not raw_controls(r.stdout), r.stdout
    assert "\\x1b]0;pwned\\x07GPU\\u202e" in r.stdout


def test_parity_escapes_the_inputs_it_skips(digits_folder, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    np.save(inputs / "ok.npy", np.zeros((1, 8, 8), np.float32))
    (inputs / "\x1b]0;t\x07bad.npy").write_bytes(b"not an npy file")
    r = run_cli("parity", str(digits_folder), "--inputs", str(inputs), "--backends", "ort-cpu,torch-cpu")
    assert not raw_controls(r.stdout) and "\\x1b]0;t\\x07bad.npy" in r.stdout, r.stdout
