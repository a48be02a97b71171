"""Q/DQ placement from the IR: an inference graph (bn folded) + activation ranges -> a QDQ ONNX model.

Weights of every conv and linear (explicit projection convs included: after `for_inference` they are
plain convs) become int8 initializers, symmetric, per output channel (zero point 0, values in
[-127, 127]), read through a DequantizeLinear(axis=0). Activations are quantised per tensor, from a
symmetric range `amax` per IR path (`tensors_to_calibrate` names the paths a model needs).

Placement (the set of tensors that get a Q -> DQ pair; every non-float reader reads the DQ output,
keep-float readers read the original float tensor, the network's output never gets one):

  both encodings (TensorRT's documented rules, "Q/DQ layer placement recommendations"):
    - the data input of every conv and linear;
    - both inputs of every residual add (so TensorRT fuses the add into the preceding conv's
      epilogue instead of running it in fp16/fp32 with reformats around it);
    - pools, flatten, identity/dropout keep their input's quantisation: when such an op's output
      is quantised, its input is too; maxpool/flatten/identity share the input's scale and zero
      point (ONNX Runtime then drops the pair and runs them on integers), average pools get their own.

  "s8" (TensorRT): int8, zero point 0, scale amax / 127. Nothing more: TensorRT decides which
    outputs to keep in int8 itself. Bias stays float (TensorRT quantises the bias itself; its Q/DQ
    layers take int8/fp8/int4, not int32).

  "u8" (ONNX Runtime CPU, U8S8 kernels): as s8, plus what ONNX Runtime's QDQ transformer needs
    (onnxruntime/core/optimizer/qdq_transformer/selectors_actions/qdq_selectors.cc):
    - ConvNodeGroupSelector / CheckQDQNodes: *every* existing input of the Conv comes from a DQ
      (num_dq_inputs == NumActualValues), so a float bias blocks QLinearConv in releases that
      pyproject allows (onnxruntime >= 1.18): the bias is int32, scale x_scale * w_scale[c], zero
      point 0, through its own DQ (axis 0). (Newer releases, 1.32 here, insert that DQ themselves,
      qdq_transformer/bias_quantization.cc, so there a float bias fuses too.)
    - the Conv's outputs must all go to Q nodes (q_nodes.size() == GetOutputEdgesCount) and not be a
      graph output: the output of every conv and add gets a Q -> DQ, except that
    - GetQDQSelection accepts Conv -> Relu -> Q when the Relu is "made redundant by Q"
      (IsClipMadeRedundantByQ: the zero point is the type's minimum). So a tensor known to be
      non-negative (a relu's output, and pools/flatten of one) is encoded uint8 with zero point 0 and
      scale amax / 255 (the same calibrated range, [0, amax]); the Q goes after the relu, and ONNX
      Runtime folds the relu into QLinearConv / QLinearAdd. Other tensors: given their signed range
      seen in calibration (`ranges`), uint8 over [max(min, -amax), min(max, amax)], asymmetric (a
      skewed tensor spends no codes where it never goes: the digits model's input, -0.8..1.8);
      without, zero point 128 and scale amax / 127 (the symmetric int8 grid, shifted).
    - zeropad (option A's Ws) shares its input's scale and zero point: padding with the zero point
      is exact, and a relu's output padded stays non-negative.
    - Gemm (the classifier) may have no Q after it (GemmNodeGroupSelector allows empty q_nodes):
      the network output stays float; its bias is int32 as for conv.

keep_float: spec paths or ids (`stem`, `fc`, `layer1`): a node whose path is one of them or lies
below one keeps float weights and reads float inputs.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..ir import Graph

ENCODINGS = ("s8", "u8")
# ops that keep their input's quantisation; the first set also keeps its scale and zero point
_SHARE = {"maxpool", "flatten", "identity", "dropout", "drop_path", "zeropad"}   # zeropad: option A's Ws
_POOL = {"avgpool", "global_avgpool"}
_NONNEG = {"relu", "relu6"}
_INT8_MIN_SCALE = 1e-12   # a range of 0 (an all-zero channel or tensor) still needs a positive scale


class Node(str):
    """A keep_float entry that means that node alone: not the nodes below its path (an add's path is
    its block's, `layer1`; quant/explain.py keeps single units float with it)."""


def is_float(path: str, keep_float) -> bool:
    """True when `path` (an IR path or an ONNX node name built on one, `p.conv`, `p/add1`) is one
    of `keep_float` or lies below one (a `Node` entry: is that node, or an ONNX node of it)."""
    return any(path == k or path.startswith((k + "/",) if isinstance(k, Node) else (k + ".", k + "/"))
               for k in keep_float)


def _sole_user(graph: Graph, users: dict, path: str):
    """The node reading `path` when exactly one node does and `path` is no graph output, else None."""
    outs = {p for _, p in graph.outputs}
    us = users.get(path, [])
    return graph[us[0]] if len(us) == 1 and path not in outs else None


def placement(graph: Graph, keep_float=(), encoding: str = "u8") -> dict[str, str]:
    """The tensors that get a Q -> DQ pair, each mapped to the path whose amax gives its scale.

    Pre:  `graph` is an inference graph (for_inference); encoding in ENCODINGS.
    Post: no graph output is a key; every value is a key of the same dict or of a shared chain's
          source; keys are IR paths.
    """
    assert encoding in ENCODINGS, encoding
    keep_float = tuple(keep_float)
    users = graph.users()
    outs = {p for _, p in graph.outputs}
    q: set[str] = set()
    for n in graph.nodes:
        if is_float(n.path, keep_float):
            continue
        if n.op in ("conv", "linear"):
            q.add(n.inputs[0])
        elif n.op == "add":
            q.update(n.inputs)
        else:
            continue
        if encoding == "u8" and n.path not in outs:   # ORT: the conv/add's output goes to a Q
            r = _sole_user(graph, users, n.path)
            if r is not None and r.op == "relu" and not is_float(r.path, keep_float):
                q.add(r.path)                           # Conv -> Relu -> Q: the relu folds away
            elif n.op != "linear":
                q.add(n.path)
    # pools, flatten... keep their input's quantisation
    todo = list(q)
    while todo:
        t = todo.pop()
        n = graph[t]
        if (n.op in _SHARE or n.op in _POOL) and not is_float(n.path, keep_float) and n.inputs[0] not in q:
            q.add(n.inputs[0])
            todo.append(n.inputs[0])
    q -= outs

    def source(t: str) -> str:
        n = graph[t]
        return source(n.inputs[0]) if n.op in _SHARE and n.inputs[0] in q else t
    return {t: source(t) for t in q}


def nonnegative(graph: Graph, path: str) -> bool:
    """True when the tensor at `path` cannot be negative: a relu's output, or a pool/flatten of one."""
    n = graph[path]
    if n.op in _NONNEG:
        return True
    return (n.op in _SHARE or n.op in _POOL) and nonnegative(graph, n.inputs[0])


def tensors_to_calibrate(graph: Graph, keep_float=(), encoding: str | None = None) -> list[str]:
    """The IR paths whose symmetric range (amax) `quantize` reads, in graph order; with no
    encoding, those of both (one calibration serves both)."""
    need: set[str] = set()
    for e in ([encoding] if encoding else ENCODINGS):
        need.update(placement(graph, keep_float, e).values())
    return [n.path for n in graph.nodes if n.path in need]


def act_params(amax: float, encoding: str, nonneg: bool, seen: tuple[float, float] | None = None) -> tuple[float, int]:
    """(scale, zero point) of a tensor with symmetric range amax: s8 -> amax/127, 0; u8 -> amax/255, 0
    for a non-negative tensor, else amax/127, 128 -- or, given the signed range `seen` (min, max,
    0 within), the asymmetric grid over [max(min, -amax), min(max, amax)]: the calibrated clip on each
    side, no codes spent where the tensor never goes (a skewed tensor, -0.8..1.8, gets 255 steps over
    its range instead of 127 a side)."""
    amax = max(float(amax), _INT8_MIN_SCALE)
    if encoding == "s8":
        return amax / 127.0, 0
    if nonneg:
        return amax / 255.0, 0
    if seen is None:
        return amax / 127.0, 128
    lo, hi = max(min(seen[0], 0.0), -amax), min(max(seen[1], 0.0), amax)
    scale = max(hi - lo, _INT8_MIN_SCALE) / 255.0
    return scale, int(np.clip(np.rint(-lo / scale), 0, 255))


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8: (q int8 in [-127, 127], scale float32 [C_out]) with
    w ~= q * scale[c] (axis 0)."""
    amax = np.abs(w.reshape(w.shape[0], -1)).max(axis=1).astype(np.float64)
    scale = np.maximum(amax, _INT8_MIN_SCALE) / 127.0
    q = np.clip(np.rint(w / scale.reshape((-1,) + (1,) * (w.ndim - 1))), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


class _Emitter:
    """The Q/DQ nodes and int8/int32 initializers quantize() adds while it walks the lowered model."""

    def __init__(self, graph: Graph, amax: dict, encoding: str, place: dict, inits: dict, ranges: dict):
        self.graph, self.amax, self.encoding, self.place, self.inits = graph, amax, encoding, place, inits
        self.ranges = ranges
        self.tensor = {path: name for name, path in graph.inputs}   # IR path -> ONNX tensor name
        self.new_inits: list = []
        self.params: dict[str, tuple[float, int]] = {}

    def const(self, name, arr):
        self.new_inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def qdq(self, path: str) -> list:
        """Q -> DQ of the tensor at `path`, its scale and zero point from its calibrated range."""
        src = self.place[path]
        s, z = act_params(self.amax[src], self.encoding, nonnegative(self.graph, path), self.ranges.get(src))
        self.params[path] = (s, z)
        t = self.tensor.get(path, path)
        sc = self.const(f"{path}/scale", np.array(s, np.float32))
        zp = self.const(f"{path}/zero_point", np.array(z, np.uint8 if self.encoding == "u8" else np.int8))
        return [helper.make_node("QuantizeLinear", [t, sc, zp], [f"{path}/q"], name=f"{path}/Q"),
                helper.make_node("DequantizeLinear", [f"{path}/q", sc, zp], [f"{path}/dq"], name=f"{path}/DQ")]

    def weight_dq(self, node, x_path: str | None) -> list:
        """int8 weight (and int32 bias for u8) of a Conv/Gemm node, each through a DQ(axis 0)."""
        out, wname = [], node.input[1]
        w = numpy_helper.to_array(self.inits.pop(wname)).astype(np.float32)
        qw, sw = quantize_weight(w)
        self.const(f"{wname}.int8", qw)
        self.const(f"{wname}.scale", sw)
        self.const(f"{wname}.zero_point", np.zeros(len(sw), np.int8))
        out.append(helper.make_node("DequantizeLinear", [f"{wname}.int8", f"{wname}.scale", f"{wname}.zero_point"],
                                    [wname], name=f"{wname}/DQ", axis=0))
        if self.encoding == "u8" and x_path in self.params and len(node.input) > 2 and node.input[2]:
            out.append(self._bias_dq(node.input[2], self.params[x_path][0] * sw.astype(np.float64)))
        return out

    def _bias_dq(self, bname: str, sb: np.ndarray):
        """int32 bias, scale x_scale * w_scale[c], zero point 0 (what QLinearConv adds)."""
        b = numpy_helper.to_array(self.inits.pop(bname)).astype(np.float64)
        qb = np.clip(np.rint(b / sb), -2**31, 2**31 - 1).astype(np.int32)
        self.const(f"{bname}.int32", qb)
        self.const(f"{bname}.scale", sb.astype(np.float32))
        self.const(f"{bname}.zero_point", np.zeros(len(sb), np.int32))
        return helper.make_node("DequantizeLinear", [f"{bname}.int32", f"{bname}.scale", f"{bname}.zero_point"],
                                [bname], name=f"{bname}/DQ", axis=0)

    def walk(self, g, keep_float) -> list:
        """The model's nodes in order with the pairs inserted: each quantised tensor's Q/DQ right after
        its producer, each non-float reader reading the DQ output, each conv/linear's weight DQs."""
        produced = {o: n for n in g.node for o in n.output}
        by_tensor = {self.tensor.get(p, p): p for p in self.place}
        nodes: list = []
        for _, path in self.graph.inputs:
            if path in self.place:
                nodes += self.qdq(path)
        for node in g.node:
            if not is_float(node.name, keep_float):
                for i, x in enumerate(node.input):
                    if x in by_tensor:
                        node.input[i] = f"{by_tensor[x]}/dq"
                if node.op_type in ("Conv", "Gemm") and node.input[1] in self.inits:
                    x = node.input[0]
                    nodes += self.weight_dq(node, x[:-3] if x.endswith("/dq") else None)
            nodes.append(node)
            for o in node.output:
                if o in by_tensor and produced[o] is node:
                    nodes += self.qdq(by_tensor[o])
        return nodes


def quantize(graph: Graph, weights: dict, amax: dict, encoding: str, keep_float=(),
             opset: int = 17, metadata: dict | None = None, dims: dict | None = None,
             ranges: dict | None = None) -> onnx.ModelProto:
    """The QDQ model of `graph` (see the module docstring for what goes where).

    Pre:  `graph`, `weights` from for_inference; amax[p] > 0 for every p in
          tensors_to_calibrate(graph, keep_float, encoding) (KeyError naming it otherwise);
          `ranges` (u8 only: signed (min, max) per path, Calibration.ranges) optional.
    Post: onnx.checker full check passes; weights of non-float conv/linear are int8 + DQ(axis 0);
          graph outputs are float and produced by no Q/DQ.
    """
    from ..backends.onnx.lower import to_onnx
    assert encoding in ENCODINGS, encoding
    keep_float = tuple(keep_float)
    model = to_onnx(graph, weights, opset=opset, metadata=metadata, dims=dims)   # dims: size variables, as compile's
    g = model.graph
    place = placement(graph, keep_float, encoding)
    missing = sorted({s for s in place.values() if s not in amax})
    if missing:
        raise KeyError(f"no calibrated range for {missing[:5]} ({len(missing)} tensors)")
    inits = {i.name: i for i in g.initializer}
    e = _Emitter(graph, amax, encoding, place, inits, ranges or {})
    nodes = e.walk(g, keep_float)
    del g.node[:]
    g.node.extend(nodes)
    kept = [inits[i.name] for i in g.initializer if i.name in inits]
    del g.initializer[:]
    g.initializer.extend(kept + e.new_inits)
    model.doc_string = f"{graph.name}, resgraph QDQ int8 ({encoding})"
    onnx.checker.check_model(model, full_check=True)
    return model
