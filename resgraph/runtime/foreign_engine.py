"""`resgraph engine build FILE.onnx` for a plain ONNX file: a TensorRT plan beside it, as trtexec's
--saveEngine writes one.

    FILE.engine        the serialised engine (a plain plan, no header), or -o PATH
    FILE.engine.json   its engine.json record (TensorRT, GPU, options, profile, the ONNX file's sha256)

The file is checked as run checks it (runtime.foreign: size, external data inside its folder, I/O),
the profile resolved and TensorRT looked for before any work; the builder (backends.tensorrt.build)
then reads it through a temporary folder where it is model.onnx (hard links; its external data
beside it under their own names). There is no parity gate: no folder holds a second back end of
the model (`parity FILE.onnx --reference` compares ONNX Runtime with another framework's outputs).
Both files are written atomically, after the build.
"""
from __future__ import annotations

import os
from dataclasses import replace

from ..errors import OptionError
from .foreign import ForeignModel, _tensors, foreign_model


def plan_foreign_build(path: str, precision: str | None, flags: dict):
    """(the ForeignModel, the BuildOptions): engine build's plan_build, for a plain ONNX file."""
    from ..backends.tensorrt.build import import_tensorrt
    from ..backends.tensorrt.options import from_flags, typing_plan, version_tuple
    from ..backends.tensorrt.profile import resolve
    model = foreign_model(path)
    m = model.manifest
    if precision == "int8":
        raise OptionError.at("--precision", "int8 engines are built from an int8 folder's Q/DQ model",
                             "import and compile the model, then resgraph quantize; or --precision fp16")
    if model.batch is not None and flags.get("batch") is None:   # the file fixes its batch: the profile's too
        flags = {**flags, "batch": str(model.batch)}
    options = from_flags(precision or m.precision, **flags)
    resolve(options, m.inputs, m.sizes)   # a profile the model cannot take: refused before any work
    typing_plan(options.precision, m.precision, version_tuple(import_tensorrt().__version__), "--precision")
    return model, options


def build_foreign_engine(model: ForeignModel, options, out: str | None, device_id: int = 0, verbose: bool = False):
    """Build `out` (default FILE.engine beside the file) and `out`.json; returns (out, EngineInfo)."""
    import tempfile

    from ..backends.tensorrt.build import build_plan
    from ..backends.tensorrt.engine_json import write_engine_info
    from ..fileio import atomic_write, link_or_copy
    from ..manifest import Artifact, sha256_file
    out = out or os.path.splitext(model)[0] + ".engine"
    with tempfile.TemporaryDirectory(prefix="resgraph-engine-") as tmp:
        link_or_copy(os.path.abspath(model), os.path.join(tmp, "model.onnx"))
        for loc in _external_files(model):
            os.makedirs(os.path.dirname(os.path.join(tmp, loc)), exist_ok=True)
            link_or_copy(os.path.join(model.folder, loc), os.path.join(tmp, loc))
        staged = os.path.join(tmp, "model.onnx")
        m = replace(model.manifest, artifacts={"model.onnx": Artifact(sha256_file(staged), os.path.getsize(staged))})
        data, info = build_plan(staged, m, options, device_id, verbose)

    def write(tmp_path):
        with open(tmp_path, "wb") as f:
            f.write(data)
    atomic_write(out, write)
    atomic_write(out + ".json", lambda tmp_path: write_engine_info(tmp_path, info))
    return out, info


def _external_files(model: ForeignModel) -> list[str]:
    """The external-data locations of the file (checked by foreign_model to lie inside its folder)."""
    import onnx
    from onnx.external_data_helper import uses_external_data
    proto = onnx.load(model, load_external_data=False)
    locs = {e.value for t in _tensors(proto) if uses_external_data(t) for e in t.external_data if e.key == "location"}
    return sorted(locs)
