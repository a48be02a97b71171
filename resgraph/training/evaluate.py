"""Accuracy and loss of a module on a data set: what `train` reports per epoch and `resgraph eval` prints."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..errors import DataError, listed
from .data import collate, load_data, report_bad
from .segmentation import IGNORE, counts


@torch.no_grad()
def evaluate(module, dataset, device, batch_size: int = 256, channels_last: bool = False,
             bad: dict | None = None) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `module` in eval mode, over the samples that can be read.

    Files that cannot be used are skipped: collected into `bad` (path -> why) when given, else
    reported on stderr. A DataError for an empty data set, one none of whose files can be read,
    and one with more (or fewer) classes than the module has outputs."""
    where = getattr(dataset, "where", "") or "the data"
    split = getattr(dataset, "split", "")
    if len(dataset) == 0:
        raise DataError.at(where, f"the {split + ' ' if split else ''}split has no samples",
                           "with --val-split 0 (or too few images per class to hold one out) there is no validation "
                           "split: use --split train, a larger --val-split, or a DIR/train + DIR/val layout")
    report = bad is None
    bad = {} if bad is None else bad
    was = module.training
    module.eval()
    loss = correct = n = 0.0
    classes = getattr(dataset, "classes", None)
    for x, y, skipped in DataLoader(dataset, batch_size=batch_size, collate_fn=collate):
        bad.update(skipped)
        if x is None:
            continue
        x, y = x.to(device), y.to(device)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        out = module(x).float()
        _check_classes(out, y, classes, where)
        dense = {"ignore_index": IGNORE} if y.dim() > 1 else {}   # per pixel, the unlabelled left out
        loss += F.cross_entropy(out, y, reduction="sum", **dense).item()
        right, counted = counts(out, y)
        correct += right
        n += counted
    module.train(was)
    if report:
        report_bad(bad, dataset)
    if n == 0:
        raise DataError.at(where, f"none of the {len(dataset)} {split + ' ' if split else ''}images can be used",
                           "see the files listed above: replace or remove them")
    return loss / n, correct / n


def _check_classes(out, y, classes, where: str) -> None:
    k = out.shape[1] if out.dim() == 2 or out.dim() == 4 and y.dim() == 3 else None
    if k is None:
        raise DataError.at(where, f"the network's output is {list(out.shape[1:])}, not a vector of class scores",
                           "train and evaluate classifiers: end the spec with linear: {out: CLASSES}")
    if classes is not None and len(classes) != k:
        raise DataError.at(where, f"the data has {len(classes)} classes ({listed(classes)}) but the network has "
                           f"{k} outputs",
                           f"evaluate on data with the {k} classes the model was trained on (or give the spec "
                           "labels: naming the classes, so that folders are matched by name)")
    labelled = y[y != IGNORE] if y.dim() > 1 else y
    if len(labelled) and int(labelled.max()) >= k:
        raise DataError.at(where, f"a label is {int(labelled.max())} but the network has {k} outputs",
                           "the data has more classes than the model")


def evaluate_spec(spec: str, weights: str, data: str, split: str = "val", val_split: float = 0.2,
                  seed: int = 0) -> dict:
    """`resgraph eval`: the spec at `spec` with `weights` on `data`'s `split` (its train/val split by
    `val_split` and `seed`, as train made it): {"name", "source", "split", "samples", "loss", "accuracy"}."""
    from ..backends.torch import to_torch
    from ..frontend import check_file
    c = check_file(spec)
    m = to_torch(c.graph, weights=weights)
    d = load_data(data, c.spec, val_split, seed)
    ds = d.val if split == "val" else d.train
    loss, acc = evaluate(m, ds, torch.device("cpu"))
    return {"name": c.spec.name, "source": d.source, "split": split, "samples": len(ds), "loss": loss, "accuracy": acc}
