"""A norm that divides by sqrt(variance + eps) needs eps > 0: on a constant input the variance is 0 and
eps 0 gives 0 / 0 = NaN. layernorm and groupnorm refuse it with a located error, the schema says
exclusiveMinimum, and the table in the docs says (> 0); bn keeps eps >= 0 (its running variance starts at
1, and imported weights may carry eps 0)."""
import pytest

from conftest import ROOT, run_cli
from resgraph.errors import SpecError
from resgraph.frontend import check_text
from resgraph.ops import OPS
from resgraph.spec.schema import json_schema

HEAD = "resgraph: 1\nname: t\ninput: {shape: [8, 6, 5]}\n"


@pytest.mark.parametrize("layer,col", [("layernorm: {eps: 0}", 22), ("groupnorm: {groups: 2, eps: 0.0}", 33),
                                       ("layernorm: {eps: -1.0e-6}", 22)])
def test_a_norms_eps_must_be_above_0(layer, col):
    with pytest.raises(SpecError) as e:
        check_text(HEAD + f"layers:\n  - {layer}\n", "t.yaml")
    (d,) = e.value.diagnostics
    assert (d.loc.line, d.loc.col) == (5, col)
    assert "'eps' must be > 0, got" in d.message and "dividing 0 by 0" in d.hint


def test_eps_0_from_defaults_is_refused_on_the_layer_that_takes_it():
    with pytest.raises(SpecError) as e:
        check_text(HEAD + "defaults:\n  layernorm: {eps: 0}\nlayers:\n  - layernorm\n", "t.yaml")
    assert (e.value.line, e.value.column) == (5, 20) and "'eps' must be > 0" in e.value.message


def test_bn_keeps_eps_0_and_a_small_eps_is_fine():
    c = check_text(HEAD + "layers:\n  - bn: {eps: 0}\n  - layernorm: {eps: 1.0e-12}\n  - groupnorm: {groups: 4, eps: 1.0e-6}\n")
    assert [n.args["eps"] for n in c.graph.nodes[1:]] == [0.0, 1e-12, 1e-6]


def test_the_schema_and_the_docs_say_the_bound():
    defs = json_schema(OPS)["$defs"]
    for op in ("layernorm", "groupnorm"):
        number = defs[f"args.{op}"]["properties"]["eps"]["anyOf"][0]
        assert number == {"type": "number", "exclusiveMinimum": 0}
    assert defs["args.bn"]["properties"]["eps"]["anyOf"][0] == {"type": "number", "minimum": 0}
    docs = (ROOT / "docs" / "spec-language.md").read_text()
    assert "| `layernorm` | `eps` 1e-5 (> 0" in docs and "`eps` 1e-5 (> 0) |" in docs


def test_the_cli_exits_1_with_the_located_error(write_spec):
    spec = write_spec(HEAD + "layers:\n  - layernorm: {eps: 0}\n")
    r = run_cli("check", spec)
    assert r.returncode == 1 and r.stdout == ""
    assert f"{spec}:5:22: error: layernorm: 'eps' must be > 0, got 0" in r.stderr and "hint:" in r.stderr
