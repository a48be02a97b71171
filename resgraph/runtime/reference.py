"""`parity --reference FILE` and `parity --save-reference FILE`: a model's outputs against outputs
recorded elsewhere, as Polygraphy's `run --save-inputs/--save-outputs` then `--load-inputs/--load-outputs`.

The file is one .npz holding every input and every expected output by its tensor name ([N, ...],
N samples; ONNX gives an input and an output distinct names). Written by `--save-reference` (the
first back end of --backends, in parity's order: a compiled folder's torch-cpu, the checkpoint),
or by anything else: `np.savez("ref.npz", image=x, logits=torch_model(x))`. It is read as untrusted
input: a plain file, no pickles, every array's header read and its size bounded (MAX_PARITY_BYTES)
before any is loaded. Each back end is then compared with the reference as parity compares two back
ends (parity.compare; the reference is fp32), with one difference: no torch module measures the fp32
noise floor of a reference made elsewhere, so an fp32 pair passes within max |a-b| <= 1e-4, or
|a-b| <= 1e-4 (1 + |ref|) element by element (REFERENCE_REL).
"""
from __future__ import annotations

import os
import zipfile

import numpy as np

from ..errors import DataError, OptionError

REFERENCE_REL = 1e-4
NAME = "reference"   # the reference's name in the report's pairs


def read_reference(path: str, inputs, outputs) -> tuple[dict, dict]:
    """(input name -> [N, ...], output name -> [N, ...]) from the .npz at `path`, checked: every input
    and output by name, nothing else, one N, within MAX_PARITY_BYTES."""
    from ..limits import MAX_PARITY_BYTES
    sizes = _headers(path)
    total = sum(sizes.values())
    if total > MAX_PARITY_BYTES:
        raise DataError.at(path, f"its arrays hold {total / 2**30:,.1f} GiB, more than parity reads "
                           f"({MAX_PARITY_BYTES >> 30} GiB)", "save fewer samples")
    ins, outs = [t.name for t in inputs], [t.name for t in outputs]
    missing = [n for n in ins + outs if n not in sizes]
    other = [n for n in sizes if n not in ins + outs]
    if missing or other:
        said = f"no {', '.join(missing)}" if missing else f"{', '.join(other)}, which the model has not"
        raise DataError.at(path, f"the reference holds {said} (the model's inputs: {', '.join(ins)}; outputs: "
                           f"{', '.join(outs)})", "save every input and output under its tensor name")
    with np.load(path, allow_pickle=False) as z:
        arrays = {n: z[n] for n in ins + outs}
    counts = {n: (a.shape[0] if a.ndim else 0) for n, a in arrays.items()}
    if len(set(counts.values())) != 1 or 0 in counts.values():
        raise DataError.at(path, "its arrays do not share one batch dim: " + ", ".join(f"{n} {list(arrays[n].shape)}"
                           for n in arrays), "stack the samples of each tensor along a first axis")
    return {n: arrays[n] for n in ins}, {n: arrays[n] for n in outs}


def _headers(path: str) -> dict[str, int]:
    """name -> bytes of each array of the .npz, from the headers alone (a compressed member could
    inflate to anything)."""
    try:
        with zipfile.ZipFile(path) as z:
            out = {}
            for info in z.infolist():
                name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                with z.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(f)
                if dtype.hasobject:
                    raise DataError.at(path, f"{name} holds Python objects", "save numeric arrays only")
                out[name] = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            return out
    except FileNotFoundError:
        raise OptionError.at("--reference", f"no such file {path}", "write one with parity --save-reference FILE") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise DataError.at(path, f"not a .npz of arrays: {e}", "np.savez(FILE, input=x, output=y)") from None


def compare_reference(artifact, backends: str, path: str, batch_size: int, options) -> dict:
    """Every back end `backends` names against the reference file: parity's report, each pair
    (reference, back end) on every output."""
    from dataclasses import replace

    from .foreign import manifest_of
    from .parity import compare, order, run_batches, worst
    from .session import named_backends, open_session
    names, skipped = named_backends(backends, artifact, "--backends")
    manifest = manifest_of(artifact)
    feeds, expected = read_reference(path, manifest.inputs, manifest.outputs)
    sessions = {}
    try:
        for n in order(names):
            sessions[n] = open_session(artifact, n, replace(options, verify=False))
        feeds = next(iter(sessions.values())).check_feeds(feeds)
        got = run_batches(sessions, feeds, batch_size)
        pairs = []
        for o in expected:
            outs = {NAME: expected[o], **{b: got[b][o] for b in sessions}}
            for b in sessions:
                if outs[b].shape != expected[o].shape:
                    raise DataError.at(path, f"{o} is {list(expected[o].shape)} in the reference, {list(outs[b].shape)} "
                                       f"from {b}", "save the outputs of these inputs")
            precisions = {NAME: "fp32", **{b: s.precision for b, s in sessions.items()}}
            pairs += [replace(p, output=o) for p in compare(outs, precisions, fp32_rel=REFERENCE_REL)]
        described = {NAME: path, **{n: s.describe() for n, s in sessions.items()}}
    finally:
        for s in sessions.values():
            s.close()
    n = len(next(iter(feeds.values())))
    return {"artifact": str(artifact), "model": manifest.name, "precision": manifest.precision,
            "inputs": f"{n} inputs from {path}", "shapes": [], "backends": described,
            "pairs": [p.to_json() for p in worst(pairs)], "outputs": [p.to_json() for p in pairs],
            "changed_since_compile": {}, "failed_inputs": [], "skipped": skipped, "int8": None,
            "ok": all(p.ok for p in pairs)}


def save_reference(artifact, backends: str, source: str, path: str, batch_size: int, options) -> dict:
    """Run the first back end `backends` names (parity's order) on --inputs (N random, or a folder)
    and write the inputs and its outputs to `path` (atomically: nothing on an error)."""
    from dataclasses import replace

    from ..fileio import atomic_write
    from .parity import folder_cases, order, random_cases, run_batches
    from .session import named_backends, open_session
    names, _ = named_backends(backends, artifact, "--backends")
    name = order(names)[0]
    with open_session(artifact, name, replace(options, verify=False)) as s:
        cases, what = random_cases(source, s, [{}]) if source.isdigit() else folder_cases(source, s)[:2]
        if len(cases) != 1:
            raise OptionError.at("--save-reference", f"the inputs come at {len(cases)} sizes; a reference holds one",
                                 "give inputs of one size")
        feeds = cases[0][1]
        outputs = run_batches({name: s}, feeds, batch_size)[name]
    clash = set(feeds) & set(outputs)
    assert not clash, f"an input and an output share a name: {clash}"

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **feeds, **outputs)
    atomic_write(path, write, suffix=".npz")
    return {"written": os.path.abspath(path), "backend": name, "inputs": what,
            "arrays": {k: list(v.shape) for k, v in {**feeds, **outputs}.items()}}
