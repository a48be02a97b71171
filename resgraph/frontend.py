"""The front half of the pipeline: YAML -> Spec -> Graph -> resolved, shaped, Ws inserted, verified.

    load_spec ─▶ expand ─▶ resolve_ops ─▶ infer_shapes ─▶ insert_shortcuts ─▶ verify
                                                                              └▶ lint (warnings)
Each stage reports every problem it finds; a stage with errors ends the run (later stages would only
repeat them). Torch, ONNX and TensorRT are never imported here.
"""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from .errors import Diagnostic, Diagnostics
from .ir import Graph, expand
from .ops.count import totals
from .passes import infer_shapes, insert_shortcuts, lint, resolve_ops, verify
from .spec import Spec, parse_spec
from .spec.model import read_source, with_vars

# the command line's --var NAME=VALUE: applied to every spec file a command reads (spec_vars)
_VARS: ContextVar[dict | None] = ContextVar("resgraph_vars", default=None)


@dataclass(frozen=True)
class Checked:
    spec: Spec
    graph: Graph
    params: int
    macs: int
    warnings: tuple[Diagnostic, ...]
    sizes: object = None               # sized.Sizes where the spec has size variables


    def to_json(self) -> dict:
        """`check --json`: "inputs" and "outputs", every one with its name and shape (a size variable
        stays its name, an output's dims are expressions of it); and "input" and "output", the first
        of each in the contract's version-1 form, whole numbers: where the spec has size variables, at
        the size "macs" is given at ("macs_at"), so that a reader of one input and one output finds
        the same network it always did, and these three numbers describe one size of it."""
        ins, outs = self.io_shapes()
        ins = [{"name": name, "shape": s} for (name, _), s in zip(self.graph.inputs, ins)]
        outs = [{"name": name, "shape": s} for (name, _), s in zip(self.graph.outputs, outs)]
        first = [{"name": x["name"], "shape": self._concrete(x["shape"])} for x in (ins[0], outs[0])]
        d = {"name": self.graph.name, "input": first[0], "output": first[1], "inputs": ins, "outputs": outs,
             "params": self.params, "macs": self.macs,
             "projections": [p.to_json() for p in self.graph.projections],
             "warnings": [w.to_json() for w in self.warnings]}
        if self.sizes is not None:
            d["valid_sizes"] = {k: list(v) for k, v in self.sizes.valid.items()}
            d["macs"], d["macs_at"] = self.sizes.macs, self.sizes.macs_at
        return d

    def _concrete(self, shape: list) -> list[int]:
        """A shape of io_shapes() at the size of "macs_at" (itself where it has no size variable)."""
        if self.sizes is None:
            return shape
        from .manifest import evaluate_dim
        return [d if isinstance(d, int) else evaluate_dim(d, self.sizes.macs_at) for d in shape]

    def io_shapes(self) -> tuple[list, list]:
        """Every input's and output's shape (no batch), in spec order: lists of ints, where a spec has
        size variables their names and expressions of them."""
        g = self.graph
        if self.sizes is not None:
            return [list(s) for s in self.sizes.input_shapes], [list(s) for s in self.sizes.output_shapes]
        return [list(g[p].shape) for _, p in g.inputs], [list(g[p].shape) for _, p in g.outputs]


def check_file(path: str, vars: dict | None = None) -> Checked:
    """Check the spec file at `path`; `vars` ({"n": 9}) overrides values of its `vars:` (see
    spec.model.with_vars), by default those of the command line's --var (spec_vars)."""
    if vars is None:
        return check_text(read_source(path), path, vars=_VARS.get(), option="--var")
    return check_text(read_source(path), path, vars=vars)


@contextmanager
def spec_vars(overrides: dict | None):
    """Within the block, every spec file read by check_file has these `vars:` overridden: the
    command line's --var, for commands whose library call reads the spec itself (compile, train)."""
    token = _VARS.set(dict(overrides) if overrides else None)
    try:
        yield
    finally:
        _VARS.reset(token)


