"""Which attributes of a library a module uses, read from its source (for the TensorRT API
conformance test): every attribute reached from a root name (`trt`, `cudart`), from a value
derived from one, or from a parameter annotated with the library's type.

    builder = trt.Builder(log)                 -> Builder          (builder is now a TensorRT value)
    network = builder.create_network(flags)    -> create_network   (network is one too)
    config.set_flag(trt.BuilderFlag.TF32)      -> set_flag, BuilderFlag, TF32
    def f(parser: "trt.OnnxParser"): parser.get_error(i).desc()  -> get_error, desc
    getattr(trt.X, "NAME", None)               -> X, NAME (guarded)

A use is *guarded* when it sits in the body of an `if` (or a conditional expression) whose test
compares the library's version (trt_version, __version__, version_tuple(...)) or calls hasattr/getattr, or is itself the name in a hasattr/getattr: code that
only runs on the versions that have the name.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass

GUARD = re.compile(r"trt_version|__version__|version_tuple\(|hasattr\(|getattr\(")


@dataclass(frozen=True)
class Use:
    name: str
    file: str
    line: int
    guarded: bool


class _Finder:
    def __init__(self, source: str, file: str, roots: set[str], annotation_prefixes: tuple[str, ...],
                 root_calls: set[str]):
        self.tree = ast.parse(source)
        self.file, self.roots, self.prefixes, self.root_calls = file, roots, annotation_prefixes, root_calls
        self.uses: list[Use] = []
        self.self_attrs: set[str] = set()        # self.X holding a library value, module-wide
        self.returns: set[str] = set()           # functions / methods annotated to return one
        self.parents: dict[ast.AST, ast.AST] = {}
        self.uses_from_returns: list[Use] = []
        for node in ast.walk(self.tree):
            for child in ast.iter_child_nodes(node):
                self.parents[child] = node
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and self._annotated(node.returns):
                self.returns.add(node.name)
        self.uses_from_returns, self.uses = self.uses, []

    def _annotated(self, ann) -> bool:
        """An annotation naming the library's type ("trt.OnnxParser"); its names count as uses."""
        if ann is None:
            return False
        text = ann.value if isinstance(ann, ast.Constant) and isinstance(ann.value, str) else ast.unparse(ann)
        found = False
        for prefix in self.prefixes:
            for m in re.finditer(re.escape(prefix) + r"([\w.]+)", text):
                found = True
                self.uses.extend(Use(n, self.file, ann.lineno, False) for n in m.group(1).split("."))
        return found

    # --- is an expression a library value? -----------------------------------------------------
    def typed(self, e, scope: set[str]) -> bool:
        if isinstance(e, ast.Name):
            return e.id in scope or e.id in self.roots
        if isinstance(e, ast.Attribute):
            if isinstance(e.value, ast.Name) and e.value.id == "self":
                return e.attr in self.self_attrs
            return self.typed(e.value, scope)
        if isinstance(e, ast.Call):
            f = e.func
            if isinstance(f, ast.Name) and (f.id in self.returns or f.id in self.root_calls):
                return True
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "self" \
                    and f.attr in self.returns:
                return True
            return self.typed(f, scope)
        if isinstance(e, ast.Subscript):
            return self.typed(e.value, scope)
        if isinstance(e, (ast.ListComp, ast.GeneratorExp)):
            return self.typed(e.elt, scope | self._comp_scope(e, scope))
        return False

    def _comp_scope(self, comp, scope: set[str]) -> set[str]:
        names = set()
        for g in comp.generators:
            if self.typed(g.iter, scope | names):
                names |= {n.id for n in ast.walk(g.target) if isinstance(n, ast.Name)}
        return names

    # --- bindings --------------------------------------------------------------------------------
    def bind(self, target, value, scope: set[str]) -> None:
        if isinstance(target, (ast.Tuple, ast.List)):
            if isinstance(value, (ast.Tuple, ast.List)) and len(value.elts) == len(target.elts):
                for t, v in zip(target.elts, value.elts):
                    self.bind(t, v, scope)
                return
            if value is not None and self.typed(value, scope):   # err, props = cudart.f(...)
                for t in target.elts:
                    self.bind(t, None, scope)
                    self._mark(t, scope)
            return
        if value is not None and self.typed(value, scope):
            self._mark(target, scope)

    def _mark(self, target, scope: set[str]) -> None:
        if isinstance(target, ast.Name):
            scope.add(target.id)
        elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
            self.self_attrs.add(target.attr)

    def walk_function(self, fn, outer: set[str]) -> None:
        scope = set(outer)
        for a in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]:
            if a.arg in self.roots or self._annotated(a.annotation):
                scope.add(a.arg)
        self.walk_body(fn.body, scope)

    def walk_body(self, body, scope: set[str]) -> None:
        for stmt in body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.walk_function(stmt, scope)
                continue
            for node in _nodes(stmt):
                if isinstance(node, ast.Assign):
                    for t in node.targets:
                        self.bind(t, node.value, scope)
                elif isinstance(node, ast.AnnAssign):
                    if self._annotated(node.annotation):
                        self._mark(node.target, scope)
                    self.bind(node.target, node.value, scope)
                elif isinstance(node, ast.For) and self.typed(node.iter, scope):
                    self._mark(node.target, scope)
                elif isinstance(node, ast.Import):
                    for a in node.names:
                        if a.name in self.root_module_names:
                            scope.add(a.asname or a.name)
                elif isinstance(node, ast.ImportFrom) and node.module:
                    for a in node.names:
                        if f"{node.module}.{a.name}" in self.root_module_names:
                            scope.add(a.asname or a.name)
            for node in _nodes(stmt):
                self.collect(node, scope)
            for fn in _defs(stmt):
                self.walk_function(fn, scope)

    root_module_names: set[str] = set()

    def collect(self, node, scope: set[str]) -> None:
        if isinstance(node, ast.Attribute) and self.typed(node.value, scope):
            self.uses.append(Use(node.attr, self.file, node.lineno, self.guarded(node)))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("hasattr", "getattr") \
                and len(node.args) >= 2 and self.typed(node.args[0], scope) \
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
            self.uses.append(Use(node.args[1].value, self.file, node.lineno, True))

    def guarded(self, node) -> bool:
        child, parent = node, self.parents.get(node)
        while parent is not None:
            if isinstance(parent, (ast.If, ast.IfExp)) and child is not parent.test:
                if GUARD.search(ast.unparse(parent.test)):
                    return True
            child, parent = parent, self.parents.get(parent)
        return False


def _nodes(node):
    """node and everything under it, except inside function definitions (their own scope)."""
    yield node
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _nodes(child)


def _defs(node):
    """The function definitions directly under node (through classes and blocks, not other functions)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield child
        else:
            yield from _defs(child)
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return


def used_names(source: str, file: str, roots: set[str], annotation_prefixes: tuple[str, ...] = (),
               root_calls: set[str] = frozenset(), root_modules: set[str] = frozenset()) -> list[Use]:
    """Every use of the library in `source`. root_modules: {"cuda.bindings.runtime"} makes
    `from cuda.bindings import runtime as rt` (or `import tensorrt as trt` for {"tensorrt"}) bind a root."""
    f = _Finder(source, file, set(roots), annotation_prefixes, set(root_calls))
    f.root_module_names = set(root_modules)
    # two passes: self.X attributes bound in one method are used in others
    for _ in range(2):
        f.uses.clear()
        f.walk_body(f.tree.body, set())
    return f.uses_from_returns + f.uses
