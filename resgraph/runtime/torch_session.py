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
from ..manifest import read_spec, scale_shift
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
        self._graphs: dict[tuple, tuple] = {}     # input shapes -> (graph, static inputs, static outputs)

    def _forward(self, xs: list) -> list:
        """The module on every input (spec order) -> every output (a list, spec order)."""
        torch = self.torch
        with torch.inference_mode(), torch.autocast(self.dev.type, dtype=self.amp_dtype or torch.float32,
                                                    enabled=self.amp_dtype is not None):
            y = self.module(*xs)
        return list(y) if isinstance(y, tuple) else [y]

    def _to_device(self, xt):
        if self.dev.type == "cpu":
            return xt
        xt = xt.to(self.dev, non_blocking=False)
        return xt.contiguous(memory_format=self.torch.channels_last) if self.channels_last and xt.ndim == 4 else xt

    def run(self, x: np.ndarray) -> np.ndarray:
        self.one_to_one()
        return self.run_all({self.input_name: x})[self.output_name]

    def run_all(self, feeds: dict) -> dict:
        feeds = self.check_feeds(feeds)
        torch = self.torch
        xs = [self._contract_in(t, feeds[t.name]) for t in self.inputs]
        if self.dev.type == "cpu":
            ys = [y.float().numpy() for y in self._forward(xs)]
        else:
            with torch.cuda.device(self.dev):           # streams, graphs and kernels on this GPU, not cuda:0
                ys = self._run_graph(xs) if self.options.cuda_graph else self._run_cuda(xs)
        return {t.name: y.astype(t.dtype, copy=False) for t, y in zip(self.outputs, ys)}

    def _contract_in(self, t, x: np.ndarray):
        """What model.onnx's first nodes do to an input (compile --input), for the module, which takes
        the normalised float32 map: raw uint8 pixels cast, put channels first and normalised with the
        same multiply-add; float16 cast up."""
        xt = self.torch.from_numpy(x)
        if t.dtype == "float32":
            return xt
        xt = xt.float()
        if t.dtype == "uint8":
            xt = xt.permute(0, 3, 1, 2).contiguous() if t.layout == "nhwc" else xt
            scale, shift = (self.torch.from_numpy(v).reshape(1, -1, 1, 1)
                            for v in scale_shift(t.chw[0], self.manifest.preprocess))
            xt = xt * scale + shift
        return xt

    def _run_cuda(self, xs: list) -> list:
        torch = self.torch
        t0 = time.perf_counter()
        xd = [self._to_device(x) for x in xs]
        torch.cuda.synchronize(self.dev)
        t1 = time.perf_counter()
        ys = self._forward(xd)
        torch.cuda.synchronize(self.dev)
        t2 = time.perf_counter()
        out = [y.float().cpu().numpy() for y in ys]
        self.last_io = (t1 - t0, time.perf_counter() - t2)
        return out

    def _run_graph(self, xs: list) -> list:
        torch = self.torch
        key = tuple(tuple(x.shape) for x in xs)
        if key not in self._graphs:
            static_x = [self._to_device(x.clone()) for x in xs]
            side = torch.cuda.Stream(self.dev)
            side.wait_stream(torch.cuda.current_stream(self.dev))
            with torch.cuda.stream(side):          # warm-up (cuDNN autotuning, lazy init) off the capture
                for _ in range(3):
                    self._forward(static_x)
            torch.cuda.current_stream(self.dev).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=torch.cuda.Stream(self.dev)):   # captured on this GPU
                static_y = self._forward(static_x)
            self._graphs[key] = (graph, static_x, static_y)
        graph, static_x, static_y = self._graphs[key]
        t0 = time.perf_counter()
        for s_x, x in zip(static_x, xs):
            s_x.copy_(x)                            # into the captured input buffers
        torch.cuda.synchronize(self.dev)
        t1 = time.perf_counter()
        graph.replay()
        torch.cuda.synchronize(self.dev)
        t2 = time.perf_counter()
        out = [y.float().cpu().numpy() for y in static_y]
        self.last_io = (t1 - t0, time.perf_counter() - t2)
        return out

    def close(self) -> None:
        self._graphs.clear()
        self.module = None
