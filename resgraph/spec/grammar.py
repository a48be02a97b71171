"""The spec language's mappings, declared once.

Each `Mapping` lists its keys; each `Key` says what its value is (`kind`), whether it must be
there and what it means. spec/model.py walks these declarations to check a spec's keys ("unknown
key ... did you mean"), its required keys and its choices; spec/schema.py generates the JSON Schema
from the same declarations. So a key added here is accepted by the checker and offered by editors at
once, and tests/spec/test_schema.py proves the two agree. What an op takes is not declared here: that is
the op table's (ops/table.py), which both read.

Kinds (what schema.py turns each into; model.py checks the values):
  version  the format version, 1        name      a network name (NAME_PATTERN)
  text     any string                   id        an id (ID_PATTERN)
  ref      a reference to an id         shape     [C, H, W] or [F], integers or expressions (H, W:
                                                  or a size variable's name)
  size     pixels, 1..MAX_SPATIAL       numbers   a non-empty list of numbers
  choice   one of `choices`             bool      true or false
  labels   a list of names, or a file   map       the nested mapping `of`
  count    1..MAX_REPEAT copies         overrides argument overrides (`first`)
  vars     name -> number, word, bool   defaults  op -> arguments (from the op table)
  blocks   name -> `of` (a block)       args      a block's arguments: name -> default, null = required
  layers   a non-empty list of entries  post      one op or block without entry keys, or null
  sizes    name -> `of` (min, max)        list      a non-empty list of `of` mappings (inputs, outputs)
"""
from __future__ import annotations

from dataclasses import dataclass

# The one list of shortcut policies is the op table's (add's `shortcut` argument reads it). ops/table.py
# imports only limits and ops/args, so the front end stays free of anything heavy.
from ..ops.table import SHORTCUT_POLICIES

VERSION = 1
NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_-]*"     # a network's name may have '-' (file names do)
ID_PATTERN = r"[A-Za-z_][A-Za-z0-9_]*"        # ids, variables, blocks: no '-' or '.' (paths use dots)
# Pillow's resampling filters, by torchvision's names (InterpolationMode); first = default, as
# torchvision's Resize. The runtime maps them to Pillow (runtime/preprocess.py; a test keeps the two equal).
INTERPOLATIONS = ("bilinear", "nearest", "bicubic", "box", "hamming", "lanczos")


@dataclass(frozen=True)
class Key:
    name: str
    kind: str                          # see the module's docstring
    doc: str                           # one line, shown by editors
    missing: tuple[str, str] = ()      # (message, hint) when it is absent: the key is required
    choices: tuple = ()                # choice, bool: the values; first = default
    bad: str = ""                      # choice, bool: message for another value ({value!r}, {choices})
    noun: str = ""                     # choice: what "did you mean" calls the choices ("valid policies: ...")
    of: Mapping | None = None          # map, blocks: the nested mapping
    reserved: tuple[str, ...] = ()     # blocks, args: names that cannot be used

    @property
    def required(self) -> bool:
        return bool(self.missing)


@dataclass(frozen=True)
class Mapping:
    what: str                          # how messages name it: "unknown key 'x' in <what>"
    keys: tuple[Key, ...]
    doc: str = ""
    one_of: tuple[str, ...] = ()       # exactly one of these keys must be present (a block's body)
    exclusive: tuple[tuple[str, str], ...] = ()   # pairs of keys that may not both be present

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.keys)

    def __contains__(self, name) -> bool:
        return name in self.names

    def __getitem__(self, name: str) -> Key:
        for k in self.keys:
            if k.name == name:
                return k
        raise KeyError(name)


def _policy(doc: str) -> Key:
    return Key("shortcut", "choice", doc, choices=SHORTCUT_POLICIES, bad="unknown shortcut policy {value!r}",
               noun="policies")


