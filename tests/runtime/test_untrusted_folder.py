"""A compiled folder is untrusted input (hardening items 3 and 4): everything read from it is bounded
before anything is allocated from it, only regular files inside the folder are opened, what a back end
loads is the file compile wrote, and a bad input stays that input's own error.

Each case runs the real command in a subprocess, with a time limit and an address-space limit: a
refusal must come fast, from a check, not from the machine running out of memory."""
from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess

import numpy as np
import pytest

from conftest import ROOT, resgraph_cmd

LIMIT = 4 << 30    # the address space a refusal may take: the bug cases wanted 15-238 GiB


def cli(*args, timeout=60):
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))
    return subprocess.run(resgraph_cmd() + list(map(str, args)), capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, preexec_fn=limit, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})


def user_error(r, *says):
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    for s in says:
        assert s in r.stderr, r.stderr


@pytest.fixture
def folder(digits_folder, tmp_path):
    out = tmp_path / "d"
    shutil.copytree(digits_folder, out)
    return out


def edit_manifest(folder, change):
    m = json.loads((folder / "manifest.json").read_text())
    change(m)
    (folder / "manifest.json").write_text(json.dumps(m))


SAMPLES = ROOT / "examples" / "digits" / "samples"


@pytest.mark.parametrize("where, value, says", [
    ("input", ["batch", 1, 100000, 100000], "beyond the spec language's limits"),
    ("resize", 1000000, "preprocess.resize is 1000000"),
])
def test_sizes_that_would_exhaust_memory_are_refused_fast(folder, where, value, says):
    """The two cases that took 22 GB and 15 GB, through the command, under the address-space limit."""
    def change(m):
        if where == "input":
            m[where]["shape"] = m["inputs"][0]["shape"] = value
        else:
            m["preprocess"][where] = value
    edit_manifest(folder, change)
    user_error(cli("run", folder, SAMPLES), says, "recompile")


@pytest.mark.parametrize("where, value, says", [
    ("input", ["batch", 3, 65536, 65536], "beyond the spec language's limits"),
    ("input", ["batch", 1, -8, 8], "of positive integers"),
    ("input", ["batch", 1, 8, True], "of positive integers"),
    ("output", ["batch", 10, 1, 1, 1], "of positive integers"),
    ("crop", 0, "preprocess.crop is 0"),
    ("resize", 65537, "preprocess.resize is 65537"),
])
def test_shapes_and_sizes_beyond_the_languages_limits(folder, where, value, says):
    from resgraph.errors import ArtifactError
    from resgraph.runtime import open_session

    def change(m):
        if where in ("input", "output"):
            m[where]["shape"] = m[where + "s"][0]["shape"] = value
        else:
            m["preprocess"][where] = value
    edit_manifest(folder, change)
    with pytest.raises(ArtifactError, match=re.escape(says)):
        open_session(str(folder), "ort-cpu")


@pytest.mark.parametrize("spec", ["/dev/zero", "/etc/passwd", "../../other.yaml", "weights.yaml", "model.onnx/x"])
def test_the_manifest_names_only_files_of_the_folder(folder, spec):
    from resgraph.errors import ArtifactError
    from resgraph.frontend import spec_source
    edit_manifest(folder, lambda m: m.update(spec=spec))
    with pytest.raises(ArtifactError, match="not a file a compiled folder holds"):
        spec_source(str(folder))
    if spec == "/dev/zero":   # and through the command, which must neither hang nor print another file
        r = cli("check", folder, timeout=20)
        user_error(r, "not a file a compiled folder holds")
        assert "root:" not in r.stdout + r.stderr


def test_a_file_name_that_leaves_the_folder_is_refused_where_it_is_read(folder):
    """The reader's own check, under the manifest's: a name that is not a plain file name is never joined
    to the folder's path."""
    from resgraph.errors import ArtifactError
    from resgraph.manifest import read_folder_file
    for name in ("/dev/zero", "../x", "a/b", "", ".."):
        with pytest.raises(ArtifactError, match="not a file of the folder"):
            read_folder_file(str(folder), name, 1 << 20, "spec")


def test_a_symlink_out_of_the_folder_and_a_fifo_are_not_read(folder, tmp_path):
    (folder / "spec.yaml").unlink()
    (folder / "spec.yaml").symlink_to(ROOT / "specs" / "resnet18.yaml")
    user_error(cli("check", folder, timeout=20), "leads outside the compiled folder")
    (folder / "manifest.json").unlink()
    os.mkfifo(folder / "manifest.json")
    user_error(cli("run", folder, SAMPLES, timeout=20), "not a regular file")


