"""Regenerate tests/backends/tensorrt/data/bindings-TAG.json: every class, enum, method, property and
enum value that TensorRT's Python bindings declare, read from NVIDIA's open-source bindings
(https://github.com/NVIDIA/TensorRT, python/src/**/*.cpp and python/packaging/bindings_wheel/tensorrt/__init__.py)
at one git tag per release resgraph supports.

    python tests/backends/tensorrt/extract_bindings.py GIT_DIR [TAG ...]

GIT_DIR is a clone (bare or not) of NVIDIA/TensorRT; without TAGs, the tags of TAGS below. Nothing
but the standard library and `git`. The JSON files name the tag, its commit and the TensorRT version
the tag's include/NvInferVersion.h states.

What it reads (pybind11, as NVIDIA writes it):
  py::class_<C, ...>(scope, "Name", ...)   py::enum_<E>(scope, "Name", ...)   (also `py::class_<C> var{...}`)
    followed by a chain of .def("n", ...) / .def(py::init...) / .def_static / .def_property[_readonly]
    / .def_readwrite / .def_readonly / .value("N", ...) / .export_values(), and later `var.def(...)`
    statements on a class bound to a variable; scope `m` is the module, a class variable nests the
    enum or class in that class (trt.ILogger.Severity); the bases are the template arguments that
    are bound classes (not holders or trampolines);
  m.def("f", ...), m.attr("name") = ..., py::bind_vector<...>(m, "Name") at module level;
  #if / #else / #endif: EXPORT_ALL_BINDINGS is 1 (the full `tensorrt` module, not lean/dispatch),
    ENABLE_INETWORK_SERIALIZE is undefined, pybind11 is >= 2.6, not Windows; any other condition is
    an error here, so a new one is decided, not guessed;
  __init__.py (Python): module-level functions and assignments, `Class.attr = ...` additions.

What it does not read: `def(py::self == py::self)` operators and pybind11's built-in members (an
enum's `name` and `value`, `__init__` of classes without py::init): the check adds those itself;
members added by a loop (`setattr(Logger, attr, value)` in __init__.py); the tensorrt.plugin Python
package; argument names, types and return types (the test keeps its own table of what a factory
method returns).
"""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys

REPOSITORY = "https://github.com/NVIDIA/TensorRT"
# the releases resgraph supports (10.0 and later, 11.x included): the oldest, the one before
# SAME_COMPUTE_CAPABILITY (10.9), the newest 10.x, and each 11.x tag published
TAGS = ("v10.0.1", "v10.8.0", "v10.16", "v11.0", "v11.1")
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
INIT_PY = "python/packaging/bindings_wheel/tensorrt/__init__.py"
# preprocessor conditions, as the full `tensorrt` wheel is built (python/include/ForwardDeclarations.h:
# EXPORT_ALL_BINDINGS is 1 where tensorrt_EXPORTS is defined, i.e. for the `tensorrt` target)
CONDITIONS = {"EXPORT_ALL_BINDINGS": True, "ENABLE_INETWORK_SERIALIZE": False, "defined(_WIN32)": False,
              "!defined(WIN32_LEAN_AND_MEAN)": True,
              "PYBIND11_VERSION_MAJOR < 2 || PYBIND11_VERSION_MAJOR == 2 && PYBIND11_VERSION_MINOR < 6": False}
KINDS = {"def": "method", "def_static": "static", "def_property": "property", "def_readwrite": "property",
         "def_property_readonly": "readonly", "def_readonly": "readonly", "def_property_static": "property",
         "def_readonly_static": "readonly", "value": "value"}


# --- C++ text ------------------------------------------------------------------------------------

def strip_comments(text: str) -> str:
    """Comments replaced by spaces (newlines kept); string and character literals left as they are."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c in "\"'":
            j = _literal_end(text, i)
            out.append(text[i:j])
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _literal_end(text: str, i: int) -> int:
    quote, j = text[i], i + 1
    while j < len(text) and text[j] != quote:
        j += 2 if text[j] == "\\" else 1
    return j + 1


def preprocess(text: str, where: str) -> str:
    """Lines in inactive #if branches, and every directive (with its continuation lines), blanked."""
    lines, stack, out, continued = text.split("\n"), [], [], False
    for line in lines:
        s = line.strip()
        directive = continued or s.startswith("#")
        continued = directive and s.endswith("\\")
        if directive and s.startswith("#"):
            _directive(s[1:].strip(), stack, where)
        out.append("" if directive or not all(stack) else line)
    if stack:
        raise ValueError(f"{where}: unbalanced #if")
    return "\n".join(out)


def _directive(d: str, stack: list, where: str) -> None:
    word, _, rest = d.partition(" ")
    if word in ("if", "ifdef", "ifndef"):
        cond = rest.strip() if word == "if" else f"{'!' if word == 'ifndef' else ''}defined({rest.strip()})"
        if cond not in CONDITIONS:
            raise ValueError(f"{where}: unknown preprocessor condition '{cond}': decide it in CONDITIONS")
        stack.append(CONDITIONS[cond])
    elif word == "else":
        stack[-1] = not stack[-1]
    elif word == "elif":
        raise ValueError(f"{where}: #elif is not handled")
    elif word == "endif":
        stack.pop()