# Keys every entry may carry beside its op's (or block's) arguments.
ENTRY = Mapping("entry", (
    Key("id", "id", "a name for the entry, unique in its scope"),
    Key("in", "ref", "the id whose output is this entry's main input, instead of the previous entry's"),
    Key("repeat", "count", "n sequential copies, named <id>.0 ... <id>.<n-1>"),
    Key("first", "overrides", "argument overrides for copy 0 only"),
))
# Names that are set per entry, so neither `defaults:` nor a block's `args:` may use them (`from` is
# add's and concat's list of extra inputs, a graph edge rather than a value).
RESERVED_ARGS = ENTRY.names + ("from",)

RESIDUAL = Mapping("residual", (
    Key("layers", "layers", "the body: a non-empty list of entries",
        missing=("residual needs 'layers' (its body)",
                 "e.g. residual: {layers: [conv: {out: 64, kernel: 3}, bn], post: relu}")),
    Key("post", "post", "one op or block applied after the add (omit or null: none)"),
    _policy("the policy for this residual's add (default: the spec's)"),
    Key("project_from", "ref", "an id in the body: where a Ws is inserted, it reads that entry's output (the "
                               "pre-activated input of He et al. 2016) instead of the block's input; an identity "
                               "shortcut still reads the input"),
), doc="a[l+2] = post(body(a[l]) + shortcut(a[l]))")

# `- residual: {...}` as an entry: the residual's keys and the entry keys but `first`, since an
# inline residual has no arguments to override (the checker says so in its own words).
INLINE_RESIDUAL = Mapping("residual", RESIDUAL.keys + tuple(k for k in ENTRY.keys if k.name != "first"),
                          doc=RESIDUAL.doc)

BLOCK = Mapping("block", (
    Key("args", "args", "the block's arguments and their defaults; null = required", reserved=RESERVED_ARGS),
    Key("layers", "layers", "a plain sub-graph; its output is its last entry's"),
    Key("residual", "map", "a residual block as the whole body", of=RESIDUAL),
), doc="a reusable, parametrised sub-graph", one_of=("layers", "residual"))

IN_DTYPES, LAYOUTS, OUT_DTYPES = ("float32", "float16", "uint8"), ("nchw", "nhwc"), ("float32", "float16")
INPUT = Mapping("input", (
    Key("name", "id", "the network input's name (default: input)"),
    Key("shape", "shape", "[C, H, W] or [F]; the batch dimension is implicit",
        missing=("input needs a shape", "e.g. shape: [3, 224, 224] for images or [128] for vectors")),
    Key("dtype", "choice", "what the compiled model takes: float32 (preprocessed), float16, or uint8 raw pixels "
                           "(the preprocess's scale, mean and std become its first nodes; compile --input)",
        choices=IN_DTYPES, bad="unknown input dtype {value!r}", noun="dtypes"),
    Key("layout", "choice", "a uint8 image input's layout: nchw, or nhwc as a decoder gives pixels",
        choices=LAYOUTS, bad="unknown input layout {value!r}", noun="layouts"),
))

OUTPUT = Mapping("output", (
    Key("name", "id", "the network output's name (default: output)"),
    Key("dtype", "choice", "what the compiled model gives: float32, or float16 (compile --output)",
        choices=OUT_DTYPES, bad="unknown output dtype {value!r}", noun="dtypes"),
))

# `inputs:` and `outputs:`, the forms for graphs with several (or to name the tensor an output is)
NAMED_INPUT = Mapping("an input", (
    Key("name", "id", "the input's name; layers read it with in: NAME or from: [NAME]",
        missing=("an input of 'inputs' needs a name", "e.g. - {name: image, shape: [3, 224, 224]}")),
    Key("shape", "shape", "[C, H, W] or [F]; the batch dimension is implicit",
        missing=("an input needs a shape", "e.g. shape: [3, 224, 224] for images or [128] for vectors")),
), doc="one named input of the network")

