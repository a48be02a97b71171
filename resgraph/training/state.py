"""A run's state on disk: the resumable trainer state, metrics.csv, and resuming from both.

Trainer state in safetensors: optimizer tensors, with the rest as JSON metadata.

Optimizer state dicts are nested ({'state': {i: {name: tensor|number}}, 'param_groups': [...]});
safetensors holds flat tensors and string metadata, so tensors go under "state.<i>.<name>" and
everything else (param groups, scheduler, epoch, numbers in the state) into one JSON string.

The module's weights at that epoch go in too ("model.<name>"), with --ema the averaged model's
("ema.<name>", AveragedModel's state dict: "ema.module.<name>" and "ema.n_averaged"), and so do the
metrics rows so far (in `extra`): the file is the run's one commit point, written after last.safetensors and
metrics.csv, so a run stopped between two writes (Ctrl-C, a full disk) resumes from one consistent
epoch. Files written before the weights went in (no "model." tensors) still load.
"""
from __future__ import annotations

import csv
import json
import math
import os

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..backends.torch.checkpoint import writing
from ..errors import OptionError, PathError, WeightsError, listed
from ..fileio import atomic_write, check_regular


def save_trainer_state(path: str, optimizer, scheduler, epoch: int, extra: dict | None = None,
                       model: dict | None = None, ema: dict | None = None) -> None:
    opt = optimizer.state_dict()
    tensors, numbers = {}, {}
    for i, st in opt["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{i}.{name}"] = v.detach().cpu().contiguous()
            else:
                numbers[f"{i}.{name}"] = v
    for prefix, named in (("model", model), ("ema", ema)):
        for name, v in (named or {}).items():
            tensors[f"{prefix}.{name}"] = v.detach().cpu().contiguous()
    meta = {"epoch": epoch, "param_groups": opt["param_groups"], "numbers": numbers,
            "scheduler": scheduler.state_dict() if scheduler is not None else None, "extra": extra or {}}
    with writing(path):
        atomic_write(path, lambda tmp: save_file(tensors or {"_empty": torch.zeros(0)}, tmp,
                                                 metadata={"trainer": json.dumps(meta)}), suffix=".safetensors")


DAMAGED_HINT = ("start the run again without --resume (or in a new -o folder), or continue from its weights "
                "with a fresh optimizer and schedule: resgraph train SPEC --weights {out}/last.safetensors -o NEW")


def trainer_meta(path: str):
    """The JSON a trainer state keeps in its "trainer" metadata (epoch, optimizer numbers, the run's
    config under extra.config). Raises what reading it raises: KeyError without that metadata, OSError,
    SafetensorError, ValueError for JSON that is not."""
    from safetensors import safe_open
    with safe_open(path, framework="pt") as f:
        return json.loads((f.metadata() or {})["trainer"])


