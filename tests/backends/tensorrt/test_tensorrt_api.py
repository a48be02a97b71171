"""API conformance of resgraph's TensorRT code, without TensorRT's libraries.

The `tensorrt-cu12-bindings` (10.x) and `tensorrt-cu13-bindings` (11.x) wheels hold TensorRT's real
compiled Python bindings (tensorrt_bindings/tensorrt.so, pybind11) and its Python part (__init__.py).
pybind11 registers every class, method, property and enum member under its name as a C string, so
each name the bindings export is in the .so as NAME\\0 (possibly as the tail of a longer string: the
linker merges a string into another that ends with it; so the test checks for NAME\\0 anywhere).
The names resgraph uses are read from its source (tests/backends/tensorrt/apinames.py), not from a hand list; each
must be exported by every supported version unless its use is guarded by a version check.

What this cannot see: which class a name belongs to (BuilderFlag.BF16 vs DataType.BF16), argument
types and counts, behaviour. docs/tensorrt.md says what was verified where.

The wheels (~1.2 MB each) are downloaded once into ~/.cache/resgraph/tensorrt-bindings (or
$RESGRAPH_TRT_BINDINGS), each one file pinned by name and sha256 (PyPI's, the CPython 3.11 x86-64 build,
whatever Python runs the test: pip checks the hash as it downloads, and the test again before reading
a cached file); without network the test skips, except under CI, where it fails. A cached file whose
sha256 is not the pinned one fails the test.

test_tensorrt_bindings.py is the qualified check (which class, which kind of member), against tables
read from NVIDIA's binding sources; the last test here holds those tables to these wheels.
"""
from __future__ import annotations

import ast
import glob
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

import pytest

from apinames import used_names

from conftest import ROOT as _ROOT

ROOT = str(_ROOT)

# the supported range (pyproject: tensorrt>=10.0), at its edges and where the API changed: version ->
# (distribution, the one wheel file, its sha256 as PyPI lists it)
VERSIONS = {
    "10.0.1": ("tensorrt-cu12-bindings", "tensorrt_cu12_bindings-10.0.1-cp311-none-manylinux_2_17_x86_64.whl",   # oldest
               "f7cfe4edc7d1db20aa2a765cb0acb0dae8a6c4583b99aeade397f9e8f87f4a74"),
    "10.8.0.43": ("tensorrt-cu12-bindings",       # before SAME_COMPUTE_CAPABILITY (10.9) and strong typing by default (10.12)
                  "tensorrt_cu12_bindings-10.8.0.43-cp311-none-manylinux_2_28_x86_64.whl",
                  "70881d9770d93231cd67e4d9bd64add2831ef453163be8ce25e254dc5644dbdf"),
    "10.16.1.11": ("tensorrt-cu12-bindings", "tensorrt_cu12_bindings-10.16.1.11-cp311-none-manylinux_2_28_x86_64.whl",
                   "150ef2b672487e29a8ea916353467c3e199994fb33589167e3641a928e243aa7"),   # newest 10.x
    "11.0.0.114": ("tensorrt-cu13-bindings", "tensorrt_cu13_bindings-11.0.0.114-cp311-none-manylinux_2_28_x86_64.whl",
                   "af42b7a12813d4615e1a3c7defea86d5223b902f6f209abe540d822d94eb2da7"),   # no precision builder flags
    "11.4.0.106": ("tensorrt-cu13-bindings", "tensorrt_cu13_bindings-11.4.0.106-cp311-none-manylinux_2_28_x86_64.whl",
                   "d072ac2a095e2be749fefc847adfb25d5ebe70303401df62ede8fe67a59f27fc"),
}
CACHE = os.environ.get("RESGRAPH_TRT_BINDINGS") or os.path.join(os.path.expanduser("~"), ".cache", "resgraph",
                                                                 "tensorrt-bindings")


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _wheel(version: str) -> str | None:
    """The pinned wheel of `version`, from the cache or downloaded (pip --require-hashes); None without network."""
    dist, filename, sha = VERSIONS[version]
    path = os.path.join(CACHE, filename)
    if not os.path.exists(path):
        why = _download(dist, version, sha)
        if "DO NOT MATCH THE HASHES" in why:
            pytest.fail(f"{dist}=={version}: the download's sha256 is not the pinned {sha}: {why}")
    if not os.path.exists(path):
        return None
    if _sha256(path) != sha:
        pytest.fail(f"{path}: sha256 {_sha256(path)}, pinned {sha}: not the wheel PyPI lists (delete it to download "
                    "it again)")
    return path


