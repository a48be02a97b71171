"""Run what `resgraph compile` wrote: one Session over every back end, reading only the compiled folder.

    from resgraph.runtime import open_session
    with open_session("compiled/digits_resnet", backend="auto") as s:
        logits = s.run(batch)                      # [N, 1, 8, 8] float32 -> [N, 10]
        x = s.preprocess.file("seven.png")         # an image as the spec's preprocess says

Nothing here imports torch, onnxruntime or the front end until a back end that needs it is opened.
"""
from .inputs import Item, expand
from .pipeline import Result, predict, predict_batches, top_k, top_k_batch
from .preprocess import InputError, Preprocess
from .session import AUTO_ORDER, BACKENDS, BackendError, Options, Session, choose, open_session

__all__ = ["AUTO_ORDER", "BACKENDS", "BackendError", "InputError", "Item", "Options", "Preprocess", "Result", "Session",
           "choose", "expand", "open_session", "predict", "predict_batches", "top_k", "top_k_batch"]
