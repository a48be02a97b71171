"""The two back ends' tensors by inference path: ONNX Runtime on the compiler's lowering with every node
exposed (model.onnx's weights), torch through an fx Interpreter; `stands_for` maps the spec graph's
paths onto the inference graph's (folded bn, dropped no-ops, spelled-out projections)."""
from __future__ import annotations

import copy

import numpy as np

ONNX_SIDES = ("ort-cpu", "ort-cuda")


def stands_for(graph, igraph) -> dict[str, list[str]]:
    """Inference path -> the spec graph's paths whose value its output is, in graph order: itself (where
    it is a spec node), a bn folded into it, the no-ops after it. The last one's torch tensor is what
    the inference node computes."""
    def rep(p: str) -> str:
        while p not in igraph:
            n = graph[p]
            if n.op == "project":      # spelled out as <p>.conv + <p>.bn; the bn folded into the conv, or not
                return f"{p}.bn" if f"{p}.bn" in igraph else f"{p}.conv"
            p = n.inputs[0]            # a folded bn (its conv), a dropped no-op (its input)
        return p
    out: dict[str, list[str]] = {}
    for n in graph.nodes:
        out.setdefault(rep(n.path), []).append(n.path)
    return out


class OnnxSide:
    """The compiler's lowering of the inference graph with every node an output, model.onnx's weights."""

    def __init__(self, session, folder, manifest, igraph, iw, dims):
        import onnx
        self.notes: list[str] = []
        path = session.path
        shipped = onnx.load(path)
        weights = onnx_weights(shipped, iw, path)
        model, self.names = exposed_model(igraph, weights, manifest, dims)
        lacks = sorted({t.name for t in model.graph.initializer} - {t.name for t in shipped.graph.initializer})
        if lacks:
            from ..errors import ArtifactError
            raise ArtifactError.at(path, f"{session.onnx} has no initializer {', '.join(lacks[:3])}: it is not this "
                                   "spec's model", "recompile the folder: resgraph compile SPEC --weights W -o FOLDER")
        differs = same_graph(model, shipped, set(self.names.values()) - {name for name, _ in igraph.outputs})
        if differs:
            self.notes.append(f"{session.onnx}'s graph is not the one this resgraph lowers from the spec ({differs}): "
                              "locate ran the compiler's graph with the file's weights")
        so = session.ort.SessionOptions()
        so.log_severity_level = 3
        if session.options.threads:
            so.intra_op_num_threads = session.options.threads
        providers = ["CPUExecutionProvider"]
        if session.cuda:
            o = session.options
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": str(o.device_id), "use_tf32": "1" if o.tf32 else "0"}))
        self.open = lambda m: session.ort.InferenceSession(m.SerializeToString(), so, providers=providers)  # noqa: E731
        self.sess = self.open(model)
        self.igraph, self.weights, self.manifest, self.dims = igraph, weights, manifest, dims

    def __call__(self, feeds: dict) -> dict[str, np.ndarray]:
        wanted = list(self.names)
        got = self.sess.run([self.names[p] for p in wanted], feeds)
        return dict(zip(wanted, got))

    def upto(self, path: str, feeds: dict) -> np.ndarray:
        """The value at `path` of the graph cut after it (its ancestors alone, `path` the one output),
        optimised by ONNX Runtime as the folder's own model is: its fusions included."""
        g = self.igraph
        keep = ancestors(g, path)
        cut = g.replace(nodes=tuple(n for n in g.nodes if n.path in keep or n.op == "input"), output=path, outputs=())
        model, names = exposed_model(cut, self.weights, self.manifest, self.dims, (path,))
        return self.open(model).run([names[path]], {k: v for k, v in feeds.items() if k in dict(g.inputs)})[0]


def ancestors(igraph, path: str) -> set[str]:
    """`path` and every node its value depends on."""
    keep, todo = set(), [path]
    while todo:
        p = todo.pop()
        if p not in keep:
            keep.add(p)
            todo += igraph[p].inputs
    return keep


def onnx_weights(shipped, iw: dict, where: str) -> dict:
    """The inference weights, each replaced by model.onnx's initializer of that name (fp16 folders: fp16
    arrays); those the file lacks stay (the lowering reads none of them: `exposed_model` checks). An
    ArtifactError where one has another shape."""
    from onnx import numpy_helper

    from ..errors import ArtifactError
    inits = {t.name: t for t in shipped.graph.initializer}
    out = dict(iw)
    for name in iw.keys() & inits.keys():
        got = numpy_helper.to_array(inits[name], base_dir=_dir(where))
        if got.shape != np.shape(iw[name]):
            raise ArtifactError.at(where, f"model.onnx's {name} is {list(got.shape)}, the spec's {list(np.shape(iw[name]))}",
                                   "recompile the folder: resgraph compile SPEC --weights W -o FOLDER")
        out[name] = got
    return out


def _dir(path: str) -> str:
    import os
    return os.path.dirname(path)


