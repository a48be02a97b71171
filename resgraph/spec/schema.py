"""JSON Schema (draft 2020-12) of the spec language, for editors (yaml-language-server) and tools.

The op table is passed in rather than imported: the front end knows the language's structure,
the op table knows the ops (see docs/architecture.md on module boundaries).
"""
from __future__ import annotations

from .model import INIT_KEYS, INTERPOLATIONS, POLICIES, PREPROCESS_KEYS

SCHEMA_ID = "https://resgraph.dev/schema/spec-v1.json"
EXPR = {"type": "string", "pattern": r"\$", "description": "an expression over $vars and block args: \"$out * 4\""}


def _arg(a) -> dict:
    k = a.kind
    doc = {"description": a.doc} if a.doc else {}
    if k == "int":
        s = {"type": "integer"}
        if a.lo is not None:
            s["minimum"] = int(a.lo)
        if a.hi is not None:
            s["maximum"] = int(a.hi)
        return {"anyOf": [s, EXPR], **doc}
    if k == "float":
        return {"anyOf": [{"type": "number"}, EXPR], **doc}
    if k == "bool":
        return {"anyOf": [{"type": "boolean"}, EXPR], **doc}
    if k == "choice":
        return {"anyOf": [{"enum": [c for c in a.choices if c is not None]}, EXPR], **doc}
    if k == "padding":
        return {"anyOf": [{"enum": ["same", "valid"]}, {"type": "integer", "minimum": 0}, EXPR], **doc}
    if k == "ids":
        return {"anyOf": [{"type": "array", "items": {"type": "string"}, "minItems": 1}, {"type": "string"}]}
    raise AssertionError(k)


def _common() -> dict:
    return {"id": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$", "description": "name, unique in its scope"},
            "in": {"type": "string", "description": "the id whose output is this entry's main input"},
            "repeat": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 10000}, EXPR],
                       "description": "n sequential copies named <id>.0 ... <id>.<n-1>"},
            "first": {"type": "object", "description": "argument overrides for copy 0 only"}}


def json_schema(ops: dict) -> dict:
    user_ops = sorted(n for n, o in ops.items() if o.user)
    op_entries = []
    for name in user_ops:
        op = ops[name]
        props = {k: _arg(a) for k, a in op.args.items()}
        props.update(_common())
        required = [k for k, a in op.args.items() if a.required]
        body = {"type": "object", "properties": props, "additionalProperties": False}
        if required:
            body["required"] = required
        else:
            body = {"anyOf": [body, {"type": "null"}]}
        op_entries.append({"type": "object", "properties": {name: body}, "required": [name],
                           "additionalProperties": False, "description": op.doc})
    residual = {"type": "object", "properties": {
        "layers": {"$ref": "#/$defs/layers"}, "post": {"$ref": "#/$defs/entry"},
        "shortcut": {"enum": list(POLICIES)}}, "required": ["layers"], "additionalProperties": False,
        "description": "a[l+2] = post(body(a[l]) + shortcut(a[l]))"}
    residual_entry = {"type": "object", "properties": {"residual": {
        "type": "object", "properties": {**residual["properties"], **{k: v for k, v in _common().items() if k != "first"}},
        "required": ["layers"], "additionalProperties": False}}, "required": ["residual"], "additionalProperties": False}
    block_call = {"type": "object", "minProperties": 1, "maxProperties": 1,
                  "propertyNames": {"not": {"enum": user_ops + ["residual"]}},
                  "additionalProperties": {"type": ["object", "null"]},
                  "description": "a call of a block defined under blocks:"}
    num_list = {"type": "array", "items": {"type": "number"}}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "resgraph network spec, version 1",
        "type": "object",
        "required": ["resgraph", "name", "input", "layers"],
        "additionalProperties": False,
        "properties": {
            "resgraph": {"const": 1, "description": "spec format version"},
            "name": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_-]*$"},
            "description": {"type": "string"},
            "input": {"type": "object", "required": ["shape"], "additionalProperties": False, "properties": {
                "name": {"type": "string"},
                "shape": {"type": "array", "minItems": 1, "maxItems": 3,
                          "items": {"anyOf": [{"type": "integer", "minimum": 1}, EXPR]},
                          "description": "[C, H, W] or [F]; the batch dimension is implicit"}}},
            "output": {"type": "object", "additionalProperties": False, "properties": {"name": {"type": "string"}}},
            "preprocess": {"type": "object", "additionalProperties": False, "properties": {
                k: ({"type": "integer", "minimum": 1} if k in ("resize", "crop") else
                    {"enum": list(INTERPOLATIONS)} if k == "interpolation" else num_list) for k in PREPROCESS_KEYS}},
            "labels": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": ["string", "integer"]}}]},
            "shortcut": {"enum": list(POLICIES), "description": "what an add does when its inputs differ in shape"},
            "defaults": {"type": "object", "propertyNames": {"enum": user_ops},
                         "additionalProperties": {"type": "object"}},
            "vars": {"type": "object", "additionalProperties": {"type": ["number", "string"]}},
            "init": {"type": "object", "additionalProperties": False,
                     "properties": {k: ({"type": "boolean"} if isinstance(c[0], bool) else {"enum": list(c)})
                                    for k, c in INIT_KEYS.items()}},
            "blocks": {"type": "object", "additionalProperties": {
                "type": "object", "additionalProperties": False,
                "properties": {"args": {"type": "object"}, "layers": {"$ref": "#/$defs/layers"},
                               "residual": residual},
                "oneOf": [{"required": ["layers"]}, {"required": ["residual"]}]}},
            "layers": {"$ref": "#/$defs/layers"},
        },
        "$defs": {
            "layers": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/entry"}},
            "entry": {"anyOf": [{"type": "string"}, *op_entries, residual_entry, block_call]},
        },
    }


__all__ = ["json_schema"]
