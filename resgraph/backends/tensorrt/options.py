"""What an engine is built with: precision, batch profile, input shapes (profile.py), builder options;
and how a precision becomes TensorRT network flags and builder flags on each TensorRT version. Pure:
no TensorRT import.

Precision (the engine's compute; input and output stay fp32, as in model.onnx):
    fp32   fp32 model.onnx; TF32 cleared (TensorRT enables it by default: fp32 means fp32 here,
           as on every resgraph back end)
    tf32   fp32 model.onnx; TF32 allowed for convolutions and matmuls (10-bit mantissa)
    fp16   TensorRT >= 10.12: a strongly typed network from the fp16 model.onnx that
           `compile --precision fp16` emits (the ONNX types decide every layer's precision; TensorRT
           11 has no FP16 builder flag). Older 10.x: the FP16 builder flag (from either model.onnx).
           TF32 cleared on both, so what stays fp32 computes in fp32.
    bf16   TensorRT 10.x: the BF16 builder flag on the fp32 model.onnx (deprecated from 10.12, still
           there). TensorRT 11 builds only strongly typed networks and resgraph emits no bf16
           model.onnx yet (ONNX's Conv takes bf16 from opset 22): refused there, with the reason.
    int8   an int8 folder only (`resgraph quantize` or `compile --precision int8`), and an int8 folder
           only int8: a strongly typed network from model.s8.onnx (Q/DQ, int8 zero point 0: what
           TensorRT requires; Manifest.onnx_file), on every supported TensorRT (STRONGLY_TYPED exists
           from 10.0). The Q/DQ pairs decide which layers compute in int8 (explicit quantization);
           no INT8 or FP16 builder flag, which a strongly typed network refuses. TF32 cleared: the
           layers kept float (--keep-float, the output's) compute in fp32.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from ...errors import OptionError
from ...limits import MAX_BATCH
from .profile import ShapeProfile, parse_shapes, parse_trtexec

PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "int8")
HARDWARE_COMPATIBILITY = ("none", "ampere-plus", "same-compute-capability")
STRONGLY_TYPED_FROM = (10, 12)     # the first TensorRT whose strongly typed fp16 networks resgraph builds
# (int8 ones: every supported version; NetworkDefinitionCreationFlag.STRONGLY_TYPED is in 10.0)
MAKE_INT8 = ("make an int8 folder from this one and build from it: resgraph quantize FOLDER --calibrate INPUT... "
             "-o OUT (or resgraph compile SPEC --weights W --precision int8 --calibrate INPUT...), then "
             "resgraph engine build OUT --precision int8")


def version_tuple(version: str) -> tuple[int, ...]:
    """'10.16.1.11' -> (10, 16, 1, 11); a suffix such as '.post1' is ignored."""
    out = []
    for part in version.split("."):
        digits = "".join(c for c in part if c.isdigit()) if part[:1].isdigit() else ""
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


@dataclass(frozen=True)
class BatchProfile:
    """The optimisation profile of the batch dimension (the spec fixes every other one)."""
    min: int
    opt: int
    max: int

    def __post_init__(self):
        """Positive integers, MIN <= OPT <= MAX <= MAX_BATCH: a profile parsed, rebuilt or read back from an
        engine.json (where a forged one is a damaged engine.json) holds nothing else."""
        values = (self.min, self.opt, self.max)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values) or \
                not 1 <= self.min <= self.opt <= self.max <= MAX_BATCH:
            raise OptionError.at("--batch", f"{':'.join(map(str, values))} is not a batch profile",
                                 f"MIN <= OPT <= MAX, positive integers up to {MAX_BATCH:,}, e.g. 1:32:256")

    @classmethod
    def parse(cls, text: str, where: str = "--batch") -> "BatchProfile":
        """'8' -> 8:8:8, '1:256' -> 1:256:256 (opt = max), '1:32:256' as written."""
        parts = str(text).split(":")
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            nums = []
        if not 1 <= len(parts) <= 3 or len(nums) != len(parts) or any(n < 1 for n in nums):
            raise OptionError.at(where, f"'{text}' is not a batch profile", "MIN:OPT:MAX of positive integers, e.g. "
                                 "1:32:256 (or N for a fixed batch, MIN:MAX for opt = max)")
        lo, opt, hi = (nums * 3)[:3] if len(nums) == 1 else (nums[0], nums[-1], nums[-1]) if len(nums) == 2 else nums
        if not lo <= opt <= hi:
            raise OptionError.at(where, f"'{text}': needs MIN <= OPT <= MAX", "e.g. 1:32:256")
        return cls(lo, opt, hi)

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"

    def contains(self, n: int) -> bool:
        return self.min <= n <= self.max

    def sizes(self) -> tuple[int, ...]:
        """MIN, OPT and MAX without repeats: the batch sizes the parity gate runs."""
        return tuple(dict.fromkeys((self.min, self.opt, self.max)))


@dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp32"
    batch: BatchProfile = BatchProfile(1, 32, 32)
    workspace_mib: int | None = None            # None: TensorRT's default (the device's memory)
    optimization_level: int = 3                 # builder_optimization_level, 0..5 (TensorRT's default 3)
    timing_cache: str | None = None             # None: default_timing_cache(); "" : no timing cache
    hardware_compatibility: str = "none"        # none | ampere-plus | same-compute-capability
    version_compatible: bool = False            # runs on later TensorRT of the same major (lean runtime)
    shapes: tuple[ShapeProfile, ...] = ()       # the inputs' profiles given (--shapes); the rest: profile.resolve
    # the option each point (MIN, OPT, MAX) of the shapes came from, where a problem with it is shown
    # (not recorded)
    shapes_from: tuple[str, str, str] = field(default=("--shapes",) * 3, compare=False, repr=False)

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise OptionError.at("--precision", f"unknown engine precision '{self.precision}'", " | ".join(PRECISIONS))
        if not 0 <= self.optimization_level <= 5:
            raise OptionError.at("--opt-level", f"builder optimisation level {self.optimization_level} is not in 0..5",
                                 "0 builds fastest, 5 searches longest (TensorRT's default: 3)")
        if self.workspace_mib is not None and self.workspace_mib < 1:
            raise OptionError.at("--workspace", f"workspace {self.workspace_mib} MiB", "a positive number of MiB")
        if self.hardware_compatibility not in HARDWARE_COMPATIBILITY:
            raise OptionError.at("--hardware-compatibility", f"unknown level '{self.hardware_compatibility}'",
                                 " | ".join(HARDWARE_COMPATIBILITY))
        for p in self.shapes:      # one batch: the inputs' shapes' and --batch's
            if (p.min[0], p.opt[0], p.max[0]) != (self.batch.min, self.batch.opt, self.batch.max):
                raise OptionError.at("--batch", f"the batch profile is {self.batch}, but {p} gives "
                                     f"{p.min[0]}:{p.opt[0]}:{p.max[0]}",
                                     "every input has one batch: give it in --shapes (every input alike) or --batch")

    def to_json(self) -> dict:
        return {"precision": self.precision, "batch": [self.batch.min, self.batch.opt, self.batch.max],
                "workspace_mib": self.workspace_mib, "optimization_level": self.optimization_level,
                "timing_cache": self.timing_cache, "hardware_compatibility": self.hardware_compatibility,
                "version_compatible": self.version_compatible, "shapes": [p.to_json() for p in self.shapes]}

    @classmethod
    def from_json(cls, d: dict) -> "BuildOptions":
        return cls(precision=d["precision"], batch=BatchProfile(*d["batch"]), workspace_mib=d["workspace_mib"],
                   optimization_level=d["optimization_level"], timing_cache=d["timing_cache"],
                   hardware_compatibility=d["hardware_compatibility"], version_compatible=d["version_compatible"],
                   shapes=tuple(ShapeProfile.from_json(p) for p in d.get("shapes", ())))   # format 1: none

    def command_flags(self) -> str:
        """The `resgraph engine build` flags that reproduce these options."""
        flags = [f"--precision {self.precision}", f"--shapes {','.join(map(str, self.shapes))}" if self.shapes
                 else f"--batch {self.batch}"]
        if self.workspace_mib is not None:
            flags.append(f"--workspace {self.workspace_mib}")
        if self.optimization_level != 3:
            flags.append(f"--opt-level {self.optimization_level}")
        if self.hardware_compatibility != "none":
            flags.append(f"--hardware-compatibility {self.hardware_compatibility}")
        if self.version_compatible:
            flags.append("--version-compatible")
        return " ".join(flags)


def shapes_from_flags(shapes: str | None, min_shapes: str | None, opt_shapes: str | None,
                      max_shapes: str | None) -> tuple[tuple[ShapeProfile, ...] | None, tuple[str, str, str]]:
    """(the profiles given, None where none; the option each point came from)."""
    trtexec = [t for t in (min_shapes, opt_shapes, max_shapes) if t is not None]
    if shapes is not None and trtexec:
        raise OptionError.at("--shapes", "--shapes and --min-shapes/--opt-shapes/--max-shapes together",
                             "give MIN:OPT:MAX per input in --shapes, or trtexec's three options, not both")
    if shapes is not None:
        return parse_shapes(shapes), ("--shapes",) * 3
    if trtexec:
        return parse_trtexec(min_shapes, opt_shapes, max_shapes)
    return None, ("--shapes",) * 3


def _batch_and_shapes(batch: str | None, shapes, base: "BuildOptions") -> tuple[BatchProfile, tuple]:
    """The batch profile and shapes from --batch and the shapes given: the shapes' batch (every input's
    the same, and --batch's where both are given); --batch alone keeps `base`'s shapes at its batch."""
    b = BatchProfile.parse(batch) if batch is not None else None
    if shapes is None:
        if b is None:
            return base.batch, base.shapes
        return b, tuple(ShapeProfile(p.name, (b.min, *p.min[1:]), (b.opt, *p.opt[1:]), (b.max, *p.max[1:]))
                        for p in base.shapes)
    batches = {(p.min[0], p.opt[0], p.max[0]) for p in shapes}
    if len(batches) > 1:
        raise OptionError.at("--shapes", "the inputs' batches differ (" + ", ".join(
            f"{p.name} {p.min[0]}:{p.opt[0]}:{p.max[0]}" for p in shapes) + ")", "every input has one batch profile")
    given = BatchProfile(*batches.pop())
    if b is not None and b != given:
        raise OptionError.at("--batch", f"--batch {b}, but the shapes give the batch {given}",
                             "give the batch once: in the shapes (the first dim), or with --batch alone")
    return given, shapes


def from_flags(precision, batch, workspace, opt_level, timing_cache, no_timing_cache, hardware_compatibility,
               version_compatible, base: BuildOptions | None = None, shapes: str | None = None,
               min_shapes: str | None = None, opt_shapes: str | None = None,
               max_shapes: str | None = None) -> BuildOptions:
    """BuildOptions from the engine flags of the command line (trtexec's in brackets in their help);
    what is not given comes from `base` (the engine being rebuilt), else the defaults."""
    if timing_cache and no_timing_cache:
        raise OptionError.at("--timing-cache", "--timing-cache and --no-timing-cache together", "give one of them")
    b = base or BuildOptions(precision=precision or "fp32")
    given, sources = shapes_from_flags(shapes, min_shapes, opt_shapes, max_shapes)
    profile, shaped = _batch_and_shapes(batch, given, b)
    return BuildOptions(
        precision=precision or b.precision, batch=profile, shapes=shaped, shapes_from=sources,
        workspace_mib=workspace if workspace is not None else b.workspace_mib,
        optimization_level=opt_level if opt_level is not None else b.optimization_level,
        timing_cache="" if no_timing_cache else timing_cache,
        hardware_compatibility=hardware_compatibility or b.hardware_compatibility,
        version_compatible=bool(version_compatible) if version_compatible is not None else b.version_compatible)


@dataclass(frozen=True)
class TypingPlan:
    """How a precision is asked of one TensorRT version."""
    strongly_typed: bool
    set_flags: tuple[str, ...]       # BuilderFlag members to set
    clear_flags: tuple[str, ...]     # ... and to clear


def typing_plan(precision: str, onnx_precision: str, trt_version: tuple[int, ...], where: str) -> TypingPlan:
    """The network flags and builder flags that give `precision` from a model.onnx of
    `onnx_precision` (fp32 | fp16 | int8: the folder's, whose model.s8.onnx TensorRT reads) on TensorRT
    `trt_version`; a combination that cannot be built is an OptionError (at `where`: the option, or the
    model file it does not fit) that says what would work."""
    if onnx_precision == "int8" or precision == "int8":
        return int8_plan(precision, onnx_precision, where)
    strong = trt_version >= STRONGLY_TYPED_FROM
    if onnx_precision == "fp16" and precision != "fp16":
        raise OptionError.at(where, f"model.onnx is fp16 (compiled with --precision fp16): it cannot give a "
                             f"{precision} engine", "build --precision fp16 from it, or recompile with --precision "
                             "fp32 for an fp32/tf32/bf16 engine")
    if precision == "fp32":
        return TypingPlan(strong, (), ("TF32",))
    if precision == "tf32":
        return TypingPlan(strong, ("TF32",), ())
    if precision == "fp16":
        if not strong:
            return TypingPlan(False, ("FP16",), ("TF32",))
        if onnx_precision != "fp16":
            raise OptionError.at(where, "an fp16 engine on TensorRT >= 10.12 is a strongly typed network built "
                                 "from an fp16 model.onnx, and this model.onnx is fp32",
                                 "recompile with --precision fp16 (resgraph compile SPEC --precision fp16 --engine ...)")
        return TypingPlan(True, (), ("TF32",))   # layers the fp16 ONNX keeps in fp32 stay fp32, as on older 10.x
    assert precision == "bf16", precision
    if trt_version >= (11,):
        raise OptionError.at(where, "TensorRT 11 builds only strongly typed networks, and a bf16 one needs a bf16 "
                             "model.onnx, which resgraph does not emit (ONNX's Conv takes bf16 from opset 22)",
                             "build --precision fp16 (same speed on recent GPUs), or use TensorRT 10.x for bf16")
    return TypingPlan(False, ("BF16",), ("TF32",))


def int8_plan(precision: str, onnx_precision: str, where: str) -> TypingPlan:
    """int8 from an int8 folder: strongly typed (the Q/DQ types decide every layer), no precision
    builder flag; anything else with an int8 folder, or int8 from a float one, refused. The same on
    every TensorRT version: callers may check it before importing TensorRT."""
    if onnx_precision != "int8":
        raise OptionError.at(where, f"an int8 engine is built from an int8 folder's model.s8.onnx (Q/DQ, calibrated), "
                             f"and this folder is {onnx_precision}", MAKE_INT8)
    if precision != "int8":
        raise OptionError.at(where, f"this folder is int8 (quantised): its Q/DQ model decides every layer's "
                             f"precision, so it cannot give a {precision} engine",
                             "build --precision int8 (the default for this folder), or build the float engine "
                             "from the folder it was quantised from")
    return TypingPlan(True, (), ("TF32",))


def default_timing_cache(trt_version: str, compute_capability: str, gpu_name: str) -> str:
    """One timing cache per TensorRT version and GPU model (TensorRT refuses a cache timed on another
    device), shared by every build on this machine: under $RESGRAPH_CACHE_DIR, else
    $XDG_CACHE_HOME/resgraph, else ~/.cache/resgraph."""
    import re
    root = os.environ.get("RESGRAPH_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "resgraph")
    model = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-") or "gpu"
    return os.path.join(root, "tensorrt",
                        f"timing-trt{trt_version}-sm{compute_capability.replace('.', '')}-{model}.cache")
