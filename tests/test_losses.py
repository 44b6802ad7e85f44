"""Slopes in metres and the slope penalty: planes, latitude-longitude grids, gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from downscale.dem import dem_from_latlon, grid_spacing
from downscale.grid import EARTH_RADIUS_M
from downscale.losses import slope, slope_components, slope_penalty

M_PER_DEG = EARTH_RADIUS_M * math.pi / 180.0


def _plane(gy: float, gx: float, dy: float, dx: float, shape: tuple[int, int] = (7, 9)
           ) -> torch.Tensor:
    """Elevation (m) of a plane rising ``gy`` m/m northwards and ``gx`` m/m eastwards."""
    rows = torch.arange(shape[0], dtype=torch.float64)[:, None] * dy
    cols = torch.arange(shape[1], dtype=torch.float64)[None, :] * dx
    return 250.0 + gy * rows + gx * cols


def test_slope_of_a_plane_on_a_projected_grid_everywhere_including_edges() -> None:
    h = _plane(0.3, -0.4, dy=30.0, dx=20.0)
    s = slope(h, 30.0, 20.0)
    torch.testing.assert_close(s, torch.full_like(s, 0.5), rtol=1e-12, atol=1e-12)
    gy, gx = slope_components(h, 30.0, 20.0)
    assert torch.allclose(gy, torch.tensor(0.3, dtype=torch.float64))
    assert torch.allclose(gx, torch.tensor(-0.4, dtype=torch.float64))


def test_slope_broadcasts_over_batches_with_spacing_per_row() -> None:
    dy = torch.full((6, 1), 10.0, dtype=torch.float64)
    dx = torch.linspace(5.0, 8.0, 6, dtype=torch.float64)[:, None]
    # 2 m per column in every row: the slope is 2 / dx, different in every row.
    h = 2.0 * torch.arange(5, dtype=torch.float64)[None, :].expand(6, 5)
    batch = torch.stack([h, 2 * h])[:, None]  # (2, 1, 6, 5)
    s = slope(batch, dy, dx)
    assert s.shape == (2, 1, 6, 5)
    torch.testing.assert_close(s[0, 0], (2.0 / dx).expand(6, 5))
    torch.testing.assert_close(s[1, 0], (4.0 / dx).expand(6, 5))


def _latlon_grid() -> tuple[np.ndarray, np.ndarray]:
    """A 3 arc-second grid around 36.6 N, the size of the Jacksboro DEM."""
    lat = 36.45 + (np.arange(60) + 0.5) / 1200
    lon = -84.4 + (np.arange(80) + 0.5) / 1200
    return lat, lon


def test_metres_per_degree_of_longitude_shrink_with_cos_latitude() -> None:
    lat, lon = _latlon_grid()
    # 0.5 m per 1/1200 degree of longitude: the east-west slope depends on the row.
    h = np.broadcast_to(0.5 * 1200 * (lon - lon[0]), (lat.size, lon.size))
    ds = dem_from_latlon(h, lat, lon)
    dy, dx = grid_spacing(ds)
    s = slope(torch.tensor(ds["elevation"].values[0]), torch.from_numpy(dy),
              torch.from_numpy(dx)).numpy()
    expected = 0.5 / (M_PER_DEG / 1200 * np.cos(np.deg2rad(lat)))
    np.testing.assert_allclose(s, np.broadcast_to(expected[:, None], s.shape), rtol=1e-9)
    # Without the cos(latitude) factor the slope would be 25% too small here.
    assert expected.min() > 1.24 * 0.5 / (M_PER_DEG / 1200)


def test_north_south_slope_on_a_latlon_grid() -> None:
    lat, lon = _latlon_grid()
    h = np.broadcast_to(0.1 * M_PER_DEG * (lat - lat[0])[:, None], (lat.size, lon.size))
    ds = dem_from_latlon(h, lat, lon)
    dy, dx = grid_spacing(ds)
    s = slope(torch.tensor(ds["elevation"].values[0]), torch.from_numpy(dy),
              torch.from_numpy(dx)).numpy()
    np.testing.assert_allclose(s, 0.1, rtol=1e-9)


def test_slope_of_a_tilted_plane_on_a_latlon_grid() -> None:
    """A plane in local metres (east, north) has its slope everywhere on the small grid."""
    lat, lon = _latlon_grid()
    lat_c, lon_c = lat.mean(), lon.mean()
    north = M_PER_DEG * (lat - lat_c)[:, None]
    east = M_PER_DEG * np.cos(np.deg2rad(lat))[:, None] * (lon - lon_c)[None, :]
    ds = dem_from_latlon(400.0 + 0.3 * north + 0.4 * east, lat, lon)
    dy, dx = grid_spacing(ds)
    s = slope(torch.tensor(ds["elevation"].values[0]), torch.from_numpy(dy),
              torch.from_numpy(dx)).numpy()
    # Meridians converge, so "east" is not exactly a plane coordinate: 0.2% over 0.07 deg.
    np.testing.assert_allclose(s, 0.5, rtol=2e-3)


def test_penalty_is_zero_below_the_limit_with_zero_gradient() -> None:
    h = _plane(math.tan(math.radians(20.0)), 0.0, 25.0, 25.0).requires_grad_()
    penalty = slope_penalty(h, 25.0, 25.0, theta_max_deg=30.0)
    penalty.backward()
    assert penalty.item() == 0.0
    assert h.grad is not None and torch.count_nonzero(h.grad) == 0


def test_penalty_of_a_steep_plane_has_the_analytic_value_and_derivative() -> None:
    """P(k) = (k g - tan theta)^2 for the plane k * (slope g), so dP/dk = 2 g (k g - tan)."""
    g, theta, k0 = 0.8, 30.0, 1.5
    unit = _plane(0.0, g, 10.0, 12.0)
    k = torch.tensor(k0, dtype=torch.float64, requires_grad=True)
    penalty = slope_penalty(k * unit, 10.0, 12.0, theta)
    penalty.backward()
    limit = math.tan(math.radians(theta))
    assert penalty.item() == pytest.approx((k0 * g - limit) ** 2, rel=1e-12)
    assert k.grad is not None
    assert k.grad.item() == pytest.approx(2 * g * (k0 * g - limit), rel=1e-10)


def _difference_matrix(n: int) -> np.ndarray:
    """The finite-difference operator of torch.gradient (edge_order=1), unit spacing."""
    d = np.zeros((n, n))
    d[0, :2] = [-1.0, 1.0]
    d[-1, -2:] = [-1.0, 1.0]
    for i in range(1, n - 1):
        d[i, i - 1], d[i, i + 1] = -0.5, 0.5
    return d


def test_penalty_gradient_matches_the_analytic_derivative_on_rough_terrain() -> None:
    rng = np.random.default_rng(0)
    ny, nx, dy, theta = 6, 7, 20.0, 25.0
    dx = np.linspace(15.0, 16.0, ny)[:, None]  # varies per row, as on a lat-lon grid
    h0 = rng.normal(0.0, 10.0, (ny, nx))
    h = torch.tensor(h0, requires_grad=True)
    penalty = slope_penalty(h, dy, torch.from_numpy(dx), theta)
    penalty.backward()
    # Analytic: P = mean_c e_c^2, e = relu(s - t), s = |(Dy h / dy, h Dx^T / dx)|, so
    # dP/dh = Dy^T (w gy / dy) + (w gx / dx) Dx with w = 2 e / (N s).
    d_y, d_x = _difference_matrix(ny), _difference_matrix(nx)
    gy, gx = d_y @ h0 / dy, h0 @ d_x.T / dx
    s = np.hypot(gy, gx)
    excess = np.maximum(s - math.tan(math.radians(theta)), 0.0)
    assert 0 < np.count_nonzero(excess) < excess.size  # some cells above, some below
    w = 2.0 * excess / (excess.size * s)
    expected = d_y.T @ (w * gy / dy) + (w * gx / dx) @ d_x
    assert h.grad is not None
    np.testing.assert_allclose(h.grad.numpy(), expected, rtol=1e-9, atol=1e-15)
    assert penalty.item() == pytest.approx(float(np.mean(excess**2)), rel=1e-12)


def test_penalty_passes_gradcheck() -> None:
    h = (torch.randn(2, 1, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
         * 30.0).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: slope_penalty(x, 20.0, 18.0, 35.0), (h,))


def test_missing_cells_leave_their_neighbours_out_and_gradients_finite() -> None:
    h = _plane(0.0, 1.0, 10.0, 10.0, (6, 6)).clone()
    h[2, 3] = float("nan")
    h.requires_grad_()
    penalty = slope_penalty(h, 10.0, 10.0, 30.0)
    penalty.backward()
    assert torch.isfinite(penalty)
    assert penalty.item() == pytest.approx((1.0 - math.tan(math.radians(30.0))) ** 2)
    assert h.grad is not None and torch.isfinite(h.grad).all()
    everything_missing = torch.full((3, 3), float("nan"), requires_grad=True)
    assert slope_penalty(everything_missing, 1.0, 1.0, 30.0).item() == 0.0


@pytest.mark.parametrize("theta", [0.0, 90.0, -5.0])
def test_penalty_refuses_limits_outside_0_90_degrees(theta: float) -> None:
    with pytest.raises(ValueError, match="theta_max_deg"):
        slope_penalty(torch.zeros(3, 3), 1.0, 1.0, theta)


def test_slope_needs_two_by_two_cells() -> None:
    with pytest.raises(ValueError, match="2 x 2"):
        slope(torch.zeros(1, 5), 1.0, 1.0)
