"""The spec's inputs, outputs and size variables: `input:`/`inputs:`, `output:`/`outputs:`, `sizes:`.

A part of the spec's parser (model.py's _Parser mixes it in, as it does layers.py's LayersParser):
the declarations every later stage reads (InputDecl, OutputDecl, SizeVar), checked here for
structure; which ids and paths `outputs:` names is the expansion's to resolve (ir/expand.py).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import Loc, did_you_mean
from ..limits import MAX_SPATIAL
from .grammar import ID_PATTERN, INPUT, NAMED_INPUT, NAMED_OUTPUT, OUTPUT, SIZE
from .layers import kind_of

ID_RE = re.compile(ID_PATTERN + r"\Z")


@dataclass(frozen=True)
class InputDecl:
    """One network input: `input:` or an item of `inputs:`."""
    name: str
    shape: tuple[int, ...]     # size variables at their max (the reference the front end starts from)
    loc: Loc                   # of the shape
    vars: tuple = ()           # per dimension, the size variable it is, or None; () if none
    named: bool = False        # an item of `inputs:`: layers refer to it by its name


@dataclass(frozen=True)
class OutputDecl:
    """One network output: `output:` (ref None: the last entry's tensor) or an item of `outputs:`."""
    name: str
    ref: str | None            # the id or dotted path named by `from:`
    loc: Loc                   # of `from:` (of the name for output:)


@dataclass(frozen=True)
class SizeVar:
    """`sizes: {NAME: {min, max}}`: a spatial dimension of the input given by name."""
    name: str
    lo: int
    hi: int
    loc: Loc


class IOParser:
    """The methods of the spec's parser for its inputs, outputs and sizes (self.d, self.keys,
    self.mapping and self.const are model.py's _Parser's)."""

    def sizes(self, y) -> dict:
        out: dict = {}
        y = self.mapping(y, "sizes")
        if y is None:
            return out
        for name, v in y.value.items():
            if not ID_RE.match(name):
                self.d.error(y.keylocs[name], f"invalid size variable name '{name}'", "use letters, digits and '_'")
                continue
            v = self.mapping(v, f"size variable '{name}'")
            if v is None:
                continue
            self.keys(v, SIZE, at=y.keylocs[name])
            bounds = []
            for key in ("min", "max"):
                b = v.value.get(key)
                if b is None:
                    continue
                if isinstance(b.value, bool) or not isinstance(b.value, int) or not 1 <= b.value <= MAX_SPATIAL:
                    self.d.error(b.loc, f"{name}.{key} must be a whole number of pixels, 1 to {MAX_SPATIAL}, got "
                                 f"{b.plain()!r}", "e.g. min: 32, max: 2048")
                    continue
                bounds.append(b.value)
            if len(bounds) == 2 and bounds[0] > bounds[1]:
                self.d.error(v.value["max"].loc, f"{name}.max {bounds[1]} is below its min {bounds[0]}",
                             "max is the largest size, min the smallest")
            elif len(bounds) == 2:
                out[name] = SizeVar(name, bounds[0], bounds[1], y.keylocs[name])
        return out

    def inputs(self, m, env, top, sizes) -> tuple[InputDecl, ...]:
        """`input:` or `inputs:` (exactly one of them), as a non-empty tuple; names distinct."""
        if "input" in m and "inputs" in m:
            self.d.error(m["inputs"].loc, "both 'input:' and 'inputs:' are given",
                         "use input: for one input, inputs: [{name, shape}, ...] for several")
        if "inputs" not in m:
            if "input" not in m:
                self.d.error(top, "missing 'input:'", "give the input shape without the batch, e.g. input: {shape: [3, 224, 224]}")
            return (InputDecl(*self.input(m.get("input"), env, top, sizes)),)
        y = m["inputs"]
        if not y.is_list or not y.value:
            self.d.error(y.loc, f"inputs must be a non-empty list, got {kind_of(y)}",
                         "inputs: [{name: image, shape: [3, 224, 224]}, {name: mask, shape: [1, 224, 224]}]")
            return (InputDecl("input", (1,), y.loc),)
        from ..limits import MAX_IO
        if len(y.value) > MAX_IO:
            self.d.error(y.loc, f"{len(y.value)} inputs, more than {MAX_IO}", "a network takes at most 64 inputs")
            return (InputDecl("input", (1,), y.loc),)
        out, seen = [], {}
        for item in y.value:
            if not item.is_map:
                self.d.error(item.loc, f"an input must be a mapping, got {kind_of(item)}",
                             "write it as {name: image, shape: [3, 224, 224]}")
                continue
            decl = InputDecl(*self.input(item, env, item.loc, sizes, NAMED_INPUT), named=True)
            if "name" not in item.value:
                continue   # reported with its keys
            if decl.name in seen:
                self.d.error(item.value["name"].loc, f"two inputs are named '{decl.name}' (first at line "
                             f"{seen[decl.name].line})", "give every input its own name", span=len(decl.name))
                continue
            seen[decl.name] = item.value["name"].loc
            out.append(decl)
        return tuple(out) or (InputDecl("input", (1,), y.loc),)

    def outputs(self, m, inputs) -> tuple[OutputDecl, ...]:
        """`output:` or `outputs:` (at most one of them), as a non-empty tuple; names distinct, and
        none an input's."""
        in_names = {i.name for i in inputs}
        if "output" in m and "outputs" in m:
            self.d.error(m["outputs"].loc, "both 'output:' and 'outputs:' are given",
                         "use output: to name the last entry's tensor, outputs: [{name, from}, ...] for any tensors")
        if "outputs" not in m:
            name = self.output(m.get("output"))
            if name in in_names:
                where = m["output"].loc if "output" in m else Loc(self.file, 1, 1)
                self.d.error(where, f"the output is named '{name}', like the input",
                             "inputs and outputs of a model need distinct names, e.g. input: image, output: logits")
            return (OutputDecl(name, None, m["output"].loc if "output" in m else None),)
        y = m["outputs"]
        if not y.is_list or not y.value:
            self.d.error(y.loc, f"outputs must be a non-empty list, got {kind_of(y)}",
                         "outputs: [{name: c3, from: layer2}, {name: c4, from: layer3}]")
            return (OutputDecl("output", None, y.loc),)
        from ..limits import MAX_IO
        if len(y.value) > MAX_IO:
            self.d.error(y.loc, f"{len(y.value)} outputs, more than {MAX_IO}", "a network gives at most 64 outputs")
            return (OutputDecl("output", None, y.loc),)
        out, seen = [], {}
        for item in y.value:
            if not item.is_map:
                self.d.error(item.loc, f"an output must be a mapping, got {kind_of(item)}",
                             "write it as {name: c3, from: layer2}")
                continue
            self.keys(item, NAMED_OUTPUT)
            n, f = item.value.get("name"), item.value.get("from")
            if n is None or f is None:
                continue   # reported with its keys
            if not isinstance(n.value, str) or not ID_RE.match(n.value):
                self.d.error(n.loc, f"invalid output name {n.plain()!r}", "use letters, digits and '_'")
                continue
            if not isinstance(f.value, str) or not re.fullmatch(ID_PATTERN + r"(\.[A-Za-z0-9_]+)*", f.value):
                self.d.error(f.loc, f"an output's 'from' must be an id or a dotted path, got {f.plain()!r}",
                             "e.g. from: layer2, or from: layer3.1.conv2")
                continue
            if n.value in seen:
                self.d.error(n.loc, f"two outputs are named '{n.value}' (first at line {seen[n.value].line})",
                             "give every output its own name", span=len(n.value))
                continue
            if n.value in in_names:
                self.d.error(n.loc, f"the output '{n.value}' has an input's name",
                             "inputs and outputs of a model need distinct names", span=len(n.value))
                continue
            seen[n.value] = n.loc
            out.append(OutputDecl(n.value, f.value, f.loc))
        return tuple(out) or (OutputDecl("output", None, y.loc),)

    def input(self, y, env, top, sizes=None, grammar=INPUT):
        sizes = sizes or {}
        y = self.mapping(y, "input")
        if y is None:
            return "input", (1,), top, ()   # absent: reported with the spec's keys
        self.keys(y, grammar)
        name = "input"
        if "name" in y.value:
            n = y.value["name"]
            if not isinstance(n.value, str) or not ID_RE.match(n.value):
                self.d.error(n.loc, f"invalid input name {n.value!r}", "use letters, digits and '_'")
            else:
                name = n.value
        if "shape" not in y.value:
            return name, (1,), y.loc, ()
        s = y.value["shape"]
        if not s.is_list or len(s.value) not in (1, 3):
            self.d.error(s.loc, f"input shape must be [C, H, W] or [F], got {s.plain()!r}",
                         "the batch dimension is implicit: write [3, 224, 224], not [1, 3, 224, 224]")
            return name, (1,), s.loc, ()
        from ..limits import MAX_CHANNELS
        dims, named = [], []
        for i, d in enumerate(s.value):
            var = d.value if isinstance(d.value, str) and not d.value.startswith("$") else None
            named.append(var)
            if var is not None:
                if i == 0 or len(s.value) != 3 or var not in sizes:
                    self.d.error(d.loc, f"input dimension '{var}' is not a size variable of H or W",
                                 f"declare it under sizes: ({var}: {{min: 32, max: 2048}}) and use it for H or W "
                                 "of a [C, H, W] input" + (f"; {did_you_mean(var, sizes, 'size variables')}"
                                                           if sizes else ""))
                    dims.append(1)
                else:
                    dims.append(sizes[var].hi)   # the reference the front end starts from
                continue
            v = self.const(d, env)
            limit = MAX_CHANNELS if i == 0 else MAX_SPATIAL
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                self.d.error(d.loc, f"input dimension must be a positive integer, got {v!r}", "sizes are counts: 3, 224, ...")
                v = 1
            elif v > limit:
                self.d.error(d.loc, f"input dimension {v} exceeds the limit of {limit}", "check for a typo")
                v = 1
            dims.append(v)
        return name, tuple(dims), s.loc, tuple(named) if any(named) else ()

    def contract(self, m) -> tuple[str, str]:
        """`input: {dtype, layout}` and `output: {dtype}` as compile's --input and --output values
        (fp32, fp16, uint8-nchw, uint8-nhwc; fp32, fp16): what the compiled model takes and gives."""
        got = {}
        for where, grammar in (("input", INPUT), ("output", OUTPUT)):
            y = m.get(where)
            for k in ("dtype", "layout"):
                if y is not None and y.is_map and k in y.value:
                    got[where, k] = (self.choice(y.value[k], grammar[k]), y.value[k].loc)
        dtype, layout = got.get(("input", "dtype"), ("float32", None))[0], got.get(("input", "layout"), (None, None))
        if layout[0] == "nhwc" and dtype not in ("uint8", None):
            self.d.error(layout[1], f"layout nhwc with dtype {dtype}", "the nhwc layout is for uint8 raw pixels: "
                         "add dtype: uint8, or leave the layout out")
        short = {"float32": "fp32", "float16": "fp16"}
        taken = f"uint8-{layout[0] or 'nchw'}" if dtype == "uint8" else short.get(dtype, "fp32")
        return taken, short.get(got.get(("output", "dtype"), ("float32", None))[0], "fp32")

    def output(self, y) -> str:
        y = self.mapping(y, "output")
        if y is None:
            return "output"
        self.keys(y, OUTPUT)
        n = y.value.get("name")
        if n is None:
            return "output"
        if not isinstance(n.value, str) or not ID_RE.match(n.value):
            self.d.error(n.loc, f"invalid output name {n.value!r}", "use letters, digits and '_'")
            return "output"
        return n.value
