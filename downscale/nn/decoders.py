"""Decoder options: the same conserving skeleton with different learnt upsamplers.

Every decoder here has the signature of :class:`~downscale.nn.ConservingDecoder`
(``channels``, ``factor``; ``forward(x, x_norm, fine_area, fine_valid, std, periodic)``),
states its own ``receptive_field()`` in coarse cells (:mod:`downscale.nn.reach`; the
attention mitigation reads the whole field and says so), is chosen from YAML with
``class_path``/``init_args`` (``model.init_args.decoder``) and shares its structure::

    x (physical) --conserving upsampler (phase-balanced, symmetric)--------> base
    [x_norm, valid] -> stem -> coarse trunk -> UPSAMPLER -> [dilated conv]
                    -> [attention smoothing] -> fine blocks -> head -------> detail
    y = LocalConservation(base + std * detail)                 (exact per coarse cell)

Only the learnt path differs, so a comparison isolates the upsampler; the physical base is
always the artifact-free conserving layer, and the last step restores every coarse cell's
mass exactly (docs/method.md#conservation), whatever the upsampler does. The head
starts at zero: every decoder starts as the conserving interpolation.

- :class:`TransposedConvDecoder`: conserving transposed convolutions, in DCGAN-style
  stride-2 stages (``k=4, s=2, p=1``) or one stride-``f`` stage;
- :class:`UNetDecoder`: a U-Net trunk on the coarse grid (any size, odd included), then a
  conserving transposed convolution;
- :class:`PixelShuffleDecoder`: sub-pixel convolution and an anti-aliasing low-pass filter;
- :class:`ResizeConvDecoder`: interpolate, then convolve.

Mitigations (:mod:`downscale.nn.mitigations`) are settings of all four: ``dilation``
(a phase-mixing dilated convolution after the upsampler) and ``attention`` (a spatial
attention smoothing block); the Sobolev kernel penalty is a loss term of the task.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from downscale.nn.conserving import ConstraintMode, LocalConservation, MassConservingConvTranspose2d
from downscale.nn.decoder import _ConvBlock, add_detail, normalised_spread
from downscale.nn.mitigations import (
    DecoderConfigError,
    PhaseMixingConv,
    SpatialAttentionSmoothing,
)
from downscale.nn.padding import GridConv2d
from downscale.nn.reach import conv_reach, stack_reach
from downscale.nn.unet import UNet
from downscale.nn.upsamplers import (
    PixelShuffleUpsampler,
    ResizeConvUpsampler,
    StagedConservingUpsampler,
    TransposedConvUpsampler,
    default_kernel_size,
)

#: The learnt upsamplers a decoder can use (each states its ``coarse_reach``).
FeatureUpsampler = TransposedConvUpsampler | PixelShuffleUpsampler | ResizeConvUpsampler


class _ResidualDecoder(nn.Module):
    """The shared skeleton (module docstring); subclasses set the trunk and the upsampler.

    Args:
        channels: Physical variables in and out.
        factor: Upsampling factor.
        hidden_channels: Width of the learnt path.
        fine_blocks: Conv blocks on the fine grid.
        constraint: Final local-conservation mode (see :class:`LocalConservation`).
        upsampler: Feature upsampler ``(B, hidden, h, w) -> (B, hidden, h*f, w*f)``.
        phase_stride: Period of the phases the upsampler's output can carry.
        dilation: Dilation of a :class:`PhaseMixingConv` after the upsampler, or None.
        attention: Add a :class:`SpatialAttentionSmoothing` block after it.
        base: Physical upsampler ``forward(x, fine_area, periodic)``; a single-stage
            symmetric, phase-balanced conserving layer by default.
    """

    def __init__(self, channels: int, factor: int, hidden_channels: int, fine_blocks: int,
                 constraint: ConstraintMode, upsampler: FeatureUpsampler, phase_stride: int,
                 dilation: int | None, attention: bool,
                 base: StagedConservingUpsampler | None = None) -> None:
        super().__init__()
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise DecoderConfigError(f"factor must be a positive integer, got {factor!r}")
        self.channels, self.factor, self.constraint_mode = channels, factor, constraint
        self.base: StagedConservingUpsampler | MassConservingConvTranspose2d = (
            base if base is not None else MassConservingConvTranspose2d(
                channels, factor, default_kernel_size(factor), symmetric=True))
        self.stem = GridConv2d(2 * channels, hidden_channels)
        self.upsampler: FeatureUpsampler = upsampler
        self.mixing = (PhaseMixingConv(hidden_channels, phase_stride, dilation)
                       if dilation is not None else None)
        self.attention = (SpatialAttentionSmoothing(hidden_channels, phase_stride)
                          if attention else None)
        self.fine = nn.ModuleList(_ConvBlock(hidden_channels, hidden_channels)
                                  for _ in range(fine_blocks))
        self.head = GridConv2d(hidden_channels, channels)
        # Zero detail at the start: the decoder begins as the conserving interpolation.
        nn.init.zeros_(self.head.weight)
        if self.head.bias is not None:
            nn.init.zeros_(self.head.bias)
        self.constraint = LocalConservation(factor, constraint)

    def trunk(self, features: Tensor, periodic: bool) -> Tensor:
        """Coarse-grid feature extraction; the identity here."""
        return features

    def trunk_reach(self) -> int:
        """Coarse cells on each side that the trunk reads; 0 for the identity."""
        return 0

    def receptive_field(self) -> int:
        """Coarse cells on each side that a coarse cell's fine cells depend on.

        The learnt path: stem and trunk (coarse cells), then the upsampler's own reach
        (:mod:`downscale.nn.reach`) behind the phase-mixing convolution, the fine blocks
        and the head (fine cells); the physical base reaches less. The final constraint
        adds nothing (one coarse block at a time).

        Raises:
            NotTileableError: With attention smoothing, which reads the whole field.
        """
        if self.attention is not None:
            self.attention.reach()
        fine = stack_reach(self.fine) + conv_reach(self.head)
        if self.mixing is not None:
            fine += self.mixing.reach
        learnt = conv_reach(self.stem) + self.trunk_reach() + self.upsampler.coarse_reach(fine)
        return max(learnt, self.base.coarse_reach())

    def tile_alignment(self) -> int:
        """Coarse cells a tile's start must be a multiple of (1: any start)."""
        return 1

    def transposed_kernels(self) -> list[Tensor]:
        """Normalised kernels of every conserving transposed convolution, ``(C, 1, k, k)``."""
        return [m.kernel() for m in self.modules()
                if isinstance(m, MassConservingConvTranspose2d)]

    def forward(self, x: Tensor, x_norm: Tensor, fine_area: Tensor, fine_valid: Tensor,
                std: Tensor, periodic: bool = False) -> Tensor:
        """Downscale ``x`` (see :class:`~downscale.nn.ConservingDecoder` for the shapes)."""
        base = normalised_spread(self.base, x, fine_area, periodic)
        mask = torch.isfinite(x).to(x_norm.dtype)
        features = self.trunk(self.stem(torch.cat([x_norm, mask], 1), periodic), periodic)
        features = self.upsampler(features, periodic)
        if self.mixing is not None:
            features = self.mixing(features, periodic)
        if self.attention is not None:
            features = self.attention(features, periodic)
        for block in self.fine:
            features = block(features, periodic)
        detail = self.head(features, periodic)
        y = add_detail(base, detail, std, self.constraint_mode)
        out: Tensor = self.constraint(y, x, fine_area, fine_valid)
        return out


