"""Qualified API conformance of resgraph's TensorRT code, against NVIDIA's own binding sources.

data/bindings-TAG.json hold every class, enum, method, property and enum value that TensorRT's Python
bindings declare (py::class_ / py::enum_ and their .def / .def_property / .value chains), read from
https://github.com/NVIDIA/TensorRT at one tag per supported release by extract_bindings.py (each file
names its tag and commit). qualified.py reads resgraph's source for each *qualified* use:
`trt.BuilderFlag.TF32` is BuilderFlag.TF32, `config.set_flag(...)` is IBuilderConfig.set_flag where
the flow analysis knows config is an IBuilderConfig. Each must exist on that class in every release
(or be used behind a version check), and be used as what it is: a method called, a property read
(or assigned, where it has a setter), an enum value of its own enum.

This is the second source beside test_tensorrt_api.py, which looks for each name as a string in the
compiled wheels (any class; no kinds). docs/tensorrt.md says what was verified where.
"""
from __future__ import annotations

import json
import os
import re

import pytest

from apinames import used_names
from qualified import (ENUM_BUILTINS, ENUM_VALUE_BUILTINS, PROPERTIES, RETURNS, Known, can_run, member_kind,
                       qualified_uses)
from test_tensorrt_api import ROOT, _trt_files, trt_uses

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
CALLABLE = {"method", "static", "init", "python", "class", "function"}
ADVICE = {"property": "read or assign it, do not call it", "readonly": "read it, do not call it",
          "writeonly": "assign it, do not call or read it", "value": "an enum value: use it, do not call it"}


def _version(r: dict) -> tuple[int, ...]:
    return tuple(int(p) for p in r["source"]["tensorrt_version"].split("."))


def load_releases() -> list[dict]:
    rs = []
    for name in sorted(os.listdir(DATA)):
        if name.startswith("bindings-") and name.endswith(".json"):
            with open(os.path.join(DATA, name), encoding="utf-8") as f:
                rs.append(json.load(f))
    return sorted(rs, key=_version)


RELEASES = load_releases()
KNOWN = Known(RELEASES)


def label(r: dict) -> str:
    return f"{r['source']['tensorrt_version']} ({r['source']['tag']})"


def kind_in(r: dict, on: str, owner: str, member: str) -> str | None:
    """The kind of a member in release r, or None where r lacks it (on: module | class | inst)."""
    classes = r["classes"]
    if on == "module":
        return r["module"].get(member)
    enum = classes.get(owner, {}).get("kind") == "enum"
    if enum and on == "inst" and member in ENUM_VALUE_BUILTINS or enum and on == "class" and member in ENUM_BUILTINS:
        return "readonly"
    return member_kind(classes, owner, member)


def lookup(r: dict, u) -> str | None:
    return kind_in(r, u.on, u.owner, u.member)


def kind_problem(kind: str, how: str) -> str | None:
    """What is wrong with using a member of this kind so (None: nothing)."""
    if how == "call" and kind not in CALLABLE:
        return f"is a {kind if kind != 'readonly' else 'read-only property'} there: {ADVICE.get(kind, 'do not call it')}"
    if how == "read" and kind in ("method", "static", "init"):
        return "is a method there: call it (used without a call, it is a bound method, always true)"
    if how == "read" and kind == "writeonly":
        return "is a write-only property there: it cannot be read"
    if how == "write" and kind not in ("property", "writeonly", "python"):
        return f"is a {'read-only property' if kind == 'readonly' else kind} there: it cannot be assigned"
    return None


def _name(u) -> str:
    return f"trt.{u.member}" if u.on == "module" else f"{u.owner}.{u.member}"


def problems(uses, releases: list[dict] = RELEASES) -> list[str]:
    out = []
    for u in uses:
        where = f"{os.path.relpath(u.file, ROOT)}:{u.line}: {_name(u)}"
        kinds = {label(r): lookup(r, u) for r in releases}
        if all(k is None for k in kinds.values()):
            out.append(f"{where}: in no TensorRT release{_elsewhere(u)}")
            continue
        runs = [label(r) for r in releases if lookup(r, u) is None and can_run(u, r, kind_in)]
        if runs and u.how != "probe" and not u.guarded:
            out.append(f"{where}: missing in TensorRT {', '.join(runs)}, " + (
                "where the tests around it let it run" if u.conditions else "and not guarded by a version check"))
        found: dict[str, list[str]] = {}
        for v, k in kinds.items():
            why = k and kind_problem(k, u.how)
            if why:
                found.setdefault(why, []).append(v)
        out += [f"{where}: {why} ({'in every release' if len(vs) == len(releases) else 'TensorRT ' + ', '.join(vs)})"
                for why, vs in found.items()]
    return sorted(set(out), key=_position)


def _position(problem: str) -> tuple:
    file, line, rest = problem.split(":", 2)
    return file, int(line), rest


