"""Spec -> Graph: blocks, repeats, `first`, $vars and edges resolved; every node gets a path and a line.

Naming (stable across compiles, so checkpoints keep loading):
- an entry with `id: x` is `<scope>.x`; without one it is `<op><k>`, k counting that op in its
  scope from 1 (conv1, bn1, relu1, conv2, ... as in torchvision), skipping names taken by ids;
- `repeat: n` makes `<name>.0` ... `<name>.<n-1>`; referring to `<name>` means the last copy;
- a split or chunk into n parts makes `<name>.0` ... `<name>.<n-1>`, one node each, as a repeat
  does (without an id, `from:` cannot name a part); `<name>` and the next entry mean the last part;
- a residual block at path P is: body nodes `P.*`, the add `P` itself, and `P.post`.

References (`in:`, `from:`) name an id of the current scope, `<id>.<i>` for one copy of a repeat,
or `input` (the network's input at top level, the block's input inside a block). A reference to
a later entry is an error: a cycle if that entry depends on this one, else a forward reference.
"""
from __future__ import annotations

import dataclasses
import graphlib
from dataclasses import dataclass, field

from ..errors import Diagnostics, Loc, SpecError, did_you_mean
from ..limits import MAX_NODES, MAX_REPEAT
from ..ops.args import MAX_PARTS
from ..ops.table import PARTS
from ..spec.expr import FAILED
from ..spec.layers import Entry, Residual, evaluate_located
from ..spec.model import Spec
from ..spec.yamlsrc import Y
from .graph import INPUT, Graph, Node, Settings, freeze
from .outputs import output_paths


class _Abort(Exception):
    pass


COPY = "copy"   # $copy: the index of the copy being built, in a repeated entry's arguments


def _is_tensor(default) -> bool:
    """A block argument declared `name: tensor` takes an id (an edge), not a value."""
    return default is not None and getattr(default, "value", None) == "tensor"


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass
class _Scope:
    prefix: str                      # "" at top level, "layer2.0." inside a block instance
    env: dict                        # vars + block args
    input: str                       # path of this scope's input
    ids: dict[str, str] = field(default_factory=dict)       # id (or id.i) -> output path
    declared: dict[str, int] = field(default_factory=dict)  # explicit id -> entry index
    auto: set[str] = field(default_factory=set)             # automatic names (not referable)
    index: int = 0                                          # the entry being expanded


@dataclass
class _Ref:
    node: int          # index into nodes
    slot: int          # index into inputs
    name: str
    loc: Loc
    scope: _Scope


def expand(spec: Spec, diags: Diagnostics | None = None) -> Graph:
    """Without `diags`, raise SpecError on any problem. With it, record problems there and return a
    best-effort graph (bad references point at the scope's input) so later checks can still run;
    only a resource limit still raises at once."""
    e = _Expander(spec, diags)
    g = e.run()
    if diags is None:
        e.d.raise_if_any()
    return g


