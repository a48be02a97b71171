"""The typed Spec: the YAML tree checked for structure, with every value still located.

Which keys each mapping has, which are required and which values a choice takes is declared in
spec/grammar.py (the JSON Schema is generated from the same declarations); this module walks those
declarations and checks the values. It does not know the ops: which names are ops, and what
arguments they take, is the op table's business (see passes/resolve.py).
"""
from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass, field

from ..errors import Diagnostics, Loc, SpecError, did_you_mean
from ..limits import MAX_SPATIAL
from .grammar import (ID_PATTERN, INIT, NAME_PATTERN, PREPROCESS, SPEC,
                      VERSION, Key, Mapping)
# re-exported, not a copy: the interpolations that runtime/preprocess.py maps to Pillow
from .grammar import INTERPOLATIONS  # noqa: F401
from .io import InputDecl, IOParser, OutputDecl, SizeVar  # noqa: F401  (re-exported: the Spec's parts)
from .layers import Block, Entry, LayersParser, evaluate_located, kind_of
from .yamlsrc import Y, load_yaml

NAME_RE = re.compile(NAME_PATTERN + r"\Z")
ID_RE = re.compile(ID_PATTERN + r"\Z")
INIT_KEYS = {k.name: k.choices for k in INIT.keys}   # policy -> its choices, first = default (backends/torch/init.py)


@dataclass(frozen=True)
class Spec:
    file: str
    source: str
    sha256: str
    name: str
    description: str
    input_name: str
    input_shape: tuple[int, ...]
    input_loc: Loc
    output_name: str
    shortcut: str
    defaults: dict[str, dict[str, Y]]
    vars: dict[str, object]
    init: dict[str, object]
    preprocess: dict[str, object]
    labels: tuple[str, ...] | None
    labels_loc: Loc | None
    blocks: dict[str, Block]
    layers: tuple[Entry, ...]
    root_loc: Loc = field(default=None)
    # size variables: name -> SizeVar; input_vars: per input dimension, the variable it is, or None
    sizes: dict = field(default_factory=dict)
    input_vars: tuple = ()
    # every input and output, in spec order (`input:`/`output:` make one each; input_name, input_shape,
    # input_loc, input_vars and output_name are the first's)
    inputs: tuple = ()
    outputs: tuple = ()
    contract: tuple = ("fp32", "fp32")   # input: {dtype, layout}, output: {dtype} as compile's --input, --output


def read_source(path: str) -> str:
    """The spec's text. A file that cannot be read (missing, a folder, no permission) raises PathError,
    one that is not UTF-8 SpecError; both at line 1, column 1 (what `check --json` reports)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(4 << 20)
    except OSError as e:
        from ..errors import PathError
        raise PathError([_io_diag(path, e)]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        from ..errors import Diagnostic
        raise SpecError([Diagnostic(Loc(path, 1, 1), f"not UTF-8 text ({e.reason} at byte {e.start})",
                                    "save the spec as UTF-8")]) from None
    return text


def load_spec(path: str, diags: Diagnostics | None = None) -> Spec | None:
    """Read and structurally check a spec file (see parse_spec for `diags`)."""
    return parse_spec(read_source(path), path, diags)


def _io_diag(path, e):
    from ..errors import Diagnostic
    hint = "check the path" if isinstance(e, FileNotFoundError) else "check permissions"
    return Diagnostic(Loc(path, 1, 1), f"cannot read spec: {e.strerror or e}", hint)


def parse_spec(text: str, file: str = "<spec>", diags: Diagnostics | None = None,
               read_files: bool = True) -> Spec | None:
    """Parse and structurally check. Without `diags`, raise SpecError on any problem; with it, record
    problems there and return the best Spec that could be made (None if none), so that later stages
    can report their errors in the same run. read_files=False leaves a `labels:` file unread (labels
    None): a compiled folder's copy of the spec rebuilds its module without the labels file beside it."""
    own = diags is None
    d = Diagnostics() if own else diags
    root = load_yaml(text, file, d)
    if d.errors:
        # the document is not plain YAML data (bad tag, merge key, duplicate key): what it means is
        # unclear, and checking it further would mostly report the same mistake again
        raise SpecError(d.errors)
    spec = _Parser(file, d, read_files).spec(root, text)
    if own or spec is None:
        d.raise_if_any()
    return spec


