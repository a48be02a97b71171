"""Judging each node of the inference graph by parity's rule for the pair (see the package's doc)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import Loc
from ..quant.gate import sqnr_of
from ..runtime.parity import FP32_ABS, FP32_NOISE_FACTOR, HALF_REL

LOCATE_BYTES = 1 << 30          # the recorded tensors of one batch, all sides together


@dataclass
class Row:
    """One node of the inference graph: how far the other side is from the reference at its output."""
    path: str
    op: str
    loc: Loc
    site: str                    # ' (in layer2 from line 28)' inside a block, else ''
    merged: tuple[str, ...]      # the spec nodes its output stands for besides itself (a folded bn, no-ops)
    inputs: tuple[str, ...]
    max_abs: float = 0.0
    max_scaled: float = 0.0      # max |a - b| / (1 + |ref|)
    floor: float | None = None   # max |fp32 - fp64| of the torch module at this tensor (fp32 pairs)
    ref_sq: float = 0.0
    err_sq: float = 0.0
    nonfinite: int = 0           # elements that are NaN or inf on one side and not the other
    growth: float | None = None  # max_scaled / the largest max_scaled among its inputs
    tolerance: str = ""
    ok: bool = True

    @classmethod
    def of(cls, node) -> "Row":
        """The row of an inference node, before any figure."""
        return cls(node.path, node.op, node.loc, node.site() or (f" (in {node.block})" if node.block else ""), (),
                   node.inputs)

    @property
    def sqnr_db(self) -> float:
        return sqnr_of(self.ref_sq, self.err_sq)

    def to_json(self) -> dict:
        num = lambda v: v if v is None or math.isfinite(v) else ("inf" if v > 0 else "-inf")  # noqa: E731
        return {"path": self.path, "op": self.op, "file": self.loc.file, "line": self.loc.line, "column": self.loc.col,
                "site": self.site.strip(" ()"), "merged": list(self.merged), "max_abs": num(self.max_abs),
                "max_scaled": num(self.max_scaled), "floor": self.floor, "sqnr_db": num(self.sqnr_db),
                "nonfinite": self.nonfinite, "growth": num(self.growth), "tolerance": self.tolerance, "ok": self.ok}


# --- judging --------------------------------------------------------------------------------------

def judge(igraph, ref, other, floor, feeds: dict, precisions: tuple[str, str], merged: dict) -> list[Row]:
    """Every node both sides expose, in graph order, judged by the pair's rule over all of `feeds`
    (in batches that keep one batch's recorded tensors under LOCATE_BYTES)."""
    n = len(next(iter(feeds.values())))
    batch = max(1, min(n, LOCATE_BYTES // max(1, per_sample_bytes(igraph, feeds))))
    rows: dict[str, Row] = {}
    for i in range(0, n, batch):
        part = {k: v[i:i + batch] for k, v in feeds.items()}
        a, b = ref(part), other(part)
        f = floor(part) if floor is not None else {}
        if not rows:
            rows = {x.path: Row.of(x) for x in igraph.nodes if x.path in a and x.path in b and x.op != "input"}
        for p, row in rows.items():
            accumulate(row, a[p], b[p], f.get(p))
    for row in rows.values():
        row.merged = tuple(q for q in merged.get(row.path, ()) if q != row.path)
        verdict(row, half_of(precisions))
        worst_in = [rows[i].max_scaled for i in row.inputs if i in rows]
        m = max(worst_in, default=0.0)
        row.growth = row.max_scaled / m if m > 0 else (math.inf if row.max_scaled > 0 and worst_in else None)
    return list(rows.values())


def half_of(precisions) -> float | None:
    """The relative tolerance of a pair with an fp16 / TF32 / bf16 side (the loosest); None: fp32."""
    return max((HALF_REL[p] for p in precisions if p in HALF_REL), default=None)


def per_sample_bytes(igraph, feeds: dict) -> int:
    """What one sample's recorded tensors take on every side (4 + 4 bytes, and 4 + 8 for the floor's two
    runs), at the fed size: the graph's shapes scaled by the fed input's elements over the graph's."""
    x = next(iter(feeds.values()))
    scale = math.prod(x.shape[1:]) / max(1, math.prod(igraph.nodes[0].shape))
    return int(20 * scale * sum(math.prod(n.shape) for n in igraph.nodes if n.shape))


def accumulate(row: Row, ref: np.ndarray, got: np.ndarray, floor: float | None) -> None:
    """Fold one batch's tensors into the row's figures: a NaN or inf on one side only is an infinite error."""
    ref, got = ref.astype(np.float64), got.astype(np.float64)
    assert ref.shape == got.shape, (row.path, ref.shape, got.shape)
    same = (ref == got) | (np.isnan(ref) & np.isnan(got))
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.where(same, 0.0, np.abs(got - ref))
        d[np.isnan(d)] = np.inf
        scaled = np.where(d == 0, 0.0, d / (1 + np.abs(ref)))
        scaled[np.isnan(scaled)] = np.inf
    finite = np.isfinite(ref) & np.isfinite(got)
    row.nonfinite += int(np.count_nonzero(~same & ~finite))
    if d.size:
        row.max_abs = max(row.max_abs, float(d.max()))
        row.max_scaled = max(row.max_scaled, float(scaled.max()))
    row.ref_sq += float(np.sum(np.square(ref[np.isfinite(ref)])))
    row.err_sq += float(np.sum(np.square(d)))
    if floor is not None:
        row.floor = max(row.floor or 0.0, floor)


def verdict(row: Row, half: float | None) -> None:
    """Parity's rule for the pair, at this tensor."""
    if half is not None:
        row.ok, row.tolerance = row.max_scaled <= half, f"|a-b| <= {half:g} (1 + |ref|)"
    elif row.max_abs <= FP32_ABS:
        row.ok, row.tolerance = True, f"max |a-b| <= {FP32_ABS:g}"
    elif row.floor is not None:
        bound = FP32_NOISE_FACTOR * row.floor
        row.ok = row.max_abs <= bound
        row.tolerance = f"max |a-b| <= {FP32_ABS:g}, or {FP32_NOISE_FACTOR:g} x its fp32 noise floor {row.floor:.2e}"
    else:
        row.ok, row.tolerance = False, f"max |a-b| <= {FP32_ABS:g}"
