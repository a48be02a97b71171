"""parity's tolerances pinned at both sides of every bound (docs/inference.md, resgraph/runtime/parity.py):
a difference 1% under a bound passes and 1% over it fails, for each rule. The bounds are written out
here as numbers, not read from the module, so loosening one there (1e-4 -> 1e-3) fails a test."""
import numpy as np
import pytest

from resgraph.runtime.parity import compare

UNDER, OVER = 0.99, 1.01


def one_pair(diff: float, ref: float = 0.0, pa: str = "fp32", pb: str = "fp32", floor=None, fp32_rel=None):
    """compare() on a [2, 5] output whose reference is `ref` everywhere and whose other side differs
    from it by `diff` in one element (float64, so the difference is what it says)."""
    a = np.full((2, 5), ref, np.float64)
    b = a.copy()
    b[1, 3] += diff
    [p] = compare({"ref": a, "other": b}, {"ref": pa, "other": pb}, floor, fp32_rel)
    assert p.max_abs == pytest.approx(abs(diff), rel=1e-9, abs=1e-15)
    return p


def no_floor():
    raise AssertionError("the noise floor was measured where the 1e-4 bound decides")


@pytest.mark.parametrize("sign", [1, -1])
def test_fp32_max_abs_is_1e4(sign):
    for floor, rel in ((None, None), (no_floor, None)):
        assert one_pair(sign * 1e-4 * UNDER, ref=0.5, floor=floor, fp32_rel=rel).ok
    p = one_pair(sign * 1e-4 * OVER, ref=0.5)
    assert not p.ok and p.tolerance == "max |a-b| <= 0.0001"
    assert one_pair(0.0).ok


def test_fp32_noise_floor_rule_is_four_times_the_measured_floor():
    calls = []

    def floor():
        calls.append(1)
        return 5e-5                       # the bound: max(1e-4, 4 x 5e-5) = 2e-4
    assert one_pair(2e-4 * UNDER, floor=floor).ok
    p = one_pair(2e-4 * OVER, floor=floor)
    assert not p.ok and "4 x the fp32 noise floor 5.00e-05" in p.tolerance
    assert len(calls) == 2                # measured for each compare() that needed it, lazily
    # a floor far below 1e-4 does not tighten the fp32 bound
    assert one_pair(1e-4 * UNDER, floor=lambda: 1e-7).ok
    assert not one_pair(4e-7 * 1e3, floor=lambda: 1e-7).ok


def test_the_noise_floor_is_measured_once_for_every_pair():
    calls = []

    def floor():
        calls.append(1)
        return 1e-3
    base = np.zeros((2, 5))
    outs = {"a": base, "b": base + 3e-3, "c": base + 5e-3}
    pairs = compare(outs, dict.fromkeys(outs, "fp32"), floor)
    assert [(p.reference, p.other, p.ok) for p in pairs] == [("a", "b", True), ("a", "c", False), ("b", "c", True)]
    assert len(calls) == 1


def test_fp32_rel_rule_without_a_floor():
    """What the engine gate uses where no torch measures the floor: |a-b| <= fp32_rel (1 + |ref|)."""
    ref = -1.0                               # (1 + |ref|) = 2: the bound is 2 x fp32_rel
    assert one_pair(2e-3 * UNDER, ref=ref, fp32_rel=1e-3).ok
    p = one_pair(2e-3 * OVER, ref=ref, fp32_rel=1e-3)
    assert not p.ok and "|a-b| <= 0.001 (1 + |ref|)" in p.tolerance
    assert not one_pair(2e-3 * UNDER, ref=ref).ok       # no floor, no fp32_rel: 1e-4 alone


@pytest.mark.parametrize("pa, pb, bound", [
    ("fp16", "fp16", 2e-2), ("fp32", "fp16", 2e-2), ("fp16", "fp32", 2e-2), ("tf32", "fp32", 2e-2),
    ("fp32", "tf32", 2e-2), ("bf16", "fp32", 8e-2), ("fp32", "bf16", 8e-2), ("fp16", "bf16", 8e-2),
    ("bf16", "tf32", 8e-2)])
@pytest.mark.parametrize("ref", [3.0, -3.0])
def test_reduced_precision_bounds_scale_with_the_reference(pa, pb, bound, ref):
    """fp16 / TF32 on either side: |a-b| <= 2e-2 (1 + |ref|); bf16 on either side: 8e-2 (1 + |ref|)."""
    limit = bound * (1 + abs(ref))            # 4 x the bound: a rule without (1 + |ref|) fails the first
    p = one_pair(limit * UNDER, ref=ref, pa=pa, pb=pb)
    assert p.ok and p.max_scaled == pytest.approx(bound * UNDER)
    assert not one_pair(limit * OVER, ref=ref, pa=pa, pb=pb).ok
    assert not one_pair(-limit * OVER, ref=ref, pa=pa, pb=pb).ok
    assert p.tolerance == f"|a-b| <= {bound:g} (1 + |ref|)"


def test_reduced_precision_bound_is_element_by_element():
    """A large difference where the reference is large is fine; a smaller one where it is small is
    not: the bound is per element, not max |a-b| against the largest |ref|."""
    ref = np.array([[100.0, 0.0]])
    ok = compare({"a": ref, "b": ref + [[1.9, 0.0]]}, {"a": "fp32", "b": "fp16"})[0]
    bad = compare({"a": ref, "b": ref + [[1.9, 0.0202]]}, {"a": "fp32", "b": "fp16"})[0]
    assert ok.ok and not bad.ok and bad.max_scaled == pytest.approx(0.0202)
