"""A safetensors checkpoint as zero-copy numpy views of one read-only memory map.

`resgraph compile` reads a checkpoint only to stream it out again (into model.onnx, after folding,
and byte for byte into weights.safetensors) and to hash it. safetensors' numpy API copies every
tensor out of its mmap into fresh memory (85 ms for resnet50's 100 MB, most of it page faults);
views of the page cache cost nothing, and the copy and the hash read the same mapped bytes.

The header is validated by safetensors itself (`safe_open` parses it in full: JSON, dtypes, and
offsets that tile the data exactly, or it raises), and only then read here for the offsets, which
its Python API does not expose. Format (safetensors' spec): 8 bytes little-endian header length N,
N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then the
data; offsets count from the end of the header, tensors are little-endian and C-contiguous.

BF16 tensors (a bfloat16 training run's checkpoint) have no numpy type: they are widened to float32,
exactly (bfloat16 is the upper half of a float32), into fresh memory. Every other dtype is a view.

The views are read-only, and live as long as the map: a file truncated by another process while it
is mapped makes the next read of the lost pages fail with SIGBUS (as any mmap reader does).
"""
from __future__ import annotations

import json
import mmap
from dataclasses import dataclass

import numpy as np

# safetensors' dtype names -> numpy (BF16 is read as its bits and widened, see above)
DTYPES = {"BF16": "<u2", "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
          "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}


@dataclass(frozen=True)
class Mapped:
    path: str
    buffer: mmap.mmap                 # the whole file
    tensors: dict[str, np.ndarray]    # read-only views into `buffer`, in file order
    metadata: dict[str, str]


def open_mapped(path: str) -> Mapped:
    """Map `path` and view its tensors. Raises FileNotFoundError, OSError, ValueError (bad dtype)
    or safetensors.SafetensorError (a malformed file) — the caller words them for the user."""
    from safetensors import safe_open
    with safe_open(path, framework="np") as f:   # full header validation
        metadata = f.metadata() or {}
    with open(path, "rb") as fh:
        buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    n = int.from_bytes(buf[:8], "little")
    header = json.loads(buf[8:8 + n])
    start = 8 + n
    tensors = {}
    for name, info in sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                             key=lambda kv: kv[1]["data_offsets"][0]):
        if info["dtype"] not in DTYPES:
            raise ValueError(f"tensor '{name}' has dtype {info['dtype']}, which numpy cannot hold")
        dtype = np.dtype(DTYPES[info["dtype"]])
        begin, end = info["data_offsets"]
        count = (end - begin) // dtype.itemsize
        assert count == int(np.prod(info["shape"], dtype=np.int64)), (name, info)   # safe_open checked it
        t = np.frombuffer(buf, dtype=dtype, count=count, offset=start + begin).reshape(info["shape"])
        if info["dtype"] == "BF16":
            t = (t.astype("<u4") << 16).view("<f4")
            t.flags.writeable = False
        tensors[name] = t
    return Mapped(path, buf, tensors, dict(metadata))
