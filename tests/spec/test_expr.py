"""The safe expression evaluator: arithmetic works, nothing else does."""
import pytest

from resgraph.spec.expr import ExprError, evaluate

ENV = {"out": 64, "k": 3, "w": 0.5, "mode": "nearest", "flag": True}


@pytest.mark.parametrize("text,value", [
    ("$out", 64), ("$out * 4", 256), ("($out + 1) // 2", 32), ("-$k + 10", 7), ("2 * (3 + $k) - 1", 11),
    ("$out // 3 * 3", 63), ("$w * 4", 2.0), ("$mode", "nearest"), ("  $k  ", 3), ("--$k", 3),
])
def test_values(text, value):
    assert evaluate(text, ENV) == value


@pytest.mark.parametrize("text,fragment", [
    ("__import__('os')", "cannot read"), ("$out.__class__", "cannot read"), ("$out ** 2", "unexpected"),
    ("$nope", "unknown variable"), ("$out +", "ends too early"), ("($out", "missing ')'"), ("$out // 0", "division by zero"),
    ("$mode * 2", "not a number"), ("$flag + 1", "not a number"), ("9" * 20 + " * " + "9" * 20, "evaluates beyond"),
    ("(" * 40 + "1" + ")" * 40, "nested too deeply"), ("$out " * 100, "longer than"), ("1 2", "unexpected"),
    ("lambda: 1", "cannot read"), ("[1, 2]", "cannot read"),
])
def test_rejections(text, fragment):
    with pytest.raises(ExprError) as info:
        evaluate(text, ENV)
    assert fragment in info.value.message and info.value.hint


def test_did_you_mean_for_variables():
    with pytest.raises(ExprError) as info:
        evaluate("$otu * 2", ENV)
    assert "'out'" in info.value.hint