def _download(dist: str, version: str, sha: str) -> str:
    """pip's complaint, if any."""
    os.makedirs(CACHE, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        req = os.path.join(tmp, "requirements.txt")
        with open(req, "w") as f:
            f.write(f"{dist}=={version} --hash=sha256:{sha}\n")
        r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                            "--python-version", "3.11", "--implementation", "cp", "--abi", "none",
                            "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux_2_28_x86_64",
                            "--require-hashes", "-r", req, "-d", CACHE], capture_output=True, text=True, timeout=300,
                           check=False)
    return r.stderr.strip()


@pytest.fixture(scope="module")
def exported() -> dict[str, tuple[bytes, set[str]]]:
    """version -> (the .so's bytes, the names __init__.py defines)."""
    out = {}
    for v in VERSIONS:
        w = _wheel(v)
        if w is None:
            msg = f"cannot download {VERSIONS[v][0]}=={v} into {CACHE} (no network?)"
            if os.environ.get("CI"):
                pytest.fail(msg + ": CI must run this test")
            pytest.skip(msg)
        with zipfile.ZipFile(w) as z:
            so = z.read("tensorrt_bindings/tensorrt.so")
            init = z.read("tensorrt_bindings/__init__.py").decode()
        names = set()
        for node in ast.walk(ast.parse(init)):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
                names |= {t.attr for t in node.targets if isinstance(t, ast.Attribute)}
        out[v] = (so, names)
    return out


def _has(exports: tuple[bytes, set[str]], name: str) -> bool:
    so, names = exports
    return name in names or name.encode() + b"\0" in so


def _trt_files() -> list[str]:
    """Every resgraph module that uses TensorRT: found by what it imports, not listed by hand."""
    files = []
    for path in sorted(glob.glob(os.path.join(ROOT, "resgraph", "**", "*.py"), recursive=True)):
        src = open(path, encoding="utf-8").read()
        if "import tensorrt" in src or "import_tensorrt()" in src:
            files.append(path)
    return files


def trt_uses(source: str, file: str):
    return used_names(source, file, roots={"trt"}, annotation_prefixes=("trt.",), root_calls={"import_tensorrt"},
                      root_modules={"tensorrt"})


def problems(uses, exported) -> list[str]:
    out = []
    for u in uses:
        lacking = [v for v in VERSIONS if not _has(exported[v], u.name)]
        where = f"{os.path.relpath(u.file, ROOT)}:{u.line}: {u.name}"
        if len(lacking) == len(VERSIONS):
            out.append(f"{where}: in no TensorRT version (a typo, or an API that does not exist)")
        elif lacking and not u.guarded:
            out.append(f"{where}: missing in TensorRT {', '.join(lacking)}, and not guarded by a version check")
    return sorted(set(out))


def test_every_tensorrt_name_resgraph_uses_exists_in_every_supported_version(exported):
    files = _trt_files()
    assert {os.path.relpath(f, ROOT) for f in files} >= {"resgraph/backends/tensorrt/build.py",
                                                         "resgraph/runtime/tensorrt.py"}
    uses = [u for f in files for u in trt_uses(open(f, encoding="utf-8").read(), f)]
    names = {u.name for u in uses}
    # the analysis reaches the whole path: the builder, the parser, the runtime, the execution context
    assert names >= {"Builder", "create_network", "STRONGLY_TYPED", "OnnxParser", "parse_from_file", "get_error",
                     "node_operator", "create_builder_config", "set_memory_pool_limit", "builder_optimization_level",
                     "create_optimization_profile", "set_shape", "create_timing_cache", "combine",
                     "build_serialized_network", "Runtime", "deserialize_cuda_engine", "create_execution_context",
                     "set_input_shape", "set_tensor_address", "execute_async_v3", "FP16", "TF32", "get_tensor_shape",
                     "get_tensor_profile_shape", "num_io_tensors", "get_tensor_mode", "TensorIOMode", "IProfiler",
                     "profiler"}, names
    assert problems(uses, exported) == []


