"""Specs with size variables (`sizes: {H: {min, max}}`, `input: {shape: [3, H, W]}`): the front end's
reference check and the sweep of every variable's range.

    reference_check   the graph checked at the largest size in range that checks (up to TRIES
                      sizes down from max): there no map has collapsed, so every Ws gets the stride
                      the stage means. A compiled model keeps those strides at every size.
    sweep             passes/sizes.py on each variable's axes: the exact valid sizes, the output's
                      dims as expressions of the variables, the MACs at the smallest valid size.
Errors: a range with no valid size (shown at its first size, with the node that refuses it and
why), and a flatten whose input varies with a variable (what follows it is sized at one width).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import Diagnostic, Diagnostics, SpecError
from .ir import Graph

TRIES = 64


@dataclass(frozen=True)
class Sizes:
    valid: dict                  # variable -> the valid sizes, ascending
    input_shape: list            # [C, "H", "W"]
    output_shape: list           # dims, or expressions of the variables ("H - 2", "ceil(H / 32)")
    macs: int                    # at the smallest valid sizes
    macs_at: dict                # variable -> that size
    input_shapes: tuple = ()     # every input's and output's, in spec order (the first: the two above)
    output_shapes: tuple = ()


def with_inputs(g: Graph, shapes) -> Graph:
    """g with its input nodes at `shapes` (one per input, in order)."""
    k = len(g.inputs)
    assert len(shapes) == k, (shapes, g.inputs)
    return g.replace(nodes=tuple(x.with_(shape=tuple(s)) for x, s in zip(g.nodes[:k], shapes)) + tuple(g.nodes[k:]))


def _decls(spec):
    from .spec.model import InputDecl
    return spec.inputs or (InputDecl(spec.input_name, spec.input_shape, spec.input_loc, spec.input_vars),)


def at_sizes(spec, sizes: dict) -> tuple:
    """Every input's shape with the size variables at `sizes` (name -> length)."""
    return tuple(tuple(sizes[v] if v else d for d, v in zip(x.shape, x.vars or (None,) * len(x.shape)))
                 for x in _decls(spec))


def with_spec_inputs(spec, shapes):
    decls = tuple(dataclasses.replace(x, shape=tuple(s)) for x, s in zip(_decls(spec), shapes))
    return dataclasses.replace(spec, input_shape=tuple(shapes[0]), inputs=decls if spec.inputs else ())


def reference_check(spec, g: Graph, back_half):
    """back_half(spec, graph) at the largest sizes that check; the error at max where none does."""
    first = None
    for k in range(TRIES):
        at = {name: max(v.hi - k, v.lo) for name, v in spec.sizes.items()}
        shapes = at_sizes(spec, at)
        try:
            return back_half(with_spec_inputs(spec, shapes), with_inputs(g, shapes))
        except SpecError as e:
            first = first or (e, at)
        if all(v.hi - k <= v.lo for v in spec.sizes.values()):
            break
    e, sizes = first
    used = {v for x in _decls(spec) for v in x.vars if v}
    at = ", ".join(f"{v} = {n}" for v, n in sizes.items() if v in used)
    tried = "every size" if k + 1 < TRIES else f"the {TRIES} largest sizes"
    said = [dataclasses.replace(d, message=f"{d.message} (at {at}: {tried} in range fails)") for d in e.diagnostics[:1]]
    raise SpecError(said + list(e.diagnostics[1:])) from None


def sweep(spec, g: Graph) -> Sizes:
    from .passes.sizes import axis_sizes
    d = Diagnostics()
    valid, outputs, swept = {}, {}, {}

    decls = _decls(spec)
    paths = [p for _, p in g.inputs]

    def sweep_axis(axis: int, lo: int, hi: int, varying: tuple):
        """Every op treats H and W alike (square kernels, one stride): where the reference's H and W
        are equal, the two axes' sweeps over one range are the same sweep (its words say H)."""
        key = (tuple(x.shape[axis] if len(x.shape) == 3 else None for x in g.input_nodes), lo, hi, varying)
        if key not in swept:
            swept[key] = axis_sizes(g, axis, range(lo, hi + 1), varying)
        return swept[key]

    for name, var in spec.sizes.items():
        # per axis, the inputs whose dimension on it is this variable
        axes = {axis: tuple(p for p, x in zip(paths, decls) if x.vars and x.vars[axis] == name)
                for axis in (1, 2)}
        axes = {a: v for a, v in axes.items() if v}
        if not axes:
            continue
        runs = [sweep_axis(axis, var.lo, var.hi, varying) for axis, varying in axes.items()]
        ok = runs[0].valid.copy()
        for r in runs[1:]:
            ok &= r.valid
        if not ok.any() or any(g[p].op == "flatten" for r in runs for p, _ in r.reasons):
            # an error to report: in the words of its own axis
            runs = [axis_sizes(g, axis, range(var.lo, var.hi + 1), varying) for axis, varying in axes.items()]
        _flatten(d, g, name, var, runs)
        if not ok.any():
            path, why = runs[0].why(var.lo) or runs[-1].why(var.lo)
            d.error(var.loc, f"no size of {name} in {var.lo}..{var.hi} makes every edge match: at {var.lo}, "
                             f"{path}: {why}", "widen the range, or change the layers that refuse it")
            continue
        valid[name] = [int(x) for x in runs[0].sizes[ok]]
        for axis, r in zip(axes, runs):
            for p, length in r.outputs.items():
                if length is not None:
                    outputs[p, axis] = expression(name, valid[name], [int(o) for o, v in zip(length, ok) if v])
    d.raise_if_any()
    outs = []
    for _, p in g.outputs:
        out = list(g[p].shape)
        outs.append([outputs.get((p, i), x) for i, x in enumerate(out)] if len(out) == 3 else out)
    ins = [[v or x for x, v in zip(decl.shape, decl.vars or (None,) * len(decl.shape))] for decl in decls]
    smallest = {name: v[0] for name, v in valid.items()}
    return Sizes(valid, ins[0], outs[0], _macs_at(g, spec, smallest), smallest, tuple(ins), tuple(outs))