def _elsewhere(u) -> str:
    """Where TensorRT has the name instead: an enum value on another enum, a method on another class."""
    owners = sorted(c for c, d in KNOWN.classes.items() if u.member in d["members"] and c != u.owner)
    return f" (TensorRT has {u.member} on {', '.join(owners[:4])}{', ...' if len(owners) > 4 else ''})" if owners else \
        " (a typo, or an API that does not exist)"


def check(src: str, file: str = "snippet.py") -> list[str]:
    return problems(qualified_uses(src, os.path.join(ROOT, file), KNOWN))


def resgraph_uses():
    return [u for f in _trt_files() for u in qualified_uses(open(f, encoding="utf-8").read(), f, KNOWN)]


# --- the tables ----------------------------------------------------------------------------------

def test_the_tables_are_nvidias_sources_of_every_supported_release():
    """One table per tag, each naming NVIDIA's repository, the tag and its commit; the oldest is the
    oldest TensorRT pyproject.toml allows (tensorrt>=10.0), and 11.x is there."""
    pyproject = open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8").read()
    floor = tuple(int(p) for p in re.search(r'"tensorrt>=([\d.]+)"', pyproject).group(1).split("."))
    versions = [_version(r) for r in RELEASES]
    assert len(RELEASES) >= 4 and versions == sorted(set(versions))
    assert versions[0][:len(floor)] == floor and versions[-1][0] == 11
    for r in RELEASES:
        s = r["source"]
        assert s["repository"] == "https://github.com/NVIDIA/TensorRT" and re.fullmatch(r"[0-9a-f]{40}", s["commit"])
        assert {"python/src/infer/pyCore.cpp", "python/src/parsers/pyOnnx.cpp"} <= set(s["files"]), s["files"]
        assert {"Builder", "IBuilderConfig", "ICudaEngine", "BuilderFlag", "ILogger.Severity"} <= set(r["classes"])


def test_the_factory_tables_name_real_methods_and_classes():
    """RETURNS and PROPERTIES are kept by hand: each names a method (a property) and a class of the tables."""
    for (owner, method), result in RETURNS.items():
        assert KNOWN.kind(owner, method) == "method", (owner, method)
        assert result in KNOWN.classes, result
    for (owner, prop), result in PROPERTIES.items():
        assert KNOWN.kind(owner, prop) in ("property", "readonly"), (owner, prop)
        assert result in KNOWN.classes, result


# --- resgraph's code -----------------------------------------------------------------------------

def test_every_qualified_tensorrt_use_exists_in_every_supported_release():
    uses = resgraph_uses()
    found = problems(uses)
    assert found == [], "\n".join(found)
    seen = {_name(u) for u in uses}
    # the flow analysis reaches the whole path: logger, builder, parser, config, profile, timing cache,
    # runtime, engine, execution context, and the enums
    assert seen >= {
        "trt.Builder", "Builder.__init__", "Builder.create_network", "Builder.create_builder_config",
        "Builder.create_optimization_profile", "Builder.build_serialized_network", "OnnxParser.__init__",
        "OnnxParser.parse_from_file", "OnnxParser.num_errors", "OnnxParser.get_error", "ParserError.node_operator",
        "ParserError.code", "ErrorCode.name", "INetworkDefinition.get_input", "INetworkDefinition.num_inputs",
        "ITensor.shape", "ITensor.dtype", "DataType.name", "IBuilderConfig.set_flag", "IBuilderConfig.clear_flag",
        "IBuilderConfig.builder_optimization_level", "IBuilderConfig.hardware_compatibility_level",
        "IBuilderConfig.set_memory_pool_limit", "IBuilderConfig.add_optimization_profile",
        "IBuilderConfig.create_timing_cache", "IBuilderConfig.set_timing_cache", "ITimingCache.combine",
        "ITimingCache.serialize", "IOptimizationProfile.set_shape", "BuilderFlag.TF32", "BuilderFlag.FP16",
        "HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY", "NetworkDefinitionCreationFlag.STRONGLY_TYPED",
        "MemoryPoolType.WORKSPACE", "ILogger.__init__", "ILogger.Severity.ERROR", "ILogger.Severity",
        "Runtime.__init__", "Runtime.engine_host_code_allowed", "Runtime.deserialize_cuda_engine",
        "ICudaEngine.device_memory_size_v2", "ICudaEngine.create_execution_context",
        "ExecutionContextAllocationStrategy.USER_MANAGED", "IExecutionContext.set_device_memory",
        "IExecutionContext.set_tensor_address", "IExecutionContext.set_input_shape",
        "IExecutionContext.execute_async_v3", "trt.__version__", "IExecutionContext.get_tensor_shape",
        "ICudaEngine.num_io_tensors", "ICudaEngine.get_tensor_name", "ICudaEngine.get_tensor_mode",
        "TensorIOMode.INPUT", "ICudaEngine.get_tensor_profile_shape", "trt.IProfiler", "IProfiler.__init__",
        "IExecutionContext.profiler"}, sorted(seen)


