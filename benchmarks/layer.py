"""The conserving layer against ``torch.nn.ConvTranspose2d`` of the same shape.

Both are depthwise (one kernel per channel), stride ``s``, kernel ``2s``; times are the
median of several repeats, measured in this process on the same input. The layer as it was
before it was optimised (torch's transposed convolution, then the fold through autograd
slices) is timed too, so the table shows before and after in one run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.timing import median_seconds
from downscale.nn.conserving import MassConservingConvTranspose2d


def _before(layer: MassConservingConvTranspose2d, x: torch.Tensor, area: torch.Tensor
            ) -> torch.Tensor:
    """The conserving layer's forward of downscale 0.1.0 (same result, slower): the areas
    expanded to the batch before summing, and the fold of the spill-over done by copies and
    in-place adds on slices, which autograd differentiates with a full-size zero tensor per
    slice."""
    s, p = layer.stride, layer.padding
    mass = torch.nan_to_num(x) * (area.expand(*x.shape[:2], -1, -1)
                                   .reshape(*x.shape[:2], x.shape[-2], s, x.shape[-1], s)
                                   .sum(dim=(-3, -1)))
    full = F.conv_transpose2d(mass, layer.kernel(), stride=s, groups=layer.channels)

    def fold_last(t: torch.Tensor, n: int) -> torch.Tensor:
        inner = t[..., p : p + n].clone()
        low, high = t[..., :p], t[..., p + n :]
        if p:
            inner[..., :p] += low.flip(-1)
        if high.shape[-1]:
            inner[..., n - high.shape[-1] :] += high.flip(-1)
        return inner

    rows = fold_last(full.transpose(-1, -2), x.shape[-2] * s).transpose(-1, -2)
    return fold_last(rows, x.shape[-1] * s) / area


def compare_layers(sizes: list[int], channels: int = 8, stride: int = 4, batch: int = 4,
                   repeats: int = 5) -> list[dict[str, Any]]:
    """Forward and forward+backward time of both layers on coarse grids of ``sizes``.

    Args:
        sizes: Coarse grid edges (cells).
        channels: Channels (one kernel each).
        stride: Upsampling factor.
        batch: Samples per call.
        repeats: Timed repeats per figure.

    Returns:
        One row per size: seconds of each layer (``conserving``, ``before``: the same layer
        before optimisation, ``plain``) and the ratios to plain.
    """
    rows = []
    conserving = MassConservingConvTranspose2d(channels, stride, 2 * stride)
    plain = torch.nn.ConvTranspose2d(channels, channels, 2 * stride, stride=stride,
                                     padding=conserving.padding, groups=channels, bias=False)
    for n in sizes:
        # Inside a network the layer's input needs its gradient too.
        x = torch.randn(batch, channels, n, n, requires_grad=True)
        area = torch.rand(1, 1, n * stride, n * stride) + 0.5
        figures: dict[str, Any] = {"coarse_cells": n * n}
        calls: tuple[tuple[str, Callable[[], torch.Tensor]], ...] = (
            ("conserving", functools.partial(conserving, x, area)),
            ("before", functools.partial(_before, conserving, x, area)),
            ("plain", functools.partial(plain, x)))
        for name, layer in calls:
            def forward(layer: Callable[[], torch.Tensor] = layer) -> None:
                with torch.no_grad():
                    layer()

            def backward(layer: Callable[[], torch.Tensor] = layer) -> None:
                layer().sum().backward()  # type: ignore[no-untyped-call]

            figures[f"{name}_forward_s"] = median_seconds(forward, repeats)
            figures[f"{name}_forward_backward_s"] = median_seconds(backward, repeats)
        for kind in ("forward", "forward_backward"):
            figures[f"ratio_{kind}"] = (figures[f"conserving_{kind}_s"]
                                        / figures[f"plain_{kind}_s"])
            figures[f"ratio_before_{kind}"] = (figures[f"before_{kind}_s"]
                                               / figures[f"plain_{kind}_s"])
        rows.append(figures)
    return rows