class _CoarseBlocksDecoder(_ResidualDecoder):
    """Skeleton whose trunk is ``coarse_blocks`` residual conv blocks."""

    def __init__(self, channels: int, factor: int, hidden_channels: int, coarse_blocks: int,
                 fine_blocks: int, constraint: ConstraintMode, upsampler: FeatureUpsampler,
                 phase_stride: int, dilation: int | None, attention: bool,
                 base: StagedConservingUpsampler | None = None) -> None:
        super().__init__(channels, factor, hidden_channels, fine_blocks, constraint, upsampler,
                         phase_stride, dilation, attention, base)
        self.coarse = nn.ModuleList(_ConvBlock(hidden_channels, hidden_channels)
                                    for _ in range(coarse_blocks))

    def trunk(self, features: Tensor, periodic: bool) -> Tensor:
        for block in self.coarse:
            features = block(features, periodic)
        return features

    def trunk_reach(self) -> int:
        """Coarse cells on each side that the residual blocks read."""
        return stack_reach(self.coarse)


class TransposedConvDecoder(_CoarseBlocksDecoder):
    """Conserving transposed-convolution decoder in DCGAN-style stride-2 stages.

    With ``stage_stride=2`` (default) both the physical base and the learnt path upsample in
    ``log2(factor)`` stages of ``k=4, s=2, p=1`` conserving kernels, the learnt path with a
    3x3 convolution and GELU between stages (Radford et al. 2016, DCGAN). ``k = 4`` is a
    multiple of ``s = 2``, so every output cell is reached by the same number of input
    cells (seed document: the coverage varies by ``ceil(k/s) - floor(k/s)``); phase
    balancing evens out the weights as well. ``phase_balanced=False, symmetric=False`` give
    the plain sum-to-one kernels, which can drift into a checkerboard (the ablation).

    Args:
        channels: Physical variables in and out.
        factor: Upsampling factor (a power of ``stage_stride``).
        hidden_channels: Width of the learnt path.
        coarse_blocks: Residual conv blocks on the coarse grid.
        fine_blocks: Conv blocks on the fine grid.
        constraint: Final local-conservation mode.
        stage_stride: Stride of every stage, or None for one stride-``factor`` stage.
        kernel_size: Kernel size of the learnt stages (default ``2 s + s % 2``).
        phase_balanced: Phase-balanced learnt kernels.
        symmetric: Mirror-symmetric learnt kernels.
        dilation: Phase-mixing dilated convolution after the upsampler (not a multiple of
            the stage stride), or None.
        attention: Spatial attention smoothing after the upsampler.

    Raises:
        DecoderConfigError: (a ``ValueError``) for a factor that is not a power of the stage
            stride or a dilation that cannot mix phases.
    """

    def __init__(self, channels: int = 1, factor: int = 4, hidden_channels: int = 32,
                 coarse_blocks: int = 2, fine_blocks: int = 1,
                 constraint: ConstraintMode = "additive", stage_stride: int | None = 2,
                 kernel_size: int | None = None, phase_balanced: bool = True,
                 symmetric: bool = True, dilation: int | None = None,
                 attention: bool = False) -> None:
        upsampler = TransposedConvUpsampler(hidden_channels, factor, stage_stride, kernel_size,
                                            phase_balanced, symmetric)
        base = (StagedConservingUpsampler(channels, factor, stage_stride)
                if stage_stride is not None else None)
        super().__init__(channels, factor, hidden_channels, coarse_blocks, fine_blocks,
                         constraint, upsampler, upsampler.last_stride, dilation, attention,
                         base)


