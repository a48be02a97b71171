"""`resgraph import model.onnx`: an ONNX file as a spec, through the same units, structure and emit
steps as a torch model (onnx_trace.py reads it). A model whose batch norms were folded into its convs
(resgraph's own compiled model.onnx) imports honestly as convs with biases and no bn. The written
spec must count the file's own parameters, and the spec's module with the file's tensors must compute
what ONNX Runtime computes on the file (within 1e-4, absolute, on a normal random input); otherwise
nothing is written.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from ...errors import WeightsError
from ...ops import OPS
from .emit import spec_text
from .onnx_trace import read, trace_onnx
from .structure import blocks, entries
from .units import Unit, chain

TOLERANCE = 1e-4
_LEARNED = ("weight", "bias")


def import_onnx(path: str, name: str | None = None, input_shape: tuple | None = None):
    """(spec text, checked spec, onnx model, the spec's module with the file's tensors, report) for an
    .onnx file, verified against ONNX Runtime; writes nothing. The package wraps it as an Imported."""
    model = read(path)
    ops, start, tensors, shape = trace_onnx(model, path)
    shape = tuple(input_shape or shape)
    if not shape or min(shape) < 1:
        raise WeightsError.at(path, f"the model's input has no fixed shape after the batch ({shape})",
                              "give --input-shape C,H,W; nothing was written")
    name = name or os.path.splitext(os.path.basename(path))[0]
    items = chain(ops, start, path)
    kinds = {u.scope: _kind(u) for u in items if isinstance(u, Unit)}
    found = blocks(items, lambda scope: kinds.get(scope, ""), path)
    g = model.graph
    outs = [o.name for o in g.output]
    listed, taps = entries(items, found, path, outs if len(outs) > 1 else ())
    io = {"input": start, "outputs": list(zip(outs, taps)) if len(outs) > 1 else [], "output": outs[0]}
    text = spec_text(name, path, shape, items, found, listed, io)
    return _verified(text, path, name, shape, ops, tensors, model)


def _kind(u: Unit) -> str:
    """A class-like name for a unit's block (ONNX keeps no classes): by its number of convs."""
    convs = sum(o.op == "conv" for o in u.body)
    return {2: "Basic", 3: "Bottleneck"}.get(convs, "")


def onnx_params(tensors: dict) -> int:
    """The file's learned parameters: the weights and biases its convs, linears and bns use."""
    return sum(int(np.prod(a.shape)) for ts in tensors.values() for k, a in ts.items() if k in _LEARNED)


def _verified(text: str, path: str, name: str, shape: tuple, ops: list, tensors: dict, model):
    from ...frontend import check_text
    from ..torch import to_torch
    checked = check_text(text, f"{name}.yaml")
    theirs = onnx_params(tensors)
    if checked.params != theirs:
        raise WeightsError.at(path, f"the written spec has {checked.params:,} parameters, the model {theirs:,}",
                              "a part of the model that resgraph import does not rebuild; nothing was written")
    module = to_torch(checked.graph, init=False).eval()
    state = _state(checked.graph, ops, tensors, path, {k: tuple(v.shape) for k, v in module.state_dict().items()})
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    assert not missing and not unexpected, (missing, unexpected)
    diff, scale = _compare(path, module, shape)
    if not diff <= TOLERANCE * max(1.0, scale):
        raise WeightsError.at(path, f"the spec's module differs from ONNX Runtime by {diff:.3g} (over {TOLERANCE} "
                                    f"times max(1, the largest output {scale:.3g}))",
                              "a part of the model that resgraph import rebuilds wrongly; nothing was written")
    report = {"max_abs_diff": diff, "tensors": len(state)}
    return text, checked, model, module, report


def _state(graph, ops: list, tensors: dict, where: str, shapes: dict) -> dict:
    """The file's tensors under the spec's names: each node with parameters takes the op of its own
    path, else the next unused op of its kind (in graph order) whose tensors have the module's shapes
    (a projection that the file computes before the body, the spec after it, still pairs)."""
    by_path = {o.path: o for o in ops if tensors.get(o.key)}
    queue = [o for o in ops if tensors.get(o.key)]
    used, state = set(), {}

    def fits(o) -> bool:
        return o.key not in used and o.op == node.op and \
            all(shapes.get(f"{node.path}.{k}") == tuple(a.shape) for k, a in tensors[o.key].items())
    for node in graph.nodes:
        if node.op not in OPS or OPS[node.op].init is None:   # the input, or an op without parameters
            continue
        o = by_path.get(node.path)
        if o is None or not fits(o):
            o = next((x for x in queue if fits(x)), None)
        if o is None:
            raise WeightsError.at(where, f"no tensors in the file for '{node.path}' ({node.op})",
                                  "nothing was written")
        used.add(o.key)
        for k, a in tensors[o.key].items():
            state[f"{node.path}.{k}"] = torch.from_numpy(np.array(a, dtype=np.float32))
    return state


def _compare(path: str, module, shape: tuple) -> tuple[float, float]:
    """The largest absolute difference of the two models' outputs (every one, in order) on one normal random
    input, and the largest absolute output (deep untrained nets output thousands: float32 rounding scales
    with it)."""
    import onnxruntime as ort
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    batch = sess.get_inputs()[0].shape[0]   # a file exported without a dynamic batch takes its own
    x = np.random.default_rng(0).standard_normal((batch if isinstance(batch, int) else 2, *shape)).astype(np.float32)
    theirs = sess.run(None, {sess.get_inputs()[0].name: x})
    with torch.no_grad():
        ours = module(torch.from_numpy(x))
    ours = list(ours) if isinstance(ours, (tuple, list)) else [ours]
    if [tuple(a.shape) for a in ours] != [tuple(b.shape) for b in theirs]:
        return float("inf"), 0.0
    return (max(float(np.abs(a.numpy() - b).max()) for a, b in zip(ours, theirs)),
            max(float(np.abs(b).max()) for b in theirs))
