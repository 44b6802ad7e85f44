"""downscale.grid: bounds, periodicity, spherical cell areas, nesting."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from downscale.grid import (
    EARTH_RADIUS_M,
    bounds_from_centres,
    cell_areas,
    cell_areas_latlon,
    cell_areas_projected,
    horizontal_dims,
    is_periodic_longitude,
    nesting_factor,
)


def edges_to_bounds(edges: np.ndarray) -> np.ndarray:
    return np.stack([edges[:-1], edges[1:]], axis=1)


GLOBAL_LAT = edges_to_bounds(np.linspace(-90.0, 90.0, 181))
GLOBAL_LON = edges_to_bounds(np.linspace(-180.0, 180.0, 361))


def test_global_one_degree_areas_sum_to_the_sphere() -> None:
    area = cell_areas_latlon(GLOBAL_LAT, GLOBAL_LON)
    assert area.shape == (180, 360)
    np.testing.assert_allclose(area.sum(), 4 * np.pi * EARTH_RADIUS_M**2, rtol=1e-10)
    # Cells shrink towards the poles, symmetric about the equator.
    np.testing.assert_allclose(area[:, 0], area[::-1, 0], rtol=1e-12)
    assert area[90, 0] > area[150, 0] > area[179, 0]


def test_area_of_a_latitude_band() -> None:
    # The band from the equator to 30N covers 2 pi R^2 (sin 30 - sin 0) = pi R^2.
    lat = edges_to_bounds(np.linspace(0.0, 30.0, 31))
    area = cell_areas_latlon(lat, GLOBAL_LON)
    np.testing.assert_allclose(area.sum(), np.pi * EARTH_RADIUS_M**2, rtol=1e-12)
    # And a single 10 x 10 degree cell at the equator, on the unit sphere.
    one = cell_areas_latlon(np.array([[0.0, 10.0]]), np.array([[20.0, 30.0]]), radius=1.0)
    np.testing.assert_allclose(one, [[np.deg2rad(10.0) * np.sin(np.deg2rad(10.0))]], rtol=1e-14)


def test_areas_do_not_depend_on_bound_order() -> None:
    lat = np.array([[10.0, 0.0], [20.0, 10.0]])
    np.testing.assert_allclose(cell_areas_latlon(lat, GLOBAL_LON[:3]),
                               cell_areas_latlon(lat[:, ::-1], GLOBAL_LON[:3]), rtol=1e-15)


def test_projected_areas() -> None:
    area = cell_areas_projected(edges_to_bounds(np.array([0.0, 100.0, 300.0])),
                                edges_to_bounds(np.array([0.0, 30.0, 60.0, 90.0])))
    np.testing.assert_array_equal(area, [[3000.0] * 3, [6000.0] * 3])


def test_cell_areas_of_a_normalised_field() -> None:
    lat, lon = np.arange(-89.5, 90.0), np.arange(-179.5, 180.0)
    ds = xr.Dataset(coords={"lat": lat, "lon": lon,
                            "lat_bnds": (("lat", "bnds"), bounds_from_centres(lat)),
                            "lon_bnds": (("lon", "bnds"), bounds_from_centres(lon))})
    area = cell_areas(ds)
    assert area.dims == ("lat", "lon") and area.attrs["units"] == "m2"
    np.testing.assert_allclose(float(area.sum()), 4 * np.pi * EARTH_RADIUS_M**2, rtol=1e-10)


def test_bounds_from_centres() -> None:
    np.testing.assert_allclose(bounds_from_centres(np.array([0.0, 1.0, 3.0])),
                               [[-0.5, 0.5], [0.5, 2.0], [2.0, 4.0]])
    np.testing.assert_allclose(bounds_from_centres(np.array([-89.5, 0.0, 89.5]),
                                                   clip=(-90.0, 90.0))[[0, -1]],
                               [[-90.0, -44.75], [44.75, 90.0]])
    with pytest.raises(ValueError, match="at least two"):
        bounds_from_centres(np.array([1.0]))
    with pytest.raises(ValueError, match="1-D"):
        bounds_from_centres(np.zeros((2, 2)))


def test_is_periodic_longitude() -> None:
    assert is_periodic_longitude(GLOBAL_LON)
    assert is_periodic_longitude(GLOBAL_LON + 180.0)
    assert not is_periodic_longitude(GLOBAL_LON[:-1])
    short = GLOBAL_LON.copy()
    short[-1, 1] -= 0.01
    assert not is_periodic_longitude(short)
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        is_periodic_longitude(np.arange(3.0))


def test_horizontal_dims() -> None:
    assert horizontal_dims(xr.DataArray(np.zeros((1, 2, 2)), dims=("time", "lat", "lon"))) == (
        "lat", "lon")
    assert horizontal_dims(xr.DataArray(np.zeros((2, 2)), dims=("y", "x"))) == ("y", "x")
    with pytest.raises(ValueError, match="no \\(lat, lon\\)"):
        horizontal_dims(xr.DataArray(np.zeros((2, 2)), dims=("a", "b")))


@pytest.mark.parametrize("factor", [1, 2, 3, 4, 10])
def test_nesting_factor_accepts_exact_nesting(factor: int) -> None:
    coarse = edges_to_bounds(np.linspace(-60.0, 60.0, 13))
    fine = edges_to_bounds(np.linspace(-60.0, 60.0, 12 * factor + 1))
    assert nesting_factor(coarse, fine) == factor


def test_nesting_factor_on_a_gaussian_like_uneven_axis() -> None:
    fine_edges = np.sort(np.r_[-90.0, 90.0, np.random.default_rng(0).uniform(-89, 89, 23)])
    assert nesting_factor(edges_to_bounds(fine_edges[::3]), edges_to_bounds(fine_edges)) == 3


@pytest.mark.parametrize("shift", [0.5, 0.1, 0.01, -0.25])
def test_nesting_factor_rejects_grids_off_by_a_fraction(shift: float) -> None:
    coarse = edges_to_bounds(np.linspace(0.0, 12.0, 7))   # 2-degree cells
    fine = edges_to_bounds(np.linspace(0.0, 12.0, 25) + shift * 0.5)  # half-degree cells
    assert nesting_factor(coarse, fine) is None


def test_nesting_factor_rejects_other_mismatches() -> None:
    coarse = edges_to_bounds(np.linspace(0.0, 12.0, 7))
    assert nesting_factor(coarse, edges_to_bounds(np.linspace(0.0, 12.0, 26))) is None  # 25/6
    assert nesting_factor(coarse, edges_to_bounds(np.linspace(0.0, 12.0, 4))) is None  # coarser
    assert nesting_factor(coarse, edges_to_bounds(np.linspace(0.0, 14.0, 25))) is None  # wider
    assert nesting_factor(coarse[:0], edges_to_bounds(np.linspace(0.0, 12.0, 25))) is None
    # Right outer edges, but the fine cells inside do not tile the coarse cell.
    fine = edges_to_bounds(np.linspace(0.0, 12.0, 13))
    fine[0, 1] -= 0.3
    assert nesting_factor(coarse, fine) is None