def exposed_model(igraph, weights: dict, manifest, dims, paths=None):
    """(the inference graph lowered at the folder's precision and opset with every node in `paths`
    (default: all) an extra output, inference path -> its output's name). fp32: named by the path (the
    tensor itself); fp16: a Cast to fp32 of it, named '<path>:fp32'; a graph output: its own name."""
    from ..backends.onnx.lower import to_onnx
    fp16 = manifest.precision == "fp16"
    outs = {p: name for name, p in reversed(igraph.outputs)}   # a graph output: read under its own name
    paths = paths or [n.path for n in igraph.nodes[len(igraph.inputs):]]
    names = {p: outs.get(p) or (f"{p}:fp32" if fp16 else p) for p in paths}
    extra = tuple((name, p) for p, name in names.items() if p not in outs)
    if dims is not None:
        dims = {**dims, **{name: [igraph[p].shape[0], *(f"{p}:{i}" for i in range(1, len(igraph[p].shape)))]
                           for name, p in extra}}
    model = to_onnx(igraph.replace(outputs=igraph.outputs + extra), weights, opset=manifest.opset,
                    precision=manifest.precision, dims=dims)
    return model, names


def same_graph(model, shipped, extra: set) -> str | None:
    """None when `model` is `shipped` plus the nodes that expose `extra` outputs; else the first difference."""
    ours = [n for n in model.graph.node if not (n.output[0] in extra and n.op_type in ("Identity", "Cast"))]
    theirs = list(shipped.graph.node)
    for a, b in zip(ours, theirs):
        if a.SerializeToString() != b.SerializeToString():
            return f"node {b.name or b.op_type} differs"
    if len(ours) != len(theirs):
        return f"{len(theirs)} nodes, the lowering {len(ours)}"
    return None


class TorchSide:
    """A torch module run by an fx Interpreter that copies every node's output, keyed by inference path."""

    def __init__(self, module, graph, igraph, inputs, device="cpu", amp_dtype=None, dtype=None, to_device=None):
        self.module, self.inputs, self.device, self.amp_dtype, self.dtype = module, inputs, device, amp_dtype, dtype
        self.to_device = to_device or (lambda x: x)
        self.paths = module.meta["resgraph"]["paths"]    # fx node name -> IR path (backends/torch/lower.py)
        self.stands = stands_for(graph, igraph)
        self.notes: list[str] = []

    @classmethod
    def of(cls, session, graph, igraph) -> "TorchSide":
        """The session's own module, device and autocast."""
        return cls(session.module, graph, igraph, session.inputs, session.dev, session.amp_dtype,
                   to_device=session._to_device)

    def __call__(self, feeds: dict) -> dict[str, np.ndarray]:
        import torch
        xs = [torch.from_numpy(np.asarray(feeds[t.name])) for t in self.inputs]
        xs = [self.to_device(x if self.dtype is None else x.to(self.dtype)) for x in xs]
        dev = torch.device(self.device)
        with torch.inference_mode(), torch.autocast(dev.type, dtype=self.amp_dtype or torch.float32,
                                                    enabled=self.amp_dtype is not None):
            rec = record(self.module, xs, self.paths)
        out = {}
        for p, spec_paths in self.stands.items():
            q = next((q for q in reversed(spec_paths) if q in rec), None)
            if q is not None:
                out[p] = rec[q]
        return out


def record(module, xs: list, paths: dict) -> dict[str, np.ndarray]:
    """IR path -> a copy of its value, for every fx node of `module` that computes one (copied as it is
    computed: relu and add overwrite their input in place)."""
    import torch
    import torch.fx
    rec: dict[str, np.ndarray] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            p = paths.get(n.name)
            if p is not None and isinstance(out, torch.Tensor):
                v = out.detach()
                rec[p] = v.cpu().numpy().copy() if v.dtype == torch.float64 else v.float().cpu().numpy().copy()
            return out
    Recorder(module).run(*xs)
    return rec


def side(session, folder, manifest, graph, igraph, iw, dims):
    if session.backend in ONNX_SIDES:
        return OnnxSide(session, folder, manifest, igraph, iw, dims)
    return TorchSide.of(session, graph, igraph)


def torch_fp64(folder: str, graph, igraph):
    """feeds -> inference path -> the fp32 noise floor there (max |fp32 - fp64| of the folder's torch module
    on the CPU); None where torch is not installed (then fp32 pairs are held to 1e-4 alone)."""
    import os
    try:
        from ..backends.torch import to_torch
    except ImportError:
        return None
    module = to_torch(graph, weights=os.path.join(folder, "weights.safetensors")).eval()
    inputs = [type("In", (), {"name": name}) for name, _ in graph.inputs]
    f32 = TorchSide(module, graph, igraph, inputs)
    f64 = TorchSide(copy.deepcopy(module).double(), graph, igraph, inputs, dtype=__import__("torch").float64)

    def floor(feeds: dict) -> dict[str, float]:
        a, b = f32(feeds), f64(feeds)
        return {p: float(np.nanmax(np.abs(a[p] - b[p]))) if a[p].size else 0.0 for p in a if p in b}
    return floor


