"""Publishing into bind mounts of folders of the same filesystem: what Docker's `-v host:/out` makes.

A bind mount shows its filesystem's st_dev, the same as its parent's, yet rename() between it and
its parent fails with EXDEV: a compile into `-o /out` that staged beside the folder failed. Each test
makes real bind mounts in a mount namespace of its own (`unshare -m`), so that no mount outlives it
even where the test is killed, and unmounts them in a `finally` besides; it skips, saying why, where
this process may not mount. What a compile wrote is read back from the bind mount's source folder
once the namespace is gone.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, resgraph_cmd
from resgraph.manifest import read_manifest, verify_artifacts

DIGITS = str(ROOT / "specs" / "digits_resnet.yaml")
DIGITS_W = str(ROOT / "specs" / "weights" / "digits_resnet.safetensors")
ARTIFACTS = ["manifest.json", "model.onnx", "spec.yaml", "weights.safetensors"]

# runs inside the namespace: bind-mounts each (source, mount point), runs each command, unmounts
DRIVER = r"""
import json, subprocess, sys
job = json.loads(sys.argv[1])
mounted, results = [], []
try:
    for src, dst in job["mounts"]:
        r = subprocess.run(["mount", "--bind", src, dst], capture_output=True, text=True)
        if r.returncode:
            print(json.dumps({"skip": f"mount --bind failed: {(r.stderr or r.stdout).strip()[:200]}"}))
            sys.exit(0)
        mounted.append(dst)
    for argv in job["calls"]:
        r = subprocess.run(argv, capture_output=True, text=True, cwd=job["cwd"], timeout=120)
        results.append({"argv": argv, "rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr})
finally:
    for dst in reversed(mounted):
        subprocess.run(["umount", "-l", dst])
print(json.dumps({"results": results}))
"""

# resgraph with mount_of knowing only devices, as on a system without /proc: bind mounts go unseen
BLIND = [sys.executable, "-c", ("import os, resgraph.publish as p; "
                                "p.mount_of = lambda path: ('st_dev', os.stat(path).st_dev); from resgraph.cli import main; main()")]


def in_namespace(mounts, *calls, cwd=ROOT):
    """Run `calls` (argument lists) with `mounts` ((source, mount point) pairs) bind-mounted, in a
    private mount namespace; the results, in order ({argv, rc, stdout, stderr})."""
    if os.geteuid() != 0:
        pytest.skip("bind mounts need root (mount --bind in a private namespace: unshare -m)")
    if not shutil.which("unshare") or not shutil.which("mount"):
        pytest.skip("needs unshare and mount (util-linux)")
    job = json.dumps({"mounts": [[str(s), str(d)] for s, d in mounts], "calls": [list(map(str, c)) for c in calls],
                      "cwd": str(cwd)})
    r = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c", DRIVER, job],
                       capture_output=True, text=True, timeout=600, check=False)
    if r.returncode != 0 and r.stderr.startswith("unshare:"):
        pytest.skip(f"cannot make a mount namespace here ({r.stderr.strip()[:200]})")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    if "skip" in out:
        pytest.skip(out["skip"])
    return out["results"]


def compile_(out, *extra, cli=None):
    return [*(cli or resgraph_cmd()), "compile", DIGITS, "--weights", DIGITS_W, "-o", out, *extra]


def inode(path):
    """A call that prints the inode of `path`: a folder published whole is a new folder."""
    return ["stat", "-c", "%i", path]


def succeeded(result):
    assert result["rc"] == 0, (result["argv"], result["stderr"])


def consistent(folder):
    m = read_manifest(str(folder))
    assert verify_artifacts(str(folder), m) == {}
    return m


def nothing_hidden(*folders):
    """No staging, replaced or half-made folder left behind."""
    for folder in folders:
        assert not [e for e in os.listdir(folder) if e.startswith(".")], (folder, os.listdir(folder))


def nan_weights(tmp_path):
    from safetensors.numpy import load_file, save_file
    w = load_file(DIGITS_W)
    k = next(k for k in w if k.endswith("weight") and w[k].ndim == 4)
    w[k] = w[k].copy()
    w[k].flat[0] = float("nan")
    save_file(w, str(tmp_path / "nan.safetensors"))
    return str(tmp_path / "nan.safetensors")


def bind_pair(tmp_path):
    src, dst = tmp_path / "host", tmp_path / "out"
    src.mkdir()
    dst.mkdir()
    return src, dst


def test_output_is_a_bind_mount_point(tmp_path):
    """Docker's `-v host:/out ... -o /out`: a new set, a set over it, then a failing compile that
    leaves the previous set whole; the user's own file in the folder stays."""
    src, dst = bind_pair(tmp_path)
    (src / "notes.txt").write_text("mine")
    first, second, failed = in_namespace(
        [(src, dst)], compile_(dst), compile_(dst, "--precision", "fp16"),
        compile_(dst, "--precision", "fp16", "--weights", nan_weights(tmp_path)))
    succeeded(first)
    succeeded(second)
    assert failed["rc"] == 1 and "not all finite" in failed["stderr"], failed["stderr"]
    assert consistent(src).precision == "fp16"
    assert sorted(os.listdir(src)) == sorted(ARTIFACTS + ["notes.txt"])
    assert (src / "notes.txt").read_text() == "mine"
    nothing_hidden(src, tmp_path)


def test_output_inside_a_bind_mount(tmp_path):
    """-o /out/sub: a new folder, then one exchanged whole (a new inode), both staged on the mount."""
    src, dst = bind_pair(tmp_path)
    sub = dst / "sub"
    results = in_namespace([(src, dst)], compile_(sub), inode(sub), compile_(sub, "--precision", "fp16"), inode(sub))
    for result in results:
        succeeded(result)
    assert results[1]["stdout"] != results[3]["stdout"], "published entry by entry, not whole"
    assert consistent(src / "sub").precision == "fp16"
    assert sorted(os.listdir(src)) == ["sub"] and sorted(os.listdir(src / "sub")) == ARTIFACTS
    nothing_hidden(src, tmp_path)


def test_default_output_folder_is_a_bind_mount_point(tmp_path):
    """compiled/NAME itself bind-mounted over a folder that holds an earlier compile: replaced in place."""
    src = tmp_path / "host"
    assert subprocess.run(compile_(src), capture_output=True, check=False).returncode == 0
    dst = tmp_path / "compiled" / "digits_resnet"
    dst.mkdir(parents=True)
    (result,) = in_namespace([(src, dst)], [*resgraph_cmd(), "compile", DIGITS, "--weights", DIGITS_W,
                                            "--precision", "fp16"], cwd=tmp_path)
    succeeded(result)
    assert consistent(src).precision == "fp16" and sorted(os.listdir(src)) == ARTIFACTS
    nothing_hidden(src, tmp_path, tmp_path / "compiled")


def test_triton_repository_is_a_bind_mount_point(tmp_path, digits_folder):
    """export triton -o /models (Triton's own Docker pattern): the model folder staged on the mount,
    and replaced whole (a new inode) by the second export."""
    src, dst = bind_pair(tmp_path)
    export = [*resgraph_cmd(), "export", "triton", str(digits_folder), "-o", dst]
    model = dst / "digits_resnet"
    results = in_namespace([(src, dst)], export, inode(model), export, inode(model))
    for result in results:
        succeeded(result)
    assert results[1]["stdout"] != results[3]["stdout"], "published entry by entry, not whole"
    assert sorted(os.listdir(src)) == ["digits_resnet"]
    assert sorted(os.listdir(src / "digits_resnet")) == ["1", "config.pbtxt", "labels.txt"]
    nothing_hidden(src, src / "digits_resnet", tmp_path)


def test_a_bind_mount_that_goes_unseen_is_published_by_copy(tmp_path):
    """Where mount_of cannot see the mount (no /proc), the rename's EXDEV makes each entry go by a
    copy beside it, still replaced in one step, and nothing is left behind."""
    src, dst = bind_pair(tmp_path)
    for result in in_namespace([(src, dst)], compile_(dst, cli=BLIND), compile_(dst, "--precision", "fp16", cli=BLIND)):
        succeeded(result)
    assert consistent(src).precision == "fp16" and sorted(os.listdir(src)) == ARTIFACTS
    nothing_hidden(src, tmp_path)
