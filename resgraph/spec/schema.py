"""JSON Schema (draft 2020-12) of the spec language, for editors (yaml-language-server) and tools.

Generated, never written by hand: the language's mappings from the declarations in spec/grammar.py
(the ones the checker walks), the ops and their arguments from the op table, which is passed in
rather than imported: the front end knows the language's structure, the op table knows the ops
(see docs/architecture.md on module boundaries). tests/spec/test_schema.py walks this schema and the
declarations and proves they name the same keys.
"""
from __future__ import annotations

from ..limits import MAX_LABELS, MAX_REPEAT, MAX_SPATIAL
from .expr import FUNCTIONS
from .grammar import ENTRY, ID_PATTERN, INLINE_RESIDUAL, NAME_PATTERN, RESIDUAL, SPEC, VERSION, Key, Mapping

SCHEMA_ID = "https://resgraph.dev/schema/spec-v1.json"
# an expression: written once under $defs, referred to wherever a number may be computed
EXPR_DEF = {"type": "string", "pattern": r"\$|^\s*(?:" + "|".join(FUNCTIONS) + r")\s*\(",
            "description": "an expression over $vars and block args: \"$out * 4\", \"make_divisible($c * 0.75, 8)\""}
EXPR = {"$ref": "#/$defs/expr"}
NULL = {"type": "null"}


def _int(lo: int, hi: int | None = None) -> dict:
    s = {"type": "integer", "minimum": lo}
    return {**s, "maximum": hi} if hi is not None else s


def _arg(a) -> dict:
    """One op argument (ops/args.py's kinds). An optional one may be null: "not given", the default."""
    k = a.kind
    if k == "int":
        s = {"type": "integer"}
        if a.lo is not None:
            s["minimum"] = int(a.lo)
        if a.hi is not None:
            s["maximum"] = int(a.hi)
        forms = [s, EXPR]
    elif k == "float":
        s = {"type": "number"}
        if a.lo is not None:
            s["minimum"] = a.lo
        if getattr(a, "above", None) is not None:   # ops.table.Above: an exclusive bound (a norm's eps > 0)
            s["exclusiveMinimum"] = a.above
        if a.hi is not None:
            s["maximum"] = a.hi
        forms = [s, EXPR]
    elif k == "bool":
        forms = [{"type": "boolean"}, EXPR]
    elif k == "choice":
        forms = [{"enum": [c for c in a.choices if c is not None]}, EXPR]
    elif k == "padding":
        forms = [{"enum": ["same", "valid"]}, _int(0), EXPR]
    elif k == "padding2":
        pair = {"type": "array", "items": {"anyOf": [_int(0, int(a.hi)), EXPR]}, "minItems": 2, "maxItems": 2}
        forms = [{"enum": ["same", "valid"]}, _int(0), pair, EXPR]
    elif k == "ids":
        forms = [{"type": "array", "items": {"type": "string"}, "minItems": 1}, {"type": "string"}]
    elif k == "ints":
        forms = [{"type": "array", "items": {"anyOf": [_int(int(a.lo), int(a.hi)), EXPR]}, "minItems": 1}, EXPR]
    elif k == "pair":
        one = {"anyOf": [_int(int(a.lo), int(a.hi)), EXPR]}
        forms = [_int(int(a.lo), int(a.hi)), {"type": "array", "items": one, "minItems": 2, "maxItems": 2}, EXPR]
    elif k == "ref":
        forms = [{"type": "string", "pattern": f"^{ID_PATTERN}$"}]
    else:
        raise AssertionError(f"no schema for op argument kind {k!r}")
    return {"anyOf": forms + ([] if a.required else [NULL]), **({"description": a.doc} if a.doc else {})}


def _names(pattern: str, reserved=()) -> dict:
    s = {"pattern": f"^{pattern}$"}
    return {**s, "not": {"enum": list(reserved)}} if reserved else s


