"""The op table: one row per op — its arguments, shape rule, parameter and MAC counts, and the
facts about the op that passes and back ends act on (see OpDef).

Shapes exclude the batch dimension: [C, H, W] for feature maps, [F] for vectors.
The rules (ops/shapes.py) are pure functions (args, input shapes) -> output shape that raise
ShapeError with the offending equation, in the manner of a type checker.
Back ends read `OPS[op]` and never re-derive a shape, nor keep their own lists of ops.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import KW_ONLY, MISSING, dataclass, fields

from ..limits import MAX_KERNEL, MAX_SCALE
from .args import MAX_PARTS, Above, Arg, Bool, Choice, Float, Ids, Int, Ints, Padding, Pair, Ref
from .shapes import (
    MAX_ELEMENTS,
    MAX_LAYER_PARAMS,
    Shape,
    ShapeError,
    add_shape,
    bn_shape,
    concat_shape,
    conv_macs,
    conv_params,
    conv_shape,
    conv_transpose_macs,
    conv_transpose_params,
    conv_transpose_shape,
    flatten_shape,
    fmt,
    global_pool_shape,
    hw,
    linear_params,
    linear_shape,
    mul_shape,
    norm_shape,
    pads,
    pool_shape,
    pool_stride,
    project_macs,
    project_params,
    project_shape,
    spatial,
    split_shape,
    transpose_pads,
    unchanged,
    upsample_shape,
    zeropad_shape,
)

__all__ = [
    "FACTS",
    "INFERENCE",
    "BUILTIN",
    "INIT_POLICIES",
    "MAX_ELEMENTS",
    "MAX_LAYER_PARAMS",
    "OPS",
    "PARTS",
    "SHORTCUT_POLICIES",
    "USER_OPS",
    "OpDef",
    "Shape",
    "ShapeError",
    "check_lowerings",
    "fmt",
    "pads",
    "spatial",
    "tensors",
    "transpose_pads",
]

# What an `add` does when an input's shape differs from the main input's (passes/shortcuts.py has the maths)
SHORTCUT_POLICIES = ("projection", "conv", "zeropad", "avgpool_projection", "error")
INFERENCE = ("keep", "noop")
# backends/torch/init.py has one function per name; "parts": each sub-layer by its own kind (an explicit Ws);
# "module": the module's own reset_parameters, all the way down (a plugin's module)
INIT_POLICIES = ("conv", "linear", "norm", "scale", "parts", "module")
# the per-op facts every row states, none with a default (OpDef's keyword-only fields)
FACTS = ("keeps_zero", "zeroable", "inference", "bn_folds_into", "init", "import_kind", "aliases")
_ALIAS = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class OpDef:
    name: str
    args: dict[str, Arg]
    shape: Callable[[dict, list[Shape]], Shape]
    params: Callable[[dict, list[Shape], Shape], int] = lambda a, i, o: 0
    macs: Callable[[dict, list[Shape], Shape], int] = lambda a, i, o: 0
    variadic: bool = False       # takes `from:` extra inputs (add, concat)
    user: bool = True            # False: only passes insert it
    doc: str = ""
    # defaults that depend on other arguments (a pool's stride is its kernel unless given): resolve_ops
    # applies it once, so shape rules and lowerings read complete arguments
    complete: Callable[[dict], dict] = lambda a: a
    # --- for ops that plugins register (ops/plugins.py); the built-ins leave these empty --------------
    weights: Callable[[dict, list[Shape], Shape], dict[str, tuple]] | None = None   # its tensors (see `tensors`)
    torch: str = ""    # "module:function" (args, input shapes, output shape) -> nn.Module, imported to lower it
    onnx: str = ""     # "module:function" (builder, node, input names) -> output name, as the ONNX column's
    plugin: str = ""   # the distribution that registered it; set by the loader
    _: KW_ONLY
    # --- facts (FACTS): required on every row, no defaults, checked below -------------------------
    # output exactly 0 wherever an input is 0, at initialisation (a callable of the args where the bias decides)
    keeps_zero: bool | Callable[[dict], bool]
    zeroable: bool              # `zero_residual` may zero its weight: its output is then its bias, 0 at init
    inference: str              # "keep", or "noop": the identity at inference, which drop_noops removes
    bn_folds_into: bool         # a bn reading only this op folds into its weight and bias (fold_batchnorm)
    init: str | None            # the init policy of its parameters (INIT_POLICIES); None: it has none
    import_kind: str | None     # the layer kind (an op's name) weight import pairs its tensors as; None: none
    aliases: tuple[str, ...]    # other frameworks' names for it, for the "resgraph calls it ..." hint

    def __post_init__(self):
        n = self.name
        assert isinstance(self.keeps_zero, bool) or callable(self.keeps_zero), (n, "keeps_zero", self.keeps_zero)
        assert isinstance(self.zeroable, bool), (n, "zeroable", self.zeroable)
        assert self.inference in INFERENCE, (n, "inference", self.inference)
        assert self.inference == "keep" or not (self.variadic or self.init), (n, "a noop has one input, no weights")
        assert isinstance(self.bn_folds_into, bool), (n, "bn_folds_into", self.bn_folds_into)
        assert self.init is None or self.init in INIT_POLICIES, (n, "init", self.init)
        assert not (self.zeroable or self.bn_folds_into) or self.init, (n, "zeroable and bn_folds_into need weights")
        assert self.import_kind is None or isinstance(self.import_kind, str), (n, "import_kind", self.import_kind)
        assert isinstance(self.aliases, tuple) and len(set(self.aliases)) == len(self.aliases), (n, self.aliases)
        assert all(isinstance(a, str) and _ALIAS.fullmatch(a) and a != n for a in self.aliases), (n, self.aliases)

    def with_defaults(self, **args) -> dict:
        """Every argument, the given ones over the defaults: the args of a node a pass creates."""
        return self.complete({**{k: a.default for k, a in self.args.items()}, **args})

    def zero_in_zero_out(self, args: dict) -> bool:
        """keeps_zero for a node with these (complete) arguments."""
        return self.keeps_zero(args) if callable(self.keeps_zero) else self.keeps_zero


def tensors(op: str, args: dict, ins: list, out) -> dict[str, tuple]:
    """The op's state-dict tensors (suffix -> shape), as every back end names them."""
    row = OPS.get(op)
    if row is not None and row.weights is not None:   # a plugin's op states its own
        return row.weights(args, ins, out)
    if op == "conv":
        t = {"weight": (args["out"], ins[0][0] // args["groups"], *hw(args["kernel"]))}
        return {**t, "bias": (args["out"],)} if args["bias"] else t
    if op == "conv_transpose":   # PyTorch's and ONNX's layout: [in, out / groups, k, k]
        t = {"weight": (ins[0][0], args["out"] // args["groups"], args["kernel"], args["kernel"])}
        return {**t, "bias": (args["out"],)} if args["bias"] else t
    if op == "linear":
        t = {"weight": (args["out"], ins[0][0])}
        return {**t, "bias": (args["out"],)} if args["bias"] else t
    if op in ("layernorm", "groupnorm"):
        return {"weight": (ins[0][0],), "bias": (ins[0][0],)}
    if op in ("scale", "prelu"):
        return {"weight": (ins[0][0],)}
    if op == "bn":
        c = ins[0][0]
        return {"weight": (c,), "bias": (c,), "running_mean": (c,), "running_var": (c,), "num_batches_tracked": ()}
    if op == "project":
        if len(ins[0]) == 1:
            return {"weight": (args["out"], ins[0][0])}
        c = args["out"]
        return {"conv.weight": (c, ins[0][0], 1, 1), "bn.weight": (c,), "bn.bias": (c,), "bn.running_mean": (c,),
                "bn.running_var": (c,), "bn.num_batches_tracked": ()}
    return {}



def Eps(default: float = 1e-5) -> Above:
    """A norm's eps, which divides by sqrt(variance + eps): on a constant input the variance is 0, and
    eps 0 makes 0 / 0 = NaN."""
    return Above("float", default, above=0,
                 why="eps keeps a constant input (variance 0) from dividing 0 by 0; e.g. 1.0e-5 (the default) or 1.0e-6")


def _unless_bias(a: dict) -> bool:
    """conv, conv_transpose, linear: x W + b is 0 at x = 0 only without b."""
    return not a.get("bias", True)


_ACT = "elementwise; shape unchanged"
# split's and chunk's: which part a node is. The expansion makes one node per part and sets it
_PART = Int(0, lo=0, hi=MAX_PARTS - 1, doc="which part this node is: set by resgraph for each part, never written")
# ops whose one entry becomes one node per part (ir/expand.py): the argument that says how many
PARTS = {"split": "sizes", "chunk": "chunks"}

OPS: dict[str, OpDef] = {op.name: op for op in [
    OpDef("conv", {"out": Int(), "kernel": Pair(), "stride": Pair(1), "padding": Padding("same", pair=True),
                   "dilation": Pair(1), "groups": Int(1), "bias": Bool(True)},
          conv_shape, conv_params, conv_macs,
          doc="2-D convolution; padding 'same' keeps ceil(in / stride); kernel, stride, dilation and padding "
              "may be [height, width] (kernel: [1, 7])",
          keeps_zero=_unless_bias, zeroable=False, inference="keep", bn_folds_into=True, init="conv",
          import_kind="conv", aliases=("conv2d", "convolution")),
    OpDef("conv_transpose", {"out": Int(), "kernel": Int(hi=MAX_KERNEL), "stride": Int(1, hi=MAX_KERNEL),
                             "padding": Padding("same"), "output_padding": Int(0, lo=0, hi=MAX_KERNEL),
                             "dilation": Int(1, hi=MAX_KERNEL), "groups": Int(1), "bias": Bool(True)},
          conv_transpose_shape, conv_transpose_params, conv_transpose_macs,
          doc="2-D transposed convolution (learned upsampling); padding 'same' gives exactly in × stride",
          keeps_zero=_unless_bias, zeroable=False, inference="keep", bn_folds_into=False, init="conv",
          import_kind="conv", aliases=()),
    OpDef("bn", {"eps": Float(1e-5, lo=0), "momentum": Float(0.1, lo=0, hi=1)}, bn_shape,
          lambda a, i, o: 2 * i[0][0], doc="batch normalisation over channels (or features)",
          keeps_zero=True, zeroable=True, inference="keep", bn_folds_into=False, init="norm", import_kind="bn",
          aliases=("batchnorm", "batchnorm2d", "batchnorm1d", "batch_norm", "bn2d")),
    OpDef("layernorm", {"eps": Eps()}, norm_shape("layernorm"), lambda a, i, o: 2 * i[0][0],
          doc="layer normalisation over channels, per pixel, on [C, H, W] (ConvNeXt's channels-first form), "
              "or over features on [F]",
          keeps_zero=True, zeroable=True, inference="keep", bn_folds_into=False, init="norm",
          import_kind="layernorm", aliases=()),
    OpDef("groupnorm", {"groups": Int(), "eps": Eps()}, norm_shape("groupnorm"),
          lambda a, i, o: 2 * i[0][0], doc="group normalisation: channels in `groups` groups",
          keeps_zero=True, zeroable=True, inference="keep", bn_folds_into=False, init="norm",
          import_kind="groupnorm", aliases=()),
    OpDef("scale", {"init": Float(1.0)}, norm_shape("scale"), lambda a, i, o: i[0][0],
          doc="a learned per-channel multiplier (layer scale), starting at `init`",
          keeps_zero=True, zeroable=True, inference="keep", bn_folds_into=False, init="scale",
          import_kind="scale", aliases=()),
    OpDef("drop_path", {"p": Float(lo=0, hi=1)}, unchanged,
          doc="stochastic depth: drops the whole input per sample with probability p in training (rescaled by "
              "1 / (1 - p)); the identity at inference",
          keeps_zero=True, zeroable=False, inference="noop", bn_folds_into=False, init=None, import_kind=None,
          aliases=()),
    OpDef("mul", {"from": Ids()}, mul_shape, variadic=True,   # keeps_zero: 0 if any input is
          doc="element-wise product of the main input and `from` inputs; numpy broadcasting (a [C, 1, 1] gate)",
          keeps_zero=True, zeroable=False, inference="keep", bn_folds_into=False, init=None, import_kind=None,
          aliases=()),
    OpDef("relu", {}, unchanged, doc=_ACT, keeps_zero=True, zeroable=False, inference="keep",
          bn_folds_into=False, init=None, import_kind=None, aliases=()),
    OpDef("relu6", {}, unchanged, doc=_ACT, keeps_zero=True, zeroable=False, inference="keep",
          bn_folds_into=False, init=None, import_kind=None, aliases=()),
    OpDef("sigmoid", {}, unchanged, doc=_ACT, keeps_zero=False, zeroable=False, inference="keep",
          bn_folds_into=False, init=None, import_kind=None, aliases=()),
    OpDef("tanh", {}, unchanged, doc=_ACT, keeps_zero=True, zeroable=False, inference="keep",
          bn_folds_into=False, init=None, import_kind=None, aliases=()),
    OpDef("gelu", {}, unchanged, doc=_ACT, keeps_zero=True, zeroable=False, inference="keep",
          bn_folds_into=False, init=None, import_kind=None, aliases=()),
    OpDef("silu", {}, unchanged, doc=_ACT, keeps_zero=True, zeroable=False, inference="keep",
          bn_folds_into=False, init=None, import_kind=None, aliases=("swish",)),
    OpDef("hardswish", {}, unchanged, doc=_ACT, keeps_zero=True, zeroable=False, inference="keep",
          bn_folds_into=False, init=None, import_kind=None, aliases=()),
    OpDef("hardsigmoid", {}, unchanged, doc=_ACT, keeps_zero=False, zeroable=False, inference="keep",
          bn_folds_into=False, init=None, import_kind=None, aliases=()),
    OpDef("prelu", {"init": Float(0.25)}, norm_shape("prelu"), lambda a, i, o: i[0][0],
          doc="parametric ReLU: max(0, x) + a min(0, x) with a learned slope a per channel (or feature), "
              "starting at `init` (He et al. 2015)",
          keeps_zero=True, zeroable=False, inference="keep", bn_folds_into=False, init="scale",
          import_kind="prelu", aliases=("parametric_relu",)),
    OpDef("mish", {}, unchanged, doc=_ACT + ": x tanh(softplus(x)) (Misra 2019)", keeps_zero=True, zeroable=False,
          inference="keep", bn_folds_into=False, init=None, import_kind=None, aliases=()),
    OpDef("leaky_relu", {"slope": Float(0.01)}, unchanged, doc=_ACT, keeps_zero=True, zeroable=False,
          inference="keep", bn_folds_into=False, init=None, import_kind=None, aliases=("leakyrelu",)),
    OpDef("maxpool", {"kernel": Pair(), "stride": Pair(0, lo=0), "padding": Padding("valid", pair=True),
                      "ceil_mode": Bool(False)},
          pool_shape("maxpool"), doc="max pooling; stride defaults to the kernel; kernel, stride and padding may be "
                                     "[height, width]", complete=pool_stride,
          keeps_zero=True, zeroable=False, inference="keep", bn_folds_into=False, init=None, import_kind=None,
          aliases=("maxpool2d", "max_pool")),
    OpDef("avgpool", {"kernel": Pair(), "stride": Pair(0, lo=0), "padding": Padding("valid", pair=True),
                      "ceil_mode": Bool(False)},
          pool_shape("avgpool"), doc="average pooling; stride defaults to the kernel; padding is never counted; "
                                     "kernel, stride and padding may be [height, width]",
          complete=pool_stride,
          keeps_zero=True, zeroable=False, inference="keep", bn_folds_into=False, init=None, import_kind=None,
          aliases=("avgpool2d", "avg_pool")),
    OpDef("global_avgpool", {}, global_pool_shape, doc="[C, H, W] -> [C, 1, 1]",
          keeps_zero=True, zeroable=False, inference="keep", bn_folds_into=False, init=None, import_kind=None,
          aliases=("adaptiveavgpool2d", "globalaveragepooling2d", "gap")),
    OpDef("flatten", {}, flatten_shape, doc="-> [C*H*W]",
          keeps_zero=True, zeroable=False, inference="keep", bn_folds_into=False, init=None, import_kind=None,
          aliases=()),
    OpDef("linear", {"out": Int(), "bias": Bool(True)}, linear_shape, linear_params,
          lambda a, i, o: i[0][0] * a["out"], doc="fully connected layer on vectors [F]",
          keeps_zero=_unless_bias, zeroable=False, inference="keep", bn_folds_into=True, init="linear",
          import_kind="linear", aliases=("dense", "fc", "fully_connected")),
    OpDef("dropout", {"p": Float(0.5, lo=0, hi=1)}, unchanged, doc="identity at inference",
          keeps_zero=True, zeroable=False, inference="noop", bn_folds_into=False, init=None, import_kind=None,
          aliases=()),
    OpDef("softmax", {}, unchanged, doc="over channels / features",
          keeps_zero=False, zeroable=False, inference="keep", bn_folds_into=False, init=None, import_kind=None,
          aliases=()),
    OpDef("add", {"from": Ids(), "shortcut": Choice(*SHORTCUT_POLICIES, default=None),
                  "project_from": Ref("where a Ws is inserted it reads this earlier entry (a pre-activation) "
                                      "instead of the input it stands for")},
          add_shape, variadic=True, doc="sum of the main input and `from` inputs; the Ws rule applies",
          keeps_zero=False, zeroable=False, inference="keep", bn_folds_into=False, init=None, import_kind=None,
          aliases=("sum", "skip")),
    OpDef("concat", {"from": Ids()}, concat_shape, variadic=True, doc="channels add up",
          keeps_zero=False, zeroable=False, inference="keep", bn_folds_into=False, init=None, import_kind=None,
          aliases=("cat", "concatenate")),
    OpDef("split", {"sizes": Ints(), "part": _PART}, split_shape("split"),
          doc="channels (or features) in consecutive parts of these sizes, as torch.split(x, sizes, 1): the "
              "entry ID makes ID.0, ID.1, ...; the next entry reads the last part",
          keeps_zero=True, zeroable=False, inference="keep", bn_folds_into=False, init=None, import_kind=None,
          aliases=()),
    OpDef("chunk", {"chunks": Int(hi=MAX_PARTS), "part": _PART}, split_shape("chunk"),
          doc="channels (or features) in `chunks` equal parts, as torch.chunk(x, chunks, 1) (CSP, C2f): the entry "
              "ID makes ID.0, ID.1, ...; the next entry reads the last part",
          keeps_zero=True, zeroable=False, inference="keep", bn_folds_into=False, init=None, import_kind=None,
          aliases=()),
    OpDef("upsample", {"scale": Int(hi=MAX_SCALE), "mode": Choice("nearest", "bilinear", default="nearest")},
          upsample_shape, doc="H, W times scale",
          keeps_zero=True, zeroable=False, inference="keep", bn_folds_into=False, init=None, import_kind=None,
          aliases=("upsampling2d", "interpolate")),
    OpDef("identity", {}, unchanged, doc="does nothing; useful as a named tap",
          keeps_zero=True, zeroable=False, inference="noop", bn_folds_into=False, init=None, import_kind=None,
          aliases=()),
    OpDef("project", {"out": Int(), "stride": Int(1, hi=MAX_KERNEL), "eps": Float(1e-5, lo=0),
                      "momentum": Float(0.1, lo=0, hi=1)}, project_shape, project_params, project_macs,
          doc="an explicit Ws: 1x1 conv (stride) + bn on maps, bias-free linear on vectors; "
              "eps and momentum are its bn's (default: defaults: {bn: ...})",
          # its conv and bn (or linear) initialise and import as those ops: no kind of its own
          keeps_zero=True, zeroable=False, inference="keep", bn_folds_into=False, init="parts", import_kind=None,
          aliases=("shortcut", "downsample", "projection")),
    # inserted by passes only
    OpDef("zeropad", {"out": Int(), "stride": Int(1, hi=MAX_KERNEL)}, zeropad_shape, user=False,
          doc="He et al. option A: every stride-th pixel, channels zero-padded to out",
          keeps_zero=True, zeroable=False, inference="keep", bn_folds_into=False, init=None, import_kind=None,
          aliases=()),
]}

USER_OPS = sorted(n for n, op in OPS.items() if op.user)
BUILTIN = frozenset(OPS)   # OPS grows by the plugin ops a process loads (ops/plugins.py); these are resgraph's


def check_facts(ops: dict[str, OpDef]) -> None:
    """At import, across rows: every row states every fact (no defaults crept in), no alias is an op's
    name or another op's alias, and an import kind is the kind of the op it names."""
    facts = [f for f in fields(OpDef) if f.kw_only]
    assert tuple(f.name for f in facts) == FACTS, facts
    assert all(f.default is MISSING and f.default_factory is MISSING for f in facts), "a fact has a default"
    seen: dict[str, str] = {}
    for op in ops.values():
        for a in op.aliases:
            assert a not in ops, f"alias '{a}' of {op.name} is the name of an op"
            assert a not in seen, f"alias '{a}' of {op.name} is already an alias of {seen.get(a)}"
            seen[a] = op.name
        k = op.import_kind
        assert k is None or (k in ops and ops[k].import_kind == k), f"{op.name}: import_kind {k!r} is no op's kind"


check_facts(OPS)


def check_lowerings(lower: dict, backend: str, module: str) -> None:
    """At a back end's import: one lowering for every built-in op of the table (plugin ops bring
    their own: OpDef.torch, .onnx), so a new op without its lowering fails there, naming what to add, not with a KeyError when a spec first uses it."""
    missing, unknown = sorted(BUILTIN - set(lower)), sorted(set(lower) - BUILTIN)
    if missing or unknown:
        raise ImportError(f"resgraph's {backend} back end " + "; ".join(
            x for x in (f"has no lowering for op(s) {', '.join(missing)}: add them to LOWER in {module}" if missing else "",
                        f"lowers op(s) the table does not have: {', '.join(unknown)}" if unknown else "") if x))
