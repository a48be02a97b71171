"""Property: whatever text arrives, check() returns a result or raises SpecError — never anything else.

Two generators: structured documents built from the language's own vocabulary (so that they get
deep into expansion and shape inference), and random mutations of the shipped specs' text.
"""
import string

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import resgraph
from resgraph.frontend import check_text
from resgraph.ops import OPS
from conftest import SPECS

WORDS = sorted(OPS) + ["residual", "basic", "input", "id", "in", "from", "repeat", "first", "out", "kernel",
                       "stride", "padding", "same", "valid", "layers", "post", "shortcut", "args", "$out", "$n",
                       "projection", "zeropad", "a", "b", "stem"]
scalars = st.one_of(st.integers(-3, 300), st.sampled_from(WORDS), st.booleans(), st.none(),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                    st.sampled_from(["$out * 2", "$n + 1", "($x", "1 // 0", "$out // $n"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.sampled_from(WORDS), inner, max_size=5)), max_leaves=40)
entry = st.one_of(st.sampled_from(WORDS), st.dictionaries(st.sampled_from(WORDS), values, min_size=1, max_size=2))
documents = st.fixed_dictionaries(
    {"resgraph": st.sampled_from([1, 1, 1, 2, "1"]), "name": st.sampled_from(["t", "x-y", "1bad"]),
     "input": st.fixed_dictionaries({"shape": st.lists(st.integers(0, 40), min_size=0, max_size=4)}),
     "layers": st.lists(entry, max_size=8)},
    optional={"vars": st.dictionaries(st.sampled_from(["n", "out", "x"]), values, max_size=3),
              "shortcut": st.sampled_from(["projection", "zeropad", "avgpool_projection", "error", "bogus"]),
              "blocks": st.dictionaries(st.sampled_from(["basic", "b", "conv"]), st.fixed_dictionaries(
                  {"args": st.dictionaries(st.sampled_from(["out", "stride", "n"]), st.one_of(st.none(), st.integers(1, 8))),
                   "layers": st.lists(entry, max_size=5)}), max_size=2),
              "defaults": st.dictionaries(st.sampled_from(sorted(OPS)), st.dictionaries(st.sampled_from(WORDS), scalars))})


def outcome(text):
    try:
        return check_text(text, "fuzz.yaml")
    except resgraph.SpecError as e:
        assert e.diagnostics
        lines = text.splitlines()   # as YAML counts lines (\r, \r\n, \n, \x85, \u2028, \u2029) and render.py shows them
        for d in e.diagnostics:   # every diagnostic points into the spec: 1-based line and column, a message
            assert d.loc.file == "fuzz.yaml" and d.loc.line >= 1 and d.loc.col >= 1 and d.message, d
            # at most one past the end (a YAML error at the end of input), never beyond
            assert d.loc.line <= len(lines) + 1, (d, len(lines))
            if d.loc.line <= len(lines):
                assert d.loc.col <= len(lines[d.loc.line - 1]) + 1, (d, lines[d.loc.line - 1])
        return e


SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@SETTINGS
@given(documents)
def test_structured_documents(doc):
    outcome(yaml.safe_dump(doc, sort_keys=False))


SOURCES = [p.read_text() for p in SPECS]


@SETTINGS
@given(st.sampled_from(SOURCES), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 6),
                                                    st.text(alphabet=string.printable, max_size=6)), max_size=4))
def test_mutated_specs(text, edits):
    for pos, cut, insert in edits:
        pos %= max(len(text), 1)
        text = text[:pos] + insert + text[pos + cut:]
    outcome(text)


@SETTINGS
@given(st.text(max_size=200))
def test_arbitrary_text(text):
    outcome(text)
