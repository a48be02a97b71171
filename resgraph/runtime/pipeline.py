"""`resgraph run`'s engine: decode in a worker pool, overlapped with inference, in input order.

    inputs --chunks of batch_size--> workers decode + preprocess (Pillow releases the GIL)
           --> main thread stacks the good samples, runs the session --> results, in input order

Up to `workers + 1` batches are decoded ahead of the one being inferred, so the session waits on
decoding only when decoding is the slower side. A batch ends up smaller than batch_size where some
of its inputs failed, and the last batch is partial; every input yields exactly one Result.
"""
from __future__ import annotations

import os
from collections import deque
from itertools import islice
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .inputs import Item, load
from .preprocess import InputError, Preprocess


@dataclass(frozen=True)
class Result:
    item: Item
    output: np.ndarray | None = None   # the model's output for this input
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def default_workers(threads: int | None = None) -> int:
    """Decoding threads take the cores that inference leaves, 0 to 4.

    With `threads` (inference's CPU threads) set: the cores beyond them. Unset (inference takes
    every core): half the cores, and none on 1 or 2 cores. A decoding thread overlaps inference only
    where inference leaves a core idle and contends with it elsewhere: on 2 cores with inference on
    both (bench/run_speed.py, docs/inference.md) one decoding thread made `run` 2-10% slower than
    decoding in line, for 8x8 PNGs (decoding them is Pillow's Python, under the GIL) and for
    ResNet-50 on JPEGs alike; with inference on one core, it hid decoding behind inference."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if threads is not None:
        return max(0, min(4, cores - threads))
    return 0 if cores <= 2 else min(4, cores // 2)


def decode_batch(items: list[Item], pre: Preprocess) -> list:
    """Each item's sample, or its error message."""
    out: list = []
    for it in items:
        try:
            out.append(load(it, pre))
        except InputError as e:
            out.append(str(e))
    return out


def predict(session, items: list[Item], batch_size: int = 32, workers: int | None = None) -> Iterator[Result]:
    """One Result per item, in order. workers=0 decodes on the calling thread (no overlap)."""
    for batch in predict_batches(session, items, batch_size, workers):
        yield from batch


def predict_batches(session, items: list[Item], batch_size: int = 32,
                    workers: int | None = None) -> Iterator[list[Result]]:
    """predict(), a batch's Results at a time (what a caller that writes per batch wants)."""
    assert batch_size >= 1
    _require_pillow(items, session.preprocess)
    pre = session.preprocess
    chunks = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    workers = default_workers(session.options.threads) if workers is None else workers
    if workers == 0:
        for chunk in chunks:
            yield _infer(session, chunk, decode_batch(chunk, pre))
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="resgraph-decode") as pool:
        ahead = iter(chunks)
        pending = deque((c, pool.submit(decode_batch, c, pre)) for c in islice(ahead, workers + 1))
        while pending:
            chunk, fut = pending.popleft()
            decoded = fut.result()
            nxt = next(ahead, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(decode_batch, nxt, pre)))
            yield _infer(session, chunk, decoded)


def _infer(session, chunk: list[Item], decoded: list) -> list[Result]:
    good = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
    y = session.run(np.stack([decoded[i] for i in good])) if good else None
    at = {i: k for k, i in enumerate(good)}
    finite = np.isfinite(y.reshape(len(y), -1)).all(axis=1) if good else None
    out = []
    for i, it in enumerate(chunk):
        if i not in at:
            out.append(Result(it, error=decoded[i]))
        elif not finite[at[i]]:   # inputs of extreme magnitude, or an fp16 model overflowing on this one
            out.append(Result(it, error="the model's output holds NaN or inf for this input"))
        else:
            out.append(Result(it, output=y[at[i]]))
    return out


def _require_pillow(items: list[Item], pre: Preprocess) -> None:
    if pre.takes_images and any(not it.path.lower().endswith(".npy") for it in items):
        import importlib.util
        if importlib.util.find_spec("PIL") is None:
            from ..errors import BackendError
            raise BackendError.at("Pillow", "decoding images needs Pillow, which is not installed",
                                  "pip install 'resgraph[onnx]' (or pillow)")


def top_k(output: np.ndarray, k: int, labels) -> list[dict]:
    """The k best classes of one output vector: index, label, softmax score (float64 softmax, then rounded)."""
    return top_k_batch(output[None], k, labels)[0]


def top_k_batch(outputs: np.ndarray, k: int, labels) -> list[list[dict]]:
    """top_k of each row of [N, classes], in a few numpy calls for the whole batch (not N times as many)."""
    z = outputs.astype(np.float64).reshape(len(outputs), -1)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    idx = np.argsort(-p, axis=1, kind="stable")[:, :k]
    scores = np.round(np.take_along_axis(p, idx, axis=1), 6).tolist()
    names = labels if labels is not None else [str(i) for i in range(z.shape[1])]
    return [[{"index": i, "label": names[i], "score": sc} for i, sc in zip(row, srow)]
            for row, srow in zip(idx.tolist(), scores)]