def _flatten(d: Diagnostics, g: Graph, name: str, var, runs) -> None:
    """A flatten that refuses sizes: its width varies with the variable, and what follows it does not."""
    seen = set()
    for r in runs:
        for path, why in r.reasons:
            n = g[path]
            if n.op == "flatten" and path not in seen and var.hi > var.lo:
                seen.add(path)
                d.error(n.loc, f"{path}: flatten of a map whose size varies with {name}: the layer after it is "
                               f"sized for one {name} only", "use global_avgpool before flatten (or instead of "
                               "it): it gives [C, 1, 1] at every size")


def _macs_at(g: Graph, spec, smallest: dict) -> int:
    """MACs with the input at the smallest valid sizes, on the reference's graph (its Ws as they are):
    each node's shape rule and MAC count from the op table, without rebuilding the graph (the sizes are
    valid, so every rule holds)."""
    from .ops import OPS
    shapes = {p: s for (_, p), s in zip(g.inputs, at_sizes(spec, {**{k: v.hi for k, v in spec.sizes.items()},
                                                                   **smallest}))}
    macs = 0
    for n in g.nodes[len(g.inputs):]:
        op, args, ins = OPS[n.op], dict(n.args), [shapes[i] for i in n.inputs]
        shapes[n.path] = out = tuple(op.shape(args, ins))
        macs += op.macs(args, ins, out)
    return macs


def expression(var: str, sizes: list[int], outs: list[int]) -> str | int:
    """The output's length as an expression of the input's, fitted exactly over every valid size:
    H, H * s, H + c, ceil(H / s), floor((H + c) / s), and m * one of those; a constant where it does
    not vary; f(H) where none fits (manifest.evaluate_dim reads every other form)."""
    pairs = list(zip(sizes, outs))
    if len(set(outs)) == 1:
        return outs[0]
    if all(o == n for n, o in pairs):
        return var
    for s in range(2, 65):
        if all(o == n * s for n, o in pairs):
            return f"{var} * {s}"
        if all(o == -(-n // s) for n, o in pairs):
            return f"ceil({var} / {s})"
    c = outs[0] - sizes[0]
    if all(o == n + c for n, o in pairs):
        return f"{var} {'+' if c > 0 else '-'} {abs(c)}"
    for s in range(2, 65):
        for c in range(-64, 65):
            if all(o == (n + c) // s for n, o in pairs):
                return f"floor(({var} {'+' if c >= 0 else '-'} {abs(c)}) / {s})"
    for m in range(2, 65):   # upsampled after a stride: m * ceil(H / s), m * floor((H + c) / s)
        if all(o % m == 0 for o in outs) and len(set(o // m for o in outs)) > 1:
            inner = expression(var, sizes, [o // m for o in outs])
            if "*" not in str(inner) and not str(inner).startswith("f("):
                return f"{m} * {inner}"
    return f"f({var})"   # none of the forms: compile refuses it (a manifest's dims must be evaluable)


def writable(checked) -> None:
    """compile writes every output dim as an expression the runtime evaluates: one that no form
    fits (f(H)) is refused at `sizes:`, with the way out."""
    if checked.sizes is None:
        return
    for (name, _), shape in zip(checked.graph.outputs, checked.sizes.output_shapes):
        odd = [d for d in shape if isinstance(d, str) and d.startswith("f(")]
        if odd:
            loc = next(iter(checked.spec.sizes.values())).loc
            raise SpecError([Diagnostic(loc, f"output '{name}' has a dim that is no expression resgraph writes "
                                        f"({odd[0]}: not H, H * s, H + c, ceil(H / s), floor((H + c) / s) or m * one "
                                        "of those)", "compile it at fixed sizes, or narrow the size range")])


def fixed_size(checked, what: str) -> None:
    """`what` (compile, train) takes fixed input sizes: a spec with size variables is refused at
    its `sizes:`, with the way out."""
    if checked.sizes is None:
        return
    spec = checked.spec
    names = ", ".join(spec.sizes)
    loc = next(iter(spec.sizes.values())).loc
    are = "is a size variable" if len(spec.sizes) == 1 else "are size variables"
    hint = (f"give the input its sizes (input: {{shape: [{spec.input_shape[0]}, 224, 224]}}) to {what}; check reports "
            "every size the network takes")
    if what == "train":
        hint = ("train at one of its sizes with --size HxW (the parameters are the same at every size: compile the "
                "sized spec with the weights); check reports every size the network takes")
    raise SpecError([Diagnostic(loc, f"{what} takes fixed input sizes: {names} {are} here", hint)])
