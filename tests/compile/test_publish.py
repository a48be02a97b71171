"""What a hostile-input probe found in `compile`'s publishing and weight loading, each fixed:

    -o onto a mount point's root (Docker's -v host:/out ... -o /out) and -o . ; a parent on another
    filesystem; two compiles into one folder at once; a stale staging folder of another name; a
    read-only filesystem, a full disk, /proc, a 240-character name, init -o and schema -o where
    nothing can be written; a negative bn variance (NaN after folding), NaN weights under fp16,
    integer and boolean weights, a FIFO as --weights.

Every failure is a user error (exit 1, the path named, a hint), never an internal one (exit 70),
and leaves the previous artifacts as they were. The mount tests make real tmpfs mounts and skip,
saying so, where this process may not mount.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import threading

import numpy as np
import pytest

from conftest import ROOT, run_cli
from resgraph.manifest import read_manifest, verify_artifacts
from resgraph.publish import STAGING, wait_for_cleanup

DIGITS = str(ROOT / "specs" / "digits_resnet.yaml")
DIGITS_W = str(ROOT / "specs" / "weights" / "digits_resnet.safetensors")


@contextlib.contextmanager
def tmpfs(path, options="size=64m"):
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({(r.stderr or r.stdout).strip()[:100]}): needs root")
    try:
        yield path
    finally:
        wait_for_cleanup()
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def user_error(r, *says):
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    for s in says:
        assert s in r.stderr, r.stderr


def consistent(folder):
    m = read_manifest(str(folder))
    assert verify_artifacts(str(folder), m) == {}
    return m


# --- where the output folder cannot be swapped ------------------------------------------------

def test_output_onto_a_mount_points_root(tmp_path):
    with tmpfs(tmp_path / "mnt") as mnt:
        for precision in ("fp32", "fp16"):     # a new folder, then over an earlier set
            r = run_cli("compile", DIGITS, "--weights", DIGITS_W, "-o", str(mnt), "--precision", precision)
            assert r.returncode == 0, r.stderr
            assert consistent(mnt).precision == precision
        assert sorted(os.listdir(mnt)) == ["manifest.json", "model.onnx", "spec.yaml", "weights.safetensors"]


def test_output_in_a_folder_whose_parent_is_another_filesystem(tmp_path):
    with tmpfs(tmp_path / "mnt") as mnt:
        (mnt / "out").mkdir()
        assert run_cli("compile", DIGITS, "--weights", DIGITS_W, "-o", str(mnt / "out")).returncode == 0
        consistent(mnt / "out")


def test_output_is_the_working_directory(tmp_path):
    out = tmp_path / "here"
    assert run_cli("compile", DIGITS, "--weights", DIGITS_W, "-o", str(out)).returncode == 0
    inode = os.stat(out).st_ino
    r = run_cli("compile", DIGITS, "--weights", DIGITS_W, "-o", ".", "--precision", "fp16", cwd=out)
    assert r.returncode == 0, r.stderr
    assert os.stat(out).st_ino == inode             # the folder a shell may stand in is not swapped away
    assert consistent(out).precision == "fp16"
    assert not [e for e in os.listdir(out) if e.startswith(".")]


# --- concurrency and leftovers -----------------------------------------------------------------

def test_two_compiles_into_one_folder_at_once_both_succeed_and_the_last_wins(tmp_path):
    out = tmp_path / "out"
    for _ in range(3):
        results = {}

        def compile_(precision):
            results[precision] = run_cli("compile", "specs/resnet18.yaml", "-o", str(out), "--precision", precision,
                                         timeout=300)
        threads = [threading.Thread(target=compile_, args=(p,)) for p in ("fp32", "fp16")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for r in results.values():
            assert r.returncode == 0, r.stderr
        assert consistent(out).precision in ("fp32", "fp16")
        wait_for_cleanup()
        assert sorted(os.listdir(tmp_path)) == ["out"], [(e, results["fp32"].stderr[-300:], results["fp16"].stderr[-300:]) for e in os.listdir(tmp_path)]


def test_a_stale_staging_folder_is_removed_by_a_compile_of_any_name_but_a_live_one_is_kept(tmp_path):
    stale = tmp_path / f"{STAGING}dead"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"\0" * 1000)          # a killed compile's half-written set
    live = tmp_path / f"{STAGING}live"
    live.mkdir()
    fd = os.open(live, os.O_RDONLY | os.O_DIRECTORY)          # a running compile holds a lock on its folder
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert run_cli("compile", DIGITS, "--weights", DIGITS_W, "-o", str(tmp_path / "other")).returncode == 0
        assert not stale.exists() and live.exists()
    finally:
        os.close(fd)
    assert run_cli("compile", DIGITS, "--weights", DIGITS_W, "-o", str(tmp_path / "other")).returncode == 0
    assert not live.exists() and not [e for e in os.listdir(tmp_path) if e.startswith(".")]


# --- where nothing can be written: user errors, nothing left behind ------------------------------

def test_read_only_filesystem(tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        user_error(run_cli("compile", DIGITS, "-o", str(ro / "x")), f"{ro / 'x'}: error: Read-only file system",
                   "hint: a read-only filesystem")
        user_error(run_cli("init", DIGITS, "-o", str(ro / "w.safetensors")), "Read-only file system")
        user_error(run_cli("schema", "-o", str(ro / "s.json")), f"{ro / 's.json'}: error: Read-only file system")


def test_full_disk_leaves_the_previous_artifacts(tmp_path):
    with tmpfs(tmp_path / "small", "size=800k") as small:
        out = small / "d"
        assert run_cli("compile", DIGITS, "--weights", DIGITS_W, "-o", str(out)).returncode == 0
        before = {f: (out / f).read_bytes() for f in os.listdir(out)}
        user_error(run_cli("compile", "specs/resnet18.yaml", "-o", str(out)), "No space left on device",
                   "hint: the disk is full")
        assert {f: (out / f).read_bytes() for f in os.listdir(out)} == before
        assert sorted(os.listdir(small)) == ["d"]


def test_proc_and_schema_into_a_missing_folder(tmp_path):
    user_error(run_cli("compile", DIGITS, "-o", "/proc/x"), "/proc/x: error: No such file or directory")
    user_error(run_cli("schema", "-o", "/proc/x/s.json"), "/proc/x/s.json: error")


def test_a_240_character_name(tmp_path):
    name = "n" * 240
    spec = (ROOT / "specs" / "digits_resnet.yaml").read_text().replace("name: digits_resnet", f"name: {name}", 1)
    assert f"name: {name}" in spec
    (tmp_path / "s.yaml").write_text(spec)
    r = run_cli("compile", str(tmp_path / "s.yaml"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    consistent(tmp_path / "compiled" / name)
    assert sorted(os.listdir(tmp_path / "compiled")) == [name]


# --- weights that would make a wrong model ------------------------------------------------------

def _weights(tmp_path, change):
    from safetensors.numpy import load_file, save_file
    w = load_file(DIGITS_W)
    change(w)
    p = tmp_path / "w.safetensors"
    save_file(w, str(p))
    return str(p)


def test_negative_bn_variance_is_refused_naming_the_tensor(tmp_path):
    def negate(w):
        k = next(k for k in w if k.endswith("running_var"))
        w[k] = w[k].copy()
        w[k][0] = -0.5
    p = _weights(tmp_path, negate)
    for precision in ("fp32", "fp16"):
        r = run_cli("compile", DIGITS, "--weights", p, "-o", str(tmp_path / "o"), "--precision", precision)
        user_error(r, "negative batch-norm variance", "running_var (min -0.5)")
        assert "overflow" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_nan_weights_under_fp16_are_called_nan_not_overflow(tmp_path):
    def nan(w):
        k = next(k for k in w if k.endswith("weight") and w[k].ndim == 4)
        w[k] = w[k].copy()
        w[k].flat[0] = np.nan
    r = run_cli("compile", DIGITS, "--weights", _weights(tmp_path, nan), "-o", str(tmp_path / "o"), "--precision", "fp16")
    user_error(r, "the weights are not all finite")
    assert "overflow" not in r.stderr


@pytest.mark.parametrize("dtype", ["int8", "bool", "int64"])
def test_integer_and_boolean_weights_are_refused(tmp_path, dtype):
    def cast(w):
        k = next(k for k in w if k.endswith("weight") and w[k].ndim == 4)
        w[k] = w[k].astype(dtype)
    r = run_cli("compile", DIGITS, "--weights", _weights(tmp_path, cast), "-o", str(tmp_path / "o"))
    # the words of every loader (resgraph.fit): the torch back end's refuses it alike (test_training_hardening)
    user_error(r, "dtype mismatch", f"conv1.weight: checkpoint {dtype}, spec float32", "weights must be floating point")
    assert not (tmp_path / "o").exists()


def test_a_fifo_as_weights_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "w.safetensors"
    os.mkfifo(fifo)
    r = run_cli("compile", DIGITS, "--weights", str(fifo), "-o", str(tmp_path / "o"), timeout=20)
    user_error(r, "not a regular file")
