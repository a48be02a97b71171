"""The training recipe's pieces that shape the optimisation: which options a resumed run keeps,
weight decay by parameter kind, frozen layers, and the EMA of the weights.

- Kept by --resume (RECIPE): --augment, --flip, --ema, --clip-grad, --accumulate, --amp-dtype,
  --wd-all and --freeze are saved in trainer.safetensors' config; a resumed run takes them from
  there, and one given again with another value is refused (it would not continue the same run).
- Weight decay: not on norms (bn, layernorm, groupnorm), layer `scale`s and prelu slopes (the op
  table's `init` policy "norm" or "scale" of the parameter's node), nor on any `bias`; decided from
  the graph, not from parameter names. --wd-all decays every parameter (one group, as before).
- --freeze PATHS: the parameters under those spec paths (`stem`, `layer1`, `layer2.0`, a node id)
  get requires_grad False and no optimizer state, and their bn layers stay in eval mode, so their
  running statistics are not updated either: the frozen tensors end every epoch bit-identical.
- --ema DECAY: torch.optim.swa_utils.AveragedModel (EMA of parameters and buffers) updated after
  each optimizer step; its state goes in the trainer state beside the weights.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import OptionError, did_you_mean, listed

# field -> its default for a new run
RECIPE = {"augment": "none", "flip": True, "ema": 0.0, "clip_grad": 0.0, "accumulate": 1, "amp_dtype": None,
          "wd_all": False, "freeze": ""}
# field -> what a run whose trainer state predates the field trained with
BEFORE = {"wd_all": True}
FLAGS = {"augment": "--augment", "flip": "--flip/--no-flip", "ema": "--ema", "clip_grad": "--clip-grad",
         "accumulate": "--accumulate", "amp_dtype": "--amp-dtype", "wd_all": "--wd-all/--no-wd-all",
         "freeze": "--freeze"}
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def settle(cfg, device_type: str, state_path: str, amp: bool) -> None:
    """Fill in the recipe fields left None: a resumed run's own (its trainer state's config), else the
    defaults; each checked. A field given with a value other than the resumed run's is an OptionError."""
    saved = _saved_config(state_path) if cfg.resume else None
    if cfg.freeze is not None:
        cfg.freeze = ",".join(p.strip() for p in str(cfg.freeze).split(",") if p.strip())
    for field, default in RECIPE.items():
        given = getattr(cfg, field)
        if field == "amp_dtype" and default is None:
            default = "fp16" if device_type == "cuda" else "bf16"
        if saved is None:
            setattr(cfg, field, default if given is None else given)
            continue
        was = saved.get(field, BEFORE.get(field, default))
        if given is not None and given != was:
            flag = FLAGS[field]
            raise OptionError.at(flag.split("/")[0], f"the run in {cfg.out} was trained with {_shown(field, was)}, "
                                 f"not {_shown(field, given)}", f"leave out {flag} on --resume (the run keeps its "
                                 f"own), or start a new run from its weights: --weights {cfg.out}/last.safetensors "
                                 "-o NEW")
        setattr(cfg, field, was)
    _check(cfg, device_type, amp)


def _shown(field: str, value) -> str:
    if isinstance(value, bool):
        return FLAGS[field].split("/")[0 if value else 1]
    return f"{FLAGS[field]} {value if value != '' else 'nothing'}"


def _saved_config(path: str) -> dict | None:
    """The config a trainer state was written with; None where there is none to read (resume()
    then says what is wrong with the file)."""
    from .state import trainer_meta
    try:
        config = trainer_meta(path)["extra"]["config"]
        return config if isinstance(config, dict) else None
    except Exception:  # noqa: BLE001  (missing, damaged: resume() reports it)
        return None


