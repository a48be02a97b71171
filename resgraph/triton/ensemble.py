"""`export triton --with-preprocess`: encoded images (JPEG, PNG... as Triton BYTES) in, the model's
outputs out, as one Triton ensemble of two steps:

    REPO/<name>_preprocess/   backend "python": preprocess_model.py as N/model.py, the folder's
                              manifest.json beside it; input "encoded_image" TYPE_STRING [1] (one
                              encoded image a row of the batch), output the model's input, its dims
                              and dtype (raw uint8 pixels for a uint8 model)
    REPO/<name>/              the model itself, any platform
    REPO/<name>_ensemble/     platform "ensemble": ensemble_scheduling feeds the first step's output
                              to the model, and answers with every output of the model

The first step decodes each image exactly as `resgraph run` decodes a file (decode(): Pillow, EXIF
orientation, the first frame, then resgraph.runtime.preprocess's transform from the manifest's
preprocess), so a client sending a file's bytes gets what `run` computes on that file. The images
of one request must come to one size (a fixed-size model: always; with size variables: those of one
size, else the request is refused, naming the sizes).
The steps name no version (model_version -1): the ensemble runs the newest of each that is served.
"""
from __future__ import annotations

import os

from ..errors import OptionError
from .sections import DTYPES, ModelFolder, dims_of, q, tensors

ENCODED = "encoded_image"    # the ensemble's input, and the preprocess step's


def folders(name: str, folder: str, m, max_batch: int, instances: int) -> list[ModelFolder]:
    """The preprocess step's and the ensemble's model folders, for a model served as `name`."""
    if len(m.inputs) != 1 or len(m.input.chw) != 3 or m.input.chw[0] not in (1, 3):
        shown = ", ".join(f"{t.name} {list(t.sample_shape)}" for t in m.inputs)
        raise OptionError.at("--with-preprocess", f"the model takes {shown}: not one image input (1 or 3 channels)",
                             "export it without --with-preprocess, and preprocess on the client")
    pre, ens = f"{name}_preprocess", f"{name}_ensemble"
    t = m.input
    taken = {ENCODED} | {o.name for o in m.outputs}
    pixels = t.name + "_pixels"
    while pixels in taken:
        pixels += "_"
    pre_config = "\n".join([
        f"name: {q(pre)}", 'backend: "python"', f"max_batch_size: {max_batch}",
        tensors("input", [f"{{ name: {q(ENCODED)} data_type: TYPE_STRING dims: [1] }}"]),
        tensors("output", [f"{{ name: {q(t.name)} data_type: {DTYPES[t.dtype]} dims: [{dims_of(t)}] }}"]),
        f"instance_group [{{ kind: KIND_CPU count: {instances} }}]"]) + "\n"
    label = ' label_filename: "labels.txt"'
    outputs = [f"{{ name: {q(o.name)} data_type: {DTYPES[o.dtype]} dims: [{dims_of(o)}]"
               f"{label if m.labels and i == 0 else ''} }}" for i, o in enumerate(m.outputs)]
    out_map = " ".join(f"output_map {{ key: {q(o.name)} value: {q(o.name)} }}" for o in m.outputs)
    ens_config = "\n".join([
        f"name: {q(ens)}", 'platform: "ensemble"', f"max_batch_size: {max_batch}",
        tensors("input", [f"{{ name: {q(ENCODED)} data_type: TYPE_STRING dims: [1] }}"]),
        tensors("output", outputs),
        "ensemble_scheduling { step [",
        f"  {{ model_name: {q(pre)} model_version: -1 input_map {{ key: {q(ENCODED)} value: {q(ENCODED)} }} "
        f"output_map {{ key: {q(t.name)} value: {q(pixels)} }} }},",
        f"  {{ model_name: {q(name)} model_version: -1 input_map {{ key: {q(t.name)} value: {q(pixels)} }} "
        f"{out_map} }}",
        "] }"]) + "\n"
    here = os.path.dirname(os.path.abspath(__file__))
    return [ModelFolder(pre, pre_config, files={"manifest.json": os.path.join(folder, "manifest.json")},
                        package={"model.py": os.path.join(here, "preprocess_model.py")}),
            ModelFolder(ens, ens_config, labels=tuple(m.labels or ()))]


def decoder(folder: str):
    """An encoded image's bytes -> one sample of the compiled folder's (or a preprocess step's) model, as
    `run` makes it from a file (Preprocess.load_bytes: Pillow's decompression-bomb bound, EXIF
    orientation, the first frame, the transform), in the input's dtype; InputError for bytes that are
    not such an image."""
    import numpy as np

    from ..manifest import read_manifest
    from ..runtime.preprocess import Preprocess
    m = read_manifest(folder)
    t = m.input
    pre = Preprocess.from_json(m.preprocess, t.chw, m.sizes, raw=t.layout if t.dtype == "uint8" else None)
    dtype = np.dtype(t.dtype)
    return lambda data: np.ascontiguousarray(pre.load_bytes(data), dtype=dtype)
