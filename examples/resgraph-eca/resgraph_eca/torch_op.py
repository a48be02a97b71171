"""The `eca` op in PyTorch: the module resgraph puts at the node's path."""
import torch
from torch import nn

from .op import _kernel


class ECA(nn.Module):
    def __init__(self, k: int):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean((2, 3))                          # [N, C]
        y = self.conv(y.unsqueeze(1)).squeeze(1)    # [N, C]: k neighbouring channels
        return x * torch.sigmoid(y)[:, :, None, None]


def build(args: dict, ins: list, out: tuple) -> nn.Module:
    return ECA(_kernel(args, ins[0][0]))
