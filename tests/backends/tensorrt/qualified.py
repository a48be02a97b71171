"""Qualified uses of TensorRT in a module's source, for the bindings conformance test: each
`trt.Class.member` and each member used on a value whose TensorRT class a small flow analysis knows,
with how it is used (called, read, assigned).

    trt.BuilderFlag.TF32                          -> BuilderFlag.TF32 (read, on the class)
    builder = trt.Builder(log)                    -> Builder.__init__ (call); builder is a Builder
    config = builder.create_builder_config()      -> Builder.create_builder_config (call); config: IBuilderConfig
    config.builder_optimization_level = 3         -> IBuilderConfig.builder_optimization_level (write)
    def f(ctx: "trt.IExecutionContext"): ctx.set_input_shape(...)   -> IExecutionContext.set_input_shape (call)
    self.engine = runtime.deserialize_cuda_engine(plan)              -> self.engine: ICudaEngine, class-wide

What a value is comes from: `trt` (a parameter of that name, `import tensorrt as trt`,
`import_tensorrt()`), a call of a TensorRT class, a method of RETURNS below, a property of
PROPERTIES, an annotation naming a TensorRT class ("trt.X", "list[trt.X]", on a parameter, a
variable, or a function's return), a for loop or comprehension over a list of them, and `self.X`
assigned one in any method of the class. Assignments are followed in order within a function;
branches are not told apart (the last assignment wins). A value of unknown class is not checked
here (the wheel-string check still sees its names).

Guards are read, not just noticed: each `if` (or conditional expression) around a use whose test
compares the TensorRT version with a tuple (`trt_version < (11,)`), or asks hasattr/getattr of a value
whose class is known, combined with and/or/not, becomes a condition that the check evaluates per
release, so a use must exist in every release where the branch it sits in can run (the `else` of
`if hasattr(engine, "x")` runs where x is missing). A test that names the version or hasattr/getattr
but cannot be evaluated (apinames.py's rule) still guards, loosely: any release may lack the use. The
name of a hasattr/getattr is itself a use that needs to exist in one release only.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from apinames import GUARD

MODULE = ("module", "")

# What a factory method returns, hand-kept (the bindings' sources declare no return types): each from
# the C++ function the binding calls (python/src/infer/pyCore.cpp, pyGraph.cpp, parsers/pyOnnx.cpp) and
# its declaration in include/NvInfer.h, NvInferRuntime.h or NvOnnxParser.h of NVIDIA/TensorRT.
RETURNS = {
    ("Builder", "create_network"): "INetworkDefinition",        # IBuilder::createNetworkV2 -> INetworkDefinition*
    ("Builder", "create_builder_config"): "IBuilderConfig",     # IBuilder::createBuilderConfig -> IBuilderConfig*
    ("Builder", "create_optimization_profile"): "IOptimizationProfile",   # -> IOptimizationProfile*
    ("Builder", "build_serialized_network"): "IHostMemory",     # IBuilder::buildSerializedNetwork -> IHostMemory*
    ("INetworkDefinition", "get_input"): "ITensor",             # INetworkDefinition::getInput -> ITensor*
    ("INetworkDefinition", "get_output"): "ITensor",            # INetworkDefinition::getOutput -> ITensor*
    ("OnnxParser", "get_error"): "ParserError",                 # IParser::getError -> IParserError const*
    ("ParserError", "code"): "ErrorCode",                       # IParserError::code -> nvonnxparser::ErrorCode
    ("IBuilderConfig", "create_timing_cache"): "ITimingCache",  # IBuilderConfig::createTimingCache -> ITimingCache*
    ("IBuilderConfig", "get_timing_cache"): "ITimingCache",     # IBuilderConfig::getTimingCache -> ITimingCache const*
    ("Runtime", "deserialize_cuda_engine"): "ICudaEngine",      # IRuntime::deserializeCudaEngine -> ICudaEngine*
    ("ICudaEngine", "create_execution_context"): "IExecutionContext",   # -> IExecutionContext*
}
# What a property holds (same sources)
PROPERTIES = {
    ("ITensor", "dtype"): "DataType",                           # ITensor::getType -> DataType
}
# pybind11's own members of an enum's values, and of an enum
ENUM_VALUE_BUILTINS = {"name", "value"}
ENUM_BUILTINS = {"__members__"}


@dataclass(frozen=True)
class QUse:
    owner: str          # the class or enum ("BuilderFlag", "ILogger.Severity"); "" for the module
    member: str
    how: str            # call | read | write | probe (the name in a hasattr/getattr)
    on: str             # module | class (trt.X.member) | inst (a value of class X)
    file: str
    line: int
    guarded: bool       # behind a version test that cannot be evaluated: any release may lack it
    conditions: tuple = ()      # ((condition, branch taken), ...) of the tests around it; see holds()


class Known:
    """The union of every release's bindings: which names are classes, enums, and what kind of member."""

    def __init__(self, releases: list[dict]):
        self.classes: dict[str, dict] = {}
        for r in releases:
            for name, c in r["classes"].items():
                entry = self.classes.setdefault(name, {"kind": c["kind"], "bases": set(), "members": {}})
                entry["bases"] |= set(c["bases"])
                for m, k in c["members"].items():
                    entry["members"].setdefault(m, k)

    def kind(self, owner: str, member: str) -> str | None:
        return member_kind(self.classes, owner, member)

    def is_enum(self, owner: str) -> bool:
        return self.classes.get(owner, {}).get("kind") == "enum"


