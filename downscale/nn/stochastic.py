"""A stochastic conserving decoder: ensemble members that each keep every coarse cell's mass.

:class:`StochasticConservingDecoder` is :class:`~downscale.nn.ConservingDecoder` with
fine-grid noise in the feature path; the physical base and the final constraint are the
same::

    x (coarse, physical) --MassConservingConvTranspose2d, normalised--------------> base
    x_norm -> stem -> coarse blocks -> conserving upsampler -> features
    features + gate * noise_stem(noise) -> fine blocks -> head ----------------> detail
    y = LocalConservation(base + std * detail)                         (exact per cell)

Every member is exactly conservative because the last step is the same local constraint,
whatever the noise. Flat input stays flat because the noise is multiplied by a *gate*: the
local range (max - min over 3 x 3 coarse cells) of the normalised input, spread to the fine
grid by a conserving upsampler. On flat input the range is exactly 0, the noise term is
exactly 0, the features are the deterministic decoder's (flat), and the constraint removes
the constant detail. Where the input varies, the noise shapes the sub-cell pattern with an
amplitude the network learns.

:func:`draw_noise` and :func:`ensemble_forward` draw members reproducibly from a
:class:`torch.Generator` (on the CPU, so a seed gives the same members on any device).
Trained with the fair ensemble CRPS (:func:`downscale.losses.fair_crps`) over a few members
per sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from downscale.nn.conserving import ConstraintMode, MassConservingConvTranspose2d
from downscale.nn.decoder import ConservingDecoder, normalised_spread
from downscale.nn.padding import GridConv2d
from downscale.nn.protocol import Downscaler
from downscale.nn.reach import conv_reach, repeat_reach, stack_reach
from downscale.nn.upsamplers import default_kernel_size

#: Coarse cells on each side of the window whose range gates the noise.
GATE_RADIUS = 1


def local_range(x_norm: Tensor, valid: Tensor, periodic: bool) -> Tensor:
    """``max - min`` of the valid cells in the ``3 x 3`` coarse window, averaged over channels.

    Exactly 0 on flat input (no arithmetic on equal values but ``a - a``).

    Args:
        x_norm: ``(B, C, h, w)`` normalised values (dimensionless).
        valid: ``(B, C, h, w)`` bool, cells that carry a value.
        periodic: Whether the last axis wraps.

    Returns:
        ``(B, 1, h, w)`` non-negative ranges; 0 at invalid cells.
    """
    r = GATE_RADIUS
    high = torch.where(valid, x_norm, -torch.inf)
    low = torch.where(valid, -x_norm, -torch.inf)
    both = torch.cat([high, low], 1)
    if periodic:
        both = F.pad(both, (r, r, 0, 0), mode="circular")
        both = F.pad(both, (0, 0, r, r), value=-torch.inf)
    else:
        both = F.pad(both, (r, r, r, r), value=-torch.inf)
    top = F.max_pool2d(both, 2 * r + 1, stride=1)
    c = x_norm.shape[1]
    spread = top[:, :c] + top[:, c:]  # max - min
    spread = torch.where(valid, spread, torch.zeros_like(spread))
    return spread.mean(dim=1, keepdim=True)


class StochasticConservingDecoder(ConservingDecoder):
    """Conserving decoder with fine-grid noise in its feature path (module docstring).

    Args:
        channels: Physical variables in and out.
        factor: Integer upsampling factor.
        hidden_channels: Width of the feature paths.
        coarse_blocks: Residual conv blocks on the coarse grid.
        fine_blocks: Conv blocks on the fine grid (at least 1: they turn noise into
            structure).
        constraint: Final local-conservation mode (see :class:`LocalConservation`).
        phase_balanced: Phase-balanced kernels in the conserving upsamplers.
        covariate_channels: Static fine-grid covariates given to ``forward`` (0: none).
        noise_channels: Channels ``N`` of standard normal noise on the fine grid.

    Shapes:
        As :class:`~downscale.nn.ConservingDecoder`, plus ``noise`` ``(B, N, H, W)`` (None:
        zero noise, the decoder's deterministic member).
    """

    def __init__(self, channels: int = 1, factor: int = 4, hidden_channels: int = 32,
                 coarse_blocks: int = 2, fine_blocks: int = 1,
                 constraint: ConstraintMode = "additive", phase_balanced: bool = True,
                 covariate_channels: int = 0, noise_channels: int = 4) -> None:
        if noise_channels < 1:
            raise ValueError(f"noise_channels must be >= 1, got {noise_channels}")
        if fine_blocks < 1:
            raise ValueError(f"fine_blocks must be >= 1 for noise to shape detail, got "
                             f"{fine_blocks}")
        super().__init__(channels, factor, hidden_channels, coarse_blocks, fine_blocks,
                         constraint, phase_balanced, covariate_channels)
        self.noise_channels = noise_channels
        self.noise_stem = GridConv2d(noise_channels, hidden_channels)
        # Spreads the coarse gate to the fine grid: zero stays exactly zero, and its kernel
        # is its own, so the physical base's kernel learns nothing from the noise.
        self.gate_upsample = MassConservingConvTranspose2d(
            1, factor, default_kernel_size(factor), phase_balanced=phase_balanced,
            symmetric=True)

    def gate(self, x: Tensor, x_norm: Tensor, fine_area: Tensor, periodic: bool) -> Tensor:
        """``(B, 1, H, W)`` noise amplitude: the local input range on the fine grid (>= 0)."""
        coarse = local_range(x_norm, torch.isfinite(x), periodic)
        return normalised_spread(self.gate_upsample, coarse, fine_area[:, :1], periodic)

    def receptive_field(self) -> int:
        """The deterministic decoder's, or the noise's and the gate's if they reach further.

        Noise at fine cells ``rv + rf`` away (noise stem, fine blocks and head) and the gate
        (``GATE_RADIUS`` coarse cells behind its upsampler) may reach past the features.
        """
        fine = stack_reach(self.fine) + conv_reach(self.head)
        noise = repeat_reach(self.factor, conv_reach(self.noise_stem) + fine)
        gate = GATE_RADIUS + self.gate_upsample.coarse_reach(fine)
        return max(super().receptive_field(), noise, gate)

    def forward(self, x: Tensor, x_norm: Tensor, fine_area: Tensor, fine_valid: Tensor,
                std: Tensor, periodic: bool = False, covariate: Tensor | None = None,
                noise: Tensor | None = None) -> Tensor:
        base = normalised_spread(self.base, x, fine_area, periodic)
        features = self.fine_features(x, x_norm, fine_area, periodic, covariate)
        if noise is not None:
            if noise.shape[1] != self.noise_channels or noise.shape[-2:] != base.shape[-2:]:
                raise ValueError(f"noise must be (B, {self.noise_channels}, "
                                 f"{base.shape[-2]}, {base.shape[-1]}), got "
                                 f"{tuple(noise.shape)}")
            amplitude = self.gate(x, x_norm, fine_area, periodic)
            features = features + amplitude * self.noise_stem(noise.to(features.dtype),
                                                              periodic)
        return self.finish(features, base, x, fine_area, fine_valid, std, periodic)


def draw_noise(shape: tuple[int, ...], generator: torch.Generator, like: Tensor) -> Tensor:
    """Standard normal noise of ``shape``, drawn on the CPU from ``generator``.

    Drawn on the CPU and then moved, so one seed gives the same members on any device.

    Args:
        shape: ``(B, N, H, W)``.
        generator: A CPU :class:`torch.Generator` (e.g. ``torch.Generator().manual_seed(0)``).
        like: Tensor whose device and dtype the noise takes.
    """
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(like.device,
                                                                          like.dtype)


def ensemble_forward(model: Downscaler, members: int, generator: torch.Generator,
                     coarse: Tensor, fine_area: Tensor, fine_valid: Tensor,
                     periodic: bool = False, covariate: Tensor | None = None) -> Tensor:
    """``members`` draws of a stochastic model, stacked on a new leading axis.

    The members run as one batch of ``members * B`` samples (member-major). Each member is
    exactly conservative (the model's final constraint).

    Args:
        model: A :class:`Downscaler` whose decoder has ``noise_channels`` (e.g.
            :class:`~downscale.nn.ClimateDownscaler` with a
            :class:`StochasticConservingDecoder`).
        members: Number of members ``M >= 1``.
        generator: CPU generator of the noise; the same seed gives the same members.
        coarse: ``(B, C, h, w)`` coarse values (see the protocol).
        fine_area: ``(1 | B, 1, H, W)`` fine cell areas.
        fine_valid: ``(B, C, H, W)`` bool.
        periodic: Whether the last axis wraps.
        covariate: ``(B, K, H, W)`` static covariate or None.

    Returns:
        ``(M, B, C, H, W)`` physical values.

    Raises:
        ValueError: If ``members < 1`` or the model takes no noise.
    """
    channels = int(getattr(getattr(model, "decoder", model), "noise_channels", 0))
    if members < 1:
        raise ValueError(f"members must be >= 1, got {members}")
    if not channels:
        raise ValueError(f"{type(model).__name__} is deterministic: it takes no noise")
    b, _, h, w = coarse.shape
    f = model.factor
    noise = draw_noise((members * b, channels, h * f, w * f), generator, coarse)

    def tile(t: Tensor) -> Tensor:
        return t.repeat(members, *([1] * (t.dim() - 1)))

    area = fine_area if fine_area.shape[0] == 1 else tile(fine_area)
    cov = None if covariate is None else tile(covariate)
    out = model(tile(coarse), area, tile(fine_valid), periodic, cov, noise)
    return out.reshape(members, b, *out.shape[1:])
