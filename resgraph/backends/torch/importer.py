"""Importing a torchvision or timm model's weights into a resgraph module, by structure.

    >>> from resgraph.backends.torch.importer import import_model
    >>> module, report = import_model("timm:resnet50d", "specs/resnet50d.yaml", pretrained=True)

Both models run once on the meta device (execution_order.py) to list their tensors in the order
their forward uses them; tensor i of ours then takes tensor i of theirs when both are the same kind
of tensor, of the same shape, in the same kind of layer (matching.py). The first disagreement is an
error naming both sides: their key, shape and layer, and ours with its spec line. Nothing is copied
unless everything fits. What has no tensors (activations, pooling, padding, the order of a concat)
is invisible to that matching, so both models then run on one random input and must agree (verify).

A spec may end before the source: a backbone (outputs from layer2..layer4, no head) takes a
classifier's weights. Their tensors after our last one are left out and listed (report["left_out"]),
and each of our outputs is compared with the module of theirs that computes it (matching.counterparts):
c3 from layer2 with their layer2's output. A spec that stops inside one of their modules (a stage
shorter than theirs) is refused. A spec with size variables is imported at each variable's valid
size nearest 224 (the size torchvision's classifiers are trained at).

Transfer learning: `reinit` names layers of the spec (a new head: "fc"; or a block, a stage) that
are initialised by the spec's `init:` instead of imported, while everything else is imported. They
keep their place in the order (matching.first_mismatch), so their shapes may differ from the
source's (fc [10, 512] against [1000, 512]). Without it, an import that only such a head spoils is
refused with the flag that would make it work (matching.head_layers). Verification then compares
what the imported weights alone compute: the input of the first reinitialised layer in execution
order (everything before it is imported) against the input of the source's layer at its place, and
each output that no reinitialised layer feeds; imported tensors that none of those depend on are
listed as not verified.
"""
from __future__ import annotations

import torch
from torch import nn

from ...errors import Diagnostic, Loc, OptionError, WeightsError, did_you_mean
from .execution_order import Order, execution_order
from .init import init_weights
from .matching import (KINDS, Counterpart, counterparts, describe, first_mismatch, head_layers, layer_kind,
                       layer_mapping, layer_of)
from .sources import LIBRARIES, Source, parse_source, source_of
from .timm import timm_model
from .torchvision import torchvision_model

# each weights source's library -> the function that builds its model (random, pretrained or from a file)
BUILDERS = {"torchvision": torchvision_model, "timm": timm_model}
assert tuple(BUILDERS) == LIBRARIES, "a source library without a builder, or a builder for none"
IMPORT_SIZE = 224   # a size variable is imported at its valid size nearest this: what ImageNet classifiers take


def build(source: Source, pretrained: bool = False, weights_file: str | None = None,
          seed: int | None = None, device=None) -> nn.Module:
    """The source's model in eval mode: random (seeded), pretrained, or with `weights_file`'s state dict."""
    if source.library not in BUILDERS:
        parse_source(str(source))   # raises, naming the libraries there are
    return BUILDERS[source.library](source.name, pretrained=pretrained, weights_file=weights_file, seed=seed,
                                    device=device)


def import_model(source, spec, pretrained: bool = False, weights_file: str | None = None,
                 seed: int | None = None, verify: bool = True, reinit=()):
    """(module, report): `spec` (a path, Spec, Checked or Graph) as a resgraph module carrying the
    weights of `source` ("torchvision:resnet50", "timm:resnet50d" or a Source): random with `seed`,
    pretrained, or from `weights_file`. With verify (the default) both models also run on one random
    input and must agree. `reinit` (spec paths: "fc", ["fc"], "layer4,fc"): layers initialised by the
    spec's init: (seeded by `seed`) instead of imported; see import_weights."""
    from ... import graph_of
    from . import to_torch
    source = source if isinstance(source, Source) else parse_source(source)
    checked = _checked(spec)   # checks the spec first: its errors come before any download
    module = to_torch(graph_of(checked), init=False)
    reinit_keys(module, reinit)   # so do the reinit names'
    model = build(source, pretrained=pretrained, weights_file=weights_file, seed=seed)
    return module, import_weights(module, model, name=str(source), verify=verify, shape=import_shape(checked),
                                  reinit=reinit, seed=seed)


