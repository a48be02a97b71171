"""`resgraph diff A B --carry-weights WA -o WB`: a checkpoint of A carried over to B, for network
surgery (a widened stage, an added block, a swapped head).

A layer of B is carried when A has a layer at the same path with the same op and the same tensors
(names and shapes): all its tensors (bn running statistics included) are copied from WA, cast to
the dtype B's module holds (float32; a float32 WA is copied bit for bit). Every other layer of B is
initialised as `resgraph init` would, by B's `init:` policies with `seed` (zero_residual included:
an added block starts as its shortcut), and listed with the reason. WA must fit A (compile's fit
check: names, shapes, dtype kinds). WB is written atomically, after every check: on any error
nothing is written. Needs torch (B's initialisation); the diff itself does not.
"""
from __future__ import annotations

import os

from .version import __version__


def layer_tensors(graph) -> dict[str, dict[str, tuple]]:
    """The tensors of each layer of `graph` that holds any, layer path -> {tensor name: shape}, in
    the order a checkpoint holds them (ops.count.state_dict_shapes, grouped by node)."""
    from .ops.table import tensors
    out = {}
    for n in graph.nodes[len(graph.inputs):]:
        shapes = tensors(n.op, dict(n.args), [graph[i].shape for i in n.inputs], n.shape)
        if shapes:
            out[n.path] = {f"{n.path}.{suffix}": tuple(s) for suffix, s in shapes.items()}
    return out


def plan(ga, gb) -> tuple[list[str], list[tuple[str, str]]]:
    """(the layers of B to copy from A, [(layer of B to initialise, why)]), in B's order."""
    from .ops import fmt
    la, lb = layer_tensors(ga), layer_tensors(gb)
    copy, init = [], []
    for path, want in lb.items():
        have = la.get(path)
        if have is None:
            init.append((path, "new layer" if path not in ga else f"no tensors in A ({ga[path].op})"))
        elif ga[path].op != gb[path].op:
            init.append((path, f"op {ga[path].op} -> {gb[path].op}"))
        elif have != want:
            k = next((k for k in want if have.get(k) != want[k]), None)
            init.append((path, f"{k.rsplit('.', 1)[1]} {fmt(have[k])} -> {fmt(want[k])}" if k and k in have
                         else "other tensors"))
        else:
            copy.append(path)
    return copy, init


def carry_weights(a, b, weights_a: str, output: str, seed: int = 0) -> dict:
    """Write B's checkpoint to `output`: the unchanged layers of A's checkpoint `weights_a`, the rest
    freshly initialised. `a` and `b` are frontend.Checked with the same inputs (diff.same_inputs).
    Returns {"copied": [layers], "initialised": [{"layer", "reason", "tensors"}], "tensors_copied",
    "tensors_initialised", "params_copied", "params_initialised", "output", "seed"}."""
    import numpy as np
    from safetensors.numpy import save_file

    from .backends.torch.checkpoint import writing
    from .compile import fresh_weights, load_weights
    from .diff import same_inputs
    from .fileio import atomic_write
    same_inputs(a, b)
    mapped = load_weights(weights_a, a.graph)   # WA fits A, or a WeightsError naming WA
    copy, init = plan(a.graph, b.graph)
    fresh = fresh_weights(b.graph, seed)
    lb = layer_tensors(b.graph)
    assert set(fresh) == {k for t in lb.values() for k in t}, "carry: B's module and its tensor list differ"
    out = dict(fresh)
    for path in copy:
        for k in lb[path]:
            out[k] = np.array(mapped.tensors[k], dtype=fresh[k].dtype, copy=True)
    out = {k: out[k] for k in fresh}   # the module's order (np.ascontiguousarray would make a 0-d counter 1-d)
    trained = mapped.metadata.get("untrained") != "true"
    meta = {"format": "resgraph-checkpoint-1", "spec": b.spec.name, "spec_sha256": b.spec.sha256,
            "untrained": str(not trained).lower(), "seed": str(seed), "resgraph_version": __version__,
            "carried_from": os.path.basename(weights_a),
            "carried": f"{len(copy)} layers copied, {len(init)} initialised by init: (seed {seed})"}
    with writing(output):
        atomic_write(output, lambda tmp: save_file(out, tmp, metadata=meta), suffix=".safetensors")
    n_copy = sum(len(lb[p]) for p in copy)
    return {"copied": copy, "initialised": [{"layer": p, "reason": why, "tensors": len(lb[p])} for p, why in init],
            "tensors_copied": n_copy, "tensors_initialised": len(fresh) - n_copy,
            "params_copied": _params(out, [k for p in copy for k in lb[p]]),
            "params_initialised": _params(out, [k for p, _ in init for k in lb[p]]),
            "output": output, "seed": seed, "trained": trained}


def _params(tensors: dict, keys: list[str]) -> int:
    """Trainable values among `keys` (bn running statistics and counters are not parameters)."""
    skip = ("running_mean", "running_var", "num_batches_tracked")
    return sum(int(tensors[k].size) for k in keys if not k.endswith(skip))