NAMED_OUTPUT = Mapping("an output", (
    Key("name", "id", "the output's name (in ONNX, Triton and run's files)",
        missing=("an output of 'outputs' needs a name", "e.g. - {name: c3, from: layer2}")),
    Key("from", "ref", "the id or path whose tensor is this output (layer2, layer3.1.conv2)",
        missing=("an output needs 'from'", "name the entry whose tensor it is: from: layer2")),
), doc="one named output: any tensor of the graph")

SIZE = Mapping("a size variable", (
    Key("min", "size", "the smallest size the model takes", missing=("a size variable needs its min", "e.g. min: 32")),
    Key("max", "size", "the largest", missing=("a size variable needs its max", "e.g. max: 2048")),
), doc="a spatial dimension of the input given by name: every size in min..max that the graph takes")

PREPROCESS = Mapping("preprocess", (
    Key("resize", "size", "resize the shorter side to this many pixels"),
    Key("crop", "size", "then take the centre crop; equal to the input's height and width"),
    Key("interpolation", "choice", "the resampling filter", choices=INTERPOLATIONS,
        bad="unknown preprocess.interpolation {value!r}", noun="interpolations"),
    Key("mean", "numbers", "per channel, on RGB scaled to [0, 1]"),
    Key("std", "numbers", "per channel: (x - mean) / std; every std > 0"),
    Key("fit", "choice", "with size variables: how an image not of a valid size becomes one (pad: zeros at the "
        "bottom and right up to the next valid size; resize: to the nearest valid size)", choices=("pad", "resize"),
        bad="unknown preprocess.fit {value!r}", noun="fit rules"),
), doc="how the inference tools turn an image file into the input")

# Policies of the PyTorch back end (backends/torch/init.py); first = default
INIT = Mapping("init", (
    Key("zero_residual", "bool", "the last norm or layer scale of every residual body starts at 0", choices=(False, True),
        bad="init.zero_residual must be true or false"),
    Key("conv", "choice", "how conv weights start", choices=("kaiming_normal", "kaiming_uniform", "xavier_uniform"),
        bad="init.conv must be one of {choices}", noun="policies"),
    Key("linear", "choice", "how linear weights start", choices=("default", "xavier_uniform"),
        bad="init.linear must be one of {choices}", noun="policies"),
), doc="initialisation policies of the PyTorch back end")

SPEC = Mapping("the spec", (
    Key("resgraph", "version", "spec format version",
        missing=("missing 'resgraph:' version key", "start the spec with 'resgraph: 1'")),
    Key("name", "name", "the network's name", missing=("missing 'name:'", "name the network, e.g. name: resnet18")),
    Key("description", "text", "one line about the network"),
    Key("input", "map", "the network's input (or inputs: for several)", of=INPUT),
    Key("inputs", "list", "the network's inputs, by name (instead of input:)", of=NAMED_INPUT),
    Key("sizes", "sizes", "size variables: the input's H or W by name (shape: [3, H, W]), each a range", of=SIZE),
    Key("preprocess", "map", PREPROCESS.doc, of=PREPROCESS),
    Key("labels", "labels", "class names: a list, or a text file (one a line) relative to the spec"),
    Key("output", "map", "the network's output (the last entry's)", of=OUTPUT),
    Key("outputs", "list", "the network's outputs: any tensors of the graph, by name (instead of output:)",
        of=NAMED_OUTPUT),
    _policy("what an add does when its inputs differ in shape"),
    Key("defaults", "defaults", "default arguments per op", reserved=RESERVED_ARGS),
    Key("vars", "vars", "named constants, used as $name"),
    Key("init", "map", INIT.doc, of=INIT),
    Key("blocks", "blocks", "reusable sub-graphs, by name", of=BLOCK, reserved=("input", "residual")),
    Key("layers", "layers", "the network: a non-empty list of entries",
        missing=("missing 'layers:'", "list the network's layers, e.g. layers: [conv: {out: 16, kernel: 3}, relu]")),
), doc="resgraph network spec, version 1", one_of=("input", "inputs"), exclusive=(("output", "outputs"),))
