"""torchvision's classification models as a weights source: `torchvision:NAME`.

    >>> from resgraph.backends.torch.importer import import_torchvision
    >>> module, report = import_torchvision("resnet50", "specs/resnet50.yaml", weights_file="resnet50-11ad3fa6.pth")

Any model of torchvision.models.list_models(module=torchvision.models) (resnets, densenets, vgg,
mobilenets, ...) builds here; whether its weights fit a spec is the importer's question (importer.py).
torchvision is optional (pip install 'resgraph[torchvision]'); it is imported on first use.
"""
from __future__ import annotations

import os
import re
import socket

import torch
from torch import nn

from ...errors import DownloadError, WeightsError, did_you_mean
from .sources import Source, construct, refuse_both, require, tag
from .weights_file import load_weights_file

# torchvision's published DenseNet checkpoints use the pre-1.0 names norm.1, conv.2, ...; its loader
# renames them (torchvision.models.densenet._load_state_dict), and so do we for --weights-file
_DENSENET_LEGACY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
                              r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def model_names() -> list[str]:
    """torchvision's classification models (detection, segmentation and video ones are elsewhere)."""
    models = require(Source("torchvision", "?"), "torchvision.models", "torchvision")
    return models.list_models(module=models)


def torchvision_model(name: str, pretrained: bool = False, weights_file: str | None = None,
                      seed: int | None = None, device=None) -> nn.Module:
    """torchvision's model `name` in eval mode: randomly initialised (seeded if `seed` is given), with
    torchvision's published weights (pretrained=True: downloads, needs internet unless already in
    torch.hub's cache), or with the state dict in `weights_file` (a .pth as torchvision publishes it,
    or a .safetensors). `device="meta"` builds the structure alone (for matching without memory)."""
    source = Source("torchvision", name)
    models = require(source, "torchvision.models", "torchvision")
    names = models.list_models(module=models)
    if name not in names:
        raise WeightsError.at(str(source), f"unknown torchvision model '{name}'",
                              did_you_mean(str(name), names, "torchvision classification models"))
    refuse_both(source, pretrained, weights_file)
    model = construct(lambda: _pretrained(models, source) if pretrained else models.get_model(name, weights=None),
                      seed, device)
    if weights_file is not None:
        load_weights_file(model, weights_file, source, _densenet_key if name.startswith("densenet") else None)
    return tag(model, source)


def _pretrained(models, source: Source) -> nn.Module:
    weights = models.get_model_weights(source.name).DEFAULT
    old = socket.getdefaulttimeout()
    if old is None:
        socket.setdefaulttimeout(60)   # urllib waits forever by default; a dead network must not hang us
    try:
        return models.get_model(source.name, weights=weights)
    except (OSError, ValueError) as e:   # URLError, timeouts, refused connections; truncated downloads
        raise DownloadError.at(str(source), f"could not download torchvision's pretrained {source.name} weights "
                               f"({weights}): {e}",
                               f"this needs internet access. Download {weights.url} on a machine that has it, "
                               f"then pass the file with --weights-file (weights_file=)") from None
    except RuntimeError as e:            # torch.hub's hash check, or an unreadable cached file
        raise DownloadError.at(str(source), f"torchvision's pretrained {source.name} weights could not be loaded: {e}",
                               f"delete the cached file under {os.path.join(torch.hub.get_dir(), 'checkpoints')} "
                               "and retry, or pass a downloaded .pth with --weights-file") from None
    finally:
        socket.setdefaulttimeout(old)


def _densenet_key(key: str) -> str:
    m = _DENSENET_LEGACY.match(key)
    return m.group(1) + m.group(2) if m else key


__all__ = ["model_names", "torchvision_model"]