def _checked(spec):
    """A spec path, Spec or Checked as a Checked (it knows the valid sizes); a Graph stays one."""
    from ...frontend import Checked, check_file, check_spec
    from ...ir import Graph
    from ...spec import Spec
    if isinstance(spec, (Checked, Graph)):
        return spec
    return check_spec(spec) if isinstance(spec, Spec) else check_file(str(spec))


def import_shape(checked) -> tuple:
    """The input shape an import runs both models at: the spec's; where it has size variables, each
    at its valid size nearest IMPORT_SIZE (the graph itself is checked at the largest, too slow to run)."""
    from ...ir import Graph
    if isinstance(checked, Graph) or checked.sizes is None:
        graph = checked if isinstance(checked, Graph) else checked.graph
        return tuple(graph.nodes[0].shape)
    at = {var: min(valid, key=lambda n: (abs(n - IMPORT_SIZE), n)) for var, valid in checked.sizes.valid.items()}
    return tuple(at.get(d, d) for d in checked.sizes.input_shapes[0])


def import_torchvision(name: str, spec, pretrained: bool = False, weights_file: str | None = None,
                       seed: int | None = None, verify: bool = True, reinit=()):
    """(module, report): `spec` (a path, Spec, Checked or Graph) as a resgraph module carrying the
    weights of torchvision's `name`; see import_model."""
    return import_model(Source("torchvision", name), spec, pretrained=pretrained, weights_file=weights_file,
                        seed=seed, verify=verify, reinit=reinit)


@torch.no_grad()
def import_weights(module: nn.Module, model: nn.Module, name: str | None = None, verify: bool = False,
                   shape=None, reinit=(), seed: int | None = None) -> dict:
    """Copy `model`'s tensors into `module` (from resgraph.to_torch), paired in execution order, both
    run at `shape` (without the batch; default the module's input shape). The layers `reinit` names
    (spec paths: a layer "fc", a block or stage "layer4"; comma-separated or a list) are initialised
    by the spec's init: instead, seeded by `seed`: each of their tensors is what `resgraph init --seed`
    gives it.

    Returns {"model", "source", "tensors", "params", "mapping", "keys", "unused", "left_out", "compared",
    "reinit", "verified_at", "unverified", "shape", "max_abs_diff"}: mapping is our layer path -> theirs
    (e.g. "layer2.0.shortcut.conv" -> "layer2.0.downsample.0"), in order; keys, our state-dict key -> theirs
    (a layer scale that a block holds itself is not <layer>.weight there: "features1.0.layer_scale.weight" ->
    "features.1.0.layer_scale"); unused, their tensors that the eval-mode forward never touches (an
    auxiliary head); left_out, their tensors after our last one, key -> shape (the head of a classifier
    imported into a backbone); compared, our output -> the module of theirs it is compared with ("" for
    their model's output, None where no module of theirs computes it alone); reinit, our reinitialised
    key -> {"shape", "by" (the name that chose it), "theirs" (their key at its place, None where theirs
    had ended), "their_shape"}; verified_at, {"ours", "theirs"}: the layers whose inputs were compared
    (None without reinit); unverified, imported keys that no comparison depends on; shape, the input
    both ran at; max_abs_diff is None unless verify.
    """
    source = source_of(model, name)
    shape = tuple(shape or module.meta["resgraph"]["input_shape"])
    fresh = reinit_keys(module, reinit)
    ours = execution_order(module, shape)
    theirs = _their_order(module, model, source, shape)
    keys = ours.keys + ours.unused         # every one of ours must be filled: untouched ones too
    mismatch = first_mismatch(module, keys, model, theirs.keys, tail=True, reinit=fresh)
    if mismatch is not None:
        raise _mismatch_error(module, model, source, mismatch, keys, theirs.keys, fresh)
    a_state, b_state = module.state_dict(), model.state_dict()
    pairs = list(zip(keys, theirs.keys, strict=False))
    left_out = theirs.keys[len(pairs):]
    against = counterparts(_graph(module), pairs, theirs.keys, left_out)
    _refuse_cuts(module, model, source, against)
    imported = [(a, b) for a, b in pairs if a not in fresh]
    # the same numbers in our layout: a linear's [out, in] as a 1x1 conv's [out, in, 1, 1], torchvision's
    # (C, 1, 1) layer scale as [C] (matching.fits has checked that only such layouts differ)
    _load(module, {a: b_state[b].detach().reshape(a_state[a].shape).to(a_state[a].device) for a, b in imported},
          fresh, seed)
    report = {"model": source.name, "source": str(source), "tensors": len(imported),
              "params": sum(p.numel() for p in module.parameters()), "mapping": layer_mapping(imported),
              "keys": dict(imported), "unused": list(theirs.unused),
              "left_out": {k: list(b_state[k].shape) for k in left_out},
              "reinit": _reinit_report(a_state, b_state, keys, dict(pairs), fresh),
              "verified_at": None, "unverified": [], "shape": list(shape), "max_abs_diff": None}
    if fresh:
        against, report["unverified"] = _beside_reinit(module, model, against, ours.keys, keys, fresh, dict(pairs))
        point = next((c for c in against if c.at == "input"), None)
        report["verified_at"] = point and {"ours": point.path, "theirs": point.module}
    report["compared"] = {c.output: c.module for c in against if c.at == "output"}
    if verify:
        report["max_abs_diff"] = verify_import(module, model, name=str(source), shape=shape, against=against)
    return report