def test_a_manifest_nested_deep_or_large_is_refused(folder):
    (folder / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    user_error(cli("run", folder, SAMPLES), "unreadable manifest")
    with open(folder / "manifest.json", "w") as f:
        f.truncate(65 << 20)
    user_error(cli("run", folder, SAMPLES), "more than a compiled folder's")


def npy_with_header(path, header: str):
    """A .npy file whose header says whatever it is given (numpy's own writer would refuse to)."""
    h = header.encode("latin1")
    h += b" " * (-(len(h) + 11) % 64) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(h).to_bytes(2, "little") + h + bytes(1024))


HOSTILE = {   # file name -> (header, what its error says)
    "b_rows.npy": ("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000, 1, 8, 8), }", "truncated or forged"),
    "c_negative.npy": ("{'descr': '<f4', 'fortran_order': False, 'shape': (-5, 1, 8, 8), }", "states the shape"),
    "d_literal.npy": ("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 8, 8, }", "not a readable .npy file"),
    "e_tokens.npy": ("{'descr': '<f4', 'fortran_order': False, 'shape': ((((((", "not a readable .npy file"),
    "f_objects.npy": ("{'descr': '|O', 'fortran_order': False, 'shape': (1, 8, 8), }", "Python objects"),
}


def test_a_hostile_npy_is_that_inputs_own_error(tmp_path, digits_folder):
    inputs = tmp_path / "in"
    inputs.mkdir()
    np.save(inputs / "a_good.npy", np.zeros((1, 8, 8), np.float32))
    for name, (header, _) in HOSTILE.items():
        npy_with_header(inputs / name, header)
    np.save(inputs / "g_good.npy", np.ones((2, 1, 8, 8), np.float32))
    r = cli("run", digits_folder, inputs, "--backend", "ort-cpu", "--json")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr   # inputs failed: exit 1, not 70
    rows = {json.loads(line)["input"].rsplit("/", 1)[-1]: json.loads(line) for line in r.stdout.splitlines()}
    assert [rows[n]["ok"] for n in ("a_good.npy", "g_good.npy[0]", "g_good.npy[1]")] == [True, True, True]
    for name, (_, says) in HOSTILE.items():
        assert not rows[name]["ok"] and says in rows[name]["error"], rows[name]
    p = cli("parity", digits_folder, "--inputs", inputs, "--backends", "ort-cpu,torch-cpu", "--json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert sorted(f["input"].rsplit("/", 1)[-1] for f in report["failed_inputs"]) == sorted(HOSTILE) and report["ok"]


def test_parity_refuses_a_count_of_inputs_it_cannot_hold(digits_folder):
    user_error(cli("parity", digits_folder, "--inputs", "1000000000", timeout=20), "--inputs", "GiB", "at most")


def test_auto_does_not_fall_back_past_a_missing_or_damaged_model(folder):
    (folder / "model.onnx").unlink()
    user_error(cli("run", folder, SAMPLES), "model.onnx is missing", "--backend")
    ok = cli("run", folder, SAMPLES, "--backend", "torch-cpu")      # named: the torch back end needs no model.onnx
    assert ok.returncode == 0, ok.stderr


def test_run_and_bench_refuse_files_compile_did_not_write(folder, digits_folder):
    data = bytearray((folder / "model.onnx").read_bytes())
    data[-100] ^= 1                                                   # one bit of a weight
    (folder / "model.onnx").write_bytes(bytes(data))
    user_error(cli("run", folder, SAMPLES), "model.onnx is not the file compile wrote")
    user_error(cli("bench", folder, "--backend", "ort-cpu", "--batch", "1", "--duration", "0.05"),
               "not the file compile wrote")
    shutil.copy(digits_folder / "model.onnx", folder / "model.onnx")
    w = bytearray((folder / "weights.safetensors").read_bytes())
    w[-1] ^= 1
    (folder / "weights.safetensors").write_bytes(bytes(w))
    user_error(cli("run", folder, SAMPLES, "--backend", "torch-cpu"), "weights.safetensors is not the file")


def test_another_model_in_model_onnxs_place_is_named(folder, tmp_path):
    """parity compares files changed since compiling (it reports them) instead of refusing them; a
    model.onnx with other inputs than the manifest's is still a clean error, not ONNX Runtime's."""
    from resgraph.compile import compile_spec
    other = compile_spec(str(ROOT / "specs" / "cifar_resnet20_a.yaml"), out=str(tmp_path / "other"))
    shutil.copy(os.path.join(other.out, "model.onnx"), folder / "model.onnx")
    user_error(cli("parity", folder, "--backends", "ort-cpu,torch-cpu"), "not from one compile")


def test_a_manifest_that_names_an_input_the_model_lacks(folder):
    edit_manifest(folder, lambda m: (m["input"].update(name="pixels"), m["inputs"][0].update(name="pixels")))
    user_error(cli("run", folder, SAMPLES, "--backend", "ort-cpu"), "but the manifest says pixels", "not from one compile")