def check_text(text: str, file: str = "<spec>", read_files: bool = True, vars: dict | None = None,
               option: str = "vars") -> Checked:
    """Check a spec's text (`vars`: as check_file's; `option` names them in an error)."""
    # Structure, references and op arguments are checked together, so that one run reports the
    # unknown key, the dangling id and the misspelt argument at once; shapes only once they are sound.
    if vars:
        text = with_vars(text, file, vars, option)
    d = Diagnostics()
    spec = parse_spec(text, file, d, read_files)
    if spec is None:
        d.raise_if_any()
    g = resolve_ops(expand(spec, d), spec, d)
    d.raise_if_any()
    return _sized(spec, g) if is_sized(spec) else _back_half(spec, g)


def is_sized(spec: Spec) -> bool:
    """Whether an input's shape names a size variable."""
    return any(x.vars for x in spec.inputs) or bool(spec.input_vars)


def check_spec(spec: Spec) -> Checked:
    g = resolve_ops(expand(spec), spec)
    return _sized(spec, g) if is_sized(spec) else _back_half(spec, g)


def check_at(checked: Checked, hw: tuple[int, int], option: str = "--size") -> Checked:
    """A spec with size variables checked at one input size, H x W of its first input (train's
    --size): a plain Checked whose graph has that size's shapes. Its parameters are the sized spec's
    (they never depend on the size), so what is trained at one size compiles for every size."""
    from .errors import OptionError
    from .manifest import SizeRange
    from .sized import at_sizes, with_inputs, with_spec_inputs
    spec, (h, w) = checked.spec, hw
    names = (spec.inputs[0].vars or (None, None, None))[1:] if spec.inputs else spec.input_vars[1:]
    at = {}
    for name, n, side in zip(names, (h, w), ("H", "W")):
        if name is None:
            fixed = spec.input_shape[1 if side == "H" else 2]
            if n != fixed:
                raise OptionError.at(option, f"{side} is {n}, but the input's {side} is fixed at {fixed}", f"give {side} = {fixed}")
            continue
        r = SizeRange(spec.sizes[name].lo, spec.sizes[name].hi, tuple(checked.sizes.valid[name]))
        if at.get(name, n) != n:
            raise OptionError.at(option, f"{h}x{w}: H and W are both the size variable {name}", f"give {h}x{h} or {w}x{w}")
        if n not in r.valid:
            from .manifest import compact
            raise OptionError.at(option, f"{side} = {n} is not a size the network takes ({name}: {compact(r.valid)})",
                                 f"the nearest valid sizes are {' or '.join(map(str, r.nearest(n)))}")
        at[name] = n
    shapes = at_sizes(spec, {**{k: v[-1] for k, v in checked.sizes.valid.items()}, **at})
    g = resolve_ops(expand(spec), spec)
    fixed = _back_half(with_spec_inputs(spec, shapes), with_inputs(g, shapes))
    from .ops.count import state_dict_shapes
    assert state_dict_shapes(fixed.graph) == state_dict_shapes(checked.graph), "parameters depend on the size"
    return fixed


def _sized(spec: Spec, g: Graph) -> Checked:
    """A spec with size variables: checked at a reference size (the largest in range that checks, so
    that every Ws gets the stride of a map that has not collapsed), then each variable's range swept
    (passes/sizes.py). No valid size, or a flatten under a variable, is an error."""
    from .sized import reference_check, sweep
    checked = reference_check(spec, g, _back_half)
    return dataclasses.replace(checked, sizes=sweep(spec, checked.graph))


def _back_half(spec: Spec, g: Graph) -> Checked:
    g = infer_shapes(g)
    g = insert_shortcuts(g)
    _check_io(spec, g)
    verify(g)
    params, macs = totals(g)
    return Checked(spec, g, params, macs, tuple(lint(g)))


