"""The few layers the emitted modules use that torch.nn does not have under one name.

Their state-dict tensors are named as the op table's `tensors` names them (weight, bias), and as
torchvision's and timm's layers of the same kind name theirs, so weights import by structure.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.LayerNorm):
    """Layer norm over the channels of each pixel of [N, C, H, W] (ConvNeXt's channels-first form,
    as torchvision's and timm's LayerNorm2d): permute to [N, H, W, C], normalise the last axis, back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Scale(nn.Module):
    """Layer scale: y = x * weight, one learned factor per channel (or feature), starting at `init`."""

    def __init__(self, channels: int, init: float = 1.0):
        super().__init__()
        self.init = init
        self.weight = nn.Parameter(torch.full((channels,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (self.weight.view(-1, 1, 1) if x.dim() == 4 else self.weight)

    def reset_parameters(self) -> None:
        nn.init.constant_(self.weight, self.init)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, init={self.init}"


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): in training, each sample's input is zeroed with
    probability p and the kept ones are scaled by 1 / (1 - p), so the expectation is unchanged;
    at inference, the identity. On a residual branch it drops the branch, keeping the shortcut."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep if keep > 0 else x * 0.0

    def extra_repr(self) -> str:
        return f"p={self.p}"
