"""timm's models as a weights source: `timm:NAME` (e.g. timm:resnet50d, timm:resnet50d.ra2_in1k).

timm (pytorch-image-models) is optional: pip install 'resgraph[timm]'. It is imported on first use;
without it, a timm source is an error that says how to install it.
"""
from __future__ import annotations

from torch import nn

from ...errors import DownloadError, WeightsError, did_you_mean
from .sources import Source, construct, refuse_both, require, tag
from .weights_file import load_weights_file


def timm_model(name: str, pretrained: bool = False, weights_file: str | None = None,
               seed: int | None = None, device=None) -> nn.Module:
    """timm.create_model(name) in eval mode: randomly initialised (seeded if `seed` is given), with
    timm's published weights (pretrained=True: downloads from the Hugging Face hub unless cached), or
    with the state dict in `weights_file`. `name` may carry a pretrained tag (resnet50d.ra2_in1k)."""
    source = Source("timm", name)
    timm = require(source, "timm", "timm")
    if not timm.is_model(name):
        raise WeightsError.at(str(source), f"unknown timm model '{name}'",
                              did_you_mean(str(name), timm.list_models(), "timm models"))
    refuse_both(source, pretrained, weights_file)
    model = construct(lambda: _pretrained(timm, source) if pretrained else timm.create_model(name, pretrained=False),
                      seed, device)
    if weights_file is not None:
        load_weights_file(model, weights_file, source)
    return tag(model, source)


def _pretrained(timm, source: Source) -> nn.Module:
    try:
        return timm.create_model(source.name, pretrained=True)
    except Exception as e:  # noqa: BLE001 - the hub's HTTP, offline and cache errors share no base class
        raise DownloadError.at(str(source), f"could not download timm's pretrained {source.name} weights: "
                               f"{type(e).__name__}: {_first_line(e)}",
                               f"this needs internet access (or the file in the Hugging Face cache). Download "
                               f"{_where(timm, source.name)} on a machine that has it, then pass the file with "
                               "--weights-file (weights_file=)") from None


def _where(timm, name: str) -> str:
    """Where timm's pretrained weights for `name` are published, for the hint."""
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - only a hint: fall back to the model's name
        cfg = None
    if cfg is not None and getattr(cfg, "hf_hub_id", None):
        return f"model.safetensors from https://huggingface.co/{cfg.hf_hub_id}"
    if cfg is not None and getattr(cfg, "url", None):
        return cfg.url
    return f"timm's weights for {name}"


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else ""


__all__ = ["timm_model"]