def _load(module: nn.Module, tensors: dict, fresh: dict, seed: int | None) -> None:
    """Load the imported `tensors`; where some are reinitialised (`fresh`), the whole module is first
    initialised by the spec's init: with `seed`, so each of those is what `resgraph init --seed` gives it."""
    if fresh:
        init_weights(module, _graph(module), seed)
    missing, unexpected = module.load_state_dict(tensors, strict=not fresh)
    # (a bn's num_batches_tracked that is not given is set to 0, as the init sets it, not reported missing)
    assert not unexpected and set(missing) <= set(fresh), (missing, unexpected)


def reinit_names(reinit) -> list[str]:
    """`reinit` as a list of names: a string or strings, each comma-separated ("layer4,fc")."""
    items = [reinit] if isinstance(reinit, str) else list(reinit or ())
    return list(dict.fromkeys(n.strip() for item in items for n in str(item).split(",") if n.strip()))


def reinit_keys(module: nn.Module, reinit) -> dict[str, str]:
    """Our state-dict keys that `reinit` (reinit_names) chooses -> the name that chose each. A name is a
    spec path: a layer with weights (fc, layer4.1.conv2) or a block instance or stage, meaning all of its
    layers (layer4.1, layer4). An OptionError (--reinit) for a name that is neither, with did-you-mean."""
    names = reinit_names(reinit)
    if not names:
        return {}
    graph = _graph(module)
    owner = {k: p for k in module.state_dict() if (p := layer_of(graph, k)) is not None}
    groups = {".".join(p.split(".")[:i]) for p in owner.values() for i in range(1, p.count(".") + 2)}
    chosen: dict[str, str] = {}
    for name in names:
        if name not in groups:
            raise _unknown_layer(graph, name, groups, list(owner.values()))
        chosen.update({k: name for k, p in owner.items() if (p == name or p.startswith(name + ".")) and k not in chosen})
    return chosen


def _unknown_layer(graph, name: str, groups: set, weighted: list[str]) -> OptionError:
    spec = graph.nodes[0].loc.file
    usage = (f"name a layer with weights by its spec path, or a block or stage to reinitialise all its layers; "
             f"the spec's last layer with weights is '{weighted[-1]}'" if weighted else "the spec has no weights")
    if name in graph:   # a node without tensors: an activation, a pool, an add
        return OptionError.at("--reinit", f"'{name}' in {spec} is a {graph[name].op}, which has no weights to "
                              "reinitialise", usage)
    near = did_you_mean(name, groups, "layers")
    return OptionError.at("--reinit", f"{spec} has no layer '{name}'", (near + "; " if near else "") + usage)


