"""Where imported weights come from: a library's model by name, written LIBRARY:NAME.

    torchvision:resnet50     torchvision.models.get_model("resnet50")       (torchvision.py)
    timm:resnet50d           timm.create_model("resnet50d")                 (timm.py)

Each library's module builds the model randomly initialised (seeded), with the library's published
weights (pretrained), or with a state dict from a file; this one names sources and holds what those
modules share. The importer dispatches to them through its BUILDERS table (importer.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...errors import OptionError, WeightsError, did_you_mean

LIBRARIES = ("torchvision", "timm")
_TAG = "_resgraph_source"   # set on the models built here: messages name them without being told


@dataclass(frozen=True)
class Source:
    library: str   # "torchvision", "timm"; "" for a model built elsewhere
    name: str

    def __str__(self) -> str:
        return f"{self.library}:{self.name}" if self.library else self.name

    @property
    def who(self) -> str:
        """"torchvision's resnet50", for messages."""
        return f"{self.library}'s {self.name}" if self.library else self.name

    @property
    def whose(self) -> str:
        """"torchvision's" (the other side of "ours"), for messages."""
        return f"{self.library}'s" if self.library else f"{self.name}'s"


def parse_source(text: str) -> Source:
    library, sep, name = str(text).partition(":")
    if not sep or library not in LIBRARIES or not name:
        hint = did_you_mean(library, LIBRARIES, "sources") if sep and library not in LIBRARIES else ""
        raise WeightsError.at(str(text), f"unknown weights source '{text}'",
                              (hint + "; " if hint else "") +
                              "write torchvision:NAME or timm:NAME, e.g. torchvision:resnet50 or timm:resnet50d")
    return Source(library, name)


def source_of(model: nn.Module, name: str | None = None) -> Source:
    """The Source a model was built from (`name` overrides its name), else its class name."""
    tagged = getattr(model, _TAG, None)
    if name is not None and ":" in name:
        return parse_source(name)
    if tagged is not None:
        library, _, tagged_name = tagged.partition(":")
        return Source(library, name or tagged_name)
    return Source("", name or type(model).__name__)


def tag(model: nn.Module, source: Source) -> nn.Module:
    setattr(model, _TAG, str(source))
    return model.eval()


def require(source: Source, module: str, extra: str):
    """The source library's module (imported on first use: both are optional), or a WeightsError that
    names the extra installing it."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise WeightsError.at(str(source), f"{source.library} is not installed ({e})",
                              f"install it with: pip install 'resgraph[{extra}]'") from None


def refuse_both(source: Source, pretrained: bool, weights_file: str | None) -> None:
    if pretrained and weights_file is not None:
        raise OptionError.at("--pretrained", "give either pretrained weights or a weights file, not both",
                              f"pretrained downloads {source.library}'s published weights; "
                              "a weights file is one you have")


def construct(make, seed: int | None = None, device=None) -> nn.Module:
    """make(), randomly initialised so that `seed` makes it repeatable (leaving the caller's RNG as it
    was), built on `device` if given ("meta": the structure without the memory)."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        if device is None:
            return make()
        try:
            with torch.device(device):
                return make()
        except (NotImplementedError, RuntimeError):   # a constructor that computes with tensors (RegNet's widths)
            return make().to(device)