def with_vars(text: str, file: str, overrides: dict, option: str = "--var") -> str:
    """The spec's text with the `vars:` named in `overrides` given new values, each written as a YAML
    flow value where the old one was, on as many lines, so every other location stays where it was.
    The result is a spec of its own: its sha256 is what a checkpoint or compiled folder records, and
    its text is what a compiled folder keeps. A name the spec does not declare, or a value of another
    kind than the declared one (a list for a number), is an OptionError at `option`; a spec that
    does not parse is returned as it is (parse_spec reports it)."""
    import yaml

    from ..errors import OptionError
    from .yamlsrc import _LOADER
    d = Diagnostics()
    root = load_yaml(text, file, d)
    if root is None or d.errors or not root.is_map or not overrides:
        return text
    vy = root.value.get("vars")
    names = vy.value if vy is not None and vy.is_map else {}
    declared = _Parser(file, Diagnostics()).vars(vy) if names else {}
    for name, value in overrides.items():
        where, kind = f"{option} {name}", _kind(value)
        if name not in names:
            raise OptionError.at(where, f"{file} declares no variable '{name}'", did_you_mean(name, names, "variables")
                                 or "declare it under the spec's vars: (n: 3) and use it as $n")
        if kind is None:
            raise OptionError.at(where, f"{value!r} is not a value a variable takes",
                                 "a number, a word, true/false or a list of those: n=9, act=relu, widths=[16,32,64]")
        if name in declared and kind != _kind(declared[name]):
            raise OptionError.at(where, f"'{name}' is {_kind(declared[name])} in {file} ({declared[name]!r}); "
                                 f"{value!r} is {kind}", f"give {_kind(declared[name])}, as the spec's own value is")
    top = yaml.compose(text, Loader=_LOADER)   # the same document load_yaml read within its budgets
    nodes = {k.value: (k, v) for k, v in next(v for k, v in top.value if k.value == "vars").value}
    for name in sorted(overrides, key=lambda n: -nodes[n][1].start_mark.index):
        key, node = nodes[name]
        start = node.start_mark.index
        if start < key.end_mark.index:
            raise OptionError.at(f"{option} {name}", f"'{name}' is an alias in {file}", "write its value out to override it")
        old = text[start:node.end_mark.index].rstrip()    # a block list ends where the next key begins
        text = text[:start] + _flow(overrides[name]) + "\n" * old.count("\n") + text[start + len(old):]
    return text


def _kind(value) -> str | None:
    """What a variable is, in words (None: not a value a variable takes)."""
    if isinstance(value, list):
        return "a list" if all(_kind(x) not in (None, "a list") for x in value) else None
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number" if math.isfinite(value) else None
    return "a word" if isinstance(value, str) else None


def _flow(value) -> str:
    """A variable's value as YAML flow text: [16, 32], 9, 0.5, true, "relu"."""
    import json
    if isinstance(value, list):
        return "[" + ", ".join(map(_flow, value)) + "]"
    if isinstance(value, float):   # PyYAML's own writing: 1e+20 would read back as a word
        import yaml
        return yaml.safe_dump(value).split("\n")[0]
    return json.dumps(value)


