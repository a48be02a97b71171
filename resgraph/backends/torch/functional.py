"""The few functions the emitted modules call that torch does not have under one name.

They are plain tensor code (slicing, F.pad, pooling), so torch.compile, torch.export and
DistributedDataParallel see ordinary ops.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def zeropad(x: torch.Tensor, out: int, stride: int) -> torch.Tensor:
    """He et al.'s option A shortcut: every `stride`-th pixel, channels zero-padded to `out`.

    [N, C, H, W] -> [N, out, ceil(H / s), ceil(W / s)];  [N, F] -> [N, out].
    """
    if x.dim() == 4:
        if stride > 1:
            x = x[:, :, ::stride, ::stride]
        return F.pad(x, (0, 0, 0, 0, 0, out - x.shape[1]))
    return F.pad(x, (0, out - x.shape[1]))


def avg_pool_padded(x: torch.Tensor, kernel, stride, pads: tuple[int, int, int, int],
                    ceil_mode: bool) -> torch.Tensor:
    """Average pooling with asymmetric padding (W-begin, W-end, H-begin, H-end) that never counts it:
    sum over the zero-padded window divided by the number of real pixels in the window."""
    ones = torch.ones_like(x[:, :1])
    total = F.avg_pool2d(F.pad(x, pads), kernel, stride, 0, ceil_mode, count_include_pad=True)
    count = F.avg_pool2d(F.pad(ones, pads), kernel, stride, 0, ceil_mode, count_include_pad=True)
    return total / count
