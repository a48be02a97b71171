"""Does a checkpoint fit a spec, and are its values sane: one check for every loader.

Pure functions over what a loader knows without computing anything: each tensor's name, shape and
dtype kind, and, for the values, which tensors hold a NaN or infinity and each batch-norm variance's
minimum. `compile` (numpy views of a memory-mapped file, no torch) and the PyTorch back end's loader
(torch tensors) both call them, so a checkpoint is refused the same way, with the same words,
whichever reads it.
"""
from __future__ import annotations

from .errors import WeightsError

Entry = tuple[tuple[int, ...], str, str]   # (shape, kind, dtype): kind is float, integer, bool or complex
KINDS = {"f": "float", "i": "integer", "u": "integer", "b": "bool", "c": "complex"}   # numpy's dtype.kind
REBUILD = ("was it made for another spec (or another version of this one)? "
           "Rebuild it with resgraph init / train / import-weights for this spec")


def mismatches(have: dict[str, Entry], want: dict[str, Entry]) -> dict[str, list[str]]:
    """What differs between a checkpoint's tensors and the spec's, by kind of difference (empty lists
    where nothing differs). A dtype may differ in width (fp16 or fp64 weights load into fp32) but not
    in kind: int8, bool or int64 data where the spec holds floats would be cast silently (and a float
    where it holds an integer buffer, bn's num_batches_tracked)."""
    both = [k for k in want if k in have]
    return {
        "missing": [k for k in want if k not in have],
        "unexpected": [k for k in have if k not in want],
        "shape mismatch": [f"{k}: checkpoint {list(have[k][0])}, spec {list(want[k][0])}" for k in both
                           if tuple(have[k][0]) != tuple(want[k][0])],
        "dtype mismatch": [f"{k}: checkpoint {have[k][2]}, spec {want[k][2]}" for k in both if have[k][1] != want[k][1]],
    }


def check_fit(have: dict[str, Entry], want: dict[str, Entry], where: str, limit: int = 5) -> None:
    """A WeightsError at `where` listing every kind of difference (the first `limit` of each), unless
    the checkpoint fits."""
    found = mismatches(have, want)
    if not any(found.values()):
        return
    parts = []
    for label, items in found.items():
        if items:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            parts.append(f"{label} ({len(items)}): " + "; ".join(items[:limit]) + more)
    hint = REBUILD
    if found["dtype mismatch"] and not (found["missing"] or found["unexpected"] or found["shape mismatch"]):
        hint = ("weights must be floating point (float32, float16, bfloat16 or float64); integer or bool "
                "tensors are not cast. Save the float weights, or rebuild with resgraph init / train / import-weights")
    raise WeightsError.at(where, "the checkpoint does not fit the spec: " + " | ".join(parts), hint)


def check_values(nonfinite: list[str], variance_minima: dict[str, float], where: str, limit: int = 5) -> None:
    """The checkpoint's values, before anything is computed from them: all finite (`nonfinite` names the
    tensors that are not), and every batch-norm variance >= 0 (`variance_minima`: each running_var's
    minimum; a negative one folds into NaN weights: a model that answers NaN)."""
    if nonfinite:
        more = f" (+{len(nonfinite) - limit} more)" if len(nonfinite) > limit else ""
        raise WeightsError.at(where, f"the weights are not all finite: NaN or inf in {len(nonfinite)} tensor(s): "
                              + ", ".join(nonfinite[:limit]) + more,
                              "a diverged training run? Use an earlier checkpoint (resgraph train keeps "
                              "best.safetensors and epoch-NNN.safetensors), or resume with resgraph train --weights "
                              "FILE and a lower --lr")
    negative = [f"{k} (min {v:.3g})" for k, v in variance_minima.items() if v < 0]
    if negative:
        more = f" (+{len(negative) - limit} more)" if len(negative) > limit else ""
        raise WeightsError.at(where, f"negative batch-norm variance in {len(negative)} tensor(s): "
                              + ", ".join(negative[:limit]) + more,
                              "a variance is never negative: a damaged or hand-edited checkpoint? Re-export it "
                              "from training")


def numpy_entries(tensors: dict) -> dict[str, Entry]:
    """(shape, kind, dtype) of numpy arrays (or anything with .shape and a numpy .dtype)."""
    return {k: (tuple(v.shape), KINDS.get(v.dtype.kind, v.dtype.kind), str(v.dtype)) for k, v in tensors.items()}


def spec_entries(shapes: dict[str, tuple]) -> dict[str, Entry]:
    """What a spec's state dict holds (ops.count.state_dict_shapes): float32 tensors, but for each
    batch norm's num_batches_tracked, an int64 counter."""
    return {k: (tuple(s), "integer", "int64") if k.endswith("num_batches_tracked") else (tuple(s), "float", "float32")
            for k, s in shapes.items()}
