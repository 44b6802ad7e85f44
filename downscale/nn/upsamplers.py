"""Upsamplers for the decoders of :mod:`downscale.nn.decoders`: one per family.

Feature upsamplers map ``(B, C, h, w)`` to ``(B, C, h*f, w*f)`` with ``forward(x, periodic)``:

:class:`TransposedConvUpsampler`
    Conserving transposed convolutions (:class:`MassConservingConvTranspose2d`): one
    stride-``f`` stage, or DCGAN-style stride-2 stages (``k=4, s=2, p=1``; Radford et al.
    2016) with a convolution between stages.
:class:`PixelShuffleUpsampler`
    Sub-pixel convolution (Shi et al. 2016, "Real-Time Single Image and Video
    Super-Resolution Using an Efficient Sub-Pixel Convolutional Neural Network"): a
    convolution to ``C f^2`` channels, rearranged into ``f x f`` blocks. ICNR start (Aitken
    et al. 2017, "Checkerboard artifact free sub-pixel convolution") and an anti-aliasing
    low-pass filter after it (:class:`~downscale.nn.mitigations.AntiAliasFilter`).
:class:`ResizeConvUpsampler`
    Resize, then convolve (Odena et al. 2016): interpolation has no phases to unbalance.

:class:`StagedConservingUpsampler` upsamples the *physical* field in stride-2 stages, each
conserving the mass of its input on the intermediate grid.
"""

from __future__ import annotations

from typing import Literal, cast

import torch.nn.functional as F
from torch import Tensor, nn

from downscale.nn.conserving import MassConservingConvTranspose2d, block_sum
from downscale.nn.mitigations import AntiAliasFilter, DecoderConfigError
from downscale.nn.padding import GridConv2d, pad_grid
from downscale.nn.reach import bilinear_reach, conv_reach, repeat_reach


def stage_strides(factor: int, stage_stride: int | None) -> list[int]:
    """Strides of the upsampling stages: ``[factor]``, or ``stage_stride`` repeated.

    Raises:
        DecoderConfigError: If ``factor`` is not a power of ``stage_stride``.
    """
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise DecoderConfigError(f"factor must be a positive integer, got {factor!r}")
    if stage_stride is None or stage_stride == factor:
        return [factor]
    if stage_stride < 2:
        raise DecoderConfigError(f"stage_stride must be >= 2, got {stage_stride}")
    strides, rest = [], factor
    while rest % stage_stride == 0 and rest > 1:
        strides.append(stage_stride)
        rest //= stage_stride
    if rest != 1:
        raise DecoderConfigError(f"factor {factor} is not a power of the stage stride "
                                 f"{stage_stride}; use stage_stride: null (one stride-{factor} "
                                 f"stage)")
    return strides


def default_kernel_size(stride: int) -> int:
    """Kernel size ``2 s`` for even strides ``s``, ``2 s + 1`` for odd ones.

    ``k - s`` is then even, so kernels can be mirror-symmetric with centred padding
    (``k=4, s=2, p=1`` at stride 2).
    """
    return 2 * stride + stride % 2