def _reinit_report(a_state: dict, b_state: dict, keys, paired: dict, fresh: dict) -> dict:
    """Our reinitialised key -> its shape, the name that chose it, and the tensor of theirs at its place."""
    return {a: {"shape": list(a_state[a].shape), "by": fresh[a], "theirs": paired.get(a),
                "their_shape": list(b_state[paired[a]].shape) if a in paired else None}
            for a in keys if a in fresh}


def _beside_reinit(module: nn.Module, model: nn.Module, against: list[Counterpart], order, keys, fresh: dict,
                   paired: dict) -> tuple[list[Counterpart], list[str]]:
    """(what can still be compared, imported keys that none of it depends on) when `fresh` keys are
    reinitialised: each output that no reinitialised layer feeds, with its counterpart as before, and the
    input of our first reinitialised layer in execution order `order`, computed from imported weights
    alone (everything before it in that order is imported), against the input of their layer at its place."""
    graph = _graph(module)
    fresh_nodes, tainted = {layer_of(graph, k) for k in fresh}, set()
    for n in graph.nodes:
        if n.path in fresh_nodes or any(i in tainted for i in n.inputs):
            tainted.add(n.path)
    kept = [c for c in against if c.path not in tainted]
    first = next((k for k in order if k in fresh), None)
    point = _input_point(module, model, first, paired.get(first)) if first is not None else None
    ends = [c.path for c in kept if c.module is not None] + (list(graph[point.path].inputs) if point else [])
    covered = _feeding(graph, ends)
    unverified = [k for k in keys if k not in fresh and layer_of(graph, k) not in covered]
    return kept + ([point] if point else []), unverified


def _input_point(module: nn.Module, model: nn.Module, ours: str, theirs: str | None) -> Counterpart | None:
    """Our layer of key `ours` and their layer of key `theirs`, to compare inputs, where both are layers
    of one kind holding their tensors under the standard names (None where theirs has ended there, or
    a block holds the tensor itself)."""
    graph = _graph(module)
    path, their_path = layer_of(graph, ours), (theirs or "").rpartition(".")[0]
    if theirs is None or theirs.rpartition(".")[2] not in KINDS or ours.rpartition(".")[2] not in KINDS:
        return None
    try:
        same = layer_kind(module.get_submodule(path)) == layer_kind(model.get_submodule(their_path))
    except AttributeError:
        return None
    return Counterpart(f"the input of {path}", path, module=their_path, at="input") if same else None


def _feeding(graph, paths) -> set[str]:
    """The nodes whose values reach any of `paths` (those included)."""
    seen, stack = set(), list(paths)
    while stack:
        p = stack.pop()
        if p not in seen:
            seen.add(p)
            stack.extend(graph[p].inputs)
    return seen


def _graph(module: nn.Module):
    return module.meta["resgraph"]["graph"]


def _refuse_cuts(module: nn.Module, model: nn.Module, source: Source, against: list[Counterpart]) -> None:
    """A WeightsError at the first output whose group stops inside a module of theirs (whose tensors
    after ours are left out): c4 from a layer3 of 6 blocks, with their layer3 of 23."""
    for c in against:
        if c.cut:
            state = model.state_dict()
            first = ", ".join(f"{k} {list(state[k].shape)}" for k in c.cut[:2])
            more = f" and {len(c.cut) - 2} more" if len(c.cut) > 2 else ""
            raise WeightsError([Diagnostic(
                _group_loc(module, c), f"cannot import {source.who} weights: output {c.output} ends the "
                f"spec's {c.group}, whose weights are {source.whose} {c.module}, but {c.module} goes on where "
                f"the spec stops: {first}{more} would be left out",
                f"the spec's {c.group} is shorter than {source.whose} {c.module}: give it the same layers, or "
                f"take the output from a layer that ends where one of {source.whose} modules ends")])


def _group_loc(module: nn.Module, c: Counterpart) -> Loc:
    """The line that makes output `c`'s group: the layer entry that called its outermost block."""
    node = _graph(module)[c.path]
    return next((loc for path, loc in node.calls if path.split(".")[0] == c.group.split(".")[0]), node.loc)


