"""Calibration (issue 23): resgraph.quant.calibrate against independent references.

On the shipped, trained digits model (bn folded), fed scikit-learn's digits preprocessed as the spec
says, and on random normal inputs:
- minmax is max|x| of each tensor over all data, the activations computed in one run of the
  activation model on everything;
- percentile is the lower edge of the bin holding the exact order statistic (computed from all the
  activations), and equals onnxruntime.quantization's symmetric Percentile calibrator (max|.| of the
  (min, max) it returns) to within one bin of each histogram: ORT's |x| histogram spans [min|x|, max|x|] with 2048
  bins, ours [0, top] (top = max|x|, or up to twice it after streaming re-binning);
- entropy differs from ORT's by design (see the module doc), so it is checked against a literal
  transcription of pytorch_quantization's `_compute_amax_entropy` (TensorRT's method) on the same
  histograms: equal thresholds;
- streaming in batches of 8 equals one batch of everything exactly, for every method (the histogram
  range is a power of two and re-binning is exact, so the histograms are equal);
- the observers' state does not grow with the number of batches.
"""
from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import resgraph
from resgraph.passes.inference import for_inference
from resgraph.quant.qdq import tensors_to_calibrate  # noqa: E402
from resgraph.quant.calibrate import (
    NUM_BINS,
    AbsHistogram,
    Observer,
    activation_model,
    calibrate,
    calibrate_full,
    kl_divergences,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def digits_model():
    from safetensors.numpy import load_file
    checked = resgraph.check(str(ROOT / "specs/digits_resnet.yaml"))
    g, w = for_inference(checked.graph, load_file(str(ROOT / "specs/weights/digits_resnet.safetensors")))
    return g, w, tensors_to_calibrate(g)   # what Q/DQ placement (qdq.py) needs: one list


def _digits_images(n: int = 256) -> np.ndarray:
    """scikit-learn's digits as the spec preprocesses them: /16, then (x - 0.3) / 0.38."""
    from sklearn.datasets import load_digits
    x = load_digits().images[:n].astype(np.float32) / 16.0
    return ((x - 0.3) / 0.38)[:, None, :, :].astype(np.float32)


def _random_images(n: int = 256) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 1, 8, 8)).astype(np.float32)


DATA = {"digits": _digits_images, "random": _random_images}


def _batches(x: np.ndarray, size: int) -> list[np.ndarray]:
    return [x[i:i + size] for i in range(0, len(x), size)]


