"""model.onnx on ONNX Runtime: the CPU execution provider, or CUDA with I/O bound on the device.

CPU: `InferenceSession.run` on the numpy batch, nothing in between (bench's latency is that call's).
CUDA: the batch is copied to a device OrtValue (host->device, timed), the session runs with I/O
binding so ONNX Runtime copies nothing itself, and the output is copied back (device->host, timed).
TensorRT (ort-trt): ONNX Runtime's TensorRT execution provider, CUDA's behind it for what TensorRT
does not take, I/O bound as for CUDA. It builds its engines on the first session (minutes for a big
model) into the compiled folder's ort-trt-cache/ (engines and timing cache), which later sessions
load; its profile (every input's MIN, OPT, MAX shapes) is the folder's engine.json's where there is
one, else engine build's default (batch 1:32:32, size variables over their valid range). TensorRT
enables TF32 by default and the provider has no option to turn it off: an fp32 model reports tf32.
An int8 folder: ort-trt reads model.s8.onnx (Q/DQ with int8 zero points, which TensorRT requires;
Manifest.onnx_file) with the provider's INT8 mode on (trt_int8_enable: the Q/DQ scales, no
calibration table); ort-cpu and ort-cuda read model.onnx (uint8 activations, the CPU's integer kernels).
With cuda_graph, ONNX Runtime captures the whole run as one CUDA graph on its second run and
replays it after (enable_cuda_graph); a graph is bound to its buffers' addresses and shapes, so
each batch size gets its own session and preallocated device buffers.
"""
from __future__ import annotations

import os
import time

import numpy as np

from ..errors import BackendError
from .base import Options, Session