class StagedConservingUpsampler(nn.Module):
    """Physical upsampling in stages, each a symmetric, phase-balanced conserving layer.

    Stage ``i`` spreads the mass of its input onto the grid ``f_i`` times finer, whose cell
    areas are the fine areas summed over the blocks still to come, so the total mass is kept
    at every stage (docs/method.md#conservation) and flat input stays flat (#artifacts).

    Args:
        channels: Physical variables.
        factor: Total upsampling factor (a power of ``stage_stride``).
        stage_stride: Stride of every stage.
        kernel_size: Kernel size of every stage; :func:`default_kernel_size` by default.

    Shapes:
        ``forward(x, fine_area, periodic)``: ``(B, C, h, w)`` intensive values and areas
        ``(B | 1, C | 1, h*f, w*f)`` -> ``(B, C, h*f, w*f)`` intensive values.
    """

    def __init__(self, channels: int, factor: int, stage_stride: int = 2,
                 kernel_size: int | None = None) -> None:
        super().__init__()
        strides = stage_strides(factor, stage_stride)
        k = kernel_size or default_kernel_size(strides[0])
        self.factor, self.strides = factor, strides
        self.stages = nn.ModuleList(MassConservingConvTranspose2d(channels, s, k, symmetric=True)
                                    for s in strides)

    def coarse_reach(self, fine_reach: int = 0) -> int:
        """Coarse cells on each side behind its output (stage by stage, last first)."""
        for stage in reversed(self.stages):
            fine_reach = cast(MassConservingConvTranspose2d, stage).coarse_reach(fine_reach)
        return fine_reach

    def forward(self, x: Tensor, fine_area: Tensor, periodic: bool = False) -> Tensor:
        left = self.factor
        for stage, stride in zip(self.stages, self.strides, strict=True):
            left //= stride
            area = fine_area if left == 1 else block_sum(fine_area, left)
            x = stage(x, area, periodic)
        return x


class TransposedConvUpsampler(nn.Module):
    """Feature upsampling by conserving transposed convolutions, in one or several stages.

    Args:
        channels: Feature channels (one kernel each: the layer is depthwise).
        factor: Total upsampling factor.
        stage_stride: ``None`` for one stride-``factor`` stage, or the stride of every stage
            (``2``: DCGAN-style ``k=4, s=2, p=1`` stages; ``factor`` must be a power of 2).
        kernel_size: Kernel size of every stage; :func:`default_kernel_size` by default.
        phase_balanced: Normalise each polyphase sub-kernel to ``1/s^2`` (flat in, flat out).
        symmetric: Mirror-symmetric kernels (flat in, flat out at the edges too). A
            symmetric ``k=4, s=2`` kernel is phase-balanced whatever its weights.

    Shapes:
        ``forward(x, periodic)``: ``(B, C, h, w)`` -> ``(B, C, h*f, w*f)``.
    """

    def __init__(self, channels: int, factor: int, stage_stride: int | None = None,
                 kernel_size: int | None = None, phase_balanced: bool = True,
                 symmetric: bool = True) -> None:
        super().__init__()
        strides = stage_strides(factor, stage_stride)
        k = kernel_size or default_kernel_size(strides[0])
        self.strides = strides
        self.stages = nn.ModuleList(
            MassConservingConvTranspose2d(channels, s, k, phase_balanced=phase_balanced,
                                          symmetric=symmetric) for s in strides)
        # DCGAN interleaves a learnt, nonlinear step between the stride-2 stages.
        self.mix = nn.ModuleList(GridConv2d(channels, channels) for _ in strides[1:])
        self.act = nn.GELU()

    @property
    def last_stride(self) -> int:
        """Stride of the last stage: the period of the phases the output can carry."""
        return self.strides[-1]

    def coarse_reach(self, fine_reach: int = 0) -> int:
        """Coarse cells on each side behind its output: stages and the convolutions between."""
        for i in reversed(range(len(self.stages))):
            fine_reach = cast(MassConservingConvTranspose2d, self.stages[i]).coarse_reach(
                fine_reach)
            if i:
                fine_reach += conv_reach(cast(GridConv2d, self.mix[i - 1]))
        return fine_reach

    def forward(self, x: Tensor, periodic: bool = False) -> Tensor:
        for i, stage in enumerate(self.stages):
            if i:
                x = self.act(self.mix[i - 1](x, periodic))
            x = stage(x, None, periodic)
        return x


