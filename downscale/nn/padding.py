"""Padding that respects the grid: circular along a periodic longitude, replicate elsewhere."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def pad_grid(x: Tensor, pad: int, periodic: bool) -> Tensor:
    """Pad the last two dims of ``(B, C, H, W)`` by ``pad`` cells on every side.

    The last dim (longitude) wraps around when ``periodic``; edges are replicated otherwise.
    """
    if pad == 0:
        return x
    if periodic:
        x = F.pad(x, (pad, pad, 0, 0), mode="circular")
        return F.pad(x, (0, 0, pad, pad), mode="replicate")
    return F.pad(x, (pad, pad, pad, pad), mode="replicate")


class GridConv2d(nn.Conv2d):
    """A same-size ``Conv2d`` (odd kernel) that pads with :func:`pad_grid` first."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        if kernel_size % 2 == 0:
            raise ValueError("GridConv2d needs an odd kernel size")
        super().__init__(in_channels, out_channels, kernel_size, padding=0)

    def forward(self, x: Tensor, periodic: bool = False) -> Tensor:  # type: ignore[override]
        return super().forward(pad_grid(x, self.kernel_size[0] // 2, periodic))