def overrides(source: str, file: str) -> list[tuple[str, int, str, str]]:
    """(file, line, TensorRT class, method) of each method a class deriving from `trt.X` defines
    (dunders aside): the methods TensorRT calls back (ILogger.log, IProfiler.report_layer_time)."""
    import ast
    out = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        for base in node.bases:
            if isinstance(base, ast.Attribute) and isinstance(base.value, ast.Name) and base.value.id == "trt":
                out += [(file, f.lineno, base.attr, f.name) for f in node.body
                        if isinstance(f, ast.FunctionDef) and not f.name.startswith("__")]
    return out


def override_problems(found, releases: list[dict] = RELEASES) -> list[str]:
    """A callback TensorRT never calls: a method its interface does not declare in some release."""
    return [f"{os.path.relpath(file, ROOT)}:{line}: {cls}.{name} overrides nothing in TensorRT "
            + ", ".join(label(r) for r in releases if member_kind(r["classes"], cls, name) != "method")
            for file, line, cls, name in found
            if any(member_kind(r["classes"], cls, name) != "method" for r in releases)]


def test_every_override_of_a_tensorrt_interface_is_one_tensorrt_calls():
    """A Python subclass of a TensorRT interface (the logger's ILogger, profile's IProfiler) is
    called back through the interface's methods only: a misspelt override (report_layer_times) is
    never called, and no error says so. Each method such a subclass defines is one the interface
    declares, as a method, in every release."""
    found = [o for f in _trt_files() for o in overrides(open(f, encoding="utf-8").read(), f)]
    assert {(c, m) for _, _, c, m in found} >= {("ILogger", "log"), ("IProfiler", "report_layer_time")}, found
    assert override_problems(found) == []
    typo = overrides("class P(trt.IProfiler):\n    def report_layer_times(self, name, ms): pass\n",
                     os.path.join(ROOT, "snippet.py"))
    assert override_problems(typo) == ["snippet.py:2: IProfiler.report_layer_times overrides nothing in TensorRT "
                                       + ", ".join(label(r) for r in RELEASES)]


def test_every_name_the_string_check_sees_is_checked_qualified_too():
    """Each TensorRT name apinames.py finds (the wheel-string check's input) is, at the same line, a
    qualified use here: nothing falls back to the unqualified check alone."""
    qualified = {(u.file, u.line, u.member) for u in resgraph_uses()}
    bare = {(u.file, u.line, u.name) for f in _trt_files() for u in trt_uses(open(f, encoding="utf-8").read(), f)}
    assert sorted(bare - qualified) == []


# --- the check can fail --------------------------------------------------------------------------

BUILD = '''
def build(trt_version, log):
    import tensorrt as trt
    builder = trt.Builder(log)
    config = builder.create_builder_config()
    engine = trt.Runtime(log).deserialize_cuda_engine(builder.build_serialized_network(None, config))
'''


def test_an_enum_value_used_on_the_wrong_enum_fails():
    """HALF is a DataType, never a BuilderFlag; BuilderFlag.INT8 was removed in 11 (DataType.INT8 stays,
    so the wheel-string check passes both)."""
    found = check(BUILD + '''
    config.set_flag(trt.BuilderFlag.HALF)
    config.set_flag(trt.BuilderFlag.INT8)
    if trt_version < (11,):
        config.set_flag(trt.BuilderFlag.FP16)
''')
    assert found == [
        "snippet.py:8: BuilderFlag.HALF: in no TensorRT release (TensorRT has HALF on DataType)",
        "snippet.py:9: BuilderFlag.INT8: missing in TensorRT 11.0.0.114 (v11.0), 11.1.0.106 (v11.1), and not guarded "
        "by a version check"], found


def test_a_method_removed_in_11_fails_unless_guarded():
    found = check(BUILD + '''
    ctx = engine.create_execution_context_without_device_memory()
    if trt_version < (11,):
        ctx = engine.create_execution_context_without_device_memory()
''')
    assert found == ["snippet.py:8: ICudaEngine.create_execution_context_without_device_memory: missing in TensorRT "
                     "11.0.0.114 (v11.0), 11.1.0.106 (v11.1), and not guarded by a version check"], found