def member_kind(classes: dict, owner: str, member: str, seen: frozenset = frozenset()) -> str | None:
    """The kind of owner.member, through the bases."""
    c = classes.get(owner)
    if c is None or owner in seen:
        return None
    if member in c["members"]:
        return c["members"][member]
    for base in c["bases"]:
        k = member_kind(classes, base, member, seen | {owner})
        if k:
            return k
    return None


def annotation_type(text: str) -> tuple | None:
    """'trt.X' (or 'trt.X | None') -> an X; 'list[trt.X]' -> a list of X."""
    m = re.fullmatch(r"(?:list|List|Sequence|tuple)\[trt\.([\w.]+)(?:, \.\.\.)?\]", text.strip())
    if m:
        return ("list", m.group(1))
    m = re.fullmatch(r"trt\.([\w.]+)(?:\s*\|\s*None)?", text.strip())
    return ("inst", m.group(1)) if m else None


def _annotation_text(ann) -> str | None:
    if ann is None:
        return None
    return ann.value if isinstance(ann, ast.Constant) and isinstance(ann.value, str) else ast.unparse(ann)


class Flow:
    def __init__(self, source: str, file: str, known: Known):
        self.tree, self.file, self.known = ast.parse(source), file, known
        self.parents = {c: p for p in ast.walk(self.tree) for c in ast.iter_child_nodes(p)}
        self.returns = {f.name: annotation_type(_annotation_text(f.returns) or "") for f in ast.walk(self.tree)
                        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
        self.self_attrs: dict[str, dict[str, set]] = {}
        self.uses: list[QUse] = []

    def run(self) -> list[QUse]:
        for _ in range(2):      # self.X bound in one method is used in others, maybe earlier ones
            self.uses = []
            self.block(self.tree.body, {}, None)
        return sorted(set(self.uses), key=lambda u: (u.line, u.owner, u.member))

    # --- statements --------------------------------------------------------------------------
    def block(self, body: list, env: dict, cls: str | None) -> None:
        for stmt in body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.function(stmt, env, cls)
            elif isinstance(stmt, ast.ClassDef):
                for base in stmt.bases:
                    self.visit(base, env, cls)
                self.block(stmt.body, dict(env), stmt.name)
            else:
                self.statement(stmt, env, cls)

    def statement(self, stmt, env: dict, cls: str | None) -> None:
        for child in ast.iter_child_nodes(stmt):
            if not isinstance(child, (ast.stmt, ast.excepthandler)):
                self.visit(child, env, cls)
        self.bind(stmt, env, cls)
        for field in ("body", "orelse", "finalbody"):
            self.block(getattr(stmt, field, []) or [], env, cls)
        for handler in getattr(stmt, "handlers", []) or []:
            self.block(handler.body, env, cls)

    def function(self, fn, env: dict, cls: str | None) -> None:
        scope = dict(env)
        for a in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]:
            scope.pop(a.arg, None)
            t = MODULE if a.arg == "trt" else self.annotated(a.annotation, env)
            if t:
                scope[a.arg] = t
        self.annotated(fn.returns, env)
        self.block(fn.body, scope, cls)

    def annotated(self, ann, env: dict) -> tuple | None:
        """The annotation's type; the TensorRT names it spells count as uses (read on the module)."""
        text = _annotation_text(ann)
        if not text:
            return None
        for m in re.finditer(r"\btrt\.([\w.]+)", text):
            self._chain_uses(m.group(1).split("."), ann.lineno)
        return annotation_type(text)

    def _chain_uses(self, parts: list[str], line: int) -> None:
        owner = ""
        for p in parts:
            self.uses.append(QUse(owner, p, "read", "class" if owner else "module", self.file, line, False))
            owner = f"{owner}.{p}" if owner else p

    def bind(self, stmt, env: dict, cls: str | None) -> None:
        if isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                self.assign(target, stmt.value, self.type_of(stmt.value, env, cls), env, cls)
        elif isinstance(stmt, ast.AnnAssign):
            t = self.annotated(stmt.annotation, env) or (self.type_of(stmt.value, env, cls) if stmt.value else None)
            self.assign(stmt.target, stmt.value, t, env, cls)
        elif isinstance(stmt, (ast.For, ast.AsyncFor)):
            self.assign(stmt.target, None, _element(self.type_of(stmt.iter, env, cls)), env, cls)
        elif isinstance(stmt, (ast.With, ast.AsyncWith)):
            for item in stmt.items:
                if item.optional_vars is not None:
                    self.assign(item.optional_vars, None, self.type_of(item.context_expr, env, cls), env, cls)
        elif isinstance(stmt, ast.Import):
            for a in stmt.names:
                if a.name == "tensorrt":
                    env[a.asname or a.name] = MODULE

    def assign(self, target, value, t, env: dict, cls: str | None) -> None:
        if isinstance(value, ast.Constant) and value.value is None:
            return                  # x = None (a reset) leaves what x is when it holds something
        if isinstance(target, ast.Name):
            if t:
                env[target.id] = t
            else:
                env.pop(target.id, None)
        elif isinstance(target, ast.Attribute) and _is_self(target.value) and cls and t:
            self.self_attrs.setdefault(cls, {}).setdefault(target.attr, set()).add(t)
        elif isinstance(target, (ast.Tuple, ast.List)):
            values = value.elts if isinstance(value, (ast.Tuple, ast.List)) else [None] * len(target.elts)
            for tt, v in zip(target.elts, values):
                self.assign(tt, v, self.type_of(v, env, cls) if v is not None else None, env, cls)

    # --- expressions -------------------------------------------------------------------------
    def visit(self, node, env: dict, cls: str | None) -> None:
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            self._comprehension(node, env, cls)
            return
        if isinstance(node, ast.Lambda):
            inner = {k: v for k, v in env.items() if k not in {a.arg for a in node.args.args}}
            self.visit(node.body, inner, cls)
            return
        if isinstance(node, ast.Attribute):
            self._attribute(node, env, cls)
        elif isinstance(node, ast.Call):
            self._call(node, env, cls)
        for child in ast.iter_child_nodes(node):
            self.visit(child, env, cls)

    def _comprehension(self, node, env: dict, cls: str | None) -> None:
        inner = dict(env)
        for g in node.generators:
            self.visit(g.iter, inner, cls)
            self.assign(g.target, None, _element(self.type_of(g.iter, inner, cls)), inner, cls)
            for cond in g.ifs:
                self.visit(cond, inner, cls)
        for part in (node.key, node.value) if isinstance(node, ast.DictComp) else (node.elt,):
            self.visit(part, inner, cls)

    def _attribute(self, node, env: dict, cls: str | None) -> None:
        t = self.type_of(node.value, env, cls)
        if t is None or t[0] not in ("module", "class", "inst"):
            return
        parent = self.parents.get(node)
        if isinstance(node.ctx, ast.Store):
            how = "write"
        elif isinstance(parent, ast.Call) and parent.func is node:
            how = "call"
        else:           # an argument too: a TensorRT method passed on uncalled is a mistake far more often than not
            how = "read"
        self.uses.append(QUse(t[1], node.attr, how, t[0], self.file, node.lineno, *self.guards(node, env, cls)))

    def _call(self, node, env: dict, cls: str | None) -> None:
        f = node.func
        if isinstance(f, ast.Name) and f.id in ("hasattr", "getattr") and len(node.args) >= 2 \
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
            t = self.type_of(node.args[0], env, cls)
            if t and t[0] in ("module", "class", "inst"):
                self.uses.append(QUse(t[1], node.args[1].value, "probe", t[0], self.file, node.lineno, True,
                                      self.guards(node, env, cls)[1]))
            return
        t = self.type_of(f, env, cls)
        if t and t[0] == "class" and not self.known.is_enum(t[1]):     # trt.Builder(log): its constructor
            self.uses.append(QUse(t[1], "__init__", "call", "class", self.file, node.lineno,
                                  *self.guards(node, env, cls)))

    def guards(self, node, env: dict, cls: str | None) -> tuple[bool, tuple]:
        """(loosely guarded, the conditions of the branches around node, innermost first)."""
        loose, conds = False, []
        child, parent = node, self.parents.get(node)
        while parent is not None:
            branch = _branch(parent, child)
            if branch is not None:
                c = self.condition(parent.test, env, cls)
                if c is not None:
                    conds.append((c, branch))
                elif GUARD.search(ast.unparse(parent.test)):
                    loose = True
            child, parent = parent, self.parents.get(parent)
        return loose, tuple(conds)

    def condition(self, test, env: dict, cls: str | None) -> tuple | None:
        """A test as a condition holds() can evaluate per release, or None."""
        if isinstance(test, ast.BoolOp):
            parts = tuple(self.condition(v, env, cls) for v in test.values)
            return ("and" if isinstance(test.op, ast.And) else "or", parts) if any(parts) else None
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            inner = self.condition(test.operand, env, cls)
            return inner and ("not", inner)
        if isinstance(test, ast.Call):
            return self._has(test, env, cls)
        if isinstance(test, ast.Compare) and len(test.ops) == 1:
            return self._compare(test, env, cls)
        return None

    def _has(self, call, env: dict, cls: str | None) -> tuple | None:
        """hasattr(x, "n") / getattr(x, "n", ...) on a TensorRT value: ("has", on, owner, n)."""
        f = call.func
        if not (isinstance(f, ast.Name) and f.id in ("hasattr", "getattr") and len(call.args) >= 2
                and isinstance(call.args[1], ast.Constant) and isinstance(call.args[1].value, str)):
            return None
        t = self.type_of(call.args[0], env, cls)
        return ("has", t[0], t[1], call.args[1].value) if t and t[0] in ("module", "class", "inst") else None

    def _compare(self, test, env: dict, cls: str | None) -> tuple | None:
        op, left, right = type(test.ops[0]).__name__, test.left, test.comparators[0]
        if op in ("Is", "IsNot") and isinstance(right, ast.Constant) and right.value is None:
            has = self._has(left, env, cls) if isinstance(left, ast.Call) else None     # getattr(...) is not None
            return has and (has if op == "IsNot" else ("not", has))
        flipped = {"Lt": "Gt", "LtE": "GtE", "Gt": "Lt", "GtE": "LtE", "Eq": "Eq", "NotEq": "NotEq"}
        if _version_tuple(right) is not None and VERSION.search(ast.unparse(left)) and op in flipped:
            return ("version", op, _version_tuple(right))
        if _version_tuple(left) is not None and VERSION.search(ast.unparse(right)) and op in flipped:
            return ("version", flipped[op], _version_tuple(left))
        return None

    # --- what a value is ---------------------------------------------------------------------
    def type_of(self, e, env: dict, cls: str | None) -> tuple | None:
        if isinstance(e, ast.Name):
            return env.get(e.id)
        if isinstance(e, ast.Attribute):
            if _is_self(e.value) and cls:
                found = self.self_attrs.get(cls, {}).get(e.attr, set())
                return next(iter(found)) if len(found) == 1 else None
            return self.member_type(self.type_of(e.value, env, cls), e.attr)
        if isinstance(e, ast.Call):
            return self._call_type(e, env, cls)
        if isinstance(e, ast.Subscript):
            return _element(self.type_of(e.value, env, cls))
        if isinstance(e, ast.IfExp):
            return self.type_of(e.body, env, cls) or self.type_of(e.orelse, env, cls)
        return None

    def _call_type(self, e, env: dict, cls: str | None) -> tuple | None:
        f = e.func
        if isinstance(f, ast.Name) and f.id == "import_tensorrt":
            return MODULE
        if isinstance(f, ast.Name) and f.id not in env and self.returns.get(f.id):
            return self.returns[f.id]
        if isinstance(f, ast.Attribute) and _is_self(f.value) and self.returns.get(f.attr):
            return self.returns[f.attr]
        t = self.type_of(f, env, cls)
        if t and t[0] == "class":
            return ("inst", t[1])
        if t and t[0] == "method" and (t[1], t[2]) in RETURNS:
            return ("inst", RETURNS[t[1], t[2]])
        return None

    def member_type(self, t, attr: str) -> tuple | None:
        if t is None:
            return None
        if t[0] == "module":
            return ("class", attr) if attr in self.known.classes else None
        if t[0] not in ("class", "inst"):
            return None
        if t[0] == "class" and f"{t[1]}.{attr}" in self.known.classes:
            return ("class", f"{t[1]}.{attr}")
        kind = self.known.kind(t[1], attr)
        if kind in ("method", "static", "init"):
            return ("method", t[1], attr)
        if t[0] == "class" and kind == "value" and self.known.is_enum(t[1]):
            return ("inst", t[1])
        if t[0] == "inst" and (t[1], attr) in PROPERTIES:
            return ("inst", PROPERTIES[t[1], attr])
        return None


