"""The conserving downscaling decoder: coarse field in, exactly conservative fine field out.

Two paths meet before the final constraint::

    x (coarse, physical) --MassConservingConvTranspose2d, normalised------> base (fine)
    x (normalised) -> coarse conv blocks -> MassConservingConvTranspose2d
                   -> fine conv blocks ------------------------------------> detail (fine)
    y = LocalConservation(base + std * detail)                             (exact per cell)

Both upsamplers are the phase-balanced conserving layer, so flat features stay flat (no
checkerboard) and the physical base already conserves the domain total. The learned detail
adds structure; the last step restores the mass of every coarse cell exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from downscale.nn.conserving import ConstraintMode, LocalConservation, MassConservingConvTranspose2d
from downscale.nn.padding import GridConv2d


class _ConvBlock(nn.Module):
    """Two 3x3 grid convolutions with GELU, residual when the widths agree."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = GridConv2d(in_channels, out_channels)
        self.conv2 = GridConv2d(out_channels, out_channels)
        self.act = nn.GELU()
        self.skip = in_channels == out_channels

    def forward(self, x: Tensor, periodic: bool) -> Tensor:
        h = self.act(self.conv1(x, periodic))
        h = self.conv2(h, periodic)
        out: Tensor = self.act(h + x if self.skip else h)
        return out


class ConservingDecoder(nn.Module):
    """Learned upsampler whose output conserves each coarse cell's mass exactly.

    Args:
        channels: Physical variables in and out.
        factor: Integer upsampling factor (fine cells per coarse cell along each axis).
        hidden_channels: Width of the feature paths.
        coarse_blocks: Residual conv blocks on the coarse grid.
        fine_blocks: Conv blocks on the fine grid.
        constraint: Final local-conservation mode (see :class:`LocalConservation`).
        phase_balanced: Phase-balanced kernels in the conserving upsamplers.

    Shapes:
        ``forward(x, x_norm, fine_area, fine_valid, std, periodic)``:
        ``x`` ``(B, C, h, w)`` physical values (NaN = missing), ``x_norm`` ``(B, C, h, w)``
        normalised with NaN set to 0, ``fine_area`` and ``fine_valid`` broadcastable to
        ``(B, C, h*f, w*f)``, ``std`` broadcastable to ``(B, C, 1, 1)`` (the physical scale
        of the learned detail). Returns ``(B, C, h*f, w*f)`` physical values.

    """

    def __init__(self, channels: int = 1, factor: int = 4, hidden_channels: int = 32,
                 coarse_blocks: int = 2, fine_blocks: int = 1,
                 constraint: ConstraintMode = "additive", phase_balanced: bool = True) -> None:
        super().__init__()
        self.factor = factor
        self.constraint_mode = constraint
        # Mirror-symmetric kernels keep flat input flat at reflecting edges too (see layer).
        # They need k - s even (centred padding): 2s for even factors, 2s + 1 for odd ones.
        kernel_size = 2 * factor + factor % 2
        self.base = MassConservingConvTranspose2d(channels, factor, kernel_size,
                                                  phase_balanced=phase_balanced, symmetric=True)
        self.stem = GridConv2d(2 * channels, hidden_channels)
        self.coarse = nn.ModuleList(_ConvBlock(hidden_channels, hidden_channels)
                                    for _ in range(coarse_blocks))
        self.upsample = MassConservingConvTranspose2d(hidden_channels, factor, kernel_size,
                                                      phase_balanced=phase_balanced, symmetric=True)
        self.fine = nn.ModuleList(_ConvBlock(hidden_channels, hidden_channels)
                                  for _ in range(fine_blocks))
        self.head = GridConv2d(hidden_channels, channels)
        # Start from the conserving interpolation alone: zero detail.
        nn.init.zeros_(self.head.weight)
        if self.head.bias is not None:
            nn.init.zeros_(self.head.bias)
        self.constraint = LocalConservation(factor, constraint)

    def forward(self, x: Tensor, x_norm: Tensor, fine_area: Tensor, fine_valid: Tensor,
                std: Tensor, periodic: bool = False) -> Tensor:
        # Normalised spread: the mass of the valid coarse cells divided by the valid area the
        # same kernel spreads. A convex combination of neighbouring coarse values, so flat
        # input stays flat on the sphere, at edges and along coasts, nothing overshoots near
        # the poles (tiny fine areas cancel) and positive fields stay positive. Exactness per
        # coarse cell comes from the final constraint.
        coarse_valid = torch.isfinite(x).to(x.dtype)
        spread_area = self.base(coarse_valid, fine_area, periodic)
        base = self.base(torch.nan_to_num(x) * coarse_valid, fine_area, periodic) / (
            spread_area.clamp_min(torch.finfo(x.dtype).tiny))
        features = self.stem(torch.cat([x_norm, torch.isfinite(x).to(x_norm.dtype)], 1),
                             periodic)
        for block in self.coarse:
            features = block(features, periodic)
        features = self.upsample(features, None, periodic)
        for block in self.fine:
            features = block(features, periodic)
        detail = self.head(features, periodic)
        if self.constraint_mode == "multiplicative":
            y = base * torch.exp(detail)
        elif self.constraint_mode == "softmax":
            y = torch.log(base.clamp_min(1e-12)) + detail
        else:
            y = base + std * detail
        out: Tensor = self.constraint(y, x, fine_area, fine_valid)
        return out
