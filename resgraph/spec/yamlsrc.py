"""YAML text -> a tree of `Y` values that remember where they came from.

Why not `yaml.safe_load`: it forgets line numbers, silently keeps the last of two
duplicate keys, and would happily expand an alias bomb into gigabytes. We compose
the node graph with PyYAML's safe composer (no constructor runs, so no tag can
execute anything) and walk it ourselves, with budgets:

- every explicit tag outside YAML's core schema is an error (`!!python/...`),
- the document's size is counted on the parser's event stream before any tree is built: past
  MAX_VALUES values as written it is refused as too large (a big file is not an attack, but a
  million tiny values would cost seconds and hundreds of MB to compose),
- an alias counts as many values as it expands to; past MAX_ALIAS_VALUES values added by aliases
  the walk stops (an alias bomb, "billion laughs"),
- recursive aliases and nesting deeper than MAX_DEPTH are errors,
- duplicate keys are errors that point at both occurrences.
"""
from __future__ import annotations

import yaml

from ..errors import Diagnostics, Loc
from ..limits import MAX_ALIAS_VALUES, MAX_SPEC_BYTES, MAX_SPEC_DEPTH, MAX_SPEC_VALUES

MAX_BYTES = MAX_SPEC_BYTES
MAX_VALUES = MAX_SPEC_VALUES        # values as written: scalars, lists and mappings, keys included
MAX_DEPTH = MAX_SPEC_DEPTH

_CORE = "tag:yaml.org,2002:"
# libyaml's composer is 10x faster and refuses absurd nesting itself; the pure-Python one is the fallback
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SCALAR_TAGS = {_CORE + t for t in ("str", "int", "float", "bool", "null")}
_VALUE_EVENTS = (yaml.ScalarEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent)


class Y:
    """A YAML value with its location. `value` is a scalar, a list of Y or a dict str -> Y."""
    __slots__ = ("value", "loc", "keylocs")

    def __init__(self, value, loc: Loc, keylocs: dict | None = None):
        self.value, self.loc, self.keylocs = value, loc, keylocs

    def __repr__(self) -> str:
        return f"Y({self.value!r} @ {self.loc})"

    @property
    def is_map(self) -> bool:
        return isinstance(self.value, dict)

    @property
    def is_list(self) -> bool:
        return isinstance(self.value, list)

    def plain(self):
        """The value without locations (for JSON-ish consumers)."""
        if isinstance(self.value, dict):
            return {k: v.plain() for k, v in self.value.items()}
        if isinstance(self.value, list):
            return [v.plain() for v in self.value]
        return self.value


class _Budget(Exception):
    pass


def _loc(file: str, mark) -> Loc:
    return Loc(file, mark.line + 1, mark.column + 1)


def load_yaml(text: str, file: str, diags: Diagnostics) -> Y | None:
    """Parse `text`; on failure record diagnostics and return None."""
    if len(text.encode("utf-8", "replace")) > MAX_BYTES:
        diags.error(Loc(file, 1, 1), f"spec is larger than {MAX_BYTES >> 20} MiB",
                    "a network spec is a few hundred lines; is this the right file?")
        return None
    try:
        if _too_large(text, file, diags):
            return None
        node = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        msg = "invalid YAML: " + (e.problem or e.context or "syntax error")
        if e.context and e.context_mark:
            msg += f" ({e.context} at line {e.context_mark.line + 1})"
            if mark is None or not text[mark.index:].strip():
                mark = e.context_mark   # an unclosed bracket or quote: point at where it opened
        loc = _loc(file, mark) if mark else Loc(file, 1, 1)
        diags.error(loc, msg, "check indentation, brackets and quotes near this place")
        return None
    except yaml.YAMLError as e:   # reader errors: bad bytes or control characters
        diags.error(Loc(file, 1, 1), f"invalid YAML: {e}", "a spec must be UTF-8 text")
        return None
    except RecursionError:
        diags.error(Loc(file, 1, 1), "invalid YAML: nesting is too deep",
                    f"specs nest a few levels; the limit is {MAX_DEPTH}")
        return None
    if node is None:
        diags.error(Loc(file, 1, 1), "the spec is empty",
                    "start with 'resgraph: 1', a name, an input and a list of layers")
        return None
    walker = _Walker(file, diags)
    try:
        return walker.walk(node, 0)
    except _Budget:
        return None


