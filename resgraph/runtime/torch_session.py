"""The PyTorch module, rebuilt from the compiled folder's own spec.yaml and weights.safetensors.

The one back end that uses the front end: spec.yaml (checked against the manifest's sha256) is
compiled to the IR again and lowered to the same torch.fx module `resgraph train` trains, in eval
mode, with the unfolded checkpoint: the reference `parity` holds model.onnx against.

On CUDA: channels-last for image inputs, autocast (the artifact's precision by default: fp16 for an
fp16 folder; or --amp fp16|bf16), optional torch.compile, and optional CUDA graphs (one per batch
size: a static input buffer, warmed up on a side stream, captured, then replayed).
"""
from __future__ import annotations

import os
import time

import numpy as np

from ..errors import BackendError, OptionError
from ..manifest import read_spec
from .base import Options, Session


class TorchSession(Session):
    def __init__(self, folder: str, manifest, options: Options, cuda: bool):
        super().__init__(folder, manifest, options)
        import torch
        from ..backends.torch import to_torch
        from ..frontend import check_text
        self.torch = torch
        self.backend = "torch-cuda" if cuda else "torch-cpu"
        self.dev = torch.device(f"cuda:{options.device_id}" if cuda else "cpu")
        self.device = str(self.dev)
        spec_path, raw = read_spec(folder, manifest)
        checked = check_text(raw.decode("utf-8"), spec_path, read_files=False)
        if options.threads and not cuda:
            torch.set_num_threads(options.threads)
        module = to_torch(checked.graph, weights=os.path.join(folder, "weights.safetensors")).eval()
        amp = options.amp or ("fp16" if manifest.precision == "fp16" else "off")
        if amp not in ("off", "fp16", "bf16"):
            raise OptionError.at("--amp", f"unknown autocast precision '{amp}'", "off, fp16 or bf16")
        self.amp_dtype = {"off": None, "fp16": torch.float16, "bf16": torch.bfloat16}[amp] if cuda else None
        if self.amp_dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise BackendError.at("--amp", f"{torch.cuda.get_device_name(self.dev)} does not compute in bf16",
                                  "use --amp fp16 (or off)")
        if cuda:
            # PyTorch lets cuDNN convolutions use TF32 by default (fp16's mantissa): off unless asked
            # for, so that fp32 means fp32 on every back end. (A process-wide setting, as torch has it.)
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = options.tf32
        self.precision = amp if self.amp_dtype is not None else ("tf32" if cuda and options.tf32 else "fp32")
        image = len(self.input_shape) == 3
        self.channels_last = cuda and image and options.channels_last is not False
        module = module.to(self.dev, memory_format=torch.channels_last) if self.channels_last else module.to(self.dev)
        self.module = torch.compile(module) if options.torch_compile else module
        self._graphs: dict[int, tuple] = {}

    def _forward(self, x):
        torch = self.torch
        with torch.inference_mode(), torch.autocast(self.dev.type, dtype=self.amp_dtype or torch.float32,
                                                    enabled=self.amp_dtype is not None):
            return self.module(x)

    def _to_device(self, xt):
        if self.dev.type == "cpu":
            return xt
        xt = xt.to(self.dev, non_blocking=False)
        return xt.contiguous(memory_format=self.torch.channels_last) if self.channels_last else xt

    def run(self, x: np.ndarray) -> np.ndarray:
        x = self.check_batch(x)
        torch = self.torch
        xt = torch.from_numpy(x)
        if self.dev.type == "cpu":
            return self._forward(xt).float().numpy()
        with torch.cuda.device(self.dev):           # streams, graphs and kernels on this GPU, not cuda:0
            return self._run_graph(xt) if self.options.cuda_graph else self._run_cuda(xt)

    def _run_cuda(self, xt) -> np.ndarray:
        torch = self.torch
        t0 = time.perf_counter()
        xd = self._to_device(xt)
        torch.cuda.synchronize(self.dev)
        t1 = time.perf_counter()
        y = self._forward(xd)
        torch.cuda.synchronize(self.dev)
        t2 = time.perf_counter()
        out = y.float().cpu().numpy()
        self.last_io = (t1 - t0, time.perf_counter() - t2)
        return out

    def _run_graph(self, xt) -> np.ndarray:
        torch = self.torch
        n = xt.shape[0]
        if n not in self._graphs:
            static_x = self._to_device(xt.clone())
            side = torch.cuda.Stream(self.dev)
            side.wait_stream(torch.cuda.current_stream(self.dev))
            with torch.cuda.stream(side):          # warm-up (cuDNN autotuning, lazy init) off the capture
                for _ in range(3):
                    self._forward(static_x)
            torch.cuda.current_stream(self.dev).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=torch.cuda.Stream(self.dev)):   # captured on this GPU
                static_y = self._forward(static_x)
            self._graphs[n] = (graph, static_x, static_y)
        graph, static_x, static_y = self._graphs[n]
        t0 = time.perf_counter()
        static_x.copy_(xt)                          # into the captured input buffer
        torch.cuda.synchronize(self.dev)
        t1 = time.perf_counter()
        graph.replay()
        torch.cuda.synchronize(self.dev)
        t2 = time.perf_counter()
        out = static_y.float().cpu().numpy()
        self.last_io = (t1 - t0, time.perf_counter() - t2)
        return out

    def close(self) -> None:
        self._graphs.clear()
        self.module = None
