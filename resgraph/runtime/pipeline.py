"""`resgraph run`'s engine: decode in a worker pool, overlapped with inference, in input order.

    inputs --chunks of batch_size--> workers decode + preprocess (Pillow releases the GIL)
           --> main thread stacks the good samples, runs the session --> results, in input order

Up to `workers + 1` batches are decoded ahead of the one being inferred, so the session waits on
decoding only when decoding is the slower side. A batch ends up smaller than batch_size where some
of its inputs failed, and the last batch is partial; every input yields exactly one Result.

Where the model has size variables, the samples of one batch may differ in size (each image at its
own valid size): they cannot be stacked together, so a batch runs as one session call per distinct
size, in the order the sizes first appear; the Results still come out in input order.
"""
from __future__ import annotations

import os
from collections import deque
from itertools import islice
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, NamedTuple

import numpy as np

from .inputs import Feeder, Item, Sample, load
from .preprocess import Geometry, InputError, Preprocess


class Result(NamedTuple):
    """One input's answer (a NamedTuple: run keeps one per input, and a tuple is the lightest)."""
    item: Item
    outputs: dict | None = None        # output name -> the model's output for this input, in spec order
    error: str | None = None
    geometry: Geometry | None = None   # where its pixels went (Geometry.to_image; predict(geometry=True))

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def output(self) -> np.ndarray | None:
        """The first output (a one-output model's only one)."""
        return None if self.outputs is None else next(iter(self.outputs.values()))


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
    """Each item's sample (a one-input model's array), or its error message."""
    out: list = []
    for it in items:
        try:
            out.append(load(it, pre))
        except InputError as e:
            out.append(str(e))
    return out


def decode_samples(items: list[Item], feeder: Feeder) -> list:
    """Each item's Sample (every input), or its error message."""
    out: list = []
    for it in items:
        try:
            out.append(feeder.load(it))
        except InputError as e:
            out.append(str(e))
    return out


def predict(session, items: list[Item], batch_size: int = 32, workers: int | None = None,
            geometry: bool = False) -> Iterator[Result]:
    """One Result per item, in order. workers=0 decodes on the calling thread (no overlap). With
    `geometry`, each Result keeps where its image's pixels went (Result.geometry: for class maps)."""
    for batch in predict_batches(session, items, batch_size, workers, geometry):
        yield from batch


def predict_batches(session, items: list[Item], batch_size: int = 32, workers: int | None = None,
                    geometry: bool = False) -> Iterator[list[Result]]:
    """predict(), a batch's Results at a time (what a caller that writes per batch wants)."""
    assert batch_size >= 1
    _require_pillow(items, session.preprocess)
    feeder = Feeder.of(session, geometry)
    chunks = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    workers = default_workers(session.options.threads) if workers is None else workers
    if workers == 0:
        for chunk in chunks:
            yield _infer(session, chunk, decode_samples(chunk, feeder))
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="resgraph-decode") as pool:
        ahead = iter(chunks)
        pending = deque((c, pool.submit(decode_samples, c, feeder)) for c in islice(ahead, workers + 1))
        while pending:
            chunk, fut = pending.popleft()
            decoded = fut.result()
            nxt = next(ahead, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(decode_samples, nxt, feeder)))
            yield _infer(session, chunk, decoded)


def run_samples(session, samples: list[Sample]) -> dict:
    """Samples of one size (every input's shape alike) as one batch -> output name -> [N, ...]."""
    return run_feeds(session, {name: np.stack([s.feeds[name] for s in samples]) for name in samples[0].feeds})


def run_feeds(session, feeds: dict) -> dict:
    """One batch of every input (name -> [N, ...]) -> every output (name -> [N, ...]), in spec order.
    A one-input, one-output model goes through run(), every back end's fast path; others through run_all()."""
    if len(session.inputs) == 1 and len(session.outputs) == 1:
        return {session.output_name: session.run(feeds[session.input_name])}
    return session.run_all(feeds)


def _infer(session, chunk: list[Item], decoded: list) -> list[Result]:
    groups: dict = {}   # samples of one size run together (a batch of several sizes: one call per size)
    for i, d in enumerate(decoded):
        if not isinstance(d, str):
            groups.setdefault(d.key, []).append(i)
    answers = {}
    for members in groups.values():
        y = run_samples(session, [decoded[i] for i in members])
        finite = np.all([np.isfinite(v.reshape(len(v), -1)).all(axis=1) for v in y.values()], axis=0)
        for k, i in enumerate(members):
            answers[i] = {name: v[k] for name, v in y.items()} if finite[k] else None
    out = []
    for i, it in enumerate(chunk):
        if i not in answers:
            out.append(Result(it, error=decoded[i]))
        elif answers[i] is None:   # inputs of extreme magnitude, or an fp16 model overflowing on this one
            out.append(Result(it, error="the model's output holds NaN or inf for this input"))
        else:
            out.append(Result(it, outputs=answers[i], geometry=decoded[i].geometry))
    return out


def _require_pillow(items: list[Item], pre: Preprocess) -> None:
    if pre.takes_images and any(not it.path.lower().endswith((".npy", ".npz")) for it in items):
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
