"""A Ws that probably hides a mistake is a located warning naming both shapes and the layer that caused
it, and `check --strict` fails on it; the paper's own shortcuts (every shipped spec) stay silent."""
import subprocess
import sys

import pytest

from conftest import SPECS, run_cli
from resgraph.frontend import check_text

HEAD = "resgraph: 1\nname: t\ninput: {shape: [3, 32, 32]}\n"
BASIC = """blocks:
  basic:
    args: {out: null, stride: 1}
    residual:
      layers:
        - conv: {out: $out, kernel: 3, stride: $stride, bias: false}
        - bn
        - relu
        - conv: {out: $out, kernel: 3, stride: STRIDE2, bias: false}
        - bn
      post: relu
layers:
  - conv: {out: 16, kernel: 3, bias: false}
  - basic: {out: 16}
  - basic: {out: 32, stride: 2, repeat: 2}
"""


def warnings(text, file="t.yaml"):
    return [w for w in check_text(text, file).warnings if "Ws" in w.message]


def test_a_stride_copied_onto_both_convs_of_a_block_is_flagged():
    (w,) = warnings(HEAD + BASIC.replace("STRIDE2", "$stride"))
    assert w.loc.line == 7 and "stride 4" in w.message and "[16, 32, 32]" in w.message and "[32, 8, 8]" in w.message
    assert "'basic2.0.conv1' (conv stride 2, line 9)" in w.message and "'basic2.0.conv2' (conv stride 2, line 12)" in w.message
    assert "(and 1 more instance)" in w.message and "stride 1 to all but one" in w.hint
    assert warnings(HEAD + BASIC.replace("STRIDE2", "1")) == []   # the paper's basic block


def test_a_stride_3_projection_is_flagged_even_from_one_layer():
    (w,) = warnings(HEAD + "layers:\n  - residual:\n      layers:\n        - conv: {out: 8, kernel: 3, stride: 3}\n")
    assert "stride 3" in w.message and "'residual1.conv1' (conv stride 3, line 7)" in w.message
    assert "check the stride of 'residual1.conv1'" in w.hint


def test_an_add_after_a_concat_is_flagged_as_an_explicit_add():
    text = HEAD + ("layers:\n  - conv: {out: 16, kernel: 3, id: a}\n  - conv: {out: 16, kernel: 3, id: b}\n"
                   "  - concat: {from: [a]}\n  - add: {from: [b]}\n")
    (w,) = warnings(text)
    assert w.loc.line == 8 and "explicit add 'add1'" in w.message and "b [16, 32, 32]" in w.message
    assert "[32, 32, 32]" in w.message and "shortcut: projection" in w.hint
    assert warnings(text.replace("{from: [b]}", "{from: [b], shortcut: projection}")) == []   # meant: silent


def test_channels_that_shrink_through_a_projection_name_the_layer_that_set_them():
    text = HEAD + ("layers:\n  - conv: {out: 16, kernel: 3, id: a}\n  - residual:\n      layers:\n"
                   "        - conv: {out: 16, kernel: 3}\n        - conv: {out: 8, kernel: 1}\n")
    (w,) = warnings(text)
    assert w.loc.line == 6 and "shrinks channels 16 -> 8" in w.message and "'residual1.conv2' (conv, line 9)" in w.message


def test_strict_fails_with_the_warning_and_plain_check_passes(tmp_path):
    spec = tmp_path / "t.yaml"
    spec.write_text(HEAD + BASIC.replace("STRIDE2", "$stride"))
    cmd = [sys.executable, "-m", "resgraph", "check", str(spec)]
    plain, strict = subprocess.run(cmd, capture_output=True, text=True), \
        subprocess.run(cmd + ["--strict"], capture_output=True, text=True)
    assert plain.returncode == 0 and strict.returncode == 1
    assert f"{spec}:7:5: warning: the Ws at 'basic2.0'" in strict.stderr


HARD = """blocks:
  basic:
    args: {out: null, stride: 1}
    residual:
      layers:
        - conv: {out: $out, kernel: 3, stride: $stride, bias: false}
        - bn
        - relu
        - conv: {out: WIDTH, kernel: 3, bias: false}
        - bn
      post: relu
layers:
  - conv: {out: 16, kernel: 3, bias: false}
  - basic: {id: layer1, out: 16, repeat: 2}
  - basic: {id: layer2, out: 32, repeat: 2, first: {stride: 2}}
  - basic: {id: layer3, out: 64, repeat: 2, first: {stride: 2}}
"""


def test_a_width_hard_coded_in_a_repeated_block_is_flagged_at_the_number():
    """`out: 32` for `out: $out`: every copy is 32 wide whatever its call says, and layer1.0 (a copy that
    neither strides nor is asked to widen: out 16 on 16 channels) gets a stride-1 Ws 16 -> 32 for it,
    which used to pass check --strict. layer2.0 and layer3.0 stride, so their Ws look like a stage's."""
    (w,) = warnings(HEAD + HARD.replace("WIDTH", "32"))
    assert (w.loc.line, w.loc.col) == (12, 23) and w.severity == "warning"
    assert w.message.startswith("'out: 32' is written as a number in block 'basic', so the Ws at 'layer1.0' "
                                "(called at line 17) maps conv1 [16, 32, 32] -> main branch layer1.0.bn2 [32, 32, 32]")
    assert "at stride 1" in w.message and "out: $out" in w.hint
    assert warnings(HEAD + HARD.replace("WIDTH", "$out")) == []                        # the paper's block
    meant = HARD.replace("WIDTH", "$width").replace("{out: null, stride: 1}", "{out: null, stride: 1, width: 32}")
    assert warnings(HEAD + meant) == []                          # a fixed width, said so: the hint's way out


def test_a_hard_coded_width_fails_strict_through_the_cli(write_spec):
    spec = write_spec(HEAD + HARD.replace("WIDTH", "32"))
    plain, strict = run_cli("check", spec), run_cli("check", "--strict", spec)
    assert plain.returncode == 0 and strict.returncode == 1
    assert f"{spec}:12:23: warning: 'out: 32' is written as a number in block 'basic'" in strict.stderr


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_shipped_specs_have_no_shortcut_warnings(path):
    assert warnings(path.read_text(), str(path)) == []   # its own path: a labels file is read beside it


def test_a_squeeze_excitation_gate_is_not_mistaken_for_downsampling():
    """The walk back from the add follows the map through `mul`, not the [C, 1, 1] gate, whose
    global_avgpool would otherwise look like a second downsampling layer."""
    text = HEAD + """blocks:
  se_basic:
    args: {out: null, stride: 1}
    residual:
      layers:
        - conv: {out: $out, kernel: 3, stride: $stride}
        - bn: {id: b}
        - global_avgpool
        - conv: {out: $out, kernel: 1}
        - sigmoid
        - mul: {from: [b]}
      post: relu
layers:
  - se_basic: {out: 16, stride: 2}
"""
    assert warnings(text) == []
    (w,) = warnings(text.replace("- mul: {from: [b]}", "- mul: {from: [b]}\n        - maxpool: {kernel: 2}"))
    assert "'se_basic1.conv1' (conv stride 2, line 9), 'se_basic1.maxpool1' (maxpool stride 2, line 15)" in w.message
