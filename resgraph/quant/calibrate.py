"""Calibration: a symmetric amax per activation tensor, streamed batch by batch.

The inference graph (bn folded) is lowered with the tensors to calibrate as extra graph outputs
(`activation_model`: built by the compiler from the IR, not by editing protobuf), ONNX Runtime's
CPU provider runs it batch by batch, and one observer per tensor folds each batch into a fixed-size
state: a running max (`minmax`) or a 2048-bin histogram of |x| (`percentile`, `entropy`). Nothing
is stored per batch, so memory is O(tensors x bins) whatever the number of inputs
(`Observer.state_bytes`: 16 KiB of int64 counts per tensor, 1.1 MiB for resnet50's 70 Q/DQ tensors),
plus one batch of activations in flight.

Every method yields a symmetric amax (TensorRT wants zero point 0; ORT's uint8 encoding, zero point
128, is derived from the same scale amax / 127 later).

Histogram range (`AbsHistogram`): 2048 bins over [0, top), top the least power of two above every
|x| seen. A batch whose max|x| reaches top doubles it (k times, the least k that covers it) and
merges old bins in groups of 2**k: an exact re-binning (every old bin lies inside one new bin), so
the counts are exactly those of binning all the data at once, whatever the batching or order, and
every threshold equals one batch of everything exactly. The cost: bins up to twice as wide as over
[0, max|x|] (at least 1024 of the 2048 cover the data). ORT's and pytorch_quantization's collectors
instead fix the first batch's bin width and append bins when a later batch exceeds it (memory grows
with the range; the result depends on the batching).

Agreement with onnxruntime.quantization.calibrate (tests/quant/test_calibrate.py):
- minmax: identical to max|x| over all data (ORT's MinMax with symmetric=True returns +-max|x|).
- percentile: the same rule as ORT's symmetric Percentile and pytorch_quantization's: the lower
  edge of the bin where the cdf of |x| reaches p, clipped to the observed max|x|. ORT's |x| histogram
  spans [min|x|, max|x|] (np.histogram's default range), ours [0, top), so the two differ by less
  than one bin of each, max|x| / 2048 + top / 2048 (max|.| of ORT's (min, max) compared).
- entropy: differs by design. ORT's Entropy histograms signed x over [-t, t] and slides symmetric
  windows (128 quantised bins across both signs, i.e. 64 per side); TensorRT's method
  (pytorch_quantization's `_compute_amax_entropy`, which this follows) histograms |x| with 2048 bins
  and quantises [0, amax] to 128 bins (the int8 magnitudes), after setting bin 0's count to bin 1's.
  So the test checks the property instead: on the same histogram, the KL curve (to 1e-9) and the
  chosen amax equal a literal transcription of pytorch_quantization's loop, on the model's real
  activations. (Our grid is [0, power of two); pytorch_quantization's one-batch grid is
  [0, max|x|], so on the same raw data the two pick thresholds on different grids.)
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import onnx

from ..ir import Graph

NUM_BINS = 2048
QUANT_BINS = 128           # int8 magnitudes: TensorRT's and pytorch_quantization's entropy target
START_BIN = 128            # the smallest candidate threshold, in bins (pytorch_quantization's default)
METHODS = ("minmax", "percentile", "entropy")


def activation_model(graph: Graph, weights: dict, tensors: Iterable[str], opset: int = 17,
                     dims: dict | None = None) -> onnx.ModelProto:
    """The inference graph lowered with each IR path in `tensors` as an extra graph output named by its
    path. Pre: `graph`/`weights` are for_inference's (bn folded); every path is a node of `graph`
    (the input's path, "input", included). Post: the model's outputs are graph.outputs, then the new
    paths in the given order; ORT returns those activations. `dims` (size variables, as compile's):
    the model takes every valid size, each extra output's H and W declared symbolic."""
    from ..backends.onnx.lower import to_onnx
    tensors = list(dict.fromkeys(tensors))
    missing = [p for p in tensors if p not in graph]
    if missing:
        raise KeyError(f"not a node of the graph: {missing}")
    names = {name for name, _ in graph.outputs}
    extra = tuple((p, p) for p in tensors if (p, p) not in graph.outputs)
    clash = [p for p, _ in extra if p in names]
    assert not clash, f"an output is already named {clash}"
    if dims is not None:
        dims = {**dims, **{p: [graph[p].shape[0], *(f"{p}:{i}" for i in range(1, len(graph[p].shape)))]
                           for p, _ in extra}}
    return to_onnx(graph.replace(outputs=graph.outputs + extra), weights, opset=opset, dims=dims)


# --- the fixed-size state of one tensor ----------------------------------------------------------

class AbsHistogram:
    """A NUM_BINS-bin histogram of |x| over [0, top), streamed; `top` is the least power of two above
    every |x| seen (see module doc). Invariants: len(counts) == bins; counts.sum() == the number of
    finite values seen; amax is the largest |x| seen; top / 2 <= amax < top (amax > 0); the counts
    are those of binning all values at once over [0, top), whatever the batching and order."""

    def __init__(self, bins: int = NUM_BINS):
        self.bins = bins
        self.counts = np.zeros(bins, dtype=np.int64)
        self.top = 0.0
        self.amax = 0.0

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(0.0, self.top, self.bins + 1)

    def add(self, x: np.ndarray) -> None:
        """Fold one batch in. Post: counts as if every value so far had been binned over the final [0, top]
        (exact: old bins merge whole)."""
        a = np.abs(np.asarray(x, dtype=np.float32).ravel())
        if a.size == 0:
            return
        m = float(a.max())
        if not math.isfinite(m):          # NaN or inf somewhere: count the finite values only
            a = a[np.isfinite(a)]
            if a.size == 0:
                return
            m = float(a.max())
        self.amax = max(self.amax, m)
        if m >= self.top:
            self._grow(m)
        if self.top == 0.0:          # all zeros so far: they live in bin 0 whatever the range becomes
            self.counts[0] += a.size
            return
        # bins / top is a power of two (as top is): the product is exact in float32, so a value's bin
        # is floor(|x| * bins / top) however the range grew; |x| < top, so idx < bins
        idx = (a * np.float32(self.bins / self.top)).astype(np.int32)
        self.counts += np.bincount(idx, minlength=self.bins)

    def _grow(self, m: float) -> None:
        """Widen [0, top) to cover m: the first time to the power of two above m; afterwards by doubling,
        merging old bins in whole groups."""
        if self.top == 0.0:
            self.top = math.ldexp(1.0, math.frexp(m)[1])   # m = f * 2**e, 0.5 <= f < 1: top = 2**e > m
            return
        k = 0
        while self.top * 2 ** k <= m:
            k += 1
        g = 2 ** k
        if g >= self.bins:            # everything old falls in bin 0
            merged = np.zeros(self.bins, dtype=np.int64)
            merged[0] = self.counts.sum()
        else:
            merged = np.zeros(self.bins, dtype=np.int64)
            merged[: self.bins // g] = self.counts.reshape(-1, g).sum(axis=1)
        self.counts, self.top = merged, self.top * g


class Observer:
    """One method's per-tensor state. `update(x)` folds a batch in; `amax()` gives the symmetric range;
    `state_bytes()` is the memory it holds (constant in the number of batches)."""

    def __init__(self, method: str, percentile: float = 99.999, bins: int = NUM_BINS):
        if method not in METHODS:
            raise ValueError(f"unknown calibration method {method!r}; one of {', '.join(METHODS)}")
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], not {percentile}")
        self.method, self.percentile = method, percentile
        self.hist = AbsHistogram(bins) if method != "minmax" else None
        self.max = 0.0
        self.lo, self.hi = 0.0, 0.0    # the signed range seen (with 0 in it): u8's asymmetric encoding
        self.seen = 0

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        self.seen += x.size
        if x.size:
            finite = x[np.isfinite(x)] if not np.isfinite(x).all() else x
            if finite.size:
                self.lo, self.hi = min(self.lo, float(finite.min())), max(self.hi, float(finite.max()))
        if self.hist is not None:
            self.hist.add(x)
            self.max = self.hist.amax
        elif x.size:
            self.max = max(self.max, float(np.nanmax(np.abs(x))))

    def amax(self) -> float:
        """Pre: at least one update. Post: 0 <= amax <= max|x| seen."""
        if self.seen == 0:
            raise ValueError("no data observed")
        if self.method == "minmax":
            return self.max
        if self.method == "percentile":
            return percentile_amax(self.hist.counts, self.hist.edges, self.percentile, self.max)
        return entropy_amax(self.hist.counts, self.hist.edges, self.max)

    def state_bytes(self) -> int:
        return 64 + (self.hist.counts.nbytes if self.hist is not None else 0)


def percentile_amax(counts: np.ndarray, edges: np.ndarray, percentile: float, amax: float) -> float:
    """The lower edge of the bin where the cdf of |x| reaches `percentile`, clipped to amax (ORT's and
    pytorch_quantization's rule). Pre: counts.sum() > 0."""
    total = counts.sum()
    if total == 0:
        return 0.0
    cdf = np.cumsum(counts) / total
    idx = int(np.searchsorted(cdf, percentile / 100.0))
    return float(min(edges[min(idx, len(edges) - 1)], amax))


def kl_divergences(counts: np.ndarray, quant_bins: int = QUANT_BINS, start: int = START_BIN) -> np.ndarray:
    """KL(P || Q) for each candidate threshold i = start .. len(counts) (in bins), as
    pytorch_quantization's `_compute_amax_entropy`: bin 0 takes bin 1's count (the zero spike of
    post-ReLU tensors is not information); P is bins[:i] with the tail bins[i:] added to its last bin;
    Q spreads each of `quant_bins` groups of bins[:i] (bin j in group floor(quant_bins * j / i)) evenly
    over the group's non-empty bins; both normalised. Returns len(counts)-start+1 values, inf where Q is
    0 where P is not (scipy.stats.entropy's convention).

    Computed in closed form from prefix sums, O(candidates x quant_bins): with S, C, L a group's sum of
    counts b, number of non-empty bins and sum of b log b, ps the total and qs = sum(bins[:i]),
    KL = (sum_groups [L - S log(S / C)] + last-bin correction) / ps + log qs - log ps."""
    b = counts.astype(np.float64).copy()
    b[0] = b[1]
    n = len(b)
    blogb = np.where(b > 0, b * np.log(np.where(b > 0, b, 1.0)), 0.0)
    PS, PC, PL = (np.concatenate([[0.0], np.cumsum(v)]) for v in (b, (b > 0).astype(np.float64), blogb))
    i = np.arange(start, n + 1)[:, None]                               # candidates, as a column
    g = np.arange(quant_bins + 1)[None, :]
    edge = (g * i + quant_bins - 1) // quant_bins                      # first bin of each group: ceil(g i / qb)
    lo, hi = edge[:, :-1], edge[:, 1:]
    S, C, L = PS[hi] - PS[lo], PC[hi] - PC[lo], PL[hi] - PL[lo]
    with np.errstate(divide="ignore", invalid="ignore"):
        per_group = np.where(S > 0, L - S * np.log(np.where(S > 0, S / np.maximum(C, 1), 1.0)), 0.0)
        A = per_group.sum(axis=1)
        i = i[:, 0]
        ps = PS[-1]
        qs = PS[i]
        tail = ps - qs
        last = b[i - 1]                                                # the last bin of P gets the tail
        qlast = np.where(last > 0, S[:, -1] / np.maximum(C[:, -1], 1), 1.0)
        new = np.where(last + tail > 0, (last + tail) * (np.log(np.maximum(last + tail, 1e-300)) - np.log(qlast)), 0.0)
        old = np.where(last > 0, last * (np.log(np.where(last > 0, last, 1.0)) - np.log(qlast)), 0.0)
        kl = (A + new - old) / ps + np.log(qs) - np.log(ps)
    kl[(qs == 0) | ((last == 0) & (tail > 0))] = np.inf
    return kl


def entropy_amax(counts: np.ndarray, edges: np.ndarray, amax: float,
                 quant_bins: int = QUANT_BINS, start: int = START_BIN) -> float:
    """The threshold (a bin edge) minimising KL divergence (`kl_divergences`; the last of equal minima,
    as pytorch_quantization picks), clipped to amax. Pre: len(counts) > start."""
    if counts.sum() == 0:
        return 0.0
    kl = kl_divergences(counts, quant_bins, start)
    if not np.isfinite(kl).any():
        return float(amax)
    best = kl.min()
    # the last of the minima (ties to within rounding of the closed form: exact ties in the reference)
    last = int(np.flatnonzero(kl <= best + 1e-12 * max(1.0, abs(best)))[-1])
    return float(min(edges[last + start], amax))


# --- running it ----------------------------------------------------------------------------------

@dataclass
class Calibration:
    amax: dict[str, float]
    observers: dict[str, Observer]
    batches: int
    samples: int

    @property
    def ranges(self) -> dict[str, tuple[float, float]]:
        """The signed (min, max) seen per tensor, 0 included: what qdq's u8 encoding reads for
        tensors that can be negative."""
        return {p: (o.lo, o.hi) for p, o in self.observers.items()}


def calibrate_full(graph: Graph, weights: dict, batches: Iterable[np.ndarray], tensors: Iterable[str],
                   method: str = "minmax", percentile: float = 99.999,
                   progress: Callable[[int, int], None] | None = None, threads: int = 0,
                   dims: dict | None = None) -> Calibration:
    """`calibrate`, returning the observers and counts as well; `dims`: as activation_model's."""
    import onnxruntime as ort
    tensors = list(dict.fromkeys(tensors))
    model = activation_model(graph, weights, tensors, dims=dims)
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    obs = {p: Observer(method, percentile) for p in tensors}
    n_batches = samples = 0
    for batch in batches:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        outs = sess.run(tensors, {in_name: batch})
        for p, y in zip(tensors, outs):
            obs[p].update(y)
        n_batches += 1
        samples += len(batch)
        if progress is not None:
            progress(n_batches, samples)
    if n_batches == 0:
        raise ValueError("no calibration data: the batches were empty")
    return Calibration({p: o.amax() for p, o in obs.items()}, obs, n_batches, samples)


def calibrate(graph: Graph, weights: dict, batches: Iterable[np.ndarray], tensors: Iterable[str],
              method: str = "minmax", percentile: float = 99.999,
              progress: Callable[[int, int], None] | None = None, threads: int = 0) -> dict[str, float]:
    """A symmetric amax per IR path in `tensors`, from `batches` ([N, *input shape] float arrays, the
    graph's first input) run through ONNX Runtime's CPU provider. Pre: graph/weights as for_inference
    makes them. `progress(batches_done, samples_done)` is called after each batch. Deterministic for a
    given batch sequence. Raises ValueError on an unknown method or no data."""
    return calibrate_full(graph, weights, batches, tensors, method, percentile, progress, threads).amax