def _activations(g, w, tensors, x) -> dict[str, np.ndarray]:
    """Every tensor, from one run of the activation model on all of x."""
    sess = ort.InferenceSession(activation_model(g, w, tensors).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    return dict(zip(tensors, sess.run(tensors, {sess.get_inputs()[0].name: x})))


def test_activation_model_exposes_tensors_and_keeps_output(digits_model):
    g, w, tensors = digits_model
    m = activation_model(g, w, tensors)
    onnx.checker.check_model(m)
    assert [o.name for o in m.graph.output] == ["logits"] + tensors
    x = _digits_images(32)
    acts = _activations(g, w, tensors, x)
    assert np.array_equal(acts["input"], x)
    plain = ort.InferenceSession(resgraph.backends.onnx.lower.to_onnx(g, w).SerializeToString(),
                                 providers=["CPUExecutionProvider"])
    full = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.allclose(full.run(["logits"], {"image": x})[0], plain.run(None, {"image": x})[0], atol=1e-5)
    assert (acts["layer1.post"] >= 0).all() and (acts["layer1.conv2"] < 0).any()   # real, distinct tensors


@pytest.mark.parametrize("data", sorted(DATA))
def test_minmax_is_max_abs_over_all_batches(digits_model, data):
    g, w, tensors = digits_model
    x = DATA[data]()
    acts = _activations(g, w, tensors, x)
    got = calibrate(g, w, _batches(x, 8), tensors, "minmax")
    assert got == {p: float(np.abs(a).max()) for p, a in acts.items()}


def _ort_ranges(g, w, x, tmp_path, batch: int, **options) -> dict[str, float]:
    """onnxruntime.quantization's own symmetric Percentile calibrator (`options`: its extra_options,
    e.g. percentile) on the same fp32 model and batches: max|.| of the (min, max) it returns per
    tensor, keyed by IR path (ORT names the input 'image')."""
    from onnxruntime.quantization.calibrate import (
        CalibrationDataReader,
        CalibrationMethod,
        create_calibrator,
    )
    path = tmp_path / "fp32.onnx"
    onnx.save(resgraph.backends.onnx.lower.to_onnx(g, w), str(path))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(_batches(x, batch))

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else {"image": b}

    cal = create_calibrator(str(path), augmented_model_path=str(tmp_path / "aug.onnx"),
                            calibrate_method=CalibrationMethod.Percentile,
                            extra_options={"symmetric": True, **options})
    cal.collect_data(Reader())
    ranges = cal.compute_data()
    out = {}
    for name in ranges:
        lo, hi = ranges[name].range_value
        out["input" if name == "image" else name] = float(max(abs(lo), abs(hi)))
    return out


@pytest.mark.parametrize("data", sorted(DATA))
@pytest.mark.parametrize("pct", [99.999, 99.9])
def test_percentile_agrees_with_onnxruntime(digits_model, data, pct, tmp_path):
    g, w, tensors = digits_model
    x = DATA[data]()
    res = calibrate_full(g, w, _batches(x, 32), tensors, "percentile", percentile=pct)
    theirs = _ort_ranges(g, w, x, tmp_path, 32, percentile=pct)
    assert set(tensors) <= set(theirs), sorted(theirs)
    for p in tensors:
        ob = res.observers[p]
        tol = ob.hist.top / NUM_BINS + ob.max / NUM_BINS     # one bin of ours + one of ORT's
        assert abs(res.amax[p] - theirs[p]) <= tol * 1.0001, (p, pct, res.amax[p], theirs[p], tol)
        assert res.amax[p] <= ob.max
    # exactly, against the order statistic itself: amax is the lower edge of our bin that holds the
    # smallest |x| whose empirical cdf reaches pct (what both ORT and TensorRT report, bin-quantised)
    for p, a in _activations(g, w, tensors, x).items():
        v = np.sort(np.abs(a).ravel())
        k = int(np.searchsorted(np.arange(1, v.size + 1) / v.size, pct / 100.0))
        width = res.observers[p].hist.top / NUM_BINS
        assert res.amax[p] <= v[k] < res.amax[p] + width, (p, res.amax[p], v[k], width)


def _reference_entropy_amax(hist: np.ndarray, edges: np.ndarray, num_bits=8, unsigned=False, stride=1,
                            start_bin=128) -> float:
    """pytorch_quantization.calib.histogram._compute_amax_entropy, transcribed line for line (numpy
    in place of torch; scipy's entropy). Returns (amax, the divergence of every candidate)."""
    from scipy.stats import entropy
    bins = hist[:].astype(np.int64).copy()
    bins[0] = bins[1]
    total_data = np.sum(bins)
    divergences, arguments = [], []
    nbins = 1 << (num_bits - 1 + int(unsigned))
    starting, stop = start_bin, len(bins)
    new_density_counts = np.zeros(nbins, dtype=np.float64)
    for i in range(starting, stop + 1, stride):
        new_density_counts.fill(0)
        space = np.linspace(0, i, num=nbins + 1)
        digitized_space = np.digitize(range(i), space) - 1
        digitized_space[bins[:i] == 0] = -1
        for idx, digitized in enumerate(digitized_space):
            if digitized != -1:
                new_density_counts[digitized] += bins[idx]
        counter = Counter(digitized_space)
        for key, val in counter.items():
            if key != -1:
                new_density_counts[key] = new_density_counts[key] / val
        new_density = np.zeros(i, dtype=np.float64)
        for idx, digitized in enumerate(digitized_space):
            if digitized != -1:
                new_density[idx] = new_density_counts[digitized]
        total_counts_new = np.sum(new_density) + np.sum(bins[i:])
        reference_density = np.array(bins[:len(digitized_space)])
        reference_density[-1] += np.sum(bins[i:])
        total_counts_old = np.sum(reference_density)
        assert round(total_counts_new) == total_data and round(total_counts_old) == total_data
        divergences.append(entropy(reference_density, new_density))
        arguments.append(i)
    divergences = np.array(divergences)
    last_argmin = len(divergences) - 1 - np.argmin(divergences[::-1])
    return float(edges[last_argmin * stride + starting]), divergences


@pytest.mark.parametrize("data", sorted(DATA))
def test_entropy_is_tensorrts_kl_threshold(digits_model, data):
    g, w, tensors = digits_model
    x = DATA[data]()
    res = calibrate_full(g, w, _batches(x, 8), tensors, "entropy")
    picked = ["input", "layer1.post", "layer2.conv2"]      # the input, a post-ReLU and a signed tensor
    for p in picked:
        ob = res.observers[p]
        ref, divs = _reference_entropy_amax(ob.hist.counts, ob.hist.edges)
        assert res.amax[p] == pytest.approx(min(ref, ob.max), rel=1e-12), p
        ours = kl_divergences(ob.hist.counts)
        assert np.array_equal(np.isinf(ours), np.isinf(divs)), p
        assert np.allclose(ours[np.isfinite(ours)], divs[np.isfinite(divs)], rtol=1e-9, atol=1e-12), p
    for p in tensors:
        assert 0 < res.amax[p] <= res.observers[p].max


def test_entropy_clips_heavy_tails():
    """Student-t data (df 3), streamed: the KL threshold equals the reference's and cuts the long tail
    that minmax keeps, while percentile 99.999 sits between."""
    x = np.random.default_rng(3).standard_t(3, size=200_000).astype(np.float32)
    ent, mm, pct = Observer("entropy"), Observer("minmax"), Observer("percentile")
    for b in np.array_split(x, 25):
        for o in (ent, mm, pct):
            o.update(b)
    ref, _ = _reference_entropy_amax(ent.hist.counts, ent.hist.edges)
    assert ent.amax() == pytest.approx(min(ref, ent.max), rel=1e-12)
    assert ent.amax() < 0.5 * mm.amax() and pct.amax() <= mm.amax() == float(np.abs(x).max())


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_streaming_equals_one_batch(digits_model, method):
    g, w, tensors = digits_model
    x = _digits_images(256)
    one = calibrate_full(g, w, [x], tensors, method)
    streamed = calibrate_full(g, w, _batches(x, 8), tensors, method)
    again = calibrate(g, w, _batches(x, 8), tensors, method)
    assert again == streamed.amax                               # deterministic for a given order
    assert streamed.amax == one.amax                            # exactly: the histograms are equal
    if method != "minmax":
        for p in tensors:
            a, b = streamed.observers[p].hist, one.observers[p].hist
            assert a.top == b.top and np.array_equal(a.counts, b.counts), p


def test_rebinning_is_exact():
    """A range that grows batch after batch: the streamed counts equal binning everything at once over
    the final [0, top), top the power of two above max|x|."""
    rng = np.random.default_rng(1)
    chunks = [rng.normal(scale=s, size=1000).astype(np.float32) for s in (0.1, 0.5, 0.3, 4.0, 60.0, 1.0)]
    h = AbsHistogram()
    for c in chunks:
        h.add(c)
    a = np.abs(np.concatenate(chunks)).astype(np.float64)
    assert h.amax == a.max() and h.top / 2 <= a.max() < h.top and np.log2(h.top) % 1 == 0
    idx = np.minimum((a * (NUM_BINS / h.top)).astype(np.int64), NUM_BINS - 1)
    assert np.array_equal(h.counts, np.bincount(idx, minlength=NUM_BINS))
    assert h.counts.sum() == a.size


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_state_does_not_grow_with_batches(method):
    rng = np.random.default_rng(2)
    few, many = Observer(method), Observer(method)
    few.update(rng.normal(size=(8, 16, 8, 8)))
    before = many.state_bytes()
    sizes = []
    for k in range(200):
        many.update(rng.normal(scale=1 + k, size=(8, 16, 8, 8)).astype(np.float32))   # range keeps growing
        sizes.append((many.state_bytes(), len(pickle.dumps(many))))      # all it holds, measured
    assert {b for b, _ in sizes} == {before, few.state_bytes()}
    # pickled, only the counters' integer encodings may widen (a few bytes), whatever the batch count
    assert all(len(pickle.dumps(few)) <= n <= len(pickle.dumps(few)) + 16 for _, n in sizes) and sizes[-1][1] < 20_000
    if many.hist is not None:
        assert len(many.hist.counts) == NUM_BINS and many.hist.counts.sum() == 200 * 8 * 16 * 64


def test_progress_and_errors(digits_model):
    g, w, tensors = digits_model
    seen = []
    calibrate(g, w, _batches(_digits_images(40), 16), tensors[:2], "percentile", progress=lambda b, n: seen.append((b, n)))
    assert seen == [(1, 16), (2, 32), (3, 40)]
    with pytest.raises(ValueError, match="no calibration data"):
        calibrate(g, w, [], tensors, "minmax")
    with pytest.raises(ValueError, match="unknown calibration method"):
        calibrate(g, w, [_digits_images(8)], tensors, "mse")
    with pytest.raises(KeyError):
        activation_model(g, w, ["no.such.node"])
