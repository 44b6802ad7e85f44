"""The conserving layer against ``torch.nn.ConvTranspose2d`` of the same shape.

Both are depthwise (one kernel per channel), stride ``s``, kernel ``2s``; times are the
median of several repeats, measured in this process on the same input.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.timing import median_seconds
from downscale.nn.conserving import MassConservingConvTranspose2d


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
        One row per size: seconds of each layer and the ratios conserving / plain.
    """
    rows = []
    conserving = MassConservingConvTranspose2d(channels, stride, 2 * stride)
    plain = torch.nn.ConvTranspose2d(channels, channels, 2 * stride, stride=stride,
                                     padding=conserving.padding, groups=channels, bias=False)
    for n in sizes:
        x = torch.randn(batch, channels, n, n)
        area = torch.rand(1, 1, n * stride, n * stride) + 0.5
        figures: dict[str, Any] = {"coarse_cells": n * n}
        calls: tuple[tuple[str, Callable[[], torch.Tensor]], ...] = (
            ("conserving", functools.partial(conserving, x, area)),
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
        rows.append(figures)
    return rows