def _their_order(module: nn.Module, model: nn.Module, source: Source, shape) -> Order:
    try:
        return execution_order(model, shape)
    except Exception as e:  # noqa: BLE001 - whatever their forward raises on this input is the finding
        raise WeightsError([Diagnostic(spec_loc(module, None),
                                       f"{source.who} cannot run on the spec's input {list(shape)}: "
                                       f"{type(e).__name__}: {_summary(e, 300)}",
                                       f"the spec's input differs from what {source.who} accepts")]) from None


def _mismatch_error(module, model, source: Source, m, keys, their_keys, fresh: dict) -> WeightsError:
    """The first mismatch, naming both sides; where reinitialising the spec's last layers alone would
    fit (a head at another number of classes), the hint gives the --reinit that does it."""
    a_state, b_state = module.state_dict(), model.state_dict()
    ours = describe(module, m.ours, a_state.get(m.ours))
    theirs = describe(model, m.theirs, b_state.get(m.theirs))
    head = head_layers(module, keys, model, their_keys, lambda k: layer_of(_graph(module), k), reinit=fresh)
    if head is None:
        hint = (f"the spec's architecture differs from {source.who} here ({len(keys)} tensors here, "
                f"{len(their_keys)} in {source.who}), or runs these layers in another order: tensors are paired "
                "in the order the forward uses them (an inserted Ws runs after its block's body; for a model "
                "that computes the shortcut first, write it as a `project` before the body)")
    else:
        it = "it" if len(head) == 1 else "them"
        hint = (f"only the spec's last layers differ from {source.who} ({', '.join(head)}): to import everything "
                f"else and initialise {it} by the spec's init:, add --reinit {','.join(head)} "
                f"(in Python: reinit={head!r})")
    return WeightsError([Diagnostic(
        spec_loc(module, m.ours if m.ours is not None else _last(module)),
        f"cannot import {source.who} weights: tensor {m.index} in execution order differs ({m.problem}): "
        f"ours is {ours}, {source.whose} is {theirs}", hint)])


def _last(module: nn.Module) -> str | None:
    return next(reversed(module.state_dict()), None)


def spec_loc(module: nn.Module, key: str | None) -> Loc:
    """The spec line of the node that owns `key` in a resgraph module (the spec file alone if unknown).
    The spec file is the input node's; an explicit `project` owns <path>.conv and <path>.bn."""
    meta = getattr(module, "meta", {}).get("resgraph", {})
    graph = meta.get("graph")
    if graph is None:
        return Loc(meta.get("name") or "<module>", 0, 0)
    parts = key.split(".")[:-1] if key is not None else []
    while parts:
        path = ".".join(parts)
        if path in graph:
            return graph[path].loc
        parts.pop()
    return Loc(graph.nodes[0].loc.file, 0, 0)


@torch.no_grad()
def verify_import(module: nn.Module, model: nn.Module, name: str | None = None, seed: int = 0, shape=None,
                  against: list[Counterpart] | None = None) -> float | None:
    """Run both (in eval mode) on one random input of `shape` (default the spec's); WeightsError unless
    each of our outputs agrees with its counterpart in `against` (matching.counterparts; default: one
    output, compared with their model's output; an `at="input"` one compares the inputs of our layer and
    theirs). Returns the largest absolute difference of what was compared (None if nothing could be)."""
    source = source_of(model, name)
    shape = tuple(shape or module.meta["resgraph"]["input_shape"])
    graph = _graph(module)
    against = against if against is not None else [Counterpart(graph.output_name, graph.output, module="")]
    against = [c for c in against if c.module is not None]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        x = torch.randn(1, *shape)
    ours, theirs = _run_both(module, model, source, x, against)
    return max((_compare(module, source, c, a, t) for c, a, t in zip(against, ours, theirs, strict=True)), default=None)