class _Parser(IOParser, LayersParser):
    """The spec's top-level sections; the layers and blocks are LayersParser's (layers.py)."""

    def __init__(self, file: str, diags: Diagnostics, read_files: bool = True):
        self.file, self.d, self.read_files = file, diags, read_files

    # -- helpers ------------------------------------------------------------------------------
    def keys(self, y: Y, m: Mapping, what: str = "", at: Loc | None = None) -> None:
        """Keys not in `m` ("did you mean"), then `m`'s required keys that are absent, reported at `at`."""
        for k, loc in y.keylocs.items():
            if k not in m:
                self.d.error(loc, f"unknown key '{k}' in {what or m.what}", did_you_mean(k, m.names, "keys"), span=len(k))
        for key in m.keys:
            if key.required and key.name not in y.value:
                self.d.error(at or y.loc, *key.missing)

    def choice(self, y: Y, key: Key):
        """y's value if it is one of `key`'s choices (a bool for a bool, a word for a word), else None."""
        flag = isinstance(key.choices[0], bool)
        if y.value in key.choices and isinstance(y.value, bool) == flag:
            return y.value
        hint = (f"write {key.name}: true or {key.name}: false" if flag else
                did_you_mean(str(y.value), key.choices, key.noun))
        self.d.error(y.loc, key.bad.format(value=y.value, choices=", ".join(map(str, key.choices))), hint)
        return None

    def mapping(self, y: Y | None, what: str) -> Y | None:
        if y is None:
            return None
        if not y.is_map:
            self.d.error(y.loc, f"{what} must be a mapping, got {kind_of(y)}", "write it as key: value pairs")
            return None
        return y

    def const(self, y: Y, env: dict):
        return evaluate_located(y, env, self.d)

    # -- the spec -----------------------------------------------------------------------------
    def spec(self, root: Y, text: str) -> Spec | None:
        if not root.is_map:
            self.d.error(root.loc, f"the top level of a spec must be a mapping, got {kind_of(root)}",
                         "a spec starts with 'resgraph: 1', then name:, input:, layers:")
            return None
        m = root.value
        top = Loc(self.file, 1, 1)
        self.keys(root, SPEC, at=top)
        v = m.get("resgraph")
        if v is not None and (v.value != VERSION or isinstance(v.value, bool)):
            self.d.error(v.loc, f"unsupported spec version {v.value!r}",
                         f"this resgraph reads version {VERSION}: write 'resgraph: {VERSION}'")
        name = self.name(m)
        desc = m["description"].value if "description" in m else ""
        if not isinstance(desc, str):
            self.d.error(m["description"].loc, "description must be text", "quote it")
            desc = ""
        env = self.vars(m.get("vars"))
        sizes = self.sizes(m.get("sizes"))
        inputs = self.inputs(m, env, top, sizes)
        outputs = self.outputs(m, inputs)
        in_name, in_shape, in_loc, in_vars = inputs[0].name, inputs[0].shape, inputs[0].loc, inputs[0].vars
        out_name = outputs[0].name
        policy = (self.choice(m["shortcut"], SPEC["shortcut"]) if "shortcut" in m else None) or "projection"
        defaults = self.defaults(m.get("defaults"))
        init = self.init(m.get("init"))
        pre = self.preprocess(m.get("preprocess"), env)
        if "crop" in pre and len(in_shape) == 3 and not in_vars and (pre["crop"], pre["crop"]) != in_shape[1:]:
            self.d.error(m["preprocess"].loc, f"preprocess.crop is {pre['crop']} but the input is "
                         f"{in_shape[1]}x{in_shape[2]}", "the crop is what the network sees: make it equal to the input size")
        if "crop" in pre and "resize" in pre and pre["resize"] < pre["crop"]:
            self.d.error(m["preprocess"].loc, f"preprocess.resize {pre['resize']} is smaller than crop {pre['crop']}",
                         "resize the shorter side to at least the crop size")
        labels, labels_loc = self.labels(m.get("labels"))
        blocks = self.blocks(m.get("blocks"))
        layers = ()
        if "layers" in m:
            layers = self.entries(m["layers"], "layers")
            if m["layers"].is_list and not m["layers"].value:
                self.d.error(m["layers"].loc, "'layers' is empty", "a network needs at least one layer")
        return Spec(self.file, text, hashlib.sha256(text.encode()).hexdigest(), name, desc, in_name, in_shape,
                    in_loc, out_name, policy, defaults, env, init, pre, labels, labels_loc, blocks, layers, root.loc,
                    sizes, in_vars, inputs, outputs, self.contract(m))

    def name(self, m) -> str:
        if "name" not in m:
            return "network"   # reported with the spec's keys
        v = m["name"]
        if v.value is None and self.d.has_error_at(v.loc):
            return "network"    # already reported (a bad tag)
        if not isinstance(v.value, str) or not NAME_RE.match(v.value):
            self.d.error(v.loc, f"invalid name {v.value!r}", "a name is letters, digits, '_' and '-', starting with a letter or '_'")
            return "network"
        return v.value

    def vars(self, y) -> dict:
        env: dict = {}
        y = self.mapping(y, "vars")
        if y is None:
            return env
        for k, v in y.value.items():
            if not ID_RE.match(k):
                self.d.error(y.keylocs[k], f"invalid variable name '{k}'", "use letters, digits and '_'")
                continue
            val = [self.const(x, env) for x in v.value] if v.is_list else self.const(v, env)
            if val is None or v.is_list and any(r is None and x.value is not None for r, x in zip(val, v.value)):
                continue   # reported
            if not all(isinstance(x, (int, float, str, bool)) for x in (val if isinstance(val, list) else [val])):
                self.d.error(v.loc, f"variable '{k}' must be a number, a word, true/false or a list of those, got "
                             f"{kind_of(v)}", "for example: width: 64, or widths: [16, 32, 64]")
                continue
            env[k] = val
        return env

    def defaults(self, y) -> dict:
        out = {}
        y = self.mapping(y, "defaults")
        if y is None:
            return out
        for op, args in y.value.items():
            a = self.mapping(args, f"defaults for '{op}'")
            if a is not None:
                out[op] = dict(a.value)
                for k in SPEC["defaults"].reserved:
                    if k in a.value:
                        self.d.error(a.keylocs[k], f"'{k}' cannot have a default", "set it on each entry")
        return out

    def init(self, y) -> dict:
        out = {k.name: k.choices[0] for k in INIT.keys}
        y = self.mapping(y, "init")
        if y is None:
            return out
        self.keys(y, INIT)
        for k, v in y.value.items():
            if k in INIT and (value := self.choice(v, INIT[k])) is not None:
                out[k] = value
        return out

    def preprocess(self, y, env) -> dict:
        y = self.mapping(y, "preprocess")
        if y is None:
            return {}
        self.keys(y, PREPROCESS)
        out = {}
        for k in (key.name for key in PREPROCESS.keys if key.kind == "size"):
            if k in y.value:
                v = self.const(y.value[k], env)
                if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_SPATIAL:
                    self.d.error(y.value[k].loc, f"preprocess.{k} must be a positive integer, got {v!r}", "pixels, e.g. 224")
                else:
                    out[k] = v
        out.update({k: v for k in ("interpolation", "fit")      # the choices: unknown ones are errors, with did-you-mean
                    if k in y.value and (v := self.choice(y.value[k], PREPROCESS[k]))})
        for k in (key.name for key in PREPROCESS.keys if key.kind == "numbers"):
            if k in y.value:
                v = y.value[k]
                vals = v.plain() if v.is_list else None
                if not vals or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                                       for x in vals):
                    self.d.error(v.loc, f"preprocess.{k} must be a list of numbers", "one per channel, e.g. [0.485, 0.456, 0.406]")
                elif k == "std" and any(x <= 0 for x in vals):
                    self.d.error(v.loc, "preprocess.std must be positive", "divide by a positive number")
                else:
                    out[k] = [float(x) for x in vals]
                    out[k + "_loc"] = v.loc
        return out

    def labels(self, y):
        from ..limits import MAX_LABELS
        if y is None:
            return None, None
        if y.is_list:
            vals = y.plain()
            if not all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in vals):
                self.d.error(y.loc, "labels must be a list of names", "one class name per entry")
                return None, None
            if len(vals) > MAX_LABELS:
                self.d.error(y.loc, f"{len(vals):,} labels, the limit is {MAX_LABELS:,}",
                             "one label per output feature; is this the right list?")
                return None, None
            return tuple(str(x) for x in vals), y.loc
        if isinstance(y.value, str) and not self.read_files:
            return None, None
        if isinstance(y.value, str):
            names = self.labels_file(y)
            return (names, y.loc) if names is not None else (None, None)
        self.d.error(y.loc, f"labels must be a list or a file name, got {kind_of(y)}",
                     "labels: [cat, dog] or labels: classes.txt (one name a line, relative to the spec)")
        return None, None

    def labels_file(self, y) -> tuple[str, ...] | None:
        """A labels file, confined to the spec's folder (its contents end up in compiled artifacts, so
        `labels: /etc/passwd` or `../../secret` must not read them), a regular file (a FIFO or
        /dev/stdin would block), at most MAX_LABELS_BYTES and MAX_LABELS names."""
        import stat

        from ..limits import MAX_LABELS, MAX_LABELS_BYTES
        name = y.value
        beside = ("put the file in the spec's folder and name it relative to the spec (labels: classes.txt), "
                  "or list the labels inline: labels: [cat, dog]")

        def refuse(message: str, hint: str = beside) -> None:
            self.d.error(y.loc, f"labels file '{name}' {message}", hint)

        if not name.strip() or "\0" in name:
            refuse("is not a file name", "labels: classes.txt, one class name a line, relative to the spec")
            return None
        if os.path.isabs(name):
            refuse("is an absolute path")
            return None
        base = os.path.realpath(os.path.dirname(os.path.abspath(self.file)))   # <stdin>: the current folder
        path = os.path.realpath(os.path.join(base, name))    # symlinks resolved: a link cannot lead out
        if os.path.commonpath([base, path]) != base:
            refuse("is outside the spec's folder")
            return None
        hint = "the path is relative to the spec file; one class name per line"
        try:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode):
                refuse("is not a regular file", "name a text file, one class name a line (not a folder, pipe or device)")
                return None
            # O_NONBLOCK: should the path become a FIFO after the stat, opening it still returns at once
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
                         | getattr(os, "O_CLOEXEC", 0))
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    refuse("is not a regular file", "name a text file, one class name a line (not a folder, pipe or device)")
                    return None
                if st.st_size > MAX_LABELS_BYTES:
                    refuse(f"is too large: {st.st_size:,} bytes, the limit is {MAX_LABELS_BYTES >> 20} MiB",
                           "a labels file holds one class name a line; is this the right file?")
                    return None
                data = f.read(MAX_LABELS_BYTES + 1)
            if len(data) > MAX_LABELS_BYTES:   # it grew after the fstat
                refuse(f"is larger than {MAX_LABELS_BYTES >> 20} MiB", "a labels file holds one class name a line; is this the right file?")
                return None
            names = tuple(line.strip() for line in data.decode("utf-8").splitlines() if line.strip())
        except (OSError, UnicodeDecodeError) as e:
            self.d.error(y.loc, f"cannot read labels file '{name}': {getattr(e, 'strerror', None) or e}", hint)
            return None
        if len(names) > MAX_LABELS:
            refuse(f"has {len(names):,} labels, the limit is {MAX_LABELS:,}", "one label per output feature; is this the right file?")
            return None
        return names