def balanced(text: str, i: int) -> int:
    """The index after the bracket that closes the one at text[i] ((, {, [ or <)."""
    pairs = {"(": ")", "{": "}", "[": "]", "<": ">"}
    close, depth, j = pairs[text[i]], 0, i
    while j < len(text):
        c = text[j]
        if c in "\"'":
            j = _literal_end(text, j)
            continue
        if c == text[i]:
            depth += 1
        elif c == close:
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    raise ValueError(f"unbalanced {text[i]} at {i}")


def split_args(inner: str, angle: bool = False) -> list[str]:
    """Top-level comma-separated arguments of a call's inside (angle: of a template argument list,
    where <> nest too; in a call they may be operators: `-> int32_t`, `a < b`)."""
    opening, closing = ("([{<", ")]}>") if angle else ("([{", ")]}")
    args, depth, start, j = [], 0, 0, 0
    while j < len(inner):
        c = inner[j]
        if c in "\"'":
            j = _literal_end(inner, j)
            continue
        if c in opening:
            depth += 1
        elif c in closing:
            depth -= 1
        elif c == "," and depth == 0:
            args.append(inner[start:j].strip())
            start = j + 1
        j += 1
    args.append(inner[start:].strip())
    return [a for a in args if a]


def string_arg(arg: str | None) -> str | None:
    m = re.fullmatch(r'"((?:[^"\\]|\\.)*)"', arg or "")
    return m.group(1) if m else None


def chain(text: str, i: int) -> tuple[list[tuple[str, list[str]]], int]:
    """The .name(args) calls chained from text[i]: [(name, args)], and where the chain ends."""
    calls = []
    while True:
        m = re.compile(r"\s*\.\s*(\w+)\s*(?=\()").match(text, i)
        if not m:
            return calls, i
        end = balanced(text, m.end())
        calls.append((m.group(1), split_args(text[m.end() + 1:end - 1])))
        i = end


# --- the bindings --------------------------------------------------------------------------------

class Bindings:
    def __init__(self):
        self.module: dict[str, str] = {}
        self.classes: dict[str, dict] = {}
        self.cpp: dict[str, str] = {}          # C++ type -> Python name, for the bases
        self.variables: dict[str, str] = {}    # C++ variable holding a py::class_ -> Python name

    def declare(self, kind: str, template: list[str], scope: str, name: str, var: str | None) -> str:
        parent = self.variables.get(scope)
        full = f"{parent}.{name}" if parent else name
        if parent:
            self.classes[parent]["members"][name] = kind
        else:
            self.module[name] = kind
        entry = self.classes.setdefault(full, {"kind": kind, "bases": [], "members": {}})
        entry["bases"] = [self.cpp[t] for t in template[1:] if t in self.cpp]
        self.cpp[template[0]] = full
        if var:
            self.variables[var] = full
        return full

    def apply(self, full: str, calls: list[tuple[str, list[str]]]) -> None:
        members = self.classes[full]["members"]
        for name, args in calls:
            if name == "export_values":
                self._export(full)
            elif name in KINDS and string_arg(args[0] if args else None) is not None:
                members[string_arg(args[0])] = _property_kind(KINDS[name], args)
            elif name == "def" and args and args[0].startswith("py::init"):
                members["__init__"] = "init"

    def _export(self, full: str) -> None:
        """export_values(): the enum's values are attributes of its scope too (trt.ILogger.ERROR)."""
        values = {k: v for k, v in self.classes[full]["members"].items() if v == "value"}
        parent = full.rpartition(".")[0]
        (self.classes[parent]["members"] if parent else self.module).update(values)

    def to_json(self) -> dict:
        return {"module": dict(sorted(self.module.items())),
                "classes": {k: {"kind": v["kind"], "bases": v["bases"], "members": dict(sorted(v["members"].items()))}
                            for k, v in sorted(self.classes.items())}}


def _property_kind(kind: str, args: list[str]) -> str:
    """def_property with a nullptr getter is write-only (Builder.gpu_allocator); with a nullptr setter, read-only."""
    if kind == "property" and len(args) >= 3 and args[1] == "nullptr":
        return "writeonly"
    if kind == "property" and len(args) >= 3 and args[2] == "nullptr":
        return "readonly"
    return kind


DECL = re.compile(r"py::(class_|enum_)\s*(?=<)")
VAR_CHAIN = r"(?<![\w.>:])({})(?=\s*\.\s*\w+\s*\()"


def read_cpp(b: Bindings, text: str) -> None:
    for m in DECL.finditer(text):
        t_end = balanced(text, m.end())
        template = split_args(text[m.end() + 1:t_end - 1], angle=True)
        d = re.compile(r"\s*(\w+)?\s*([({])").match(text, t_end)
        if not d:
            continue                   # a type, not a declaration (e.g. in a template argument)
        a_end = balanced(text, d.start(2))
        args = split_args(text[d.start(2) + 1:a_end - 1])
        name = string_arg(args[1] if len(args) > 1 else None)
        if name is None:
            raise ValueError(f"py::{m.group(1)} without a name: {text[m.start():a_end]}")
        full = b.declare("enum" if m.group(1) == "enum_" else "class", template, args[0], name, d.group(1))
        b.apply(full, chain(text, a_end)[0])
    _variable_chains(b, text)
    _module_level(b, text)