def _check(cfg, device_type: str, amp: bool) -> None:
    from .augment import AUGMENTS
    if cfg.augment not in AUGMENTS:
        raise OptionError.at("--augment", f"unknown augmentation '{cfg.augment}'", "use " + ", ".join(AUGMENTS))
    if not (isinstance(cfg.ema, (int, float)) and 0 <= cfg.ema < 1):
        raise OptionError.at("--ema", f"the EMA decay is {cfg.ema}; it is a fraction below 1",
                             "use e.g. --ema 0.999 (0: no EMA); the average spans about 1 / (1 - decay) steps")
    if not (isinstance(cfg.clip_grad, (int, float)) and math.isfinite(cfg.clip_grad) and cfg.clip_grad >= 0):
        raise OptionError.at("--clip-grad", f"the gradient norm bound is {cfg.clip_grad}",
                             "use a positive norm, e.g. --clip-grad 1.0 (0: no clipping)")
    if not (isinstance(cfg.accumulate, int) and cfg.accumulate >= 1):
        raise OptionError.at("--accumulate", f"{cfg.accumulate} micro-batches per step", "use 1 or more")
    if cfg.amp_dtype not in AMP_DTYPES:
        raise OptionError.at("--amp-dtype", f"unknown autocast type '{cfg.amp_dtype}'", "use bf16 or fp16")
    if amp and device_type == "cpu" and cfg.amp_dtype != "bf16":
        raise OptionError.at("--amp-dtype", "fp16 autocast runs on CUDA only", "use --amp-dtype bf16 on the CPU")


# -- weight decay -----------------------------------------------------------------------------
def param_groups(module: nn.Module, weight_decay: float, wd_all: bool) -> list[dict]:
    """The optimizer's groups over the trainable parameters: decayed and not (weight decay 0), or,
    with `wd_all`, one group decaying all. Empty groups are left out."""
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if wd_all:
        return [{"params": [p for _, p in trainable], "weight_decay": weight_decay}]
    graph = module.meta["resgraph"]["graph"]
    skip = no_decay(module, graph)
    groups = [{"params": [p for n, p in trainable if n not in skip], "weight_decay": weight_decay},
              {"params": [p for n, p in trainable if n in skip], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def no_decay(module: nn.Module, graph) -> set[str]:
    """The parameters weight decay leaves alone: biases, and those of ops whose init policy is "norm"
    or "scale" (bn, layernorm, groupnorm, scale, prelu); an explicit Ws's parts by their own kind."""
    from ..backends.torch.init import policy_of
    out = set()
    for name, _ in module.named_parameters():
        owner, _, suffix = name.rpartition(".")
        policy = policy_of(graph, owner)   # init_weights' own reading of the module at `owner`
        if suffix == "bias" or policy in ("norm", "scale") or \
                (policy == "parts" and isinstance(module.get_submodule(owner), NORMS)):
            out.add(name)
    return out


# -- freezing ---------------------------------------------------------------------------------
def freeze(module: nn.Module, paths: str, spec: str) -> list[nn.Module]:
    """Freeze the parameters under each comma-separated spec path; returns the bn layers there,
    which the loop keeps in eval mode. OptionError for a path that is not the spec's, one that holds
    no parameters, and for freezing every parameter."""
    wanted = [p for p in paths.split(",") if p]
    if not wanted:
        return []
    names = [n for n, _ in module.named_parameters()]
    known = {".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 1)}
    graph = module.meta["resgraph"]["graph"]
    for p in wanted:
        if p not in known:
            if p in graph:
                raise OptionError.at("--freeze", f"'{p}' ({graph[p].op}) holds no parameters to freeze",
                                     "name layers or blocks that have weights: " + did_you_mean(p, known, "paths"))
            raise OptionError.at("--freeze", f"no layer or block '{p}' in {spec}",
                                 did_you_mean(p, known, "paths") + " (spec paths, as in the checkpoint's keys)")

    def under(name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in wanted)
    frozen = [p for n, p in module.named_parameters() if under(n)]
    if len(frozen) == len(names):
        raise OptionError.at("--freeze", f"nothing left to train: {listed(wanted)} hold every parameter of {spec}",
                             "freeze fewer layers (the head, e.g. fc, must train)")
    for p in frozen:
        p.requires_grad_(False)
    return [m for n, m in module.named_modules() if under(n) and isinstance(m, nn.modules.batchnorm._BatchNorm)]


# -- EMA --------------------------------------------------------------------------------------
def make_ema(module: nn.Module, decay: float):
    """The EMA of `module`'s parameters and buffers (bn statistics included), or None for decay 0."""
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    ema = AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    ema.requires_grad_(False)
    return ema


def ema_state(ema) -> dict:
    """The EMA's tensors for the trainer state (its module's state dict and the update count)."""
    return {} if ema is None else dict(ema.state_dict())