class _Expander:
    def __init__(self, spec: Spec, diags: Diagnostics | None):
        self.spec = spec
        self.d = diags if diags is not None else Diagnostics()
        self.nodes: list[Node] = []
        self.pending: list[_Ref] = []        # forward references, resolved after their scope
        self.forward: list[_Ref] = []
        self.stack: list[str] = []           # block names being expanded (a block may not call itself)
        self.calls: list[tuple[str, Loc]] = []   # (instance path, call line) of those, for located errors

    def run(self) -> Graph:
        s = self.spec
        decls = s.inputs or (None,)
        paths = []
        for k, decl in enumerate(decls):
            # the first input's path is `input` (what `from: input` names); the others' their names
            path = INPUT if k == 0 else decl.name
            shape, loc = (s.input_shape, s.input_loc) if decl is None else (decl.shape, decl.loc)
            self.nodes.append(Node(path, "input", freeze({}), (), loc, shape=shape))
            paths.append(path)
        top = _Scope("", dict(s.vars), INPUT)
        top.ids.update({d.name: p for d, p in zip(s.inputs, paths) if d.named})
        try:
            self.precount(s.layers)
            out = self.entries(s.layers, top)
        except _Abort:
            raise SpecError(self.d.errors) from None
        self.check_forward()
        self.check_input_names(top)
        names = tuple(d.name for d in s.inputs) or (s.input_name,)
        outputs = output_paths(self.spec, self.nodes, top.ids, out, self.d)
        return Graph(s.name, tuple(self.nodes), outputs[0][1], names[0], outputs[0][0],
                     settings=Settings(s.shortcut, init=freeze(dict(s.init))),
                     inputs=tuple(zip(names, paths)), outputs=outputs)

    def check_input_names(self, top: _Scope) -> None:
        """An entry's id may not be an input's name: `in: NAME` would mean either."""
        for decl in self.spec.inputs:
            if decl.named and decl.name in top.declared:
                e = self.spec.layers[top.declared[decl.name]]
                self.d.error(e.id.loc, f"id '{decl.name}' is also an input's name",
                             "rename the entry or the input: in: and from: would mean either", span=len(decl.name))

    # -- scopes ---------------------------------------------------------------------------------
    def entries(self, entries: tuple[Entry, ...], scope: _Scope) -> str:
        names = self.names(entries, scope)
        prev = scope.input
        mark = len(self.pending)
        for i, (e, name) in enumerate(zip(entries, names, strict=True)):
            scope.index = i
            main = prev
            if e.in_ is not None:
                main = self.ref(e.in_.plain(), e.in_.loc, scope, len(self.nodes), 0)
            prev = self.entry(e, scope.prefix + name, name, scope, main, e.id is not None)
            if e.id is not None:
                scope.ids[e.id.value] = prev
        # forward references of this scope can be resolved now that every id in it is known
        for r in self.pending[mark:]:
            if r.name in r.scope.ids:
                node = self.nodes[r.node]
                ins = list(node.inputs)
                ins[r.slot] = r.scope.ids[r.name]
                self.nodes[r.node] = node.with_(inputs=tuple(ins))
                self.forward.append(r)
            else:
                self.dangling(r.name, r.loc, r.scope)
        del self.pending[mark:]
        return prev

    def names(self, entries, scope: _Scope) -> list[str]:
        first_loc: dict[str, Loc] = {}
        for i, e in enumerate(entries):
            if e.id is not None:
                v = e.id.value
                if v in first_loc:
                    self.d.error(e.id.loc, f"duplicate id '{v}' (first used at line {first_loc[v].line})",
                                 "ids must be unique in their scope; rename one", span=len(v))
                else:
                    first_loc[v] = e.id.loc
                    scope.declared[v] = i
        counters: dict[str, int] = {}
        names = []
        for e in entries:
            if e.id is not None:
                names.append(e.id.value)
                continue
            k = counters.get(e.kind, 0) + 1
            while f"{e.kind}{k}" in first_loc:
                k += 1
            counters[e.kind] = k
            names.append(f"{e.kind}{k}")
            scope.auto.add(names[-1])
        return names

    # -- references -----------------------------------------------------------------------------
    def ref(self, name, loc: Loc, scope: _Scope, node: int, slot: int) -> str:
        if not isinstance(name, str):
            self.d.error(loc, f"a reference must be an id, got {_short(name)}", "e.g. in: stem  or  from: [input]")
            return scope.input
        if name == "input":
            return scope.input
        if name in scope.ids:
            return scope.ids[name]
        base = name.split(".")[0]
        if scope.declared.get(base, -1) >= scope.index:
            if base == name:
                # resolved when the scope ends, then reported as a cycle or a forward reference
                self.pending.append(_Ref(node, slot, name, loc, scope))
            else:
                self.d.error(loc, f"forward reference to '{name}': '{base}' is defined later",
                             f"move the entry with id '{base}' before this one", span=len(name))
            return scope.input   # replaced when the scope ends, or an error already
        self.dangling(name, loc, scope)
        return scope.input

    def backward_ref(self, y: Y, scope: _Scope, default: str, what: str = "project_from") -> str:
        """The path of an id already defined in `scope` (project_from: an entry before the add; a
        block's tensor argument: an entry before the call)."""
        name = y.plain()
        if isinstance(name, str) and name in scope.ids:
            return scope.ids[name]
        if isinstance(name, str) and name != "input" and name in scope.declared:
            self.d.error(y.loc, f"{what} '{name}' is defined later",
                         "name an earlier entry: the graph is built in order", span=len(name))
        elif name == "input":
            return scope.input
        else:
            self.dangling(str(name), y.loc, scope)
        return default

    def dangling(self, name: str, loc: Loc, scope: _Scope) -> None:
        if name in scope.auto:
            hint = f"'{name}' is an automatic name; give that entry 'id: {name}' to refer to it"
        else:
            hint = did_you_mean(name, list(scope.ids) + ["input"], "ids") or "refer to an 'id' defined earlier in this scope"
        where = f"in '{scope.prefix[:-1]}'" if scope.prefix else "at top level"
        self.d.error(loc, f"unknown id '{name}' ({where})", hint, span=len(name))

    def check_forward(self) -> None:
        if not self.forward:
            return
        cycle: list[str] = []
        try:
            graphlib.TopologicalSorter({n.path: n.inputs for n in self.nodes}).prepare()
        except graphlib.CycleError as e:
            cycle = list(e.args[1][:-1])   # in dataflow order: each feeds the next, the last feeds the first
        for r in self.forward:
            src = self.nodes[r.node].path
            if self.nodes[r.node].inputs[r.slot] == src:
                self.d.error(r.loc, f"cycle: '{r.name}' takes its own output as an input",
                             "a network is acyclic; refer to an earlier entry", span=len(r.name))
            elif src in cycle:
                i = cycle.index(src)
                chain = " -> ".join(cycle[i:] + cycle[:i] + [src])
                self.d.error(r.loc, f"cycle: '{src}' depends on '{r.name}', which depends on '{src}'",
                             f"a network is acyclic; the cycle runs through: {chain}", span=len(r.name))
            else:
                self.d.error(r.loc, f"forward reference to '{r.name}', which is defined later",
                             f"move the entry with id '{r.name}' before this one", span=len(r.name))

    # -- entries --------------------------------------------------------------------------------
    def precount(self, entries: tuple[Entry, ...]) -> None:
        """Refuse repeat bombs before building anything: an upper estimate of the node count from
        literal repeats (repeats given by block args count as 1 here; `count` guards those)."""
        memo: dict[str, int] = {}

        def size(entries, stack) -> int:
            total = 0
            for e in entries:
                n = e.repeat.value if e.repeat is not None else 1
                n = n if isinstance(n, int) and not isinstance(n, bool) and 0 < n <= MAX_REPEAT else 1
                if e.kind in self.spec.blocks and e.kind not in stack:
                    if e.kind not in memo:
                        b = self.spec.blocks[e.kind]
                        body = b.layers if b.residual is None else b.residual.layers
                        memo[e.kind] = size(body, stack | {e.kind}) + (2 if b.residual else 0)
                    one = memo[e.kind]
                elif e.residual is not None:
                    one = size(e.residual.layers, stack) + 2
                else:
                    one = 1
                total += n * one
                if total > MAX_NODES:
                    self.d.error(e.loc, f"the network expands to about {total:.1e} nodes, more than {MAX_NODES:,}",
                                 "check repeat counts, especially repeats inside repeated blocks")
                    raise _Abort
            return total
        size(entries, frozenset())

    def count(self, e: Entry, n: int = 1) -> None:
        if len(self.nodes) + n > MAX_NODES:
            self.d.error(e.loc, f"the network expands to more than {MAX_NODES:,} nodes",
                         "check repeat counts, especially repeats inside repeated blocks")
            raise _Abort

    def value(self, y: Y, env: dict):
        return evaluate_located(y, env, self.d, failed=FAILED)

    def entry(self, e: Entry, path: str, name: str, scope: _Scope, main: str, named: bool) -> str:
        n = 1
        if e.repeat is not None:
            n = self.value(e.repeat, scope.env)
            if n is FAILED:
                n = 1   # reported where it failed
            elif isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_REPEAT:
                self.d.error(e.repeat.loc, f"repeat must be an integer from 1 to {MAX_REPEAT:,}, got {n!r}",
                             "repeat is a count of sequential copies")
                n = 1
            self.count(e, n)
        out = main
        # `$copy` is the copy's index in a repeated entry's arguments (a drop_path rate that grows
        # block by block), unless the spec already defines that name: then its own value stands
        index = e.repeat is not None and COPY not in scope.env
        for k in range(n):
            copy = f"{path}.{k}" if e.repeat is not None else path
            if index:
                scope.env[COPY] = k
            try:
                out = self.one(e, copy, scope, out if k else main, first=(k == 0))
            finally:
                if index:
                    del scope.env[COPY]
            if e.repeat is not None and named:
                scope.ids[f"{name}.{k}"] = out
        return out

    def one(self, e: Entry, path: str, scope: _Scope, main: str, first: bool) -> str:
        args = dict(e.args)
        if first and e.first:
            args.update(e.first)
            if "block" in args:
                # `first: {block: NAME, ...}`: copy 0 is another block. It takes those of the entry's
                # arguments it declares (the others are the repeated block's), and all of `first`'s
                swap = args.pop("block")
                if not isinstance(swap.value, str) or swap.value not in self.spec.blocks:
                    self.d.error(swap.loc, f"first.block must name a block, got {_short(swap.plain())}",
                                 did_you_mean(str(swap.plain()), self.spec.blocks, "blocks") or
                                 "define it under blocks:", span=len(str(swap.plain())))
                else:
                    declared = self.spec.blocks[swap.value].args
                    args = {k: v for k, v in args.items() if k in declared or k in e.first}
                    e = dataclasses.replace(e, kind=swap.value, loc=swap.loc)
        if e.kind in self.spec.blocks:
            return self.block(e, path, scope, main, args)
        if e.kind == "residual":
            inner = _Scope(path + ".", scope.env, main)
            return self.residual(e.residual, path, inner, main)
        return self.op(e, path, scope, main, args)

    def op(self, e: Entry, path: str, scope: _Scope, main: str, given: dict[str, Y]) -> str:
        self.count(e)
        args = dict(self.spec.defaults.get(e.kind, {}))
        args.update(given)
        values, locs, inputs = {}, {}, [main]
        for k, y in args.items():
            locs[k] = y.loc
            if k == "project_from" and e.kind == "add":
                values[k] = self.backward_ref(y, scope, main)
                continue
            if k == "from":
                refs = y.value if y.is_list else [y]
                if not refs:
                    self.d.error(y.loc, "'from' is empty", f"{e.kind} joins the main input with at least one other: "
                                 "from: [input]")
                for r in refs:
                    if not isinstance(r.value, str):
                        self.d.error(r.loc, f"'from' lists ids, got {_short(r.plain())}", "e.g. from: [input]")
                        continue
                    inputs.append(self.ref(r.value, r.loc, scope, len(self.nodes), len(inputs)))
                values["from"] = tuple(inputs[1:])
                continue
            values[k] = self.value(y, scope.env)
        if e.kind in PARTS:
            return self.parts(e, path, scope, values, locs, inputs)
        self.nodes.append(Node(path, e.kind, freeze(values), tuple(inputs), e.loc, freeze(locs), calls=tuple(self.calls)))
        return path

    def parts(self, e: Entry, path: str, scope: _Scope, values: dict, locs: dict, inputs: list) -> str:
        """A split or chunk: one node per part, `<path>.<k>` with part k, each an id `<name>.<k>` of
        the scope (a repeated split's copies are referred to as wholes); returns the last part."""
        if "part" in values:
            self.d.error(locs["part"], f"{e.kind}: 'part' is set by resgraph, one node per part",
                         "remove it; refer to part k as <id>.k", span=4)
            values.pop("part")
        how = values.get(PARTS[e.kind])
        n = len(how) if isinstance(how, list) else how
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_PARTS:
            n = 1   # resolve_ops reports the argument
        name = path[len(scope.prefix):]   # "s", or "s.2" for copy 2 of a repeated split: no part ids then
        for k in range(n):
            self.count(e)
            part = f"{path}.{k}"
            self.nodes.append(Node(part, e.kind, freeze({**values, "part": k}), tuple(inputs), e.loc, freeze(locs),
                                   calls=tuple(self.calls)))
            if "." not in name:
                scope.ids[f"{name}.{k}"] = part
        return part

    def block(self, e: Entry, path: str, scope: _Scope, main: str, given: dict[str, Y]) -> str:
        b = self.spec.blocks[e.kind]
        if e.kind in self.stack:
            self.d.error(e.loc, f"block '{e.kind}' uses itself (through {' -> '.join(self.stack + [e.kind])})",
                         "a block cannot contain itself; blocks form no cycles")
            return main
        env = dict(self.spec.vars)
        misspelt = set()
        tensors: dict[str, str] = {}   # tensor arguments: name -> the path of the caller's entry
        for k, y in given.items():
            if k not in b.args:
                hint = did_you_mean(k, b.args, "arguments") or f"block '{b.name}' takes no arguments"
                misspelt.update(a for a in b.args if f"'{a}'" in hint)
                self.d.error(y.loc, f"unknown argument '{k}' for block '{b.name}'", hint, span=len(k))
                continue
            if _is_tensor(b.args[k]):
                tensors[k] = self.backward_ref(y, scope, main, what=f"tensor argument '{k}'")
                continue
            env[k] = self.value(y, scope.env)
        for k, default in b.args.items():
            if k not in given and _is_tensor(default):
                self.d.error(e.loc, f"block '{b.name}' needs tensor argument '{k}'",
                             f"pass the id of an earlier entry: - {b.name}: {{{k}: ...}}", span=len(e.kind))
                tensors[k] = main
            elif k not in given:
                if default is None and k in misspelt:
                    env[k] = FAILED
                elif default is None:
                    self.d.error(e.loc, f"block '{b.name}' needs argument '{k}'",
                                 f"pass it: - {b.name}: {{{k}: ...}}  (defined at line {b.loc.line})", span=len(e.kind))
                    env[k] = FAILED
                else:
                    env[k] = self.value(default, self.spec.vars)
        inner = _Scope(path + ".", env, main, ids=dict(tensors))
        self.stack.append(e.kind)
        self.calls.append((path, e.loc))
        try:
            if b.residual is not None:
                return self.residual(b.residual, path, inner, main)
            return self.entries(b.layers, inner)
        finally:
            self.stack.pop()
            self.calls.pop()

    def residual(self, r: Residual, path: str, scope: _Scope, main: str) -> str:
        first_body = len(self.nodes)
        body = self.entries(r.layers, scope) if r.layers else main
        for i in range(first_body, len(self.nodes)):
            if not self.nodes[i].block:
                self.nodes[i] = self.nodes[i].with_(block=path, role="body")
        self.count(Entry("residual", r.loc, {}))
        args = {"from": (main,), **({"shortcut": r.shortcut} if r.shortcut else {})}
        if r.project_from is not None:
            args["project_from"] = self.backward_ref(r.project_from, scope, main)
        self.nodes.append(Node(path, "add", freeze(args), (body, main), r.loc, block=path, role="add",
                               calls=tuple(self.calls)))
        if r.post is None:
            return path
        out = self.entry(r.post, path + ".post", "post", scope, path, False)
        self.nodes[-1] = self.nodes[-1].with_(block=path, role="post")
        return out