class UNetDecoder(_ResidualDecoder):
    """U-Net on the coarse grid, then a conserving transposed convolution to the fine grid.

    The trunk (:class:`~downscale.nn.unet.UNet`) sees ``2**depth`` times the context of a
    plain conv stack; its skip connections align for any grid size, odd included, by
    padding at the high end before each halving and cropping after each doubling
    (documented in :mod:`downscale.nn.unet`). The upsampler is the symmetric,
    phase-balanced conserving layer of :class:`~downscale.nn.ConservingDecoder`.

    Args:
        channels: Physical variables in and out.
        factor: Upsampling factor.
        hidden_channels: Width of the finest U-Net level and of the fine path.
        depth: Number of halvings in the U-Net.
        fine_blocks: Conv blocks on the fine grid.
        constraint: Final local-conservation mode.
        phase_balanced: Phase-balanced kernels in the upsampler.
        dilation: Phase-mixing dilated convolution after the upsampler, or None.
        attention: Spatial attention smoothing after the upsampler.
    """

    def __init__(self, channels: int = 1, factor: int = 4, hidden_channels: int = 32,
                 depth: int = 2, fine_blocks: int = 1, constraint: ConstraintMode = "additive",
                 phase_balanced: bool = True, dilation: int | None = None,
                 attention: bool = False) -> None:
        upsampler = TransposedConvUpsampler(hidden_channels, factor,
                                            phase_balanced=phase_balanced)
        super().__init__(channels, factor, hidden_channels, fine_blocks, constraint, upsampler,
                         factor, dilation, attention)
        self.unet = UNet(hidden_channels, depth)

    def trunk(self, features: Tensor, periodic: bool) -> Tensor:
        out: Tensor = self.unet(features, periodic)
        return out

    def trunk_reach(self) -> int:
        """Coarse cells on each side that the U-Net reads (:meth:`UNet.reach`)."""
        return self.unet.reach()

    def tile_alignment(self) -> int:
        """Tiles start at multiples of ``2**depth`` coarse cells, where the U-Net pools."""
        return self.unet.alignment