def _too_large(text: str, file: str, diags: Diagnostics) -> bool:
    """Count the values as written on the parser's events (no tree: libyaml streams a MiB of them in
    about 0.1 s); past MAX_VALUES, report the size and where the limit was crossed. The pure-Python
    parser is ten times slower, so without libyaml the count stops at the limit."""
    n, where = 0, None
    exact = _LOADER is not yaml.SafeLoader
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, _VALUE_EVENTS):
            n += 1
            if n > MAX_VALUES and where is None:
                where = event.start_mark
                if not exact:
                    break
    if where is None:
        return False
    size = f"{n:,} values" if exact else f"more than {MAX_VALUES:,} values"
    diags.error(_loc(file, where), f"the spec is too large: {size}, the limit is {MAX_VALUES:,}",
                "a network spec is a few hundred values; write a layer sequence that recurs once, as a block "
                "under 'blocks:', and use it with 'repeat:' instead of listing every layer")
    return True


class _Walker:
    def __init__(self, file: str, diags: Diagnostics):
        self.file, self.diags = file, diags
        self.seen: set[int] = set()     # ids of nodes walked once: another visit is an alias expanding
        self.expanded = 0               # values added by aliases
        self.active: set[int] = set()   # ids of nodes on the current path: a repeat is a recursive alias
        self.key_node = None            # the innermost mapping key being walked (where a bomb is reported)
        self.constructor = yaml.constructor.SafeConstructor()

    def fail(self, node, message: str, hint: str) -> None:
        self.diags.error(_loc(self.file, (self.key_node or node).start_mark), message, hint)
        raise _Budget

    def walk(self, node, depth: int) -> Y:
        if id(node) in self.seen:
            self.expanded += 1
            if self.expanded > MAX_ALIAS_VALUES:
                self.fail(node, f"aliases expand the document by more than {MAX_ALIAS_VALUES:,} values",
                          "this looks like an alias bomb (anchors that refer to anchors); write the spec out plainly")
        else:
            self.seen.add(id(node))
        if depth > MAX_DEPTH:
            self.key_node = None
            self.fail(node, f"nesting deeper than {MAX_DEPTH} levels", "flatten the spec")
        if id(node) in self.active:
            self.key_node = None
            self.fail(node, "recursive alias: a value contains itself", "remove the alias that refers to its own anchor")
        loc = _loc(self.file, node.start_mark)
        tag = node.tag or ""
        if isinstance(node, yaml.ScalarNode):
            if tag not in _SCALAR_TAGS:
                return self._bad_tag(node, loc)
            if tag in (_CORE + "int", _CORE + "float") and len(node.value) > 64:
                self.diags.error(loc, f"a number of {len(node.value)} characters",
                                 "sizes in a network are a few digits long; check for a typo")
                return Y(None, loc)
            if tag == _CORE + "str":   # what the constructor would return, without its bookkeeping
                return Y(node.value, loc)
            try:
                value = self.constructor.construct_object(node, deep=True)
            except Exception:   # noqa: BLE001 - malformed timestamps and the like
                self.diags.error(loc, f"cannot read the value {node.value[:40]!r}", "quote it to make it a string")
                return Y(None, loc)
            return Y(value, loc)
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                if tag != _CORE + "seq":
                    return self._bad_tag(node, loc)
                return Y([self.walk(child, depth + 1) for child in node.value], loc)
            assert isinstance(node, yaml.MappingNode)
            if tag != _CORE + "map":
                return self._bad_tag(node, loc)
            out: dict[str, Y] = {}
            keylocs: dict[str, Loc] = {}
            for knode, vnode in node.value:
                kloc = _loc(self.file, knode.start_mark)
                if knode.tag == _CORE + "merge":
                    self.diags.error(kloc, "merge keys ('<<') are not supported",
                                     "use the spec's 'defaults:' section or a block with args instead")
                    continue
                if not isinstance(knode, yaml.ScalarNode) or knode.tag not in _SCALAR_TAGS:
                    self.diags.error(kloc, "a mapping key must be a plain name", "write keys as plain words")
                    continue
                key = str(knode.value)
                if key in out:
                    first = keylocs[key]
                    self.diags.error(kloc, f"duplicate key '{key}' (first defined at line {first.line})",
                                     "YAML would silently keep only the last one; remove or rename one of them",
                                     span=len(key))
                    continue
                keylocs[key] = kloc
                self.key_node = knode
                out[key] = self.walk(vnode, depth + 1)
            return Y(out, loc, keylocs)
        finally:
            self.active.discard(id(node))

    def _bad_tag(self, node, loc: Loc) -> Y:
        tag = node.tag or ""
        shown = "!!" + tag[len(_CORE):] if tag.startswith(_CORE) else tag
        self.diags.error(loc, f"tag '{shown}' is not allowed",
                         "specs are plain data: only strings, numbers, booleans, null, lists and mappings")
        return Y(None, loc)
