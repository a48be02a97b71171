"""Blocks that vary: `first: {block: NAME}` swaps in another block for a stage's first copy, and
blocks take tensor arguments (`args: {skip: tensor}`), so a U-Net decoder stage is a block."""
import pytest

from resgraph.errors import SpecError
from resgraph.frontend import check_text

HEAD = "resgraph: 1\nname: t\ninput: {shape: [3, 32, 32]}\ndefaults:\n  conv: {bias: false}\n"
STAGES = HEAD + """blocks:
  basic:
    args: {out: null}
    residual:
      layers: [conv: {out: $out, kernel: 3}, bn, relu, conv: {out: $out, kernel: 3}, bn]
      post: relu
  down:
    args: {out: null, stride: 2}
    residual:
      shortcut: zeropad
      layers: [conv: {out: $out, kernel: 3, stride: $stride}, bn, relu, conv: {out: $out, kernel: 3}, bn]
      post: relu
layers:
  - conv: {out: 16, kernel: 3}
  - basic: {id: layer2, out: 32, repeat: 3, first: {block: down}}
"""


def test_first_swaps_in_another_block_with_the_same_arguments():
    g = check_text(STAGES).graph
    assert g["layer2.0.conv1"].args["stride"] == 2 and g["layer2.1.conv1"].args["stride"] == 1
    assert [p.at for p in g.projections] == ["layer2.0"] and g.projections[0].kind == "zeropad"
    assert g["layer2.2"].shape == (32, 16, 16)
    # its arguments may differ too, and an unknown block is an error with a suggestion
    g = check_text(STAGES.replace("first: {block: down}", "first: {block: down, stride: 1}")).graph
    assert g["layer2.0"].shape == (32, 32, 32)
    with pytest.raises(SpecError) as e:
        check_text(STAGES.replace("first: {block: down}", "first: {block: dwon}"), "t.yaml")
    assert e.value.line == 20 and "first.block must name a block" in e.value.message and "'down'" in e.value.hint


UNET = HEAD.replace("[3, 32, 32]", "[3, 64, 64]") + """blocks:
  double:
    args: {out: null}
    layers: [conv: {out: $out, kernel: 3}, bn, relu, conv: {out: $out, kernel: 3}, bn, relu]
  down:
    args: {out: null}
    layers: [maxpool: {kernel: 2}, double: {out: $out}]
  up:
    args: {out: null, skip: tensor}
    layers:
      - conv_transpose: {out: $out, kernel: 2, stride: 2}
      - concat: {from: [skip]}
      - double: {out: $out}
layers:
  - double: {id: enc1, out: 16}
  - down: {id: enc2, out: 32}
  - down: {id: mid, out: 64}
  - up: {out: 32, skip: enc2}
  - up: {out: 16, skip: enc1}
  - conv: {out: 2, kernel: 1, bias: true}
"""


def test_a_unet_decoder_stage_is_a_block_with_a_skip_argument():
    c = check_text(UNET)
    g = c.graph
    # a block's value is its last node's: enc2 is the relu that ends it
    assert g["up1.concat1"].inputs == ("up1.conv_transpose1", "enc2.double1.relu2") and g["up1.concat1"].shape == (64, 32, 32)
    assert g["up2.concat1"].inputs == ("up2.conv_transpose1", "enc1.relu2") and g[g.output].shape == (2, 64, 64)
    assert c.params == 117_378 and c.warnings == ()


@pytest.mark.parametrize("call,line,words", [
    ("up: {out: 32}", 23, "needs tensor argument 'skip'"),
    ("up: {out: 32, skip: enc9}", 23, "unknown id 'enc9'"),
    ("up: {out: 32, skip: later}", 23, "tensor argument 'skip' 'later' is defined later"),
])
def test_tensor_argument_errors_are_located(call, line, words):
    text = UNET.replace("up: {out: 32, skip: enc2}", call).replace("- up: {out: 16, skip: enc1}",
                                                                      "- up: {id: later, out: 16, skip: enc1}")
    with pytest.raises(SpecError) as e:
        check_text(text, "u.yaml")
    assert any(d.loc.line == line and words in d.message for d in e.value.diagnostics), e.value.diagnostics


def test_parity_of_the_unet_with_onnx_runtime():
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from conftest import assert_onnx_parity
    assert_onnx_parity(check_text(UNET.replace("[3, 64, 64]", "[3, 16, 16]")))


def test_copy_is_the_index_of_the_copy_in_a_repeated_entrys_arguments():
    text = HEAD + """vars: {sd: 0.1}
blocks:
  b:
    args: {p: null}
    residual:
      layers: [conv: {out: 3, kernel: 3}, drop_path: {p: $p}]
layers:
  - b: {id: s1, p: "$sd * $copy", repeat: 3}
  - b: {id: s2, p: "$sd * (3 + $copy)", repeat: 2, first: {p: 0.5}}
  - conv: {out: "4 + $copy", kernel: 1, repeat: 2}
"""
    g = check_text(text).graph
    rates = [n.args["p"] for n in g.nodes if n.op == "drop_path"]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.5, 0.4])
    assert [n.shape[0] for n in g.nodes if n.path.startswith("conv1.")] == [4, 5]
    # outside a repeat it is an unknown name; a var of that name stands
    with pytest.raises(SpecError) as e:
        check_text(HEAD + 'layers:\n  - conv: {out: "$copy + 1", kernel: 1}\n')
    assert "copy" in e.value.message
    g = check_text(HEAD + "vars: {copy: 7}\nlayers:\n  - conv: {out: $copy, kernel: 1, repeat: 2}\n").graph
    assert [n.shape[0] for n in g.nodes[1:]] == [7, 7]


def test_first_block_takes_only_the_arguments_it_declares_from_the_call():
    text = STAGES.replace("  down:\n    args: {out: null, stride: 2}", "  down:\n    args: {out: null, stride: 2}") \
                 .replace("  basic:\n    args: {out: null}", "  basic:\n    args: {out: null, p: 0.0}") \
                 .replace("first: {block: down}", "p: 0.1, first: {block: down}")
    g = check_text(text).graph   # p is basic's: down does not declare it, and is not given it
    assert g["layer2.0.conv1"].args["stride"] == 2
    with pytest.raises(SpecError) as e:   # but what `first` itself says must fit the swapped block
        check_text(text.replace("first: {block: down}", "first: {block: down, width: 3}"), "t.yaml")
    assert "unknown argument 'width' for block 'down'" in e.value.message