class PixelShuffleDecoder(_CoarseBlocksDecoder):
    """Sub-pixel convolution (Shi et al. 2016) with ICNR start and an anti-aliasing filter.

    See :class:`~downscale.nn.upsamplers.PixelShuffleUpsampler`. Without the filter and with
    a random start (``icnr=False, anti_alias=False``) it is the textbook checkerboard maker.

    Args:
        channels: Physical variables in and out.
        factor: Upsampling factor.
        hidden_channels: Width of the learnt path.
        coarse_blocks: Residual conv blocks on the coarse grid.
        fine_blocks: Conv blocks on the fine grid.
        constraint: Final local-conservation mode.
        icnr: ICNR initialisation (Aitken et al. 2017): all phases start equal.
        anti_alias: Low-pass filter after the shuffle.
        dilation: Phase-mixing dilated convolution after the upsampler, or None.
        attention: Spatial attention smoothing after the upsampler.
    """

    def __init__(self, channels: int = 1, factor: int = 4, hidden_channels: int = 32,
                 coarse_blocks: int = 2, fine_blocks: int = 1,
                 constraint: ConstraintMode = "additive", icnr: bool = True,
                 anti_alias: bool = True, dilation: int | None = None,
                 attention: bool = False) -> None:
        upsampler = PixelShuffleUpsampler(hidden_channels, factor, icnr, anti_alias)
        super().__init__(channels, factor, hidden_channels, coarse_blocks, fine_blocks,
                         constraint, upsampler, factor, dilation, attention)


class ResizeConvDecoder(_CoarseBlocksDecoder):
    """Resize-then-convolve decoder (Odena et al. 2016): no phases to unbalance.

    Args:
        channels: Physical variables in and out.
        factor: Upsampling factor.
        hidden_channels: Width of the learnt path.
        coarse_blocks: Residual conv blocks on the coarse grid.
        fine_blocks: Conv blocks on the fine grid.
        constraint: Final local-conservation mode.
        mode: ``"nearest"`` or ``"bilinear"`` interpolation before the convolution.
        dilation: Phase-mixing dilated convolution after the upsampler, or None.
        attention: Spatial attention smoothing after the upsampler.
    """

    def __init__(self, channels: int = 1, factor: int = 4, hidden_channels: int = 32,
                 coarse_blocks: int = 2, fine_blocks: int = 1,
                 constraint: ConstraintMode = "additive",
                 mode: Literal["nearest", "bilinear"] = "nearest", dilation: int | None = None,
                 attention: bool = False) -> None:
        upsampler = ResizeConvUpsampler(hidden_channels, factor, mode)
        super().__init__(channels, factor, hidden_channels, coarse_blocks, fine_blocks,
                         constraint, upsampler, factor, dilation, attention)


__all__ = [
    "PixelShuffleDecoder",
    "ResizeConvDecoder",
    "TransposedConvDecoder",
    "UNetDecoder",
]
