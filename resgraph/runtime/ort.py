"""model.onnx on ONNX Runtime: the CPU execution provider, or CUDA with I/O bound on the device.

CPU: `InferenceSession.run` on the numpy batch, nothing in between (bench's latency is that call's).
CUDA: the batch is copied to a device OrtValue (host->device, timed), the session runs with I/O
binding so ONNX Runtime copies nothing itself, and the output is copied back (device->host, timed).
With cuda_graph, ONNX Runtime captures the whole run as one CUDA graph on its second run and
replays it after (enable_cuda_graph); a graph is bound to its buffers' addresses and shapes, so
each batch size gets its own session and preallocated device buffers.
"""
from __future__ import annotations

import os
import time

import numpy as np

from .session import BackendError, Options, Session


class OrtSession(Session):
    def __init__(self, folder: str, manifest, options: Options, cuda: bool):
        super().__init__(folder, manifest, options)
        import onnxruntime as ort
        self.ort, self.cuda = ort, cuda
        self.backend = "ort-cuda" if cuda else "ort-cpu"
        self.device = f"cuda:{options.device_id}" if cuda else "cpu"
        self.precision = manifest.precision
        self.path = os.path.join(folder, "model.onnx")
        if not os.path.isfile(self.path):
            raise BackendError.at(self.path, "no model.onnx in the compiled folder", "recompile: resgraph compile SPEC -o FOLDER")
        self._graphs: dict[int, tuple] = {}       # batch size -> (session, binding, x on device, y on device)
        self.sess = self._session(cuda_graph=False)

    def _session(self, cuda_graph: bool):
        ort, o = self.ort, self.options
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3                 # warnings about unused initializers are not the user's concern
        if o.threads:
            so.intra_op_num_threads = o.threads
        if self.cuda:
            cuda = {"device_id": str(o.device_id)}
            if cuda_graph:
                cuda["enable_cuda_graph"] = "1"
            providers = [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        try:
            sess = ort.InferenceSession(self.path, so, providers=providers)
        except Exception as e:  # noqa: BLE001  (onnxruntime raises its own exception types: a damaged file)
            raise BackendError.at(self.path, f"ONNX Runtime cannot load the model: {str(e).strip()[:300]}",
                                  "recompile it: resgraph compile SPEC --weights W -o FOLDER") from None
        if self.cuda and "CUDAExecutionProvider" not in sess.get_providers():
            raise BackendError.at(self.path, "ONNX Runtime could not start its CUDA provider (CUDA or cuDNN "
                                  "libraries missing or of another version?)", "see resgraph doctor")
        return sess

    def run(self, x: np.ndarray) -> np.ndarray:
        if not self.cuda:
            if x.dtype != np.float32 or x.shape[1:] != self.input_shape:   # else ONNX Runtime's own error
                x = self.check_batch(x)
            return self.sess.run([self.output_name], {self.input_name: x})[0]
        x = self.check_batch(x)
        if self.options.cuda_graph:
            return self._run_graph(x)
        ort, dev = self.ort, self.options.device_id
        t0 = time.perf_counter()
        xd = ort.OrtValue.ortvalue_from_numpy(x, "cuda", dev)          # synchronous copy
        t1 = time.perf_counter()
        io = self.sess.io_binding()
        io.bind_ortvalue_input(self.input_name, xd)
        io.bind_output(self.output_name, "cuda", dev)
        self.sess.run_with_iobinding(io)
        t2 = time.perf_counter()
        y = io.copy_outputs_to_cpu()[0]
        self.last_io = (t1 - t0, time.perf_counter() - t2)
        return y

    def _run_graph(self, x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        if n not in self._graphs:
            ort, dev = self.ort, self.options.device_id
            sess = self._session(cuda_graph=True)
            xd = ort.OrtValue.ortvalue_from_shape_and_type(x.shape, np.float32, "cuda", dev)
            yd = ort.OrtValue.ortvalue_from_shape_and_type((n, *self.output_shape), np.float32, "cuda", dev)
            io = sess.io_binding()
            io.bind_ortvalue_input(self.input_name, xd)
            io.bind_ortvalue_output(self.output_name, yd)
            xd.update_inplace(x)
            sess.run_with_iobinding(io)           # the first run on the provider; the second captures
            self._graphs[n] = (sess, io, xd, yd)
        sess, io, xd, yd = self._graphs[n]
        t0 = time.perf_counter()
        xd.update_inplace(x)                       # into the captured input buffer
        t1 = time.perf_counter()
        sess.run_with_iobinding(io)
        t2 = time.perf_counter()
        y = yd.numpy()
        self.last_io = (t1 - t0, time.perf_counter() - t2)
        return y

    def close(self) -> None:
        self._graphs.clear()
        self.sess = None
