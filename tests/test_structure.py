"""The package's shape, read from its source: the layer rule and the compiled-folder boundary that
docs/architecture.md states ("## Layers", parsed here so the two cannot drift), no import circles
(lazy imports inside functions count), and the size limits (files, functions, compile_spec).

The import graph is every `import` / `from ... import` of resgraph/, at any depth, resolved to the
module it loads; `from PKG import name` counts as an import of PKG.name where that is a module.
"""
from __future__ import annotations

import ast
import graphlib
import re
from pathlib import Path

import pytest

from conftest import ROOT

PKG = ROOT / "resgraph"
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PKG.rglob("*.py")}


def imports_of(path: Path) -> list[tuple[str, int]]:
    """(module imported, line) for every import of resgraph's modules in the file, lazy ones too."""
    mod, is_pkg = module_name(path), path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "resgraph"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".")[:None if is_pkg else -1]
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "resgraph":
                continue
            for a in node.names:   # `from . import expr` loads a module; `from .. import __version__` a name
                sub = f"{target}.{a.name}"
                out.append((sub if sub in MODULES else target, node.lineno))
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules it imports. The package's top counts none: its imports are the facade's,
    lazy, run when resgraph.check or resgraph.to_torch is called, never when a module below takes
    `__version__` from it."""
    return {m: set() if m == "resgraph" else {t for t, _ in imports_of(p) if t != m} for m, p in MODULES.items()}


def layers() -> tuple[dict[str, int], dict[tuple[str, str], str]]:
    """docs/architecture.md's layer table: module prefix -> layer; and the boundary's exceptions."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    table = {}
    for row in re.findall(r"^\| (\d+) \| ([^|]+)\|", section, re.M):
        for name in re.findall(r"`([\w./]+)`", row[1]):
            table["resgraph." + name.removesuffix(".py").removesuffix("/").replace("/", ".")] = int(row[0])
    exceptions = {(f"resgraph.{a}", f"resgraph.{b}"): why for a, b, why in
                  re.findall(r"^- `([\w.]+)` -> `([\w.]+)`: (.+)$", section, re.M)}
    return table, exceptions


def layer_of(module: str, table: dict[str, int]) -> int:
    if module == "resgraph":
        return 0   # the package top: __version__ and the lazy facade (resgraph.check, resgraph.to_torch)
    parts = module.split(".")
    for i in range(len(parts), 1, -1):
        if ".".join(parts[:i]) in table:
            return table[".".join(parts[:i])]
    raise AssertionError(f"{module} is in no layer of docs/architecture.md's table: add it there")


def test_the_layer_table_places_every_module():
    table, _ = layers()
    assert len(table) >= 10, table
    for m in MODULES:
        layer_of(m, table)


def test_no_import_runs_from_a_lower_layer_to_a_higher_one():
    table, exceptions = layers()
    bad = []
    for m, path in MODULES.items():
        if m == "resgraph":
            continue   # the facade's lazy imports load what it stands for
        for target, line in imports_of(path):
            if layer_of(target, table) > layer_of(m, table) and (m, target) not in exceptions:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {m} (layer {layer_of(m, table)}) imports {target} "
                           f"(layer {layer_of(target, table)})")
    assert not bad, "\n".join(bad)


BEFORE_THE_FOLDER = ("resgraph.spec", "resgraph.ir", "resgraph.passes", "resgraph.frontend", "resgraph.compile",
                     "resgraph.backends.onnx", "resgraph.backends.torch")


def test_the_runtime_reads_only_compiled_folders():
    """runtime/ and triton/ never import the front end, its IR or the compiler: they read the folder.
    The exceptions are the ones the doc lists (the torch back end rebuilds its module from spec.yaml)."""
    _, exceptions = layers()
    bad = []
    for m, path in MODULES.items():
        if not m.startswith(("resgraph.runtime", "resgraph.triton")):
            continue
        for target, line in imports_of(path):
            if target.startswith(BEFORE_THE_FOLDER) and (m, target) not in exceptions:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {m} imports {target}")
    assert not bad, "\n".join(bad)
    for (a, b), why in exceptions.items():
        assert a in MODULES and b in MODULES, f"the doc lists an exception for a module that is gone: {a} -> {b}"
        assert b in {t for t, _ in imports_of(MODULES[a])}, f"{a} no longer imports {b}: drop the exception"


def test_no_import_circles():
    graph = import_graph()
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        pytest.fail(f"import circle: {' -> '.join(e.args[1])}")


def _long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [f"{path.relative_to(ROOT)}:{n.lineno} {n.name}: {n.end_lineno - n.lineno + 1} lines"
            for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]


def test_no_file_over_450_lines_and_no_function_over_80():
    """Tables are data, not functions: the op table's rows are one expression, not counted here."""
    long_files = [f"{p.relative_to(ROOT)}: {n} lines" for p in MODULES.values()
                  if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_FILE_LINES]
    long_functions = [f for p in MODULES.values() for f in _long_functions(p)]
    assert not long_files and not long_functions, "\n".join(long_files + long_functions)


def test_compile_spec_reads_as_its_steps():
    tree = ast.parse((PKG / "compile.py").read_text(encoding="utf-8"))
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "compile_spec")
    assert fn.end_lineno - fn.lineno + 1 <= 40
    called = {n.func.id for n in ast.walk(fn) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert {"prepare", "load", "inference", "models", "write", "build_engine", "publish"} <= called, called


@pytest.mark.parametrize("name", ["tensorrt", "triton", "torch", "onnx", "onnxruntime", "cuda", "timm"])
def test_no_test_folder_passes_for_a_package(name):
    """A folder of tests/ on the path must not make `import NAME` find a folder of tests: resgraph
    probes for TensorRT with find_spec, and torch for Triton."""
    import importlib.util
    spec = importlib.util.find_spec(name)
    places = [] if spec is None else list(spec.submodule_search_locations or []) + [spec.origin or ""]
    assert not any(str(ROOT / "tests") in str(p) for p in places), places
