"""The JSON Schema and the spec checker describe one language.

Both come from spec/grammar.py's declarations (and the op table). To prove they agree, two walks:
`declared` walks the declarations and the op table as the checker reads them, `in_schema` walks the
generated JSON Schema, following its $refs; each maps every place in a spec where a mapping can stand
(an instance path such as ('blocks', '*', 'residual')) to the keys accepted there. `differences`
compares the two maps, and is itself shown to catch a key added to one side only. A probe then runs
the real checker on small specs at each kind of place the schema describes: every key offered there
must be accepted, a made-up key refused (and in open mappings, the reserved and malformed names).
Last, the shipped specs and the docs' whole specs pass the schema, and broken specs fail both.
"""
import copy
import dataclasses
import functools
import json
import re
import sys
from typing import NamedTuple

import pytest
import yaml

from conftest import ROOT, SPECS
from resgraph.errors import ResgraphError
from resgraph.frontend import check_text
from resgraph.ops import OPS
from resgraph.ops.args import Float
from resgraph.spec.grammar import ENTRY, ID_PATTERN, INLINE_RESIDUAL, RESIDUAL, SPEC, Key
from resgraph.spec.schema import json_schema

DEPTH = 8   # path length walked: deep enough for a residual inside a residual's body inside a block


class Node(NamedTuple):
    """What a mapping at one place accepts: its fixed keys, and where other names are open (blocks,
    vars, a block call's arguments) the rule for them: (pattern or None, names refused)."""
    keys: frozenset
    required: frozenset = frozenset()
    one_of: frozenset = frozenset()
    other: tuple | None = None


def _node(keys=(), required=(), one_of=(), other=None) -> Node:
    if other is not None:
        other = (other[0], frozenset(other[1]))
    return Node(frozenset(keys), frozenset(required), frozenset(one_of), other)


# --- the checker's side: the declarations and the op table --------------------------------------

def declared(ops=OPS, spec=SPEC, entry=ENTRY, residual=RESIDUAL, inline=INLINE_RESIDUAL) -> dict:
    """Every place a mapping stands -> Node, as the checker reads spec/grammar.py and the op table:
    model.py checks the language's mappings, passes/resolve.py an op's arguments and `first`."""
    out: dict[tuple, Node] = {}
    user = {n: op for n, op in ops.items() if op.user}

    def add(path, node):
        assert path not in out, path
        out[path] = node

    def mapping(path, m):
        add(path, _node(m.names, [k.name for k in m.keys if k.required], m.one_of))
        for k in m.keys:
            value(path + (k.name,), k)

    def value(path, key):
        if len(path) > DEPTH:
            return
        k = key.kind
        if k == "map":
            mapping(path, key.of)
        elif k == "blocks":   # a block named like an op is refused by resolve_ops
            add(path, _node(other=(ID_PATTERN, key.reserved + tuple(ops))))
            if len(path) < DEPTH:
                mapping(path + ("*",), key.of)
        elif k == "args":
            add(path, _node(other=(ID_PATTERN, key.reserved)))
        elif k == "vars":
            add(path, _node(other=(ID_PATTERN, ())))
        elif k == "sizes":
            add(path, _node(other=(ID_PATTERN, ())))
            mapping(path + ("*",), key.of)
        elif k == "overrides":   # a block call's `first`: the block's arguments
            add(path, _node(other=(None, ())))
        elif k == "defaults":
            add(path, _node(user))
            for name, op in user.items():
                if len(path) < DEPTH:
                    add(path + (name,), _node(set(op.args) - set(key.reserved)))
        elif k == "layers":
            entries(path + ("[]",), entry, inline)
        elif k == "list":     # inputs, outputs: a list of one mapping
            mapping(path + ("[]",), key.of)
        elif k == "post":     # one entry without the entry keys (model.py refuses them there)
            entries(path, None, residual)

    def entries(path, keys, res):
        if len(path) > DEPTH:
            return
        forms = list(user) + ["residual"]
        add(path, _node(forms, other=(None, forms)))   # any other name calls a block
        if len(path) == DEPTH:
            return
        for name, op in user.items():
            add(path + (name,), _node(list(op.args) + list(keys.names if keys else ()),
                                      [k for k, a in op.args.items() if a.required]))
            if keys and len(path) + 1 < DEPTH:
                for key in keys.keys:
                    if key.kind == "overrides":   # `first` overrides the op's own arguments
                        add(path + (name, key.name), _node(op.args))
        mapping(path + ("residual",), res)
        add(path + ("*",), _node(keys.names if keys else (), other=(None, () if keys else entry.names)))
        for key in keys.keys if keys else ():
            value(path + ("*", key.name), key)

    mapping((), spec)
    return out


