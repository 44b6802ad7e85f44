"""A fast conserving decoder: the heavy work on the coarse grid, light work on the fine grid.

:class:`CoarseGridDecoder` is :class:`~downscale.nn.ConservingDecoder` with a narrow,
pointwise fine path::

    x (coarse, physical) --MassConservingConvTranspose2d, normalised------------> base
    [x_norm, valid] -> stem -> coarse 3x3 blocks (hidden) -> 1x1 to K channels
        --MassConservingConvTranspose2d--> 1x1 blocks (K) -> 3x3 head (K -> C) --> detail
    y = LocalConservation(base + std * detail)                           (exact per cell)

The 3x3 convolutions of ``hidden`` channels run on the coarse grid, where a cell costs
``f^2`` times less. A 1x1 convolution there narrows the features to ``K = fine_channels``,
and the conserving transposed convolution (kernels summing to one, each phase to
``1/f^2``, mirror-symmetric; one learnt kernel per channel, so each channel carries its
own sub-cell pattern) carries them to the fine grid. There only a per-cell MLP of ``K``
channels and the thin 3x3 head run. On a CPU the fine grid's cost is memory traffic more
than arithmetic: every pass over ``K`` fine channels costs about as much as a 1x1
convolution, so the narrow width is what makes it fast.

Every guarantee of the conserving decoder holds unchanged: kernels sum to one, phases are
balanced, flat input gives flat output (the head starts at zero and the base is the
symmetric, phase-balanced layer), the final local-conservation step is exact, and the
receptive field is stated exactly (the 1x1 layers reach nothing), so tiles equal the whole
field. The cost per fine cell and the skill are measured in
``docs/decoder_comparison/coarse_grid.md``.
"""

from __future__ import annotations

from torch import Tensor

from downscale.nn.conserving import ConstraintMode
from downscale.nn.decoder import ConservingDecoder
from downscale.nn.padding import GridConv2d


class CoarseGridDecoder(ConservingDecoder):
    """Conserving decoder whose wide convolutions all run on the coarse grid.

    Same signature, shapes and guarantees as :class:`~downscale.nn.ConservingDecoder`
    (module docstring for the layout).

    Args:
        channels: Physical variables in and out.
        factor: Integer upsampling factor (fine cells per coarse cell along each axis).
        hidden_channels: Width of the coarse-grid path.
        coarse_blocks: Residual 3x3 conv blocks on the coarse grid.
        fine_blocks: Residual blocks of two 1x1 convolutions on the fine grid.
        constraint: Final local-conservation mode (see
            :class:`~downscale.nn.LocalConservation`).
        phase_balanced: Phase-balanced kernels in the conserving upsamplers.
        covariate_channels: Static fine-grid covariates given to ``forward`` (0: none).
        fine_channels: Width ``K`` of the features carried to the fine grid.
        fine_kernel_size: Kernel size of the fine blocks' convolutions (1 or 3).

    """

    def __init__(self, channels: int = 1, factor: int = 4, hidden_channels: int = 32,
                 coarse_blocks: int = 2, fine_blocks: int = 1,
                 constraint: ConstraintMode = "additive", phase_balanced: bool = True,
                 covariate_channels: int = 0, fine_channels: int = 8,
                 fine_kernel_size: int = 1) -> None:
        if fine_channels < 1:
            raise ValueError(f"fine_channels must be >= 1, got {fine_channels}")
        if fine_kernel_size not in (1, 3):
            raise ValueError(f"fine_kernel_size must be 1 or 3, got {fine_kernel_size}")
        self.fine_channels, self.fine_kernel_size = fine_channels, fine_kernel_size
        super().__init__(channels, factor, hidden_channels, coarse_blocks, fine_blocks,
                         constraint, phase_balanced, covariate_channels)
        self.project = GridConv2d(hidden_channels, fine_channels, 1)

    def _build_fine_path(self, channels: int, width: int, fine_blocks: int, fine_kernel: int,
                         covariate_channels: int, phase_balanced: bool) -> None:
        """``fine_channels`` wide, ``fine_kernel_size`` fine blocks (the head stays 3x3)."""
        super()._build_fine_path(channels, self.fine_channels, fine_blocks,
                                 self.fine_kernel_size, covariate_channels, phase_balanced)

    def to_fine(self, features: Tensor, periodic: bool) -> Tensor:
        """Narrow the coarse features to ``fine_channels``; carry them to the fine grid."""
        return super().to_fine(self.project(features), periodic)