def test_the_check_fails_on_an_unguarded_removed_name_and_on_a_typo(exported):
    """The test above can fail: TensorRT 11 has no BuilderFlag.FP16, and no version has the typo."""
    src = '''
def build(trt_version):
    import tensorrt as trt
    config = trt.Builder(None).create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    config.set_memory_pool_limt(trt.MemoryPoolType.WORKSPACE, 1)
    if trt_version < (11,):
        config.set_flag(trt.BuilderFlag.BF16)
'''
    found = problems(trt_uses(src, os.path.join(ROOT, "snippet.py")), exported)
    assert any(p.endswith("FP16: missing in TensorRT 11.0.0.114, 11.4.0.106, and not guarded by a version check")
               for p in found), found
    assert any("set_memory_pool_limt: in no TensorRT version" in p for p in found), found
    assert not any("BF16" in p for p in found), found      # guarded (and still in 11 as DataType.BF16)


def test_every_cuda_python_name_resgraph_uses_exists():
    """The CUDA runtime calls of the tensorrt back end, against the installed cuda-python (it imports
    without a GPU; its calls then return cudaErrorInsufficientDriver or cudaErrorNoDevice)."""
    rt = pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed (pip install -e '.[dev]')")
    files = [os.path.join(ROOT, "resgraph", p) for p in ("runtime/cuda.py", "backends/tensorrt/gpu.py")]
    uses = [u for f in files for u in used_names(open(f, encoding="utf-8").read(), f, roots=set(),
                                                   root_calls={"cudart"}, root_modules={"cuda.bindings.runtime"})]
    assert {u.name for u in uses} >= {"cudaMalloc", "cudaMallocHost", "cudaMemcpyAsync", "cudaStreamBeginCapture",
                                      "cudaGraphInstantiate", "cudaGraphLaunch", "cudaGetDeviceProperties"}
    known = set(dir(rt)) | set(dir(bytes)) | set(dir(str))
    for name in dir(rt):
        if isinstance(getattr(rt, name), type):
            known |= set(dir(getattr(rt, name)))
    missing = sorted({f"{os.path.relpath(u.file, ROOT)}:{u.line}: {u.name}" for u in uses if u.name not in known})
    assert missing == []
    props = rt.cudaDeviceProp()
    assert all(hasattr(props, a) for a in ("name", "major", "minor"))


def test_the_source_tables_agree_with_the_compiled_wheels(exported):
    """The two sources hold each other: every class, member and module name that extract_bindings.py
    read from NVIDIA's sources at a tag is a string in the compiled bindings of the same release
    (major.minor; 11.4 has no public source yet, so its wheel has no table), Python additions of
    __init__.py aside. A parser that invents names, or tables of another release, fail here."""
    from test_tensorrt_bindings import RELEASES
    paired = 0
    for r in RELEASES:
        wheel = [v for v in VERSIONS if v.split(".")[:2] == r["source"]["tensorrt_version"].split(".")[:2]]
        if not wheel:
            continue
        paired += 1
        names = {n for n, k in r["module"].items() if k != "python"}
        for cls, c in r["classes"].items():
            names.add(cls.rsplit(".", 1)[-1])
            names |= {m for m, k in c["members"].items() if k != "python"}
        runs = _runs(exported[wheel[0]][0])
        assert sorted(n for n in names if not _ends_one(n.encode(), runs)) == [], (r["source"]["tag"], wheel[0])
    assert paired >= 4


_OTHER = bytes(b if b == 0 or chr(b).isascii() and (chr(b).isalnum() or b == ord("_")) else 1 for b in range(256))


def _runs(so: bytes) -> set[bytes]:
    """Each run of identifier characters that a NUL ends (every byte else made \\1, then split at NULs)."""
    return {piece.rsplit(b"\1", 1)[-1] for piece in so.translate(_OTHER).split(b"\0")}


def _ends_one(name: bytes, runs: set[bytes]) -> bool:
    """name\\0 is in the .so (what _has asks): a run ending at a NUL is name or ends with it."""
    return name in runs or any(run.endswith(name) for run in runs)