def _check_io(spec: Spec, g: Graph) -> None:
    """What the spec says about its input and output must fit the inferred shapes."""
    d = Diagnostics()
    out = g[g.output].shape
    if spec.labels is not None and len(g.outputs) == 1 and (len(out) not in (1, 3) or out[0] != len(spec.labels)):
        d.error(spec.labels_loc, f"{len(spec.labels)} labels for an output of shape [{', '.join(map(str, out))}]",
                "give one label per output class (per channel of a [C, H, W] map)")
    elif spec.labels is not None and not any(g[p].shape[0] == len(spec.labels) and len(g[p].shape) in (1, 3)
                                             for _, p in g.outputs):
        d.error(spec.labels_loc, f"{len(spec.labels)} labels, but no output has {len(spec.labels)} classes "
                f"({', '.join(f'{n} {list(g[p].shape)}' for n, p in g.outputs)})", "give one label per output class")
    c = spec.input_shape[0]
    for k in ("mean", "std"):
        if k in spec.preprocess and len(spec.preprocess[k]) != c:
            n = len(spec.preprocess[k])
            d.error(spec.preprocess[k + "_loc"], f"preprocess.{k} has {n} value{'s' * (n != 1)} for {c} input channels",
                    "one value per channel")
    d.raise_if_any()


@dataclass(frozen=True)
class SpecSource:
    """Where a command's spec argument leads: a file to read (text None), or text already read (standard
    input, or the spec compiled into a folder, with a note saying so)."""
    where: str
    text: str | None = None
    note: str | None = None
    read_files: bool = True      # False for a compiled spec: its labels are in the manifest already


def spec_source(path: str, stdin=None) -> SpecSource:
    """The spec behind a command's argument: a file; '-' for standard input (editors and pipes); a
    compiled folder, or the model.onnx in one, for the spec compiled into it byte for byte (spec.yaml,
    checked against the manifest's sha256). An ONNX file outside a compiled folder, or another folder,
    is a one-line error saying what these commands take."""
    import os

    from .manifest import read_manifest, read_spec
    from .errors import OptionError, PathError
    if path == "-":
        return SpecSource("<stdin>", stdin.read(4 << 20))
    onnx_file = path.endswith(".onnx") and os.path.isfile(path)
    folder = path if os.path.isdir(path) else os.path.dirname(path) or "." if onnx_file else None
    if folder is None:
        return SpecSource(path)
    if not os.path.isfile(os.path.join(folder, "manifest.json")):
        if onnx_file:
            raise OptionError.at(path, "this command takes a spec (YAML), not an ONNX model",
                                 "give the spec it was compiled from, or its compiled folder (compiled/NAME)")
        raise PathError.at(path, "a folder, not a spec", "give a spec file, or a compiled folder (it holds manifest.json)")
    manifest = read_manifest(folder)
    spec_path, raw = read_spec(folder, manifest)
    where = os.path.join(os.path.dirname(path) if os.path.isfile(path) else path, "spec.yaml")
    return SpecSource(where, raw.decode("utf-8"), f"note: {path} is compiled from {manifest.name}'s spec; checking "
                      f"{spec_path}", read_files=False)


def check_compiled(folder: str) -> Checked:
    """The spec compiled into `folder` (spec.yaml, checked against the manifest's sha256), checked, with
    the labels its manifest holds (a `labels:` file of the spec's own folder is not beside the copy):
    what compiling a compiled folder again (resgraph quantize) starts from."""
    from dataclasses import replace

    from .manifest import read_manifest, read_spec
    manifest = read_manifest(folder)
    path, raw = read_spec(folder, manifest)
    checked = check_text(raw.decode("utf-8"), path, read_files=False)
    return replace(checked, spec=replace(checked.spec, labels=manifest.labels))


def with_overrides(src: SpecSource) -> SpecSource:
    """The source with the command line's --var applied (spec_vars): its text, rewritten, is what is
    checked and what a diagnostic's carets show. Without --var, the source as it is."""
    overrides = _VARS.get()
    if not overrides:
        return src
    text = read_source(src.where) if src.text is None else src.text
    return dataclasses.replace(src, text=with_vars(text, src.where, overrides, "--var"))


def check_source(src: SpecSource) -> Checked:
    """Check what spec_source found (with_overrides already applied: no --var is applied here)."""
    if src.text is None:
        return check_file(src.where, vars={})
    return check_text(src.text, src.where, read_files=src.read_files)
