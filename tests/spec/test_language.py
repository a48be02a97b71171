"""The language, feature by feature: blocks, repeat/first, vars, residual sugar, scoping, edges, policies."""
import pytest

import resgraph
from resgraph.frontend import check_text
from resgraph.passes import find_stride

HEAD = "resgraph: 1\nname: t\n"


def ok(body: str, shape="[3, 8, 8]"):
    return check_text(HEAD + f"input: {{shape: {shape}}}\n" + body)


def err(body: str, shape="[3, 8, 8]"):
    with pytest.raises(resgraph.SpecError) as info:
        ok(body, shape)
    return info.value


def test_plain_list_is_a_chain_with_torchvision_style_names():
    g = ok("layers:\n  - conv: {out: 4, kernel: 3}\n  - bn\n  - relu\n  - conv: {out: 4, kernel: 3}\n  - bn\n").graph
    assert [n.path for n in g.nodes] == ["input", "conv1", "bn1", "relu1", "conv2", "bn2"]
    assert all(n.inputs == (g.nodes[i].path,) for i, n in enumerate(g.nodes[1:]))
    assert g.output == "bn2"


def test_auto_names_skip_explicit_ids():
    g = ok("layers:\n  - relu: {id: relu1}\n  - relu\n").graph
    assert [n.path for n in g.nodes[1:]] == ["relu1", "relu2"]


BLOCK = """blocks:
  basic:
    args: {out: null, stride: 1}
    residual:
      layers:
        - conv: {out: $out, kernel: 3, stride: $stride}
        - bn
        - relu
        - conv: {out: $out, kernel: 3}
        - bn
      post: relu
"""


def test_repeat_first_and_hierarchical_names():
    g = ok(BLOCK + "layers:\n  - basic: {id: stage, out: 8, repeat: 3, first: {stride: 2}}\n").graph
    assert g["stage.0.conv1"].args["stride"] == 2
    assert g["stage.1.conv1"].args["stride"] == 1 and g["stage.2.conv1"].args["stride"] == 1
    assert g["stage.0"].op == "add" and g["stage.0.post"].op == "relu"
    assert g["stage.1.conv1"].inputs == ("stage.0.post",)
    assert g.output == "stage.2.post"
    assert g["stage.2.post"].shape == (8, 4, 4)
    # the add's main input is the body; the skip is the block's input (through Ws at copy 0)
    assert g["stage.1"].inputs == ("stage.1.bn2", "stage.0.post")
    assert g["stage.0"].inputs == ("stage.0.bn2", "stage.0.shortcut.bn")
    assert g["stage.0.shortcut.conv"].inputs == ("input",)


def test_repeat_one_still_indexes():
    g = ok(BLOCK + "layers:\n  - basic: {id: s, out: 3, repeat: 1}\n").graph
    assert "s.0" in g and "s" not in g


def test_identity_shortcut_inserts_nothing():
    c = ok(BLOCK + "layers:\n  - basic: {out: 3}\n")
    assert c.graph.projections == () and not any(n.inserted for n in c.graph.nodes)


def test_references_to_repeat_copies_and_last_copy():
    g = ok(BLOCK + "layers:\n  - basic: {id: s, out: 3, repeat: 2}\n  - concat: {from: [s.0, s, input]}\n").graph
    assert g["concat1"].inputs == ("s.1.post", "s.0.post", "s.1.post", "input")
    assert g["concat1"].shape == (12, 8, 8)


def test_block_scope_is_local_and_input_means_block_input():
    text = """blocks:
  tap:
    layers:
      - conv: {id: a, out: 3, kernel: 1}
      - add: {from: [input, a]}
layers:
  - relu: {id: a}
  - tap
  - tap
"""
    g = ok(text).graph
    assert g["tap1.add1"].inputs == ("tap1.a", "a", "tap1.a")   # `input` is the block's input: the top-level 'a'
    assert g["tap2.add1"].inputs == ("tap2.a", "tap1.add1", "tap2.a")


def test_block_ids_are_not_visible_outside():
    e = err("blocks:\n  b:\n    layers:\n      - relu: {id: inner}\nlayers:\n  - b\n  - add: {from: [inner]}\n")
    assert "unknown id 'inner'" in e.message


