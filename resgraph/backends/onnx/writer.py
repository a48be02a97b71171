"""Write a model to disk without ever building it as one protobuf message.

A ModelProto is a protobuf message, and protobuf's wire format lets a message be written field by
field: a length-delimited field is `key, length, payload`, and fields may come in any order. So
the file is: the model's other fields, then field 7 (graph) whose payload is the graph without its
large initializers followed by one field-5 record per initializer — each a TensorProto header
(name, dims, type) and its raw_data (field 9) taken straight from the numpy array's memory.

`onnx.load` of the result equals `to_onnx(...)` (tests/backends/onnx/test_onnx_backend.py checks it), without the
100 MB SerializeToString, the tobytes copies, or the model in memory twice. The sha256 is computed
on the same pieces in a second thread while they are written (hashing and writing both release the
GIL; hashing is the slower, ~1 GB/s).

`write_external` writes the other form ONNX allows: the large initializers in a side file
(`model.onnx.data`), each TensorProto holding only {location, offset, length}. Protobuf cannot
parse a message of 2 GiB or more, so a model that large *must* take this form; smaller ones may
(`resgraph compile --external-data`), which lets ONNX Runtime map the weights instead of parsing
them out of the model (faster session start-up). Tensors of 1 MiB and more start at a multiple of
64 KiB: ONNX Runtime maps an initializer only at an offset aligned to the allocation granularity
(4 KiB on Linux, 64 KiB on Windows); smaller ones are packed, as ONNX Runtime's own writer does.
"""
from __future__ import annotations

import hashlib
import os
import threading

import numpy as np
import onnx

from onnx import helper


def initializer_header(name: str, arr: np.ndarray) -> onnx.TensorProto:
    """A TensorProto with the tensor's name, dims and type, and no data: its raw_data follows it on disk."""
    t = onnx.TensorProto()
    t.name = name
    t.data_type = helper.np_dtype_to_tensor_dtype(arr.dtype)
    t.dims.extend(arr.shape)
    return t


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, length: int) -> bytes:
    """The key and length of a length-delimited (wire type 2) field."""
    return _varint(number << 3 | 2) + _varint(length)


def write_model(path: str, model: onnx.ModelProto, big: dict[str, np.ndarray]) -> tuple[str, int]:
    """Write `model` with the initializers in `big` appended; returns (sha256 hex, bytes written)."""
    graph_bytes = model.graph.SerializeToString()
    rest = onnx.ModelProto()
    rest.CopyFrom(model)
    rest.ClearField("graph")
    records = []
    total = len(graph_bytes)
    for name, arr in big.items():
        header = initializer_header(name, arr).SerializeToString()
        raw = memoryview(arr).cast("B")
        tensor = header + _field(9, raw.nbytes)           # TensorProto.raw_data = 9
        head = _field(5, len(tensor) + raw.nbytes) + tensor   # GraphProto.initializer = 5
        records.append((head, raw))
        total += len(head) + raw.nbytes
    pieces = [rest.SerializeToString(), _field(7, total), graph_bytes]   # ModelProto.graph = 7
    for head, raw in records:
        pieces += [head, raw]
    return _write_hashed(path, pieces)


PROTOBUF_LIMIT = 2**31 - 1   # bytes: the most a protobuf message (the whole .onnx file) may hold
ALIGN, ALIGN_FROM = 1 << 16, 1 << 20


def model_bytes(model: onnx.ModelProto, big: dict[str, np.ndarray]) -> int:
    """The size of the self-contained file `write_model` would write (within a few bytes per tensor)."""
    return model.ByteSize() + sum(a.nbytes + 64 + len(name) for name, a in big.items())


def write_external(path: str, model: onnx.ModelProto, big: dict[str, np.ndarray],
                   data_name: str) -> tuple[tuple[str, int], tuple[str, int]]:
    """Write `model` to `path` with the initializers in `big` in the side file `data_name` beside it.
    Returns (sha256 hex, bytes) of the model file and of the data file."""
    m = onnx.ModelProto()
    m.CopyFrom(model)   # small: the large initializers are not in it
    pieces, offset = [], 0
    for name, arr in big.items():
        raw = memoryview(arr).cast("B")
        if raw.nbytes >= ALIGN_FROM and offset % ALIGN:
            pad = ALIGN - offset % ALIGN
            pieces.append(bytes(pad))
            offset += pad
        t = initializer_header(name, arr)
        t.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(raw.nbytes))):
            t.external_data.add(key=key, value=value)
        m.graph.initializer.append(t)
        pieces.append(raw)
        offset += raw.nbytes
    data = _write_hashed(os.path.join(os.path.dirname(path), data_name), pieces)
    return _write_hashed(path, [m.SerializeToString()]), data


def _write_hashed(path: str, pieces: list) -> tuple[str, int]:
    """Write the pieces in order, hashing them in a second thread meanwhile; (sha256 hex, bytes)."""
    h = hashlib.sha256()
    hasher = threading.Thread(target=lambda: [h.update(p) for p in pieces], name="resgraph-sha256")
    hasher.start()
    try:
        with open(path, "wb") as f:
            for piece in pieces:
                f.write(piece)
    finally:
        hasher.join()
    return h.hexdigest(), sum(len(p) for p in pieces)   # memoryviews are 1-D bytes


def save(path_of, model: onnx.ModelProto, big: dict[str, np.ndarray], external_data: bool = False) -> dict[str, str]:
    """Write model.onnx (and model.onnx.data beside it with `external_data`, or where one protobuf
    message cannot hold the model) at the paths `path_of(file name)` gives; returns {file name: sha256}."""
    if external_data or model_bytes(model, big) >= PROTOBUF_LIMIT:
        data = path_of("model.onnx.data")
        (model_sha, _), (data_sha, _) = write_external(path_of("model.onnx"), model, big, os.path.basename(data))
        return {"model.onnx": model_sha, "model.onnx.data": data_sha}
    model_sha, _ = write_model(path_of("model.onnx"), model, big)   # streamed, hashed as written
    return {"model.onnx": model_sha}
