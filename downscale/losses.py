"""Differentiable losses: the terrain slope penalty and the fair ensemble CRPS.

Terrain (docs/method.md#terrain):

Elevation ``h`` in metres lies on a grid whose neighbouring cell centres are ``dy`` metres
apart along rows (north-south) and ``dx`` metres apart along columns (west-east). On a
latitude-longitude grid ``dx = R cos(lat) dlon`` shrinks towards the poles, so ``dx`` may
vary per row; :func:`downscale.dem_grid.grid_spacing` computes both for a normalised field.

The slope is ``|grad h| = sqrt((dh/dy)^2 + (dh/dx)^2)`` (m/m, i.e. ``tan`` of the slope
angle) by finite differences: central in the interior, one-sided at the edges, as
:func:`torch.gradient` with ``edge_order=1``. The penalty
``mean(relu(slope - tan(theta_max))^2)`` is zero below the limit and smooth above it.

Ensembles: :func:`fair_crps` trains a stochastic decoder on a few members per sample (its
numpy twin for scoring files is :func:`downscale.metrics.ensemble.crps_ensemble`).

Pure torch, no Lightning: the generator's training step and the metrics share them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: Added to ``|grad h|^2`` before the square root, in (m/m)^2: keeps the gradient of the
#: slope finite on flat ground (the square root has an infinite derivative at 0), and
#: biases a slope by at most 1e-10 m/m.
_FLAT_EPS = 1e-20


def slope_components(h: Tensor, dy: float | Tensor, dx: float | Tensor) -> tuple[Tensor, Tensor]:
    """Elevation gradients ``(dh/dy, dh/dx)`` by finite differences, unitless (m/m).

    Args:
        h: Elevation in metres, shape ``(..., H, W)`` with ``H, W >= 2``.
        dy: Distance between the centres of neighbouring rows, in metres: a number or a
            tensor broadcastable to ``(..., H, W)`` (e.g. ``(H, 1)`` per row).
        dx: Distance between the centres of neighbouring columns, in metres, same forms;
            per row on a latitude-longitude grid.

    Returns:
        ``(gy, gx)``, each of shape ``(..., H, W)``: the derivative of ``h`` towards
        increasing row and column index, in m/m.

    Raises:
        ValueError: If the grid has fewer than two rows or columns.

    """
    if h.dim() < 2 or h.shape[-1] < 2 or h.shape[-2] < 2:
        raise ValueError(f"slopes need a grid of at least 2 x 2 cells, got {tuple(h.shape)}")
    # Index-space differences (unit spacing) divided by the spacing in metres lets dx vary
    # per row, which torch.gradient's own `spacing` argument cannot express.
    gy_index, gx_index = torch.gradient(h, dim=(-2, -1), edge_order=1)
    return gy_index / dy, gx_index / dx


def slope(h: Tensor, dy: float | Tensor, dx: float | Tensor) -> Tensor:
    """Slope magnitude ``|grad h|`` (unitless, m/m: the tangent of the slope angle).

    Args:
        h: Elevation in metres, shape ``(..., H, W)``; NaN marks missing cells and makes
            the slopes of their neighbours NaN.
        dy: Row spacing in metres, a number or broadcastable to ``(..., H, W)``.
        dx: Column spacing in metres, a number or broadcastable to ``(..., H, W)`` (per row
            on latitude-longitude grids: ``R cos(lat) dlon``).

    Returns:
        The slope, shape ``(..., H, W)``; 1.0 is a 45 degree slope.

    """
    gy, gx = slope_components(h, dy, dx)
    return torch.sqrt(gy.square() + gx.square() + _FLAT_EPS)


def slope_penalty(h: Tensor, dy: float | Tensor, dx: float | Tensor, theta_max_deg: float,
                  valid: Tensor | None = None) -> Tensor:
    """``mean(relu(slope - tan(theta_max))^2)`` over the cells whose slope is defined.

    Args:
        h: Elevation in metres, shape ``(..., H, W)``; NaN marks missing cells.
        dy: Row spacing in metres (see :func:`slope`).
        dx: Column spacing in metres (see :func:`slope`).
        theta_max_deg: The steepest slope allowed, in degrees, ``0 < theta_max < 90``.
        valid: Optional mask broadcastable to ``h``; cells outside it count as missing.

    Returns:
        A scalar tensor in (m/m)^2: 0 when every slope is at most ``tan(theta_max)``.
        Cells next to a missing cell are left out (their finite differences would read
        it); 0 if no cell is left.

    Raises:
        ValueError: If ``theta_max_deg`` is not in ``(0, 90)``.

    """
    if not 0.0 < theta_max_deg < 90.0:
        raise ValueError(f"theta_max_deg must be in (0, 90) degrees, got {theta_max_deg}")
    finite = torch.isfinite(h)
    if valid is not None:
        finite = finite & valid.to(torch.bool).expand_as(finite)
    # Compute on a NaN-free copy: a NaN anywhere in the graph poisons every gradient, even
    # of cells masked out afterwards. The cells whose differences read a filled cell are
    # then left out.
    filled = torch.where(finite, h, torch.zeros_like(h))
    defined = _neighbours_valid(finite)
    excess = torch.relu(slope(filled, dy, dx) - math.tan(math.radians(theta_max_deg)))
    excess = excess[defined]
    if excess.numel() == 0:
        return (filled * 0.0).sum()
    return excess.square().mean()


def _neighbours_valid(finite: Tensor) -> Tensor:
    """Valid cells whose four neighbours (where they exist) are valid too, ``(..., H, W)``.

    These are the cells whose finite differences (central, or one-sided at an edge) read
    valid cells only.
    """
    ok = finite.clone()
    ok[..., 1:, :] &= finite[..., :-1, :]
    ok[..., :-1, :] &= finite[..., 1:, :]
    ok[..., :, 1:] &= finite[..., :, :-1]
    ok[..., :, :-1] &= finite[..., :, 1:]
    return ok


def fair_crps(members: Tensor, truth: Tensor, weight: Tensor | None = None) -> Tensor:
    """The fair (unbiased) ensemble CRPS, averaged over cells: a loss for ensembles.

    Per cell, with members ``x_1..x_M`` and truth ``y`` (Ferro 2014)::

        CRPS_fair = mean_m |x_m - y| - sum_{m != m'} |x_m - x_m'| / (2 M (M - 1))

    Its expectation is the CRPS of the distribution the members are drawn from, whatever
    ``M``, so a few members per sample (4, say) train a calibrated spread; the plain
    ensemble estimator (divisor ``2 M^2``) would reward too little spread.

    Args:
        members: ``(M, ...)`` members, ``M >= 2``, in field units.
        truth: Target broadcastable to ``members.shape[1:]``; NaN = missing.
        weight: Optional non-negative cell weights (e.g. area times validity)
            broadcastable to ``members.shape[1:]``; equal weights if None.

    Returns:
        A scalar tensor in field units: the weighted mean CRPS over the cells where the
        truth and every member are finite (0 if there are none).

    Raises:
        ValueError: If there are fewer than two members.
    """
    m = members.shape[0]
    if m < 2:
        raise ValueError(f"the fair CRPS needs at least 2 members, got {m}")
    truth = truth.expand(members.shape[1:])
    ok = torch.isfinite(truth) & torch.isfinite(members).all(dim=0)
    w = ok.to(members.dtype)
    if weight is not None:
        w = w * weight.to(members.dtype).expand_as(w)
    # Never difference NaN: it would reach the gradients through the masked cells.
    x = torch.where(ok, members, 0.0)
    y = torch.where(ok, truth, 0.0)
    skill = (x - y).abs().mean(dim=0)
    spread = (x[:, None] - x[None, :]).abs().sum(dim=(0, 1)) / (2 * m * (m - 1))
    return ((skill - spread) * w).sum() / w.sum().clamp_min(torch.finfo(w.dtype).tiny)