def test_in_edge_and_skip():
    g = ok("layers:\n  - conv: {id: a, out: 4, kernel: 3}\n  - relu: {in: input}\n  - conv: {out: 4, kernel: 3}\n"
           "  - add: {from: [a]}\n").graph
    assert g["relu1"].inputs == ("input",)
    assert g["add1"].inputs == ("conv1", "a")   # automatic names count unnamed entries only


def test_vars_and_arithmetic():
    g = ok("vars: {w: 4, k: 3}\nlayers:\n  - conv: {out: \"$w * 4 + ($k - 1) // 2\", kernel: $k}\n").graph
    assert g["conv1"].args["out"] == 17 and g["conv1"].args["kernel"] == 3


def test_vars_in_input_shape_and_repeat():
    g = ok("vars: {n: 3, s: 16}\nlayers:\n  - relu: {repeat: $n}\n", shape="[3, $s, \"$s * 2\"]").graph
    assert g.nodes[0].shape == (3, 16, 32)
    assert [n.path for n in g.nodes[1:]] == ["relu1.0", "relu1.1", "relu1.2"]


def test_block_args_shadow_vars_and_defaults_apply():
    text = "vars: {out: 99}\ndefaults:\n  conv: {bias: false, kernel: 3}\n" \
           "blocks:\n  b:\n    args: {out: 5}\n    layers:\n      - conv: {out: $out}\nlayers:\n  - b\n  - b: {out: 6}\n  - conv: {out: $out, bias: true}\n"
    g = ok(text).graph
    assert g["b1.conv1"].args["out"] == 5 and g["b2.conv1"].args["out"] == 6
    assert g["b1.conv1"].args["bias"] is False and g["conv1"].args["bias"] is True and g["conv1"].args["out"] == 99
    assert g["conv1"].args["kernel"] == 3


def test_inline_residual_and_per_block_policy():
    text = """shortcut: projection
layers:
  - residual:
      id: r
      shortcut: zeropad
      layers:
        - conv: {out: 8, kernel: 3, stride: 2}
      post: relu
"""
    c = ok(text)
    (p,) = c.graph.projections
    assert (p.at, p.kind, p.stride, p.from_shape, p.to_shape) == ("r", "zeropad", 2, (3, 8, 8), (8, 4, 4))
    assert c.graph["r.shortcut"].op == "zeropad"


def test_per_add_policy_overrides_global():
    c = ok("shortcut: zeropad\nlayers:\n  - conv: {out: 6, kernel: 3}\n  - add: {from: [input], shortcut: projection}\n")
    assert c.graph.projections[0].kind == "conv1x1"


@pytest.mark.parametrize("policy,kind,nodes,params", [
    ("projection", "conv1x1", ["r.shortcut.conv", "r.shortcut.bn"], 4 * 8 + 16),
    ("zeropad", "zeropad", ["r.shortcut"], 0),
    ("avgpool_projection", "avgpool_conv1x1", ["r.shortcut.pool", "r.shortcut.conv", "r.shortcut.bn"], 4 * 8 + 16),
])
def test_policies(policy, kind, nodes, params):
    c = ok(f"shortcut: {policy}\nlayers:\n  - residual:\n      id: r\n      layers:\n"
           "        - conv: {out: 8, kernel: 3, stride: 2}\n", shape="[4, 7, 7]")
    (p,) = c.graph.projections
    assert (p.kind, list(p.nodes), p.params, p.stride, p.to_shape) == (kind, nodes, params, 2, (8, 4, 4))
    assert all(c.graph[n].inserted and c.graph[n].role == "shortcut" for n in nodes)
    if policy == "avgpool_projection":
        pool = c.graph["r.shortcut.pool"]
        assert pool.args["ceil_mode"] is True and pool.shape == (4, 4, 4)   # ceil(7 / 2) = 4
        assert c.graph["r.shortcut.conv"].args["stride"] == 1
    # the counts include Ws
    assert c.params == 3 * 3 * 4 * 8 + 8 + params


def test_avgpool_projection_stride_1_has_no_pool():
    c = ok("shortcut: avgpool_projection\nlayers:\n  - conv: {out: 8, kernel: 3}\n  - add: {from: [input]}\n")
    assert list(c.graph.projections[0].nodes) == ["add1.shortcut.conv", "add1.shortcut.bn"]


