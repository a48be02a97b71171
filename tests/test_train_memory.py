"""Training memory (resgraph.memory, `check --memory`) against PyTorch, and per-block activation
checkpointing (to_torch(checkpointing=True), backends/torch/recompute.py).

The estimate's saved activations equal, byte for byte, what torch.autograd.graph.saved_tensors_hooks
see; its total lies within 20% of the peak of torch.profiler's memory timeline for a training step;
a checkpointed module has the same state-dict keys, loss, gradients and bn statistics, and a lower
peak. bench/train_memory.py measures the same on larger specs.
"""
import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

import resgraph
from resgraph.memory import SAVES, segments, training_memory
from resgraph.ops.table import BUILTIN

# every built-in op, each where autograd saves something of it (the first maxpool reads the image,
# which needs no gradient: it saves nothing)
EVERY_OP = """
resgraph: 1
name: every_op
input: {name: image, shape: [3, 12, 12]}
output: {name: logits}
blocks:
  merge:                                               # begins with an add that overwrites its input in place
    args: {skip: tensor}
    layers: [add: {from: [skip]}, relu]
layers:
  - maxpool: {id: pool0, kernel: 2, stride: 1, padding: same}
  - conv: {id: c1, out: 8, kernel: 2}                  # an even 'same' kernel: its padded copy is saved
  - groupnorm: {groups: 2}
  - prelu
  - project: {out: 8}
  - relu
  - conv_transpose: {id: up, out: 8, kernel: 2, stride: 2}
  - conv: {out: 8, kernel: 1}
  - merge: {id: m, skip: up}                           # a checkpointed block whose input is overwritten
  - avgpool: {kernel: 2, padding: same}
  - mish
  - leaky_relu: {slope: 0.1}
  - relu6
  - tanh
  - upsample: {scale: 2, mode: bilinear}
  - upsample: {scale: 1}
  - maxpool: {kernel: 2, padding: same}
  - dropout: {p: 0.3}
  - residual:
      id: r1
      shortcut: zeropad
      layers:
        - conv: {out: 16, kernel: 3, stride: 2}
        - layernorm
        - scale: {init: 0.5}
        - hardswish: {id: h}
        - global_avgpool
        - hardsigmoid: {id: gate}
        - mul: {in: h, from: [gate, gate]}
        - drop_path: {p: 0.2}
  - residual:
      id: r2
      layers:
        - conv: {out: 24, kernel: 1}
        - silu
        - identity
        - bn
      post: gelu
  - chunk: {id: halves, chunks: 2}
  - conv: {id: c2, out: 12, kernel: 1, in: halves.0}   # saves a part: a view that keeps all of r2.post
  - concat: {id: cat, from: [r1, halves.1]}
  - avgpool: {kernel: 3, stride: 1, padding: same}
  - global_avgpool
  - flatten
  - project: {out: 20}
  - bn
  - split: {id: parts, sizes: [8, 12]}
  - layernorm
  - sigmoid
  - dropout: {p: 0.1}
  - linear: {out: 10}
  - softmax
"""


@pytest.fixture(scope="module")
def every_op():
    return resgraph.check_text(EVERY_OP, "every_op.yaml").graph


@pytest.fixture(scope="module")
def resnet8():
    return resgraph.check(str(ROOT / "specs/cifar_resnet20_a.yaml"), vars={"n": 1}).graph


def hooked_bytes(model, x) -> int:
    """What autograd saves in one forward: each storage once, the module's own tensors aside."""
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in own:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(seen.values())


@pytest.mark.parametrize("which", ["every_op", "resnet8"])
def test_saved_bytes_equal_saved_tensors_hooks(which, request):
    g = request.getfixturevalue(which)
    if which == "every_op":
        assert set(BUILTIN) <= {n.op for n in g.nodes}, "EVERY_OP must use every op of the table"
    torch.manual_seed(0)
    model = resgraph.to_torch(g, seed=0)
    measured, estimated = hooked_bytes(model, torch.randn(3, *g.nodes[0].shape)), training_memory(g, 3).activations
    assert measured == estimated