def _variable_chains(b: Bindings, text: str) -> None:
    """`baseLoggerBinding.def(py::init<>()).def("log", ...)`: a chain on a class held by a variable."""
    if not b.variables:
        return
    for m in re.finditer(VAR_CHAIN.format("|".join(map(re.escape, b.variables))), text):
        b.apply(b.variables[m.group(1)], chain(text, m.end())[0])


def _module_level(b: Bindings, text: str) -> None:
    for m in re.finditer(r'(?<![\w.])m\s*\.\s*def\s*\(\s*"(\w+)"', text):
        b.module[m.group(1)] = "function"
    for m in re.finditer(r'(?<![\w.])m\s*\.\s*attr\s*\(\s*"(\w+)"\s*\)\s*=(?!=)', text):
        b.module[m.group(1)] = "attribute"
    for m in re.finditer(r'py::bind_(?:vector|map)\s*<.*?>\s*\(\s*m\s*,\s*"(\w+)"', text):
        b.module[m.group(1)] = "class"
        b.classes.setdefault(m.group(1), {"kind": "class", "bases": [], "members": {}})


def read_init_py(b: Bindings, text: str) -> None:
    """The Python half: module-level functions and names, and `Class.attr = ...` additions."""
    text = re.sub(r"##TENSORRT_MODULE##", "tensorrt", text)
    tree = ast.parse(re.sub(r"##\w+##", "0", text))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and _top_level(node, tree):
            b.module.setdefault(node.name, "python")
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                _python_target(b, t, tree)


def _python_target(b: Bindings, t, tree) -> None:
    if isinstance(t, ast.Name) and _top_level(t, tree):
        b.module.setdefault(t.id, "python")
    elif isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id in b.classes:
        b.classes[t.value.id]["members"].setdefault(t.attr, "python")


def _top_level(target, tree) -> bool:
    """Assigned outside any function (also inside top-level if/for blocks)."""
    for f in ast.walk(tree):
        if isinstance(f, (ast.FunctionDef, ast.Lambda)) and f is not target and any(n is target for n in ast.walk(f)):
            return False
    return True


# --- git -----------------------------------------------------------------------------------------

def git(git_dir: str, *args: str) -> str:
    if os.path.isdir(os.path.join(git_dir, ".git")):      # a clone with a work tree
        git_dir = os.path.join(git_dir, ".git")
    return subprocess.run(["git", "--git-dir", git_dir, *args], check=True, capture_output=True,
                          text=True).stdout


def version_of(header: str) -> str:
    """'10.16.0.72' from include/NvInferVersion.h (NV_TENSORRT_* or, from 10.12, TRT_*_ENTERPRISE)."""
    parts = []
    for field in ("MAJOR", "MINOR", "PATCH", "BUILD"):
        m = re.search(rf"#define\s+(?:TRT_{field}_ENTERPRISE|NV_TENSORRT_{field})\s+(\d+)", header)
        parts.append(m.group(1))
    return ".".join(parts)


def extract(git_dir: str, tag: str) -> dict:
    commit = git(git_dir, "rev-parse", f"{tag}^{{commit}}").strip()
    files = sorted(f for f in git(git_dir, "ls-tree", "-r", "--name-only", commit, "python/src").split()
                   if f.endswith(".cpp"))
    b = Bindings()
    for f in _binding_order(files):
        b_text = git(git_dir, "show", f"{commit}:{f}")
        read_cpp(b, preprocess(strip_comments(b_text), f"{tag}:{f}"))
    read_init_py(b, git(git_dir, "show", f"{commit}:{INIT_PY}"))
    return {"source": {"repository": REPOSITORY, "tag": tag, "commit": commit,
                       "tensorrt_version": version_of(git(git_dir, "show", f"{commit}:include/NvInferVersion.h")),
                       "files": files + [INIT_PY]},
            "generator": "tests/backends/tensorrt/extract_bindings.py", **b.to_json()}


def _binding_order(files: list[str]) -> list[str]:
    """The order pyTensorRT.cpp binds them in (foundational types first: later files' bases are there)."""
    rank = ("pyFoundationalTypes", "pyPlugin", "pyInt8", "pyGraph", "pyAlgorithmSelector", "pyCore", "pyOnnx")
    def key(f):
        stem = os.path.splitext(os.path.basename(f))[0]
        return rank.index(stem) if stem in rank else len(rank)
    return sorted(files, key=key)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    os.makedirs(OUT, exist_ok=True)
    for tag in argv[1:] or TAGS:
        data = extract(argv[0], tag)
        path = os.path.join(OUT, f"bindings-{tag}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
        n = sum(len(c["members"]) for c in data["classes"].values())
        print(f"{path}: TensorRT {data['source']['tensorrt_version']} ({data['source']['commit'][:12]}): "
              f"{len(data['classes'])} classes and enums, {n} members")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
