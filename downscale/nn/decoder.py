"""The conserving downscaling decoder: coarse field in, exactly conservative fine field out.

Two paths meet before the final constraint::

    x (coarse, physical) --MassConservingConvTranspose2d, normalised------> base (fine)
    x (normalised) -> coarse conv blocks -> MassConservingConvTranspose2d
                   -> fine conv blocks ------------------------------------> detail (fine)
    y = LocalConservation(base + std * detail)                             (exact per cell)

An optional static covariate on the fine grid (normalised surface altitude, say) enters the
feature path twice: its coarse block means join the coarse input of the stem, and the fine
field itself, through one grid convolution, is added to the upsampled features. It shapes
the detail only; the final constraint keeps every coarse cell's mass whatever it says.

Both upsamplers are the phase-balanced conserving layer, so flat features stay flat (no
checkerboard) and the physical base already conserves the domain total. The learned detail
adds structure; the last step restores the mass of every coarse cell exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from downscale.nn.conserving import (
    ConstraintMode,
    LocalConservation,
    MassConservingConvTranspose2d,
    block_mean,
)
from downscale.nn.padding import GridConv2d, conv_layout
from downscale.nn.reach import conv_reach, repeat_reach, stack_reach
from downscale.nn.upsamplers import default_kernel_size


def add_detail(base: Tensor, detail: Tensor, std: Tensor, mode: ConstraintMode) -> Tensor:
    """Put the learned detail on the conserving base, in the form the constraint expects.

    ``multiplicative``: a positive factor ``exp(detail)``; ``softmax``: logits around
    ``log(base)``; otherwise ``base + std * detail`` (``std`` in physical units). All shapes
    ``(B, C, H, W)`` (``std`` broadcasts).
    """
    if mode == "multiplicative":
        return base * torch.exp(detail)
    if mode == "softmax":
        return torch.log(base.clamp_min(1e-12)) + detail
    return base + std * detail


def normalised_spread(base: nn.Module, x: Tensor, fine_area: Tensor, periodic: bool
                      ) -> Tensor:
    """The physical base: the spread mass of the valid coarse cells over the valid area spread.

    A convex combination of neighbouring coarse values, so flat input stays flat on the
    sphere, at edges and along coasts, nothing overshoots near the poles (tiny fine areas
    cancel) and positive fields stay positive. Exactness per coarse cell comes from the
    final constraint.

    Args:
        base: A conserving upsampler, ``base(values, fine_area, periodic)``.
        x: ``(B, C, h, w)`` physical values, NaN = missing.
        fine_area: Fine cell areas ``(1 | B, 1, H, W)``.
        periodic: Whether the last axis wraps.

    Returns:
        ``(B, C, H, W)`` interpolated physical values.
    """
    valid = torch.isfinite(x).to(x.dtype)
    # Masses and areas in one call, stacked on the batch: the layer's per-call work on the
    # fine areas (sums, reciprocals, index maps) is done once, not twice.
    area = fine_area if fine_area.shape[0] == 1 else torch.cat([fine_area, fine_area])
    both: Tensor = base(torch.cat([torch.nan_to_num(x) * valid, valid]), area, periodic)
    n = x.shape[0]
    return both[:n] / both[n:].clamp_min(torch.finfo(x.dtype).tiny)


class _ConvBlock(nn.Module):
    """Two ``k x k`` grid convolutions (3x3 by default) with GELU, residual when widths agree."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv1 = GridConv2d(in_channels, out_channels, kernel_size)
        self.conv2 = GridConv2d(out_channels, out_channels, kernel_size)
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
        covariate_channels: Static fine-grid covariates given to ``forward`` (0: none).

    Shapes:
        ``forward(x, x_norm, fine_area, fine_valid, std, periodic, covariate)``:
        ``x`` ``(B, C, h, w)`` physical values (NaN = missing), ``x_norm`` ``(B, C, h, w)``
        normalised with NaN set to 0, ``fine_area`` and ``fine_valid`` broadcastable to
        ``(B, C, h*f, w*f)``, ``std`` broadcastable to ``(B, C, 1, 1)`` (the physical scale
        of the learned detail), ``covariate`` ``(B, covariate_channels, h*f, w*f)``
        normalised with NaN set to 0 (or None without covariates). Returns
        ``(B, C, h*f, w*f)`` physical values.

    """

    def __init__(self, channels: int = 1, factor: int = 4, hidden_channels: int = 32,
                 coarse_blocks: int = 2, fine_blocks: int = 1,
                 constraint: ConstraintMode = "additive", phase_balanced: bool = True,
                 covariate_channels: int = 0) -> None:
        super().__init__()
        if covariate_channels < 0:
            raise ValueError(f"covariate_channels must be >= 0, got {covariate_channels}")
        self.factor, self.covariate_channels = factor, covariate_channels
        self.constraint_mode = constraint
        # Mirror-symmetric kernels keep flat input flat at reflecting edges too (see layer).
        # They need k - s even (centred padding): 2s for even factors, 2s + 1 for odd ones.
        self.base = MassConservingConvTranspose2d(channels, factor, default_kernel_size(factor),
                                                  phase_balanced=phase_balanced, symmetric=True)
        self.stem = GridConv2d(2 * channels + covariate_channels, hidden_channels)
        self.coarse = nn.ModuleList(_ConvBlock(hidden_channels, hidden_channels)
                                    for _ in range(coarse_blocks))
        self._build_fine_path(channels, hidden_channels, fine_blocks, 3, covariate_channels,
                              phase_balanced)
        self.constraint = LocalConservation(factor, constraint)

    def _build_fine_path(self, channels: int, width: int, fine_blocks: int, fine_kernel: int,
                         covariate_channels: int, phase_balanced: bool) -> None:
        """The conserving feature upsampler, the fine blocks and the head, ``width`` wide."""
        self.covariate_stem = (GridConv2d(covariate_channels, width)
                               if covariate_channels else None)
        self.upsample = MassConservingConvTranspose2d(
            width, self.factor, default_kernel_size(self.factor),
            phase_balanced=phase_balanced, symmetric=True)
        self.fine = nn.ModuleList(_ConvBlock(width, width, fine_kernel)
                                  for _ in range(fine_blocks))
        self.head = GridConv2d(width, channels)
        # Start from the conserving interpolation alone: zero detail.
        nn.init.zeros_(self.head.weight)
        if self.head.bias is not None:
            nn.init.zeros_(self.head.bias)

    def to_fine(self, features: Tensor, periodic: bool) -> Tensor:
        """Carry coarse features ``(B, hidden, h, w)`` to the fine grid (conserving layer).

        The result is laid out for the fine convolutions
        (:func:`~downscale.nn.padding.conv_layout`).
        """
        return conv_layout(self.upsample(features, None, periodic))

    def receptive_field(self) -> int:
        """Coarse cells on each side that a coarse cell's fine cells depend on.

        ``R = max(rc + reach_up(rf), reach_base(0))`` with ``rc`` the reach of the stem and
        the coarse blocks (coarse cells), ``rf`` that of the fine blocks and the head (fine
        cells) and ``reach_up`` the upsampler's (:mod:`downscale.nn.reach`). The fine
        covariate joins after the upsampler through its own convolution (``rv``):
        ``repeat_reach(f, rv + rf)`` coarse cells. The final constraint mixes the cells of
        one coarse block only. This decoder (factor 4, kernel 8, padding 2, one coarse
        and one fine block) reaches ``3 + 2 = 5`` coarse cells, exactly;
        :class:`~downscale.nn.CoarseGridDecoder` with 1x1 fine blocks ``3 + 1 = 4``.
        """
        fine = stack_reach(self.fine) + conv_reach(self.head)
        coarse = conv_reach(self.stem) + stack_reach(self.coarse)
        reach = max(coarse + self.upsample.coarse_reach(fine), self.base.coarse_reach())
        if self.covariate_stem is not None:
            reach = max(reach, repeat_reach(self.factor, conv_reach(self.covariate_stem) + fine))
        return reach

    def forward(self, x: Tensor, x_norm: Tensor, fine_area: Tensor, fine_valid: Tensor,
                std: Tensor, periodic: bool = False, covariate: Tensor | None = None
                ) -> Tensor:
        base = normalised_spread(self.base, x, fine_area, periodic)
        features = self.fine_features(x, x_norm, fine_area, periodic, covariate)
        return self.finish(features, base, x, fine_area, fine_valid, std, periodic)

    def fine_features(self, x: Tensor, x_norm: Tensor, fine_area: Tensor, periodic: bool,
                      covariate: Tensor | None) -> Tensor:
        """The feature path up to the fine blocks: ``(B, width, H, W)`` features.

        Stem and coarse blocks on ``[x_norm, valid (, covariate block means)]``, the
        conserving feature upsampler, plus the covariate's own convolution. Arguments as
        in :meth:`forward`.
        """
        coarse_inputs = [x_norm, torch.isfinite(x).to(x_norm.dtype)]
        if self.covariate_stem is not None:
            if covariate is None or covariate.shape[1] != self.covariate_channels:
                raise ValueError(f"this decoder needs {self.covariate_channels} covariate "
                                 "channel(s) on the fine grid")
            coarse_inputs.append(block_mean(covariate, fine_area, self.factor)[0])
        features = self.stem(conv_layout(torch.cat(coarse_inputs, 1)), periodic)
        for block in self.coarse:
            features = block(features, periodic)
        features = self.to_fine(features, periodic)
        if self.covariate_stem is not None:
            assert covariate is not None
            features = features + self.covariate_stem(covariate, periodic)
        out: Tensor = features
        return out

    def finish(self, features: Tensor, base: Tensor, x: Tensor, fine_area: Tensor,
               fine_valid: Tensor, std: Tensor, periodic: bool) -> Tensor:
        """Fine blocks and head on ``features``; the detail on ``base``; the constraint.

        Args:
            features: ``(B, width, H, W)`` from :meth:`fine_features`.
            base: ``(B, C, H, W)`` physical base (:func:`normalised_spread`).
            x: ``(B, C, h, w)`` physical coarse values (the masses to keep).
            fine_area: As in :meth:`forward`.
            fine_valid: As in :meth:`forward`.
            std: As in :meth:`forward`.
            periodic: As in :meth:`forward`.

        Returns:
            ``(B, C, H, W)`` physical values, exactly conservative per coarse cell.
        """
        for block in self.fine:
            features = block(features, periodic)
        detail = self.head(features, periodic)
        y = add_detail(base, detail, std, self.constraint_mode)
        out: Tensor = self.constraint(y, x, fine_area, fine_valid)
        return out