class PixelShuffleUpsampler(nn.Module):
    """Sub-pixel convolution, optionally ICNR-initialised and low-pass filtered.

    A 3x3 convolution makes ``C f^2`` channels; ``PixelShuffle`` puts channel
    ``c f^2 + a f + b`` at phase ``(a, b)`` of channel ``c``. Each phase has its own weights,
    so a flat input gives ``f^2`` different values: a checkerboard, unless the phases agree.
    ICNR (Aitken et al. 2017) starts them equal (nearest-neighbour upsampling of one
    convolution); training lets them drift, which the low-pass filter then damps.

    Args:
        channels: Feature channels in and out.
        factor: Upsampling factor ``f``.
        icnr: Start every phase with the same weights.
        anti_alias: Apply :class:`~downscale.nn.mitigations.AntiAliasFilter` after the
            shuffle.

    Shapes:
        ``forward(x, periodic)``: ``(B, C, h, w)`` -> ``(B, C, h*f, w*f)``.
    """

    def __init__(self, channels: int, factor: int, icnr: bool = True,
                 anti_alias: bool = True) -> None:
        super().__init__()
        self.conv = GridConv2d(channels, channels * factor**2)
        if icnr:
            seed = nn.Conv2d(channels, channels, 3)
            self.conv.weight.data.copy_(seed.weight.data.repeat_interleave(factor**2, dim=0))
            assert self.conv.bias is not None and seed.bias is not None
            self.conv.bias.data.copy_(seed.bias.data.repeat_interleave(factor**2, dim=0))
        self.shuffle = nn.PixelShuffle(factor)
        self.filter = AntiAliasFilter(factor) if anti_alias else None

    def coarse_reach(self, fine_reach: int = 0) -> int:
        """Coarse cells on each side behind its output: the filter, the shuffle, the conv."""
        factor = int(self.shuffle.upscale_factor)
        if self.filter is not None:
            fine_reach += self.filter.reach
        return conv_reach(self.conv) + repeat_reach(factor, fine_reach)

    def forward(self, x: Tensor, periodic: bool = False) -> Tensor:
        out: Tensor = self.shuffle(self.conv(x, periodic))
        if self.filter is not None:
            out = self.filter(out, periodic)
        return out


class ResizeConvUpsampler(nn.Module):
    """Interpolate by ``factor``, then a 3x3 convolution (Odena et al. 2016).

    Every fine cell is produced by the same weights, so no phase can be favoured: flat
    stays flat by construction. ``"nearest"`` repeats each coarse cell; ``"bilinear"`` is
    cell-centre aligned (``align_corners=False``), wraps around a periodic longitude and
    holds the edge value beyond the outermost centres elsewhere.

    Args:
        channels: Feature channels in and out.
        factor: Upsampling factor.
        mode: Interpolation before the convolution.

    Shapes:
        ``forward(x, periodic)``: ``(B, C, h, w)`` -> ``(B, C, h*f, w*f)``.
    """

    def __init__(self, channels: int, factor: int,
                 mode: Literal["nearest", "bilinear"] = "nearest") -> None:
        super().__init__()
        if mode not in ("nearest", "bilinear"):
            raise DecoderConfigError(f"mode must be 'nearest' or 'bilinear', got {mode!r}")
        self.factor, self.mode = factor, mode
        self.conv = GridConv2d(channels, channels)

    def coarse_reach(self, fine_reach: int = 0) -> int:
        """Coarse cells on each side behind its output: the conv, then the interpolation."""
        fine_reach += conv_reach(self.conv)
        if self.mode == "nearest":
            return repeat_reach(self.factor, fine_reach)
        return bilinear_reach(self.factor, fine_reach)

    def forward(self, x: Tensor, periodic: bool = False) -> Tensor:
        if self.mode == "nearest":
            up = F.interpolate(x, scale_factor=self.factor, mode="nearest")
        else:
            # One cell of grid padding first, so that the interpolation wraps around a
            # periodic longitude (replicated, it is the clamped edge it was), then cropped.
            f = self.factor
            up = F.interpolate(pad_grid(x, 1, periodic), scale_factor=f, mode="bilinear",
                               align_corners=False)[..., f:-f, f:-f]
        out: Tensor = self.conv(up, periodic)
        return out
