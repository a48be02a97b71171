"""The IR: frozen nodes in topological order. Rewrites build new graphs; nothing mutates one.

A Graph prints itself as readable Python, one line per node, with its shape and source line:

    def resnet18(image: f32[3, 224, 224]):
        conv1 = conv(image, out=64, kernel=7, stride=2)      # [64, 112, 112]  resnet18.yaml:20
        ...
        return fc
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping

from ..errors import Loc

INPUT = "input"   # the path of the graph's input node


@dataclass(frozen=True, slots=True)
class Node:
    path: str                         # hierarchical, dot-separated: layer2.0.conv1
    op: str
    args: Mapping[str, object]        # read-only
    inputs: tuple[str, ...]           # paths; the main input first, then `from` inputs
    loc: Loc
    argloc: Mapping[str, Loc] = field(default_factory=lambda: _EMPTY)
    shape: tuple[int, ...] | None = None
    inserted: bool = False            # added by a pass (a shortcut projection), not written by the user
    block: str = ""                   # the residual block path this node belongs to ("" if none)
    role: str = ""                    # body | add | post | shortcut inside a residual block
    calls: tuple[tuple[str, Loc], ...] = ()   # the block instances it sits in, outermost first:
    #                                           (instance path, the line that called the block)

    def with_(self, **changes) -> "Node":
        return replace(self, **changes)

    def site(self) -> str:
        """' (in layer2.0 from line 40)' for a node inside a block: its line is the block's, and which
        call made it wrong is the call site's; '' outside blocks."""
        if not self.calls:
            return ""
        return " (in " + ", in ".join(f"{p} from line {loc.line}" for p, loc in reversed(self.calls)) + ")"


class FrozenDict(dict):
    """A read-only dict: what nodes hold as args. Unlike MappingProxyType it pickles and deep-copies,
    so modules that carry their IR survive torch.save, copy.deepcopy and DistributedDataParallel."""
    __slots__ = ()

    def _readonly(self, *a, **k):
        raise TypeError("IR mappings are read-only; build a new node with Node.with_()")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _readonly

    def __reduce__(self):
        return (FrozenDict, (dict(self),))

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self   # immutable


_EMPTY = FrozenDict()


def freeze(d: dict) -> Mapping:
    return d if isinstance(d, FrozenDict) else FrozenDict(d)


@dataclass(frozen=True)
class Projection:
    """One inserted Ws, as reported by check, the summary and ONNX metadata."""
    at: str                 # the path of the add
    kind: str               # conv1x1 | linear | zeropad | avgpool_conv1x1
    from_shape: tuple[int, ...]
    to_shape: tuple[int, ...]
    stride: int
    params: int
    edge: str               # the path of the input that was projected (project_from's, where given)
    nodes: tuple[str, ...]  # inserted node paths
    bn: bool = True         # False for the `conv` policy: a 1x1 conv alone, as in pre-activation ResNets

    def to_json(self) -> dict:
        return {"at": self.at, "kind": self.kind, "from": list(self.from_shape), "to": list(self.to_shape),
                "stride": self.stride, "params": self.params}


@dataclass(frozen=True)
class Settings:
    """What passes and back ends read from the spec beyond its nodes. A small typed record, not the
    spec itself: what a pass depends on is visible here, and the IR stays independent of the parser."""
    shortcut: str = "projection"                     # the default Ws policy; an add's `shortcut:` overrides it
    bn: Mapping[str, object] = field(default_factory=lambda: _EMPTY)    # resolved `defaults: {bn: ...}`:
    #                                                  the eps and momentum of every bn a pass inserts
    init: Mapping[str, object] = field(default_factory=lambda: _EMPTY)  # `init:` (conv, linear, zero_residual)
    conv_bias: bool = True                           # `defaults: {conv: {bias: ...}}`: the `conv` policy's Ws follows it
    literal_out: Mapping[object, str] = field(default_factory=lambda: _EMPTY)   # where a block's definition
    #                                                  writes a width as a number (out: 32): its Loc -> the block (lint)


@dataclass(frozen=True)
class Graph:
    name: str
    nodes: tuple[Node, ...]           # topological order; nodes[0] is the input
    output: str                       # path of the output node
    input_name: str = "input"
    output_name: str = "output"
    projections: tuple[Projection, ...] = ()
    settings: Settings = Settings()
    # every input and output as (name, path), in spec order; the first of each is input_name/"input"
    # and output_name/output (filled in from those when not given: graphs with one of each)
    inputs: tuple[tuple[str, str], ...] = ()
    outputs: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "_index", {n.path: n for n in self.nodes})
        if not self.inputs:
            object.__setattr__(self, "inputs", ((self.input_name, INPUT),))
        if not self.outputs:
            object.__setattr__(self, "outputs", ((self.output_name, self.output),))
        assert self.outputs[0] == (self.output_name, self.output), (self.outputs, self.output_name, self.output)
        assert self.inputs[0] == (self.input_name, INPUT), self.inputs

    @property
    def input_nodes(self) -> tuple[Node, ...]:
        """The input nodes, in spec order: the graph's first nodes."""
        return self.nodes[:len(self.inputs)]

    def with_outputs(self, sub) -> "Graph":
        """The graph with every output's path mapped through `sub` (a pass that renames nodes)."""
        outs = tuple((name, sub(p)) for name, p in self.outputs)
        return replace(self, output=outs[0][1], outputs=outs)

    def __getitem__(self, path: str) -> Node:
        return self._index[path]

    def __contains__(self, path: str) -> bool:
        return path in self._index

    def __len__(self) -> int:
        return len(self.nodes)

    def replace(self, **changes) -> "Graph":
        return replace(self, **changes)

    def users(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {n.path: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                out[i].append(n.path)
        return out

    def __str__(self) -> str:
        names = {p: name for name, p in self.inputs}
        py = {n.path: names.get(n.path, n.path.replace(".", "_")) for n in self.nodes}
        params = ", ".join(f"{py[x.path]}: f32{_shape(x.shape)}" for x in self.input_nodes)
        lines = [f"def {self.name.replace('-', '_')}({params}):"]
        for n in self.nodes[len(self.inputs):]:
            ins = ", ".join(py[i] for i in n.inputs)
            args = "".join(f", {k}={v!r}" for k, v in n.args.items() if k != "from" and v is not None)
            call = f"    {py[n.path]} = {n.op}({ins}{args})"
            note = ("  (inserted Ws)" if n.inserted else "")
            lines.append(f"{call:<72} # {_shape(n.shape)}  {n.loc.file.rsplit('/', 1)[-1]}:{n.loc.line}{note}")
        if len(self.outputs) == 1:
            lines.append(f"    return {py[self.output]}")
        else:   # as the torch module returns them: a tuple in spec order
            lines.append("    return (" + ", ".join(f"{py[p]}" for _, p in self.outputs) + ")" +
                         "   # " + ", ".join(name for name, _ in self.outputs))
        return "\n".join(lines)


def _shape(s) -> str:
    return "[" + ", ".join(map(str, s)) + "]" if s is not None else "[?]"