def _run_both(module: nn.Module, model: nn.Module, source: Source, x, against) -> tuple[list, list]:
    """(ours, theirs) on input x, both in eval mode: for each of `against`, our output of that name (the
    input of our layer `path` where at is "input") and their module's output (input), a list where that
    module ran other than once."""
    modes = [(m, m.training) for m in (module, model)]
    seen = {(side, c.at, p): [] for c in against for side, p in (("ours", c.path), ("theirs", c.module))
            if side == "theirs" or c.at == "input"}
    hooks = [_hook(module if side == "ours" else model, p, at, seen[side, at, p]) for side, at, p in seen]
    try:
        module.eval(), model.eval()
        try:
            ours = module(x.to(_device(module)))
            model(x.to(_device(model)))
        except RuntimeError as e:
            raise WeightsError([Diagnostic(spec_loc(module, None),
                                           f"after importing {source.who} weights, running {source.who} on the "
                                           f"spec's input {list(x.shape[1:])} failed: {_summary(e, 300)}",
                                           f"the spec's input differs from what {source.who} accepts")]) from None
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes:
            m.train(training)
    outputs = dict(zip((name for name, _ in _graph(module).outputs), ours if isinstance(ours, tuple) else [ours],
                       strict=True))
    one = {k: outs[0] if len(outs) == 1 else outs for k, outs in seen.items()}
    return ([one["ours", "input", c.path] if c.at == "input" else outputs[c.output] for c in against],
            [one["theirs", c.at, c.module] for c in against])


def _hook(root: nn.Module, path: str, at: str, into: list):
    """Record the output (the first input, where `at` is "input") of `root`'s submodule `path` into `into`."""
    m = root.get_submodule(path)
    if at == "input":
        return m.register_forward_pre_hook(lambda _m, args: into.append(args[0]))
    return m.register_forward_hook(lambda _m, _a, out: into.append(out))


def _compare(module: nn.Module, source: Source, c: Counterpart, ours, theirs) -> float:
    """The largest difference of our output `c` and theirs; WeightsError unless they agree."""
    what = "its output" if c.module == "" else f"the {c.at} of its {c.module}"
    if isinstance(theirs, list) or isinstance(ours, list):   # a module called more than once (or never)
        runs = len(theirs) if isinstance(theirs, list) else 1
        raise WeightsError([Diagnostic(spec_loc(module, None),
                                       f"{source.whose} {c.module} runs {runs} times in one forward, so "
                                       f"which of its {c.at}s the spec's {c.output} is cannot be told",
                                       "take the output from another layer, or pass verify=False")])
    if not isinstance(theirs, torch.Tensor):
        raise WeightsError([Diagnostic(spec_loc(module, None),
                                       f"{source.who} returns a {type(theirs).__name__}, not a tensor, as {what}, "
                                       f"so it cannot be compared with the spec's {c.output}",
                                       "import a classification model (its eval-mode forward returns the logits), "
                                       "or pass verify=False")])
    if c.at == "input" and theirs.dim() == 4 and ours.shape != theirs.shape:   # a channels-last layer of theirs
        theirs = theirs.permute(0, 3, 1, 2)
    ours, theirs = ours.float().cpu(), theirs.float().cpu()
    if ours.shape != theirs.shape:
        raise WeightsError([Diagnostic(spec_loc(module, None),
                                       f"after importing {source.who} weights, the outputs differ in shape: "
                                       f"ours ({c.output}) {list(ours.shape[1:])}, {what} {list(theirs.shape[1:])}",
                                       f"the spec's architecture differs from {source.who}")])
    diff = (ours - theirs).abs().max().item()
    scale = theirs.abs().max().item()
    # relative: randomly initialised models can have outputs of 1e-9 (mobilenet_v2), where any absolute
    # floor would pass everything. 1e-3 is loose enough for TF32 and differing kernels; a wrong layer is far off
    if not diff <= 1e-3 * scale:
        raise WeightsError([Diagnostic(spec_loc(module, None),
                                       f"the weights of {source.who} were imported, but the outputs differ: "
                                       f"largest difference {diff:.3g} on outputs up to {scale:.3g}"
                                       + ("" if c.module == "" else f" (ours {c.output}, {what})"),
                                       f"the spec's architecture differs from {source.who} in something without "
                                       "weights (an activation, a pooling, a stride, padding, the order of a "
                                       "concat or add)")])
    return diff


def _device(m: nn.Module) -> torch.device:
    p = next(m.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _summary(e: Exception, limit: int = 600) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + " ..."


__all__ = ["BUILDERS", "IMPORT_SIZE", "build", "import_model", "import_shape", "import_torchvision", "import_weights", "spec_loc", "verify_import"]
