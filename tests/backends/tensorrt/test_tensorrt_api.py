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
$RESGRAPH_TRT_BINDINGS); without network the test skips, except under CI, where it fails.
"""
from __future__ import annotations

import ast
import glob
import os
import subprocess
import sys
import zipfile

import pytest

from apinames import used_names

from conftest import ROOT as _ROOT

ROOT = str(_ROOT)

# the supported range (pyproject: tensorrt>=10.0), at its edges and where the API changed
VERSIONS = {
    "10.0.1": "tensorrt-cu12-bindings",       # oldest supported
    "10.8.0.43": "tensorrt-cu12-bindings",    # before SAME_COMPUTE_CAPABILITY (10.9) and strong typing by default (10.12)
    "10.16.1.11": "tensorrt-cu12-bindings",   # newest 10.x
    "11.0.0.114": "tensorrt-cu13-bindings",   # no precision builder flags
    "11.4.0.106": "tensorrt-cu13-bindings",
}
CACHE = os.environ.get("RESGRAPH_TRT_BINDINGS") or os.path.join(os.path.expanduser("~"), ".cache", "resgraph",
                                                                 "tensorrt-bindings")


def _wheel(version: str) -> str | None:
    dist = VERSIONS[version].replace("-", "_")
    found = glob.glob(os.path.join(CACHE, f"{dist}-{version}-*.whl"))
    if found:
        return found[0]
    os.makedirs(CACHE, exist_ok=True)
    r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", CACHE,
                        f"{VERSIONS[version]}=={version}"], capture_output=True, text=True, timeout=300)
    found = glob.glob(os.path.join(CACHE, f"{dist}-{version}-*.whl"))
    return found[0] if r.returncode == 0 and found else None


@pytest.fixture(scope="module")
def exported() -> dict[str, tuple[bytes, set[str]]]:
    """version -> (the .so's bytes, the names __init__.py defines)."""
    out = {}
    for v in VERSIONS:
        w = _wheel(v)
        if w is None:
            msg = f"cannot download {VERSIONS[v]}=={v} into {CACHE} (no network?)"
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
                     "set_input_shape", "set_tensor_address", "execute_async_v3", "FP16", "TF32"}, names
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