def test_in_place_ops_overwrite_only_unsaved_outputs(every_op):
    """memory's premise: the ops whose output the lowering lets a relu or add overwrite in place
    (lower.py's _OVERWRITABLE) never save their own output, so overwriting changes no saved bytes."""
    from resgraph.backends.torch.lower import _OVERWRITABLE
    seen = set()
    for n in every_op.nodes[1:]:
        if n.op in _OVERWRITABLE:
            rule = SAVES[n.op](dict(n.args), [every_op[i].shape for i in n.inputs], n.shape, [True] * len(n.inputs))
            assert ("out",) not in rule, n.path
            seen.add(n.op)
    assert seen == _OVERWRITABLE


def profiled_peak(model, x, y) -> int:
    """The peak of torch.profiler's memory timeline over one SGD step (the second: the momentum exists)."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfileTimeline
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as p:
        step()
    _, sizes = MemoryProfileTimeline(p._memory_profile())._coalesce_timeline("cpu")
    return max(sum(s) for s in sizes)


@pytest.fixture(scope="module")
def peaks(resnet8):
    """ResNet-8's training-step peak at batch 16, without and with checkpointing."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    return {ck: profiled_peak(resgraph.to_torch(resnet8, seed=0, checkpointing=ck), x, y) for ck in (False, True)}


def test_estimate_within_20_percent_of_the_profiler(resnet8, peaks):
    est = training_memory(resnet8, 16, "sgd")
    assert 0.8 <= est.total / peaks[False] <= 1.2, (est.total, peaks[False])
    # with checkpointing: block inputs kept + the largest block's activations
    assert 0.8 <= (est.total - est.activations + est.checkpointed_activations) / peaks[True] <= 1.2


def test_checkpointing_lowers_the_peak(peaks):
    assert peaks[True] < 0.85 * peaks[False], peaks


def test_checkpointing_same_keys_loss_grads_and_statistics(every_op):
    plain = resgraph.to_torch(every_op, seed=0)
    ckpt = resgraph.to_torch(every_op, seed=0, checkpointing=True)
    assert list(ckpt.state_dict()) == list(plain.state_dict())
    assert ckpt.meta["resgraph"]["checkpointing"] == [name for name, _ in segments(every_op)]
    x = torch.randn(3, *every_op.nodes[0].shape)
    losses = []
    for m in (plain, ckpt):
        torch.manual_seed(1)   # dropout and drop_path draw the same masks
        loss = m(x).square().mean()
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == losses[1]
    for (k, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.equal(p.grad, q.grad), k
    for (k, b), c in zip(plain.named_buffers(), ckpt.buffers()):   # bn statistics move once, not again
        assert torch.equal(b, c), k
    ckpt.load_state_dict(plain.state_dict())   # checkpoints load either way


def test_check_memory_json_and_lean():
    """`check --memory --json` prints the estimate, and imports no torch."""
    code = ("import json, sys, contextlib, io\nfrom resgraph.cli import cli\nout = io.StringIO()\n"
            "with contextlib.redirect_stdout(out):\n"
            "    try: cli(['check', 'specs/resnet18.yaml', '--json', '--memory', '--batch', '4', '--optimizer', "
            "'adamw', '--checkpointing'], standalone_mode=False)\n    except SystemExit: pass\n"
            "print(json.dumps({'out': out.getvalue(), 'torch': 'torch' in sys.modules}))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60, check=True)
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["torch"] is False
    mem = json.loads(r["out"])["memory"]
    est = training_memory(resgraph.check(str(ROOT / "specs/resnet18.yaml")).graph, 4, "adamw")
    assert mem == est.to_json()
    assert mem["optimizer_state"] == 2 * mem["gradients"] == 2 * 4 * 11_689_512
    assert [b["name"] for b in mem["blocks"]][:2] == ["conv1..maxpool", "layer1.0"]


@pytest.mark.parametrize("args,where", [
    (["--batch", "8"], "--batch: error: --batch is an option of --memory"),
    (["--optimizer", "adamw"], "--optimizer: error: --optimizer is an option of --memory"),
    (["--checkpointing"], "--checkpointing: error: --checkpointing is an option of --memory"),
    (["--memory"], "--memory: error: --memory needs the batch size"),
    (["--memory", "--batch", "8", "--var", "n=1,2"], "--memory: error: --memory estimates one spec at a time"),
])
def test_memory_option_errors(args, where):
    from click.testing import CliRunner

    from resgraph.cli import cli
    r = CliRunner().invoke(cli, ["check", str(ROOT / "specs/cifar_resnet20_a.yaml"), *args])
    assert r.exit_code == 1 and r.stdout == ""
    assert where in r.stderr and "hint:" in r.stderr