def _value(key: Key, ops: dict) -> dict:
    """The schema of one key's value, by its kind (see grammar.py's docstring)."""
    k = key.kind
    if k == "version":
        return {"const": VERSION}
    if k == "name":
        return {"type": "string", "pattern": f"^{NAME_PATTERN}$"}
    if k in ("text", "ref"):
        return {"type": "string"}
    if k == "id":
        return {"type": "string", "pattern": f"^{ID_PATTERN}$"}
    if k == "shape":   # [F] or [C, H, W]; H and W may name a size variable
        return {"type": "array", "items": {"anyOf": [_int(1), EXPR, {"type": "string", "pattern": f"^{ID_PATTERN}$"}]},
                "minItems": 1, "maxItems": 3,
                "not": {"minItems": 2, "maxItems": 2}}
    if k == "size":
        return {"anyOf": [_int(1, MAX_SPATIAL), EXPR]}
    if k == "numbers":
        return {"type": "array", "items": {"type": "number"}, "minItems": 1}
    if k == "choice":
        return {"enum": list(key.choices)}
    if k == "bool":
        return {"type": "boolean"}
    if k == "labels":
        return {"anyOf": [{"type": "string", "minLength": 1},
                          {"type": "array", "items": {"type": ["string", "integer"]}, "maxItems": MAX_LABELS}]}
    if k == "map":
        return _mapping(key.of, ops)
    if k == "count":
        return {"anyOf": [_int(1, MAX_REPEAT), EXPR]}
    if k == "overrides":
        return {"type": "object"}
    if k == "sizes":
        return {"type": "object", "propertyNames": _names(ID_PATTERN), "additionalProperties": _mapping(key.of, ops)}
    if k == "vars":
        return {"type": "object", "propertyNames": _names(ID_PATTERN),
                "additionalProperties": {"anyOf": [{"type": ["number", "string", "boolean"]}, {
                    "type": "array", "items": {"type": ["number", "string", "boolean"]}}]}}
    if k == "defaults":   # per op: its arguments but those set per entry
        return {"type": "object", "additionalProperties": False, "properties": {
            name: _args(op, key.reserved) if set(op.args) & set(key.reserved) else {"$ref": f"#/$defs/args.{name}"}
            for name, op in _user_ops(ops)}}
    if k == "blocks":     # a block cannot take an op's name either (passes/resolve.py says so)
        return {"type": "object", "propertyNames": _names(ID_PATTERN, key.reserved + tuple(sorted(ops))),
                "additionalProperties": _mapping(key.of, ops)}
    if k == "args":       # null = required, anything else the default
        return {"type": "object", "propertyNames": _names(ID_PATTERN, key.reserved)}
    if k == "layers":
        return {"$ref": "#/$defs/layers"}
    if k == "list":
        return {"type": "array", "minItems": 1, "items": _mapping(key.of, ops)}
    if k == "post":
        return {"anyOf": [{"$ref": "#/$defs/post"}, NULL]}
    raise AssertionError(f"no schema for key kind {k!r}")


def _described(s: dict, doc: str) -> dict:
    return {**s, "description": doc} if doc else s


def _mapping(m: Mapping, ops: dict) -> dict:
    s = {"type": "object", "additionalProperties": False,
         "properties": {k.name: _described(_value(k, ops), k.doc) for k in m.keys}}
    required = [k.name for k in m.keys if k.required]
    if required:
        s["required"] = required
    if m.one_of:
        s["oneOf"] = [{"required": [k]} for k in m.one_of]
    if m.exclusive:
        s["allOf"] = [{"not": {"required": list(pair)}} for pair in m.exclusive]
    return _described(s, m.doc)


def _user_ops(ops: dict):
    return [(name, ops[name]) for name in sorted(ops) if ops[name].user]


def _args(op, leave_out=()) -> dict:
    return {"type": "object", "additionalProperties": False,
            "properties": {k: _arg(a) for k, a in op.args.items() if k not in leave_out}}


def _entry_keys(ops: dict) -> dict:
    # no "type": a block call refers to it and may be null (no arguments)
    return {"properties": {k.name: _described(_value(k, ops), k.doc) for k in ENTRY.keys}}


def _forms(ops: dict, keys: Mapping | None, residual: Mapping) -> dict:
    """What a `layers` item may be (keys=ENTRY), or a residual's `post` (keys=None: no entry keys)."""
    forms = [{"type": "string", "not": {"const": "residual"}, "description": "an op or block without arguments"}]
    for name, op in _user_ops(ops):
        required = [k for k, a in op.args.items() if a.required]
        if keys:   # the op's arguments and the entry keys; `first` overrides the op's arguments
            props = {k: _arg(a) for k, a in op.args.items()}
            props.update({key.name: {"$ref": f"#/$defs/args.{name}"} if key.kind == "overrides" else
                          {"$ref": f"#/$defs/entry_keys/properties/{key.name}"} for key in keys.keys})
            body = {"type": "object", "properties": props, "additionalProperties": False}
        else:
            body = {"$ref": f"#/$defs/args.{name}"}
        body = {**body, "required": required} if required else {"anyOf": [body, NULL]}
        forms.append({"type": "object", "properties": {name: body}, "required": [name],
                      "additionalProperties": False, "description": op.doc})
    forms.append({"type": "object", "properties": {"residual": _mapping(residual, ops)}, "required": ["residual"],
                  "additionalProperties": False})
    # a block's arguments depend on the spec; the entry keys still have their types
    call = ({"type": ["object", "null"], "$ref": "#/$defs/entry_keys"} if keys else
            {"type": ["object", "null"], "propertyNames": {"not": {"enum": list(ENTRY.names)}}})
    forms.append({"type": "object", "minProperties": 1, "maxProperties": 1,
                  "propertyNames": {"not": {"enum": [n for n, _ in _user_ops(ops)] + ["residual"]}},
                  "additionalProperties": call, "description": "a call of a block defined under blocks:"})
    return {"anyOf": forms}


def json_schema(ops: dict) -> dict:
    """The schema, for the op table `ops` (ops.OPS)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": SPEC.doc,
        **{k: v for k, v in _mapping(SPEC, ops).items() if k != "description"},
        "$defs": {
            "expr": EXPR_DEF,
            "layers": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/entry"}},
            "entry": _forms(ops, ENTRY, INLINE_RESIDUAL),
            "post": _forms(ops, None, RESIDUAL),
            "entry_keys": _entry_keys(ops),
            # each op's arguments alone: what `first`, `post` and `defaults` take
            **{f"args.{name}": _args(op) for name, op in _user_ops(ops)},
        },
    }


__all__ = ["json_schema"]
