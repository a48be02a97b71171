"""Write a model to disk without ever building it as one protobuf message.

A ModelProto is a protobuf message, and protobuf's wire format lets a message be written field by
field: a length-delimited field is `key, length, payload`, and fields may come in any order. So
the file is: the model's other fields, then field 7 (graph) whose payload is the graph without its
large initializers followed by one field-5 record per initializer — each a TensorProto header
(name, dims, type) and its raw_data (field 9) taken straight from the numpy array's memory.

`onnx.load` of the result equals `to_onnx(...)` (tests/test_onnx_backend.py checks it), without the
100 MB SerializeToString, the tobytes copies, or the model in memory twice. The sha256 is computed
on the same pieces in a second thread while they are written (hashing and writing both release the
GIL; hashing is the slower, ~1 GB/s).
"""
from __future__ import annotations

import hashlib
import threading

import numpy as np
import onnx

from .lower import initializer_header


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
