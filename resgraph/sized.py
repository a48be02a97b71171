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


def with_input(g: Graph, shape: tuple) -> Graph:
    return g.replace(nodes=(g.nodes[0].with_(shape=tuple(shape)),) + tuple(g.nodes[1:]))


def reference_check(spec, g: Graph, back_half):
    """back_half(spec, graph) at the largest sizes that check; the error at max where none does."""
    first = None
    for k in range(TRIES):
        shape = tuple(max(spec.sizes[v].hi - k, spec.sizes[v].lo) if v else d
                      for d, v in zip(spec.input_shape, spec.input_vars))
        try:
            return back_half(dataclasses.replace(spec, input_shape=shape), with_input(g, shape))
        except SpecError as e:
            first = first or (e, shape)
        if all(not v or spec.sizes[v].hi - k <= spec.sizes[v].lo for v in spec.input_vars):
            break
    e, shape = first
    at = ", ".join(dict.fromkeys(f"{v} = {n}" for v, n in zip(spec.input_vars, shape) if v))
    tried = "every size" if k + 1 < TRIES else f"the {TRIES} largest sizes"
    said = [dataclasses.replace(d, message=f"{d.message} (at {at}: {tried} in range fails)") for d in e.diagnostics[:1]]
    raise SpecError(said + list(e.diagnostics[1:])) from None


def sweep(spec, g: Graph) -> Sizes:
    from .passes.sizes import axis_sizes
    d = Diagnostics()
    valid, outputs, swept = {}, {}, {}

    def sweep_axis(axis: int, lo: int, hi: int):
        """Every op treats H and W alike (square kernels, one stride): where the reference's H and W
        are equal, the two axes' sweeps over one range are the same sweep (its words say H)."""
        key = (g.nodes[0].shape[axis], lo, hi)
        if key not in swept:
            swept[key] = axis_sizes(g, axis, range(lo, hi + 1))
        return swept[key]

    for name, var in spec.sizes.items():
        axes = [i for i, v in enumerate(spec.input_vars) if v == name]
        if not axes:
            continue
        runs = [sweep_axis(axis, var.lo, var.hi) for axis in axes]
        ok = runs[0].valid.copy()
        for r in runs[1:]:
            ok &= r.valid
        if not ok.any() or any(g[p].op == "flatten" for r in runs for p, _ in r.reasons):
            # an error to report: in the words of its own axis
            runs = [axis_sizes(g, axis, range(var.lo, var.hi + 1)) for axis in axes]
        _flatten(d, g, name, var, runs)
        if not ok.any():
            path, why = runs[0].why(var.lo) or runs[-1].why(var.lo)
            d.error(var.loc, f"no size of {name} in {var.lo}..{var.hi} makes every edge match: at {var.lo}, "
                             f"{path}: {why}", "widen the range, or change the layers that refuse it")
            continue
        valid[name] = [int(x) for x in runs[0].sizes[ok]]
        for axis, r in zip(axes, runs):
            if r.output is not None:
                outputs[axis] = expression(name, valid[name], [int(o) for o, v in zip(r.output, ok) if v])
    d.raise_if_any()
    out = list(g[g.output].shape)
    if len(out) == 3:
        out = [outputs.get(i, x) for i, x in enumerate(out)]
    smallest = {name: v[0] for name, v in valid.items()}
    return Sizes(valid, [v or x for x, v in zip(spec.input_shape, spec.input_vars)], out,
                 _macs_at(g, spec, smallest), smallest)


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
    shape = tuple(smallest.get(v, d) if v else d for d, v in zip(g.nodes[0].shape, spec.input_vars))
    shapes, macs = {g.nodes[0].path: shape}, 0
    for n in g.nodes[1:]:
        op, args, ins = OPS[n.op], dict(n.args), [shapes[i] for i in n.inputs]
        shapes[n.path] = out = tuple(op.shape(args, ins))
        macs += op.macs(args, ins, out)
    return macs


def expression(var: str, sizes: list[int], outs: list[int]) -> str | int:
    """The output's length as an expression of the input's, fitted exactly over every valid size:
    H, H * s, H + c, ceil(H / s), floor((H + c) / s); a constant where it does not vary."""
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
    return f"f({var})"


def fixed_size(checked, what: str) -> None:
    """`what` (compile, train) takes fixed input sizes: a spec with size variables is refused at
    its `sizes:`, with the way out."""
    if checked.sizes is None:
        return
    spec = checked.spec
    names = ", ".join(spec.sizes)
    loc = next(iter(spec.sizes.values())).loc
    are = "is a size variable" if len(spec.sizes) == 1 else "are size variables"
    raise SpecError([Diagnostic(loc, f"{what} takes fixed input sizes: {names} {are} here",
                                f"give the input its sizes (input: {{shape: [{spec.input_shape[0]}, 224, 224]}}) to "
                                f"{what}; check reports every size the network takes")])