def test_a_guard_must_keep_the_use_from_the_releases_that_lack_it():
    """Version tests and hasattr/getattr are evaluated per release: a use in the wrong branch, or behind
    the wrong bound, fails; one its tests keep from the releases that lack it passes (lines 15, 19, 22)."""
    found = check(BUILD + '''
    if trt_version >= (11,):
        ctx = engine.create_execution_context_without_device_memory()
    if (10, 12) <= trt_version:
        config.set_flag(trt.BuilderFlag.FP16)
    else:
        config.set_flag(trt.BuilderFlag.STRICT_NANS)
    if hasattr(engine, "device_memory_size_v2"):
        size = engine.device_memory_size_v2
    else:
        size = engine.device_memory_size_v2       # the else runs where it is missing
    if getattr(trt.HardwareCompatibilityLevel, "SAME_COMPUTE_CAPABILITY", None) is not None:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY
    if not hasattr(trt.BuilderFlag, "FP16") or trt_version_from(trt):
        config.set_flag(trt.BuilderFlag.INT4)
    size = engine.device_memory_size if trt_version < (11,) else engine.device_memory_size_v2
''')
    assert found == [
        "snippet.py:9: ICudaEngine.create_execution_context_without_device_memory: missing in TensorRT 11.0.0.114 "
        "(v11.0), 11.1.0.106 (v11.1), where the tests around it let it run",
        "snippet.py:11: BuilderFlag.FP16: missing in TensorRT 11.0.0.114 (v11.0), 11.1.0.106 (v11.1), where the "
        "tests around it let it run",
        "snippet.py:13: BuilderFlag.STRICT_NANS: missing in TensorRT 10.0.1.6 (v10.0.1), where the tests around it "
        "let it run",
        "snippet.py:17: ICudaEngine.device_memory_size_v2: missing in TensorRT 10.0.1.6 (v10.0.1), where the tests "
        "around it let it run",
        "snippet.py:21: BuilderFlag.INT4: missing in TensorRT 10.0.1.6 (v10.0.1), 11.0.0.114 (v11.0), 11.1.0.106 "
        "(v11.1), where the tests around it let it run"], found


def test_a_property_spelled_as_a_method_and_other_misuses_fail():
    found = check(BUILD + '''
    n = engine.num_io_tensors()
    engine.device_memory_size_v2 = 1
    if config.set_flag:
        config.builder_optimization_level(3)
    ctx = engine.create_execution_context()
    ctx.execute_async_v3(0)
    ctx.set_input_shape = None
''')
    assert found == [
        "snippet.py:8: ICudaEngine.num_io_tensors: is a read-only property there: read it, do not call it (in every "
        "release)",
        "snippet.py:9: ICudaEngine.device_memory_size_v2: is a read-only property there: it cannot be assigned "
        "(TensorRT 10.8.0.43 (v10.8.0), 10.16.0.72 (v10.16), 11.0.0.114 (v11.0), 11.1.0.106 (v11.1))",
        "snippet.py:9: ICudaEngine.device_memory_size_v2: missing in TensorRT 10.0.1.6 (v10.0.1), and not guarded by "
        "a version check",
        "snippet.py:10: IBuilderConfig.set_flag: is a method there: call it (used without a call, it is a bound "
        "method, always true) (in every release)",
        "snippet.py:11: IBuilderConfig.builder_optimization_level: is a property there: read or assign it, do not "
        "call it (in every release)",
        "snippet.py:14: IExecutionContext.set_input_shape: is a method there: it cannot be assigned (in every "
        "release)"], found


def test_the_string_check_alone_passes_what_the_qualified_check_refuses():
    """Why this test exists: by name alone, the three misuses above look fine (each name is some
    class's member in every release)."""
    src = BUILD + '''
    config.set_flag(trt.BuilderFlag.HALF)
    n = engine.num_io_tensors()
'''
    names = {u.name for u in used_names(src, "snippet.py", roots={"trt"}, root_modules={"tensorrt"})}
    assert {"HALF", "num_io_tensors"} <= names
    every = [{m for c in r["classes"].values() for m in c["members"]} for r in RELEASES]
    assert all({"HALF", "num_io_tensors"} <= members for members in every)
    assert len(check(src)) == 2


@pytest.mark.parametrize("src, want", [
    ("def f(parser: 'trt.OnnxParser'):\n    parser.get_error(0).node_operatr()\n",
     "snippet.py:2: ParserError.node_operatr: in no TensorRT release (a typo, or an API that does not exist)"),
    ("def f(trt):\n    return trt.IBuilderConfg\n",
     "snippet.py:2: trt.IBuilderConfg: in no TensorRT release (a typo, or an API that does not exist)"),
    ("def f(trt):\n    return trt.ILogger.Severity.EROR\n",
     "snippet.py:2: ILogger.Severity.EROR: in no TensorRT release (a typo, or an API that does not exist)"),
    ("def f(tensors: 'list[trt.ITensor]'):\n    return [t.dtype.nme for t in tensors]\n",
     "snippet.py:2: DataType.nme: in no TensorRT release (a typo, or an API that does not exist)"),
])
def test_typos_are_caught_through_annotations_comprehensions_and_nested_enums(src, want):
    assert check(src) == [want]
