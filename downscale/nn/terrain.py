"""The terrain generator: coarse elevation in, fine elevation out (plain torch).

Two paths meet before the optional conservation step::

    h_coarse (m) --MassConservingConvTranspose2d (tent start)--------------> base (fine, m)
    relief (coarse, unitless) -> coarse conv blocks -> MassConservingConvTranspose2d
        -> [concat noise (fine)] -> fine conv blocks -> head ------------> detail (fine)
    h = base + scale * detail;  h = LocalConservation(h, h_coarse)    (if conserve)

Both upsamplers are transposed convolutions with phase-balanced, mirror-symmetric kernels
(:class:`~downscale.nn.MassConservingConvTranspose2d`), so flat input gives flat output:
no checkerboard from the upsampling itself. The head starts at zero, so an untrained
generator is the conserving bilinear interpolation of the coarse DEM. With
``conserve=True`` the area-weighted mean elevation of every coarse cell is kept exactly
(additive :class:`~downscale.nn.LocalConservation`); slopes are left to the loss
(:func:`downscale.losses.slope_penalty`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from downscale.nn.conserving import (
    LocalConservation,
    MassConservingConvTranspose2d,
    block_mean,
)
from downscale.nn.decoder import _ConvBlock
from downscale.nn.padding import GridConv2d
from downscale.nn.reach import conv_reach, stack_reach


class TerrainGenerator(nn.Module):
    """Generate fine terrain conditioned on coarse elevation, optionally with noise.

    Args:
        factor: Fine cells per coarse cell along each axis.
        hidden_channels: Width of the feature paths.
        coarse_blocks: Residual conv blocks on the coarse grid.
        fine_blocks: Conv blocks on the fine grid.
        noise_channels: Channels of fine-grid noise mixed into the detail path (0: none,
            deterministic). Noise only adds variety when a loss rewards it (e.g. an
            adversarial term); under a pure reconstruction loss it learns to ignore it.
        conserve: Keep every coarse cell's area-weighted mean elevation exactly.
        phase_balanced: Phase-balanced upsampling kernels (no checkerboard on flat input).

    Shapes:
        ``forward(coarse, relief, fine_area, scale, noise, periodic)``: ``coarse`` ``(B, 1, h, w)``
        elevation in metres, ``relief`` ``(B, 1, h, w)`` the normalised coarse elevation
        fed to the feature path, ``fine_area`` broadcastable to ``(B, 1, h*f, w*f)``
        (relative cell areas), ``scale`` broadcastable to ``(B, 1, 1, 1)`` in metres (the
        size of one unit of learned detail), ``noise`` ``(B, noise_channels, h*f, w*f)``
        or None (zeros), ``periodic`` whether the last axis is a whole longitude circle.
        Returns ``(B, 1, h*f, w*f)`` elevation in metres.

    """

    def __init__(self, factor: int = 4, hidden_channels: int = 32, coarse_blocks: int = 2,
                 fine_blocks: int = 2, noise_channels: int = 0, conserve: bool = True,
                 refine_steps: int = 8, phase_balanced: bool = True) -> None:
        super().__init__()
        if factor < 1 or hidden_channels < 1 or noise_channels < 0:
            raise ValueError(f"bad generator size: factor={factor}, hidden={hidden_channels}, "
                             f"noise={noise_channels}")
        self.factor, self.noise_channels, self.conserve = factor, noise_channels, conserve
        # Mirror-symmetric kernels need k - s even: 2s for even factors, 2s + 1 for odd ones.
        kernel_size = 2 * factor + factor % 2
        self.base = MassConservingConvTranspose2d(1, factor, kernel_size,
                                                  phase_balanced=phase_balanced, symmetric=True)
        self.stem = GridConv2d(1, hidden_channels)
        self.coarse = nn.ModuleList(_ConvBlock(hidden_channels, hidden_channels)
                                    for _ in range(coarse_blocks))
        self.upsample = MassConservingConvTranspose2d(hidden_channels, factor, kernel_size,
                                                      phase_balanced=phase_balanced,
                                                      symmetric=True)
        self.mix = GridConv2d(hidden_channels + noise_channels, hidden_channels)
        self.fine = nn.ModuleList(_ConvBlock(hidden_channels, hidden_channels)
                                  for _ in range(fine_blocks))
        self.head = GridConv2d(hidden_channels, 1)
        # Start from the conserving interpolation alone: zero detail.
        nn.init.zeros_(self.head.weight)
        if self.head.bias is not None:
            nn.init.zeros_(self.head.bias)
        self.constraint = LocalConservation(factor, "additive" if conserve else "none")
        # A fixed bilinear spreading of mass: each refinement step removes at least a
        # quarter of every coarse cell's error (the worst, checkerboard mode keeps 3/4).
        self.refine_steps = refine_steps
        self.spread = MassConservingConvTranspose2d(1, factor, kernel_size, symmetric=True)
        self.spread.requires_grad_(False)

    def receptive_field(self, relief_reach: int = 0) -> int:
        """Coarse cells on each side that a coarse cell's fine terrain depends on.

        The detail path reads ``relief_reach`` (what the relief itself reads), the stem and
        coarse blocks, the upsampler behind the mixing convolution, fine blocks and head
        (:mod:`downscale.nn.reach`); the base reads less. Each refinement step spreads
        every coarse cell's error over the spreading kernel's reach ``S``, so the
        conserving generator reaches ``refine_steps * S`` further. The final block
        correction adds nothing.

        Args:
            relief_reach: Coarse cells on each side behind one cell of ``relief``.
        """
        fine = conv_reach(self.mix) + stack_reach(self.fine) + conv_reach(self.head)
        learnt = (relief_reach + conv_reach(self.stem) + stack_reach(self.coarse)
                  + self.upsample.coarse_reach(fine))
        reach = max(learnt, self.base.coarse_reach())
        if self.conserve:
            reach += self.refine_steps * self.spread.coarse_reach()
        return reach

    def forward(self, coarse: Tensor, relief: Tensor, fine_area: Tensor, scale: Tensor,
                noise: Tensor | None = None, periodic: bool = False) -> Tensor:
        base = self.base(coarse, fine_area, periodic)
        features = self.stem(relief, periodic)
        for block in self.coarse:
            features = block(features, periodic)
        features = self.upsample(features, None, periodic)
        if self.noise_channels:
            if noise is None:
                noise = features.new_zeros(features.shape[0], self.noise_channels,
                                           *features.shape[-2:])
            features = torch.cat([features, noise], dim=1)
        features = self.mix(features, periodic)
        for block in self.fine:
            features = block(features, periodic)
        fine = base + scale * self.head(features, periodic)
        area = fine_area.expand_as(fine)
        if self.conserve:
            # Pycnophylactic refinement (Tobler 1979): spread each coarse cell's remaining
            # error smoothly. The exact block correction that follows is then tiny; applied
            # alone it would leave steps, i.e. false cliffs, at every block edge.
            target = torch.nan_to_num(coarse, nan=0.0)
            for _ in range(self.refine_steps):
                mean, _ = block_mean(fine, area, self.factor)
                fine = fine + self.spread(target - mean, fine_area, periodic)
        out: Tensor = self.constraint(fine, coarse, area)
        return out