def test_vector_zeropad_and_projection():
    c = ok("shortcut: zeropad\nlayers:\n  - linear: {out: 8}\n  - add: {from: [input]}\n", shape="[5]")
    assert c.graph.projections[0].kind == "zeropad" and c.graph["add1.shortcut"].shape == (8,)
    c = ok("layers:\n  - linear: {out: 8}\n  - add: {from: [input]}\n", shape="[5]")
    assert c.graph.projections[0].kind == "linear" and c.graph.projections[0].params == 40


def test_add_with_several_skips_names_each_shortcut():
    c = ok("layers:\n  - relu: {id: a}\n  - conv: {out: 6, kernel: 3, stride: 2, id: b}\n"
           "  - conv: {out: 6, kernel: 3}\n  - add: {from: [a, b, input]}\n")
    assert [p.nodes[-1] for p in c.graph.projections] == ["add1.shortcut1.bn", "add1.shortcut3.bn"]
    assert c.graph["add1"].inputs == ("conv1", "add1.shortcut1.bn", "b", "add1.shortcut3.bn")


def test_explicit_project_op():
    c = ok("layers:\n  - project: {out: 16, stride: 2}\n")
    assert c.graph["project1"].shape == (16, 4, 4) and c.params == 3 * 16 + 32
    assert c.graph.projections == ()   # written by the author, not inserted


@pytest.mark.parametrize("src,dst,s", [((64, 56, 56), (128, 28, 28), 2), ((3, 7, 7), (3, 4, 4), 2),
                                       ((3, 7, 7), (3, 1, 1), 7), ((3, 9, 9), (3, 3, 3), 3),
                                       ((3, 56, 56), (3, 27, 27), None), ((3, 8, 6), (3, 4, 2), None)])
def test_find_stride(src, dst, s):
    assert find_stride(src, dst) == s


@pytest.mark.parametrize("n,k,s,pad,out", [(224, 7, 2, "same", 112), (112, 3, 2, "same", 56), (56, 1, 2, "valid", 28),
                                           (7, 3, 1, "same", 7), (8, 2, 2, "same", 4), (5, 3, 2, 1, 3), (4, 5, 1, "valid", 0)])
def test_conv_spatial_rule(n, k, s, pad, out):
    from resgraph.ops import spatial
    assert spatial(n, k, s, 1, pad)[0] == out


def test_maxpool_same_matches_torchvision_stem():
    g = ok("layers:\n  - maxpool: {kernel: 3, stride: 2, padding: same}\n  - maxpool: {kernel: 3, stride: 2, padding: 1}\n",
           shape="[64, 112, 112]").graph
    assert g["maxpool1"].shape == (64, 56, 56) and g["maxpool2"].shape == (64, 28, 28)


def test_pool_stride_defaults_to_kernel_and_ceil_mode():
    g = ok("layers:\n  - avgpool: {kernel: 2}\n  - maxpool: {kernel: 2, ceil_mode: true}\n", shape="[3, 9, 9]").graph
    assert g["avgpool1"].shape == (3, 4, 4) and g["avgpool1"].args["stride"] == 2
    assert g["maxpool1"].shape == (3, 2, 2)


def test_upsample_concat_global_pool_flatten_softmax():
    g = ok("layers:\n  - upsample: {scale: 2}\n  - concat: {from: [input], in: input}\n  - global_avgpool\n"
           "  - flatten\n  - softmax\n", shape="[3, 4, 4]").graph
    assert g["upsample1"].shape == (3, 8, 8)
    assert g["concat1"].shape == (6, 4, 4) and g["global_avgpool1"].shape == (6, 1, 1)
    assert g["flatten1"].shape == (6,) and g["softmax1"].shape == (6,)


def test_grouped_and_dilated_conv_counts():
    c = ok("layers:\n  - conv: {out: 8, kernel: 3, groups: 4, dilation: 2, bias: false}\n", shape="[8, 10, 10]")
    assert c.graph["conv1"].shape == (8, 10, 10)
    assert c.params == 8 * 2 * 9 and c.macs == 8 * 10 * 10 * 2 * 9


def test_warnings_dead_node_and_redundant_bias():
    c = ok("layers:\n  - conv: {out: 4, kernel: 3}\n  - bn: {id: b}\n  - relu: {id: dead, in: input}\n  - relu: {in: b}\n")
    msgs = [w.message for w in c.warnings]
    assert any("'dead' (relu) does not reach the output" in m for m in msgs)
    assert any("bias right before a bn" in m for m in msgs)
    assert c.to_json()["warnings"][0]["line"] >= 1