# --- the schema's side --------------------------------------------------------------------------

def in_schema(schema: dict) -> dict:
    """Every place a mapping stands -> Node, read from the JSON Schema alone."""
    out: dict[tuple, Node] = {}

    def deref(s):
        while isinstance(s, dict) and "$ref" in s:
            target = schema
            for part in s["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            s = {**target, **{k: v for k, v in s.items() if k != "$ref"}}
        return s

    def objects(s):
        """The alternatives of `s` that describe a mapping."""
        s = deref(s)
        if not isinstance(s, dict):
            return []
        if "properties" in s or "additionalProperties" in s or "propertyNames" in s or \
                "object" in (s.get("type") if isinstance(s.get("type"), list) else [s.get("type")]):
            return [s]
        return [o for alt in s.get("anyOf", []) + s.get("oneOf", []) for o in objects(alt)]

    def items(s):
        s = deref(s)
        found = [s["items"]] if isinstance(s, dict) and "items" in s else []
        return found + [i for alt in (s.get("anyOf", []) if isinstance(s, dict) else []) for i in items(alt)]

    def walk(path, schemas):
        if len(path) > DEPTH:
            return
        alts = [o for s in schemas for o in objects(s)]
        if not alts:
            lists = [i for s in schemas for i in items(s)]
            if lists:
                walk(path + ("[]",), lists)
            return
        keys = set().union(*(a.get("properties", {}) for a in alts))
        required = set.intersection(*(set(a.get("required", ())) for a in alts))
        one_of = {r for a in alts for c in a.get("oneOf", []) if set(c) == {"required"} for r in c["required"]}
        opens = [a for a in alts if a.get("additionalProperties", True) is not False]
        assert len(opens) <= 1, path
        rule = None
        if opens:
            names = opens[0].get("propertyNames", {})
            rule = (names["pattern"][1:-1] if "pattern" in names else None, names.get("not", {}).get("enum", ()))
        out[path] = _node(keys, required, one_of, rule)
        for k in sorted(keys):
            walk(path + (k,), [a["properties"][k] for a in alts if k in a.get("properties", {})])
        if opens and isinstance(opens[0].get("additionalProperties"), dict):
            walk(path + ("*",), [opens[0]["additionalProperties"]])

    walk((), [schema])
    return out


def differences(checker: dict, schema: dict) -> list[str]:
    """What one side accepts and the other does not, place by place, in words."""
    out = []
    for path in sorted(set(checker) | set(schema)):
        where = ".".join(path) or "(top level)"
        c, s = checker.get(path), schema.get(path)
        if c is None or s is None:
            out.append(f"{where}: a mapping only in the {'schema' if c is None else 'checker'}")
            continue
        for field in Node._fields:
            a, b = getattr(c, field), getattr(s, field)
            if a == b:
                continue
            if isinstance(a, frozenset):
                out.append(f"{where}: {field} only the checker has: {sorted(a - b)}; only the schema: {sorted(b - a)}")
            else:
                out.append(f"{where}: {field} differ: checker {a}, schema {b}")
    return out


SCHEMA = json_schema(OPS)


def test_the_walks_reach_every_mapping_of_the_language():
    places = declared()
    for path in [(), ("input",), ("output",), ("inputs", "[]"), ("outputs", "[]"), ("preprocess",), ("init",), ("defaults",), ("defaults", "bn"),
                 ("vars",), ("sizes",), ("sizes", "*"), ("blocks",), ("blocks", "*"), ("blocks", "*", "args"), ("blocks", "*", "residual"),
                 ("blocks", "*", "residual", "post"), ("blocks", "*", "residual", "post", "conv"),
                 ("layers", "[]"), ("layers", "[]", "conv"), ("layers", "[]", "conv", "first"),
                 ("layers", "[]", "residual"), ("layers", "[]", "*"), ("layers", "[]", "residual", "layers", "[]", "add")]:
        assert path in places, path
    assert len(places) > 300


def test_checker_and_schema_accept_the_same_keys_everywhere():
    assert differences(declared(), in_schema(SCHEMA)) == []


def _with_key(m, where: tuple[str, ...], key: Key):
    """A copy of mapping `m` with `key` added to the mapping reached by the keys `where`."""
    if not where:
        return dataclasses.replace(m, keys=m.keys + (key,))
    return dataclasses.replace(m, keys=tuple(dataclasses.replace(k, of=_with_key(k.of, where[1:], key))
                                             if k.name == where[0] else k for k in m.keys))


def test_a_key_declared_for_the_checker_only_is_reported():
    dpi = Key("dpi", "size", "dots per inch")
    found = differences(declared(spec=_with_key(SPEC, ("input",), dpi)), in_schema(SCHEMA))
    assert found == ["input: keys only the checker has: ['dpi']; only the schema: []"]
    # deeper: a residual key reaches every block's residual (and the generated schema would have it)
    wider = _with_key(SPEC, ("blocks", "residual"), Key("scale_from", "ref", "a hypothetical key"))
    found = differences(declared(spec=wider), in_schema(SCHEMA))
    assert found == ["blocks.*.residual: keys only the checker has: ['scale_from']; only the schema: []"]


def test_a_key_in_the_schema_only_is_reported():
    schema = copy.deepcopy(SCHEMA)
    schema["properties"]["input"]["properties"]["dpi"] = {"type": "integer"}
    schema["$defs"]["args.conv"]["properties"]["padding_mode"] = {"enum": ["zeros", "reflect"]}
    found = differences(declared(), in_schema(schema))
    assert "input: keys only the checker has: []; only the schema: ['dpi']" in found
    # args.conv is what `first` and `post` read: every such place is reported
    assert any(f.startswith("layers.[].conv.first: keys only the checker has: []; only the schema: ['padding_mode']")
               for f in found)
    assert any(f.startswith("blocks.*.residual.post.conv: keys") for f in found)
    # a required key on one side only
    schema = copy.deepcopy(SCHEMA)
    schema["properties"]["output"]["required"] = ["name"]
    assert differences(declared(), in_schema(schema)) == [
        "output: required only the checker has: []; only the schema: ['name']"]


def test_an_op_argument_added_to_the_table_reaches_schema_and_checker_without_an_edit():
    ops = {**OPS, "project": dataclasses.replace(OPS["project"], args={**OPS["project"].args,
                                                                          "zz_extra": Float(0.5, lo=0)})}
    # the checker's side reads the new table; the schema made from the old one lacks the argument
    assert any("zz_extra" in f for f in differences(declared(ops), in_schema(SCHEMA)))
    schema = json_schema(ops)
    assert differences(declared(ops), in_schema(schema)) == []
    jsonschema = pytest.importorskip("jsonschema")
    doc = {"resgraph": 1, "name": "t", "input": {"shape": [3, 8, 8]}, "defaults": {"project": {"zz_extra": 0.1}},
           "layers": [{"project": {"out": 4, "zz_extra": 0.25, "first": {"zz_extra": "$x"}}}]}
    assert jsonschema.Draft202012Validator(schema).is_valid(doc)
    assert not jsonschema.Draft202012Validator(SCHEMA).is_valid(doc)


def test_the_committed_schema_file_is_the_generated_one():
    assert json.loads((ROOT / "docs" / "resgraph.schema.json").read_text()) == SCHEMA, \
        "docs/resgraph.schema.json is stale: run `resgraph schema -o docs/resgraph.schema.json`"


# --- the real checker, probed at every place the schema names -------------------------------------

BASE = {"resgraph": 1, "name": "t", "input": {"shape": [3, 8, 8]}, "layers": ["relu"]}
FILL = {"layers": ["relu"], "shape": [3, 8, 8], "resgraph": 1, "name": "t", "post": "relu", "in": "input",
        "id": "probe", "repeat": 1, "shortcut": "projection", "from": ["input"], "input": {"shape": [3, 8, 8]}}
# the checker's words for "this key (or name) is not accepted here"
REFUSED = re.compile(r"unknown key '(?P<a>[^']*)' in|unknown argument '(?P<b>[^']*)' for|"
                     r"'(?P<c>[^']*)' cannot (?:be a block argument|have a default)|'(?P<d>[^']*)' is reserved|"
                     r"invalid (?:variable|block|size variable) name '(?P<e>[^']*)'|block '(?P<f>[^']*)' has the name of an op|"
                     r"'(?P<g>from)' is for add and concat|unknown op or block '(?P<h>[^']*)'|"
                     r"defaults for unknown op '(?P<i>[^']*)'|'(?P<j>first)' needs a block")


def _refused(doc: dict) -> set[str]:
    try:
        check_text(yaml.safe_dump(doc, sort_keys=False), "<probe>", read_files=False)
    except ResgraphError as e:
        found = set()
        for d in e.diagnostics:
            m = REFUSED.search(d.message)
            if m:
                found.add(next(v for v in m.groupdict().values() if v))
            if d.message.startswith("'post' takes one op without"):
                found.update(ENTRY.names)
        return found
    return set()


def _spec_at(path: tuple, leaf: dict, places: dict) -> dict:
    """A small spec with the mapping `leaf` at `path` ('[]' is a one-item list, '*' the block x that is
    defined or the block y that is called), the required keys of every mapping on the way filled in,
    and what makes the checker look there: layers that call x, a layer of the op whose defaults are probed."""
    def build(i):
        if i == len(path):
            node = places[path]
            return {**{k: FILL.get(k) for k in node.required - set(leaf)}, **leaf}
        if path[i] == "[]":
            return [build(i + 1)]
        node = places[path[:i]]
        d = {k: FILL.get(k) for k in node.required}
        if node.one_of and not node.one_of & {path[i]}:
            d["layers"] = ["relu"]
        d[("x" if path[i - 1] == "blocks" else "y") if path[i] == "*" else path[i]] = build(i + 1)
        return d
    doc = {**BASE, **build(0)}
    doc["blocks"] = {"y": {"layers": ["relu"]}, **(doc.get("blocks") or {})}
    if path and path[0] == "blocks":
        doc["layers"] = ["x"]
    if path[:1] == ("defaults",) and len(path) == 2:
        doc["layers"] = [path[1]]
    return doc


def _one_place_per_mapping(places) -> list[tuple]:
    """The checker reads an entry the same way in any `layers` list, and a `post` in any residual: one
    place for each (the shortest), as told by the path after its last list or post."""
    seen = {}
    for p in sorted(places, key=lambda p: (len(p), p)):
        cut = max([i for i, s in enumerate(p) if s in ("[]", "post")], default=0)
        seen.setdefault(p[cut:], p)
    return sorted(seen.values())


PLACES = in_schema(SCHEMA)
PROBED = _one_place_per_mapping(PLACES)


@pytest.mark.parametrize("path", PROBED, ids=lambda p: ".".join(p) or "top")
def test_the_checker_accepts_what_the_schema_offers_and_refuses_the_rest(path):
    node = PLACES[path]
    for key in sorted(node.keys):
        assert key not in _refused(_spec_at(path, {key: FILL.get(key)}, PLACES)), \
            f"the schema offers '{key}' at {path}, the checker refuses it"
    if node.other is None or node.other[0] is None:
        # a closed mapping; or names that must be defined in the spec (blocks, block arguments): none are
        assert "zz_bogus" in _refused(_spec_at(path, {"zz_bogus": {}}, PLACES)), \
            f"the checker accepts the made-up key 'zz_bogus' at {path}"
    if node.other and node.other[0]:   # names the spec chooses (blocks, vars, block args): a rule, and reserved names
        value = {"layers": ["relu"]} if path[-1] == "blocks" else 1
        assert "okname" not in _refused(_spec_at(path, {"okname": value}, PLACES))
        for name in sorted(node.other[1]) + ["9lives"]:
            assert name in _refused(_spec_at(path, {name: value}, PLACES)), f"the checker accepts '{name}' at {path}"


# --- specs against the schema ----------------------------------------------------------------------

def _validator():
    jsonschema = pytest.importorskip("jsonschema")
    return _checked_validator(jsonschema)


@functools.cache
def _checked_validator(jsonschema):
    jsonschema.Draft202012Validator.check_schema(SCHEMA)   # a schema the draft's own meta-schema accepts
    return jsonschema.Draft202012Validator(SCHEMA)


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_every_shipped_spec_is_valid(path):
    errors = [e.message for e in _validator().iter_errors(yaml.safe_load(path.read_text()))]
    assert errors == []


def _doc_specs():
    """The docs' YAML that is a whole spec and checks: the files of test_docs' examples whose run
    shows no error, and every ```yaml block of docs/*.md with a `resgraph:` key that checks."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_docs import EXAMPLES
    found = {}
    for ex in EXAMPLES:
        _, files, expected = ex.values
        if "error:" not in expected:
            found.update({f"{ex.id}/{name}": text for name, text in files.items() if name.endswith(".yaml")})
    for md in sorted((ROOT / "docs").glob("*.md")):
        for i, m in enumerate(re.finditer(r"```yaml\n(.*?)```", md.read_text(), re.DOTALL)):
            text = m.group(1)
            try:
                doc = yaml.safe_load(text)
                check_text(text, "<doc>", read_files=False)
            except (yaml.YAMLError, ResgraphError):
                continue
            if isinstance(doc, dict) and "resgraph" in doc:
                found[f"{md.name}#{i}"] = text
    return found


DOC_SPECS = _doc_specs()


def test_the_docs_have_whole_specs():
    assert len(DOC_SPECS) >= 3, sorted(DOC_SPECS)


@pytest.mark.parametrize("name", sorted(DOC_SPECS))
def test_every_doc_spec_is_valid(name):
    errors = [e.message for e in _validator().iter_errors(yaml.safe_load(DOC_SPECS[name]))]
    assert errors == []


BROKEN = {   # name: (a change to a valid spec, what the checker says)
    "unknown top key": ({"nmae": "x"}, "unknown key 'nmae' in the spec"),
    "unknown input key": ({"input": {"shape": [3, 8, 8], "dpi": 72}}, "unknown key 'dpi' in input"),
    "no shape": ({"input": {"name": "image"}}, "input needs a shape"),
    "2-d shape": ({"input": {"shape": [8, 8]}}, "input shape must be [C, H, W] or [F]"),
    "bad policy": ({"shortcut": "zero_pad"}, "unknown shortcut policy 'zero_pad'"),
    "bad interpolation": ({"preprocess": {"interpolation": "cubic"}}, "unknown preprocess.interpolation 'cubic'"),
    "bad init": ({"init": {"conv": "he"}}, "init.conv must be one of"),
    "init not a bool": ({"init": {"zero_residual": "yes please"}}, "init.zero_residual must be true or false"),
    "residual key": ({"layers": [{"residual": {"layers": ["relu"], "pots": "relu"}}]}, "unknown key 'pots' in residual"),
    "residual without body": ({"layers": [{"residual": {"post": "relu"}}]}, "residual needs 'layers'"),
    "first on residual": ({"layers": [{"residual": {"layers": ["relu"], "first": {}}}]}, "'first' needs a block"),
    "id on post": ({"layers": [{"residual": {"layers": ["relu"], "post": {"relu": {"id": "p"}}}}]},
                   "'post' takes one op without id"),
    "two bodies": ({"blocks": {"b": {"layers": ["relu"], "residual": {"layers": ["relu"]}}}, "layers": ["b"]},
                   "needs exactly one body"),
    "block arg id": ({"blocks": {"b": {"args": {"id": None}, "layers": ["relu"]}}, "layers": ["b"]},
                     "'id' cannot be a block argument"),
    "block named input": ({"blocks": {"input": {"layers": ["relu"]}}}, "'input' is reserved"),
    "default id": ({"defaults": {"conv": {"id": "c"}}}, "'id' cannot have a default"),
    "unknown argument": ({"layers": [{"conv": {"out": 4, "kernal": 3}}]}, "unknown argument 'kernal' for conv"),
    "unknown first argument": ({"layers": [{"conv": {"out": 4, "kernel": 3, "first": {"strid": 2}}}]},
                               "unknown argument 'strid' for conv"),
    "from on conv": ({"layers": [{"conv": {"out": 4, "kernel": 3, "from": ["input"]}}]}, "'from' is for add and concat"),
    "empty layers": ({"layers": []}, "'layers' is empty"),
    "bad variable name": ({"vars": {"2x": 1}}, "invalid variable name '2x'"),
    "version 2": ({"resgraph": 2}, "unsupported spec version 2"),
    "layernorm eps 0": ({"layers": [{"layernorm": {"eps": 0}}]}, "'eps' must be > 0"),
    "groupnorm eps 0": ({"layers": [{"groupnorm": {"groups": 3, "eps": 0.0}}]}, "'eps' must be > 0"),
}


def test_bn_eps_0_is_valid_for_both():
    """bn keeps an inclusive bound (eps >= 0) where layernorm's and groupnorm's is exclusive (BROKEN)."""
    doc = {**BASE, "layers": [{"bn": {"eps": 0}}, {"layernorm": {"eps": 1e-6}}]}
    assert _validator().is_valid(doc)
    check_text(yaml.safe_dump(doc, sort_keys=False), "<bn>", read_files=False)


@pytest.mark.parametrize("change,message", BROKEN.values(), ids=list(BROKEN))
def test_broken_specs_are_refused_by_both(change, message):
    doc = {**BASE, **change}
    assert not _validator().is_valid(doc)
    with pytest.raises(ResgraphError) as e:
        check_text(yaml.safe_dump(doc, sort_keys=False), "<broken>", read_files=False)
    assert any(message in d.message for d in e.value.diagnostics), [d.message for d in e.value.diagnostics]
