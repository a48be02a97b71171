"""The TensorRT engine back end's place in the runtime.

The engine builder (model.onnx + Manifest -> model.engine + engine.json, resgraph/backends/tensorrt)
is not part of this version, so no compiled folder holds an engine yet and this back end reports
itself unusable, with the reason; `auto` then passes over it. When the builder lands, open_engine
returns a Session like the others (deserialise the engine, check engine.json's TensorRT version and
GPU against this machine, bind device buffers, execute_async_v3), and `auto` prefers it.
"""
from __future__ import annotations

import importlib.util
import os

from .session import Availability, BackendError, Options


def probe(folder: str | None) -> Availability:
    if importlib.util.find_spec("tensorrt") is None:
        return Availability(False, "tensorrt is not installed", "pip install 'resgraph[tensorrt]' (and an NVIDIA GPU)")
    if folder is not None and not os.path.isfile(os.path.join(folder, "model.engine")):
        return Availability(False, f"no model.engine in {folder}")
    return Availability(False, "this resgraph cannot run TensorRT engines yet (no engine builder)")


def open_engine(folder: str, manifest, options: Options):
    a = probe(folder)
    raise BackendError.at("tensorrt", f"the tensorrt back end is not usable here: {a.reason}",
                          a.install or "use --backend ort-cuda or ort-cpu")