def test_passes_do_not_mutate_their_input():
    from resgraph.ir import expand
    from resgraph.passes import infer_shapes, insert_shortcuts, resolve_ops
    from resgraph.spec import parse_spec
    spec = parse_spec(HEAD + "input: {shape: [3, 8, 8]}\n" + BLOCK + "layers:\n  - basic: {out: 8, stride: 2}\n")
    g0 = expand(spec)
    g1 = resolve_ops(g0, spec)
    g2 = infer_shapes(g1)
    g3 = insert_shortcuts(g2)
    assert g1 is not g0 and all(n.shape is None for n in g1.nodes[1:])
    assert len(g2) == len(g1) and len(g3) == len(g2) + 2 and g2.projections == ()
    import dataclasses
    with pytest.raises(dataclasses.FrozenInstanceError):
        g3.nodes[1].path = "x"
    with pytest.raises(TypeError):
        g3.nodes[1].args["out"] = 1     # read-only mapping


def test_graph_prints_as_python():
    c = ok(BLOCK + "layers:\n  - basic: {id: s, out: 8, stride: 2}\n")
    text = str(c.graph)
    assert text.startswith("def t(input: f32[3, 8, 8]):")
    assert "    s_shortcut_conv = conv(input, out=8, kernel=1, stride=2" in text and "(inserted Ws)" in text
    assert text.rstrip().endswith("return s_post")
    compile(text.split("\n", 1)[0] + "\n" + "\n".join(l.split("#")[0] for l in text.splitlines()[1:]), "g", "exec")


def test_determinism():
    a, b = ok(BLOCK + "layers:\n  - basic: {out: 8, stride: 2}\n"), ok(BLOCK + "layers:\n  - basic: {out: 8, stride: 2}\n")
    assert str(a.graph) == str(b.graph) and a.to_json() == b.to_json()


def test_labels_file_relative_to_spec_and_preprocess(tmp_path):
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "classes.txt").write_text("cat\ndog\n\nbird\n")
    spec = tmp_path / "net.yaml"
    spec.write_text(HEAD + "input: {shape: [3, 8, 8]}\nlabels: labels/classes.txt\n"
                    "preprocess: {resize: 10, crop: 8, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}\n"
                    "layers:\n  - global_avgpool\n  - flatten\n  - linear: {out: 3}\n")
    c = resgraph.check(str(spec))
    assert c.spec.labels == ("cat", "dog", "bird")
    assert c.spec.preprocess["crop"] == 8 and c.spec.preprocess["std"] == [0.25] * 3
    spec.write_text(spec.read_text().replace("classes.txt", "missing.txt"))
    with pytest.raises(resgraph.SpecError) as info:
        resgraph.check(str(spec))
    assert "cannot read labels file 'labels/missing.txt'" in info.value.message


def test_boolean_vars_drive_bool_args():
    g = ok("vars: {b: false}\nlayers:\n  - conv: {out: 4, kernel: 3, bias: $b}\n").graph
    assert g["conv1"].args["bias"] is False


def test_ws_bn_follows_bn_defaults_but_ws_conv_ignores_conv_defaults():
    c = ok("defaults:\n  bn: {eps: 0.001}\n  conv: {bias: true, kernel: 3}\nlayers:\n  - residual:\n      id: r\n"
           "      layers:\n        - conv: {out: 8, stride: 2}\n        - bn\n")
    assert c.graph["r.shortcut.bn"].args["eps"] == 0.001 and c.graph["r.bn1"].args["eps"] == 0.001
    ws = c.graph["r.shortcut.conv"].args
    assert ws["bias"] is False and ws["kernel"] == 1


def test_warnings_once_per_source_line():
    c = ok(BLOCK + "layers:\n  - basic: {out: 3, repeat: 3}\n")
    bias = [w for w in c.warnings if "bias right before a bn" in w.message]
    assert len(bias) == 2 and "(and 2 more instances)" in bias[0].message


def test_every_shipped_spec_is_warning_free():
    from conftest import SPECS
    for p in SPECS:
        assert not resgraph.check(str(p)).warnings, p
