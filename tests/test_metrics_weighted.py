"""Area-weighted RMSE: exact spherical cell areas, per-chunk sums, xarray front end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr

from downscale.grid import bounds_from_centres, cell_areas_latlon
from downscale.metrics import (
    area_weighted_rmse,
    lat_weighted_rmse,
    rmse,
    rmse_xr,
    slope_violation_counts,
    slope_violation_fraction,
    weighted_squared_error_sums,
)


def _field(lat: np.ndarray, lon: np.ndarray, values: np.ndarray) -> xr.Dataset:
    lat_b, lon_b = bounds_from_centres(lat, clip=(-90, 90)), bounds_from_centres(lon)
    return xr.Dataset({"tas": (("time", "lat", "lon"), values)},
                      coords={"lat": lat, "lon": lon, "lat_bnds": (("lat", "bnds"), lat_b),
                              "lon_bnds": (("lon", "bnds"), lon_b)})


def test_exact_band_areas_differ_from_cos_lat_on_an_uneven_grid() -> None:
    lat = np.array([0.0, 10.0, 40.0, 80.0])  # uneven spacing: cos(lat) is not the area
    bounds = bounds_from_centres(lat, clip=(-90, 90))
    errors = np.array([1.0, 2.0, 3.0, 4.0])[:, None] * np.ones((4, 3))
    area = cell_areas_latlon(bounds, bounds_from_centres(np.array([0.0, 1.0, 2.0])))
    exact = math.sqrt(float((area * errors**2).sum() / area.sum()))
    assert lat_weighted_rmse(errors, np.zeros((4, 3)), lat_bounds=bounds) == pytest.approx(exact)
    assert area_weighted_rmse(errors, np.zeros((4, 3)), area) == pytest.approx(exact)
    assert lat_weighted_rmse(errors, np.zeros((4, 3)), lat) != pytest.approx(exact, rel=1e-3)
    with pytest.raises(ValueError, match="exactly one"):
        lat_weighted_rmse(errors, errors, lat, lat_bounds=bounds)


def test_weighted_sums_of_chunks_add_up_to_the_whole() -> None:
    rng = np.random.default_rng(1)
    pred, truth = rng.normal(size=(2, 6, 5, 4))
    truth[2, 1, 1] = np.nan
    area = rng.uniform(0.5, 2.0, (5, 4))
    parts = [weighted_squared_error_sums(pred[i:i + 2], truth[i:i + 2], area)
             for i in range(0, 6, 2)]
    total, weight = (sum(p[k] for p in parts) for k in (0, 1))
    assert math.sqrt(total / weight) == pytest.approx(area_weighted_rmse(pred, truth, area))
    assert area_weighted_rmse(pred, truth, np.ones((5, 4))) == pytest.approx(rmse(pred, truth))


def test_rmse_xr_takes_areas_from_bounds_and_dimensions_by_name() -> None:
    rng = np.random.default_rng(2)
    lat, lon = np.array([-60.0, -20.0, 0.0, 50.0]), np.arange(0.0, 30.0, 10.0)
    pred = _field(lat, lon, rng.normal(size=(2, 4, 3)))
    truth = _field(lat, lon, rng.normal(size=(2, 4, 3)))
    truth["tas"][0, 1, 1] = np.nan
    area = cell_areas_latlon(pred["lat_bnds"].values, pred["lon_bnds"].values)
    expected = area_weighted_rmse(pred["tas"].values, truth["tas"].values, area)
    assert rmse_xr(pred, truth) == pytest.approx(expected)
    assert rmse_xr(pred.transpose("lon", "time", "lat", "bnds"), truth["tas"]
                   ) == pytest.approx(expected)
    assert rmse_xr(pred["tas"], truth, area=xr.DataArray(area, dims=("lat", "lon"))
                   ) == pytest.approx(expected)
    with pytest.raises(ValueError, match="area="):
        rmse_xr(pred["tas"], truth)


def test_slope_violation_counts_are_the_per_chunk_step_of_the_fraction() -> None:
    slopes = np.array([[0.1, 0.5, np.nan], [1.0, 0.57, 0.58]])  # tan(30 deg) = 0.5774
    assert slope_violation_counts(slopes, 30.0) == (2, 5)
    assert slope_violation_fraction(slopes, 30.0) == pytest.approx(2 / 5)