VERSION = re.compile(r"trt_version|__version__|version_tuple\(")
COMPARE = {"Lt": lambda a, b: a < b, "LtE": lambda a, b: a <= b, "Gt": lambda a, b: a > b,
           "GtE": lambda a, b: a >= b, "Eq": lambda a, b: a == b, "NotEq": lambda a, b: a != b}


def holds(cond: tuple, release: dict, lookup) -> bool | None:
    """Whether a condition holds on a release: True, False, or None (not known);
    lookup(release, on, owner, name) is the kind of a member there, None where it lacks it."""
    op = cond[0]
    if op == "has":
        return lookup(release, cond[1], cond[2], cond[3]) is not None
    if op == "version":
        here = tuple(int(p) for p in release["source"]["tensorrt_version"].split("."))
        return COMPARE[cond[1]](here[:len(cond[2])], cond[2])
    if op == "not":
        inner = holds(cond[1], release, lookup)
        return None if inner is None else not inner
    values = [holds(c, release, lookup) if c is not None else None for c in cond[1]]
    if op == "and":
        return False if False in values else True if all(v is True for v in values) else None
    return True if True in values else False if all(v is False for v in values) else None


def can_run(use: QUse, release: dict, lookup) -> bool:
    """Whether the branch the use sits in can run on a release (no test around it is known to send
    that release the other way)."""
    return all(holds(c, release, lookup) is not (not branch) for c, branch in use.conditions)


def _branch(parent, child) -> bool | None:
    """True where child is the body of an if (or conditional expression), False in its else, else None."""
    if isinstance(parent, ast.If):
        return True if child in parent.body else False if child in parent.orelse else None
    if isinstance(parent, ast.IfExp):
        return True if child is parent.body else False if child is parent.orelse else None
    return None


def _version_tuple(e) -> tuple | None:
    if isinstance(e, ast.Tuple) and e.elts and all(isinstance(x, ast.Constant) and isinstance(x.value, int)
                                                    for x in e.elts):
        return tuple(x.value for x in e.elts)
    return None


def _is_self(e) -> bool:
    return isinstance(e, ast.Name) and e.id == "self"


def _element(t) -> tuple | None:
    return ("inst", t[1]) if t and t[0] == "list" else None


def qualified_uses(source: str, file: str, known: Known) -> list[QUse]:
    return Flow(source, file, known).run()