class OrtSession(Session):
    def __init__(self, folder: str, manifest, options: Options, cuda: bool, tensorrt: bool = False,
                 onnx_file: str | None = None):
        """`onnx_file`: another ONNX file of the folder than the back end's own (Manifest.onnx_file): the
        parity gate runs an int8 folder's model.s8.onnx on the CPU as its engine's same-file reference."""
        super().__init__(folder, manifest, options)
        import onnxruntime as ort
        self.ort, self.cuda, self.tensorrt = ort, cuda or tensorrt, tensorrt
        self.backend = "ort-trt" if tensorrt else "ort-cuda" if cuda else "ort-cpu"
        self.device = f"cuda:{options.device_id}" if self.cuda else "cpu"
        # TF32 (on by default in ONNX Runtime's CUDA provider) computes fp32 convolutions with fp16's
        # mantissa: off unless asked for, so that an fp32 folder computes in fp32 on every back end
        tf32 = tensorrt or (cuda and options.tf32)
        self.precision = "tf32" if tf32 and manifest.precision == "fp32" else manifest.precision
        self.onnx = onnx_file or manifest.onnx_file(self.backend)   # model.onnx; an int8 folder's ort-trt: model.s8.onnx
        self.path = os.path.join(folder, self.onnx)
        if not os.path.isfile(self.path):
            raise BackendError.at(self.path, f"no {self.onnx} in the compiled folder",
                                  "recompile: resgraph compile SPEC -o FOLDER")
        self._graphs: dict[tuple, tuple] = {}     # input shapes -> (session, binding, inputs and outputs on device)
        self.sess = self._session(cuda_graph=False)
        if cuda and options.cuda_graph:            # fail at open, not at the first batch, if graphs cannot be had
            first = {t.name: np.zeros((1, *t.at(self.default_sizes())), t.dtype) for t in self.inputs}
            self._graphs[self._key(first)] = self._capture(first)

    def _session(self, cuda_graph: bool):
        ort, o = self.ort, self.options
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3                 # warnings about unused initializers are not the user's concern
        if o.threads:
            so.intra_op_num_threads = o.threads
        if self.cuda:
            cuda = {"device_id": str(o.device_id), "use_tf32": "1" if o.tf32 else "0"}
            if cuda_graph and not self.tensorrt:
                cuda["enable_cuda_graph"] = "1"
            providers = [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
            if self.tensorrt:   # its own graph option: the nodes are on TensorRT's provider, not CUDA's
                providers.insert(0, ("TensorrtExecutionProvider",
                                     {**self._trt_options(), **({"trt_cuda_graph_enable": True} if cuda_graph else {})}))
        else:
            providers = ["CPUExecutionProvider"]
        try:
            sess = ort.InferenceSession(self.path, so, providers=providers)
        except Exception as e:  # noqa: BLE001  (onnxruntime raises its own exception types)
            text = str(e).strip()
            if self.tensorrt and any(w in text for w in ("TensorRT", "Tensorrt", "TRT", "nvinfer")):
                raise BackendError.at(self.path, f"ONNX Runtime's TensorRT provider cannot run the model: {text[:300]}",
                                      "see resgraph doctor; --backend tensorrt runs resgraph's own engine"
                                      + ("; or leave out --cuda-graph (it needs every node on TensorRT)"
                                         if cuda_graph else "")) from None
            if self.cuda and any(w in text for w in ("CUDA", "cuda", "cuDNN", "cudnn", "graph")):
                raise BackendError.at(self.path, f"ONNX Runtime's CUDA provider cannot run the model: {text[:300]}",
                                      "see resgraph doctor; --backend ort-cpu runs it on the CPU"
                                      + ("; or leave out --cuda-graph" if cuda_graph else "")) from None
            raise BackendError.at(self.path, f"ONNX Runtime cannot load the model: {text[:300]}",
                                  "recompile it: resgraph compile SPEC --weights W -o FOLDER") from None
        if self.tensorrt and "TensorrtExecutionProvider" not in sess.get_providers():
            raise BackendError.at(self.path, "ONNX Runtime could not start its TensorRT provider (TensorRT's libraries "
                                  "libnvinfer* missing, or of another version than this onnxruntime-gpu was built for?)",
                                  "see resgraph doctor; --backend tensorrt runs resgraph's own engine")
        if self.cuda and "CUDAExecutionProvider" not in sess.get_providers():
            raise BackendError.at(self.path, "ONNX Runtime could not start its CUDA provider (CUDA or cuDNN "
                                  "libraries missing or of another version?)", "see resgraph doctor")
        got = [(t.name, list(t.shape[1:])) for t in (*sess.get_inputs(), *sess.get_outputs())]
        want = [(t.name, list(t.sample_shape)) for t in (*self.inputs, *self.outputs)]
        if got != want:   # another model in the folder's place
            from ..errors import ArtifactError
            said = lambda io: ", ".join(f"{n} {s}" for n, s in io)  # noqa: E731
            raise ArtifactError.at(self.path, f"{self.onnx} has {said(got)}, but the manifest says {said(want)}: "
                                   "the two are not from one compile",
                                   "recompile: resgraph compile SPEC --weights W -o FOLDER")
        return sess

    def _trt_options(self) -> dict:
        """The TensorRT provider's options: engine and timing cache in the compiled folder, and one
        profile: every input's MIN, OPT and MAX shapes from engine.json where there is one, else the
        profile `engine build` gives by default (backends/tensorrt/profile.py: batch 1:32:32, each
        size variable from its smallest valid size to its largest); an int8 folder's model.s8.onnx in
        the provider's INT8 mode (its Q/DQ scales: no calibration table)."""
        from ..backends.tensorrt.engine_json import read_engine_info
        from ..backends.tensorrt.options import BuildOptions
        from ..backends.tensorrt.profile import dims_text, resolve
        try:
            profile = read_engine_info(self.folder).profile
        except Exception:  # noqa: BLE001  (no engine.json, or a damaged one: the default profile)
            profile = resolve(BuildOptions(), self.inputs, self.sizes)
        cache = os.path.join(self.folder, "ort-trt-cache")
        int8 = {"trt_int8_enable": True} if self.manifest.precision == "int8" else {}
        shapes = lambda point: ",".join(f"{p.name}:{dims_text(p.at(point))}" for p in profile)  # noqa: E731
        return {"device_id": str(self.options.device_id), "trt_engine_cache_enable": True,
                "trt_engine_cache_path": cache, "trt_timing_cache_enable": True, "trt_timing_cache_path": cache,
                "trt_profile_min_shapes": shapes("min"), "trt_profile_opt_shapes": shapes("opt"),
                "trt_profile_max_shapes": shapes("max"), **int8}

    def run(self, x: np.ndarray) -> np.ndarray:
        self.one_to_one()
        if not self.cuda and not self.sizes:
            if x.dtype != self.manifest.input.dtype or x.shape[1:] != self.input_shape:   # else ONNX Runtime's error
                x = self.check_batch(x)
            return self.sess.run([self.output_name], {self.input_name: x})[0]
        return self.run_all({self.input_name: x})[self.output_name]

    def run_all(self, feeds: dict) -> dict:
        feeds = self.check_feeds(feeds)
        names = [t.name for t in self.outputs]
        if not self.cuda:
            return dict(zip(names, self.sess.run(names, feeds)))
        if self.options.cuda_graph:
            return self._run_graph(feeds)
        ort, dev = self.ort, self.options.device_id
        t0 = time.perf_counter()
        on_device = {k: ort.OrtValue.ortvalue_from_numpy(x, "cuda", dev) for k, x in feeds.items()}   # synchronous
        t1 = time.perf_counter()
        io = self.sess.io_binding()
        for k, xd in on_device.items():
            io.bind_ortvalue_input(k, xd)
        for k in names:
            io.bind_output(k, "cuda", dev)
        self.sess.run_with_iobinding(io)
        t2 = time.perf_counter()
        ys = io.copy_outputs_to_cpu()
        self.last_io = (t1 - t0, time.perf_counter() - t2)
        return dict(zip(names, ys))

    @staticmethod
    def _key(feeds: dict) -> tuple:
        return tuple(x.shape for x in feeds.values())

    def _capture(self, feeds: dict) -> tuple:
        """A session whose CUDA graph is bound to device buffers of these inputs' shapes."""
        ort, dev = self.ort, self.options.device_id
        sess = self._session(cuda_graph=True)
        io = sess.io_binding()
        xs = {}
        for k, x in feeds.items():
            xs[k] = ort.OrtValue.ortvalue_from_shape_and_type(x.shape, x.dtype, "cuda", dev)
            io.bind_ortvalue_input(k, xs[k])
            xs[k].update_inplace(x)
        dtypes = {t.name: t.dtype for t in self.outputs}
        ys = {k: ort.OrtValue.ortvalue_from_shape_and_type(shape, np.dtype(dtypes[k]), "cuda", dev)
              for k, shape in self.output_shapes(feeds).items()}
        for k, yd in ys.items():
            io.bind_ortvalue_output(k, yd)
        try:
            sess.run_with_iobinding(io)           # warm-up and capture happen in the first runs
        except Exception as e:  # noqa: BLE001
            raise BackendError.at(self.path, f"ONNX Runtime could not capture a CUDA graph: {str(e).strip()[:300]}",
                                  "leave out --cuda-graph") from None
        return sess, io, xs, ys

    def _run_graph(self, feeds: dict) -> dict:
        key = self._key(feeds)
        if key not in self._graphs:
            self._graphs[key] = self._capture(feeds)
        sess, io, xs, ys = self._graphs[key]
        t0 = time.perf_counter()
        for k, x in feeds.items():
            xs[k].update_inplace(x)                # into the captured input buffers
        t1 = time.perf_counter()
        sess.run_with_iobinding(io)
        t2 = time.perf_counter()
        out = {k: yd.numpy() for k, yd in ys.items()}
        self.last_io = (t1 - t0, time.perf_counter() - t2)
        return out

    def close(self) -> None:
        self._graphs.clear()
        self.sess = None