def load_trainer_state(path: str, optimizer, scheduler, device, hint: str | None = None) -> dict:
    """Restore optimizer and scheduler; returns the metadata (epoch = the last finished epoch; "model":
    the module's weights at that epoch, or None for a file from before they were saved; "ema": the
    averaged model's state dict, None without)."""
    import os
    hint = hint or DAMAGED_HINT.format(out=os.path.dirname(path) or ".")

    def damaged(why: str) -> WeightsError:
        return WeightsError.at(path, f"the trainer state is damaged: {why}", hint)

    check_regular(path, "trainer state")
    try:
        meta = trainer_meta(path)
        tensors = load_file(path, device=str(device))
    except KeyError:
        raise damaged("no 'trainer' metadata (is it a trainer.safetensors written by resgraph train?)") from None
    except OSError as e:   # no read permission, a failing disk: the path, not the state
        raise PathError.at(path, f"cannot read the trainer state: {e.strerror or e}",
                           "check the path and its permissions") from None
    except (SafetensorError, ValueError, TypeError) as e:   # json.JSONDecodeError is a ValueError
        raise damaged(f"not a readable safetensors file: {e}") from None
    if not isinstance(meta, dict):
        raise damaged("its metadata is not a JSON object")
    epoch = meta.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise damaged(f"its epoch is {epoch!r}, not a count of finished epochs (0 or more)")
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise WeightsError.at(path, f"the trainer state holds NaN or inf ({listed(bad)}): the run diverged "
                              f"before epoch {epoch}",
                              "resuming would go on training a broken model. Start again from an earlier checkpoint "
                              "(best.safetensors or epoch-NNN.safetensors) with --weights, perhaps with a lower --lr")
    state: dict = {}
    named: dict = {"model": {}, "ema": {}}
    try:
        for key, v in tensors.items():
            if key == "_empty":
                continue
            if key.split(".", 1)[0] in named:
                prefix, name = key.split(".", 1)
                named[prefix][name] = v
                continue
            _, i, name = key.split(".", 2)
            state.setdefault(int(i), {})[name] = v
        for key, v in meta["numbers"].items():
            i, name = key.split(".", 1)
            state.setdefault(int(i), {})[name] = v
        params = [q for g in optimizer.param_groups for q in g["params"]]
        for i, st in state.items():
            if not 0 <= i < len(params):
                raise ValueError(f"state for parameter {i}; the optimizer has {len(params)}")
            for name, v in st.items():
                if torch.is_tensor(v) and v.dim() and v.shape != params[i].shape:
                    raise ValueError(f"{name} of parameter {i} is {list(v.shape)}, the parameter {list(params[i].shape)}")
        if not _finite_numbers([meta["numbers"], meta["param_groups"], meta.get("scheduler")]):
            raise ValueError("a NaN or inf among its numbers (learning rate, momentum, step count...)")
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        if scheduler is not None and meta.get("scheduler") is not None:
            scheduler.load_state_dict(meta["scheduler"])
    except (KeyError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise damaged(f"its optimizer or schedule does not load ({type(e).__name__}: {e})") from None
    meta["model"], meta["ema"] = named["model"] or None, named["ema"] or None
    return meta


def _finite_numbers(x) -> bool:
    if isinstance(x, float):
        return math.isfinite(x)
    if isinstance(x, dict):
        return all(_finite_numbers(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return all(_finite_numbers(v) for v in x)
    return True


METRICS = ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"]   # val_*: nan without a validation set
EMA_METRICS = ["ema_val_loss", "ema_val_acc"]   # with --ema only: the averaged weights on the validation set


def columns(rows: list[dict]) -> list[str]:
    """metrics.csv's columns: METRICS, and the EMA's where the rows have them."""
    return METRICS + [k for k in EMA_METRICS if any(k in r for r in rows)]


def resume(cfg, module, optimizer, scheduler, device, out, state_path, metrics_path, ema=None, scaler=None):
    """(the last finished epoch, the metrics rows so far) of the run in `out`, its weights, optimizer and
    schedule loaded, and its EMA (an AveragedModel) and fp16 GradScaler where given; a ResgraphError
    saying what to do for anything missing, damaged or inconsistent."""
    from ..backends.torch.checkpoint import check_finite, check_fits, load_checkpoint
    if not os.path.exists(state_path):
        raise OptionError.at("--resume", f"nothing to resume: {out} holds no trainer.safetensors",
                             "train without --resume first")
    meta = load_trainer_state(state_path, optimizer, scheduler, device)
    start = meta["epoch"]
    extra = meta.get("extra") if isinstance(meta.get("extra"), dict) else {}
    saved = extra.get("config") if isinstance(extra.get("config"), dict) else {}
    if saved.get("optimizer", cfg.optimizer) != cfg.optimizer:
        raise OptionError.at("--optimizer", f"the run in {out} was trained with --optimizer {saved['optimizer']}, "
                             f"not {cfg.optimizer}", f"resume with --optimizer {saved['optimizer']}, or start a new "
                             f"run from its weights: --weights {out}/last.safetensors -o NEW")
    if meta.get("model") is not None:   # the weights committed with this state
        check_fits(module, meta["model"], state_path)
        check_finite(meta["model"], state_path)
        module.load_state_dict(meta["model"])
    else:                               # a state from before the weights were saved in it
        load_checkpoint(module, os.path.join(out, "last.safetensors"))
    _resume_extras(meta, extra, ema, scaler, state_path, out)
    if isinstance(extra.get("rows"), list):
        rows = extra["rows"]
        if not all(isinstance(r, dict) and all(isinstance(r.get(k), (int, float)) for k in METRICS)
                   and all(isinstance(r[k], (int, float)) for k in EMA_METRICS if k in r) for r in rows):
            raise WeightsError.at(state_path, "the trainer state's metrics rows are damaged",
                                  "start the run again without --resume, or from its weights: "
                         f"--weights {out}/last.safetensors -o NEW")
        return start, [{k: float(r[k]) for k in METRICS + EMA_METRICS if k in r} for r in rows][:start]
    return start, read_metrics(metrics_path, out)[:start]


def _resume_extras(meta: dict, extra: dict, ema, scaler, state_path: str, out: str) -> None:
    """The EMA's state and the GradScaler's (its scale and growth count) from the trainer state."""
    hint = DAMAGED_HINT.format(out=out)
    if ema is not None:
        if meta.get("ema") is None:
            raise WeightsError.at(state_path, "the trainer state holds no EMA weights, but the run has --ema", hint)
        try:
            ema.load_state_dict(meta["ema"])
        except RuntimeError as e:
            raise WeightsError.at(state_path, f"the trainer state's EMA weights do not load: {str(e)[:300]}",
                                  hint) from None
    saved = extra.get("scaler")
    if scaler is not None and scaler.is_enabled() and isinstance(saved, dict) and saved:
        scaler.load_state_dict(saved)


def read_metrics(path: str, out: str) -> list[dict]:
    """metrics.csv of an earlier run (for a trainer state without its rows), strictly."""
    if not os.path.exists(path):
        return []
    hint = (f"fix or delete {path} (its rows only feed the history and the choice of best.safetensors), "
            f"or start again from the weights: --weights {out}/last.safetensors -o NEW")
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or any(k not in reader.fieldnames for k in METRICS):
                raise WeightsError.at(path, f"not a metrics file of resgraph train: the columns are "
                                      f"{reader.fieldnames}, not {', '.join(METRICS)}", hint)
            rows = []
            keys = METRICS + [k for k in EMA_METRICS if k in reader.fieldnames]
            for line, r in enumerate(reader, 2):
                try:
                    rows.append({k: float(r[k]) for k in keys})
                except (TypeError, ValueError):
                    raise WeightsError.at(path, f"line {line} is damaged: { {k: r.get(k) for k in METRICS} }",
                                          hint) from None
            return rows
    except OSError as e:
        raise PathError.at(path, f"cannot read the metrics: {e.strerror or e}", hint) from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise WeightsError.at(path, f"cannot read the metrics: {e}", hint) from None


def write_metrics(path: str, rows: list[dict]) -> None:
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            keys = columns(rows)
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            for r in rows:
                w.writerow({k: (f"{r[k]:.6g}" if isinstance(r.get(k), float) else r.get(k, "nan")) for k in keys})
    with writing(path):
        atomic_write(path, write)
