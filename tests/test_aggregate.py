"""downscale.aggregate: exact area-weighted conservative coarsening."""

from __future__ import annotations

import logging

import dask.array as dsa
import numpy as np
import pytest
import xarray as xr

from downscale.aggregate import (
    area_weighted_block_mean,
    block_repeat,
    block_sum,
    coarse_bounds,
    coarsen_field,
    crop_to_factor,
)
from downscale.errors import InputError
from downscale.grid import bounds_from_centres, cell_areas


def latlon_field(nt: int = 3, nlat: int = 12, nlon: int = 18, *, lat0: float = -60.0,
                 step: float = 2.5, lazy: bool = False, seed: int = 0) -> xr.Dataset:
    """A normalised float64 field with distinct values on a regular lat-lon grid."""
    lat = lat0 + step * (np.arange(nlat) + 0.5)
    lon = -180.0 + step * (np.arange(nlon) + 0.5)
    values = np.random.default_rng(seed).normal(280.0, 10.0, (nt, nlat, nlon))
    data = dsa.from_array(values, chunks=(1, -1, -1)) if lazy else values
    return xr.Dataset(
        {"tas": (("time", "lat", "lon"), data, {"units": "K"})},
        coords={"time": np.arange(nt), "lat": ("lat", lat, {"units": "degrees_north"}),
                "lon": ("lon", lon, {"units": "degrees_east"}),
                "lat_bnds": (("lat", "bnds"), bounds_from_centres(lat)),
                "lon_bnds": (("lon", "bnds"), bounds_from_centres(lon))},
        attrs={"source_files": "made.nc"})


def fine_mass(ds: xr.Dataset) -> np.ndarray:
    """Per time step, sum over valid fine cells of area * value."""
    values = ds["tas"].values
    area = cell_areas(ds).values
    return np.nansum(values * area, axis=(-2, -1))


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("factor", [(2, 2), (3, 2), (4, 6)])
def test_coarsen_conserves_mass_exactly_with_missing_values(lazy: bool,
                                                           factor: tuple[int, int]) -> None:
    ds = latlon_field(lazy=lazy)
    values = ds["tas"].values.copy()
    rng = np.random.default_rng(1)
    values[rng.random(values.shape) < 0.3] = np.nan      # scattered missing cells
    values[:, : factor[0], : factor[1]] = np.nan          # one block with none valid
    ds["tas"] = (("time", "lat", "lon"),
                 dsa.from_array(values, chunks=(1, -1, -1)) if lazy else values,
                 ds["tas"].attrs)
    coarse = coarsen_field(ds, "tas", factor)
    assert isinstance(coarse["tas"].data, dsa.Array) is lazy
    assert coarse["tas"].shape == (3, 12 // factor[0], 18 // factor[1])
    mean = coarse["tas"].values
    assert np.all(np.isnan(mean[:, 0, 0]))
    # The coarse value is the mean over *valid* fine cells, so the mass it stands for is
    # its valid area times its value.
    valid_area = block_sum(np.where(np.isfinite(values), cell_areas(ds).values, 0.0), factor)
    coarse_mass = np.nansum(mean * valid_area, axis=(-2, -1))
    np.testing.assert_allclose(coarse_mass, fine_mass(ds), rtol=1e-12)
    assert coarse["tas"].attrs == {"units": "K"}
    assert coarse.attrs["source_files"] == "made.nc"


def test_coarsen_without_missing_values_matches_coarse_areas() -> None:
    ds = latlon_field()
    coarse = coarsen_field(ds, "tas", (3, 3))
    # Coarse bounds come from the fine ones, and the coarse areas add up exactly.
    np.testing.assert_allclose(coarse["lat_bnds"].values[0], [-60.0, -52.5])
    np.testing.assert_allclose(coarse["lat"].values[0], -56.25)
    coarse_mass = (coarse["tas"].values * cell_areas(coarse).values).sum(axis=(-2, -1))
    np.testing.assert_allclose(coarse_mass, fine_mass(ds), rtol=1e-12)


def test_coarsen_weights_by_area_not_by_count() -> None:
    # Near the pole the northern fine row is much smaller than the southern one.
    ds = latlon_field(nt=1, nlat=2, nlon=2, lat0=70.0, step=10.0)
    ds["tas"] = (("time", "lat", "lon"), np.array([[[0.0, 0.0], [1.0, 1.0]]]))
    value = float(coarsen_field(ds, "tas", (2, 2))["tas"][0, 0, 0])
    south, north = np.sin(np.deg2rad([80.0, 90.0])) - np.sin(np.deg2rad([70.0, 80.0]))
    np.testing.assert_allclose(value, north / (south + north), rtol=1e-14)
    assert value < 0.5


def test_coarsen_of_float32_and_integer_fields() -> None:
    ds = latlon_field(nt=1).astype({"tas": np.float32})
    assert coarsen_field(ds, "tas", (2, 2))["tas"].dtype == np.float32
    ds["tas"] = ds["tas"].astype(np.int32)
    assert coarsen_field(ds, "tas", (2, 2))["tas"].dtype == np.float64


def test_coarsen_needs_a_divisible_grid() -> None:
    with pytest.raises(InputError, match=r"made.nc: tas: grid 12x18 is not divisible"):
        coarsen_field(latlon_field(), "tas", (5, 2))


def test_area_weighted_block_mean() -> None:
    values = np.array([[1.0, 3.0], [np.nan, 5.0]])
    area = np.array([[1.0, 1.0], [4.0, 2.0]])
    mean, valid = area_weighted_block_mean(values, area, (2, 2))
    np.testing.assert_allclose(mean, [[(1 + 3 + 10) / 4]])
    np.testing.assert_allclose(valid, [[4.0]])
    mean, valid = area_weighted_block_mean(np.full((2, 2), np.nan), area, (2, 2))
    assert np.isnan(mean[0, 0]) and valid[0, 0] == 0


def test_block_sum_and_repeat() -> None:
    x = np.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(block_sum(block_repeat(x, (2, 3)), (2, 3)), 6 * x)
    assert block_sum(x, (3, 2)).shape == (2, 1, 2)
    with pytest.raises(ValueError, match="does not divide"):
        block_sum(x, (2, 2))


def test_coarse_bounds() -> None:
    fine = bounds_from_centres(np.arange(6.0))
    np.testing.assert_array_equal(coarse_bounds(fine, 3), [[-0.5, 2.5], [2.5, 5.5]])


def test_crop_to_factor_crops_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    ds = latlon_field(nlat=13, nlon=19)
    with caplog.at_level(logging.INFO, logger="downscale.aggregate"):
        cropped = crop_to_factor(ds, (4, 3), variable="tas")
    assert cropped.sizes["lat"] == 12 and cropped.sizes["lon"] == 18
    np.testing.assert_array_equal(cropped["lat"], ds["lat"][:12])
    assert "Cropping tas grid from 13x19 to 12x18" in caplog.text


def test_crop_to_factor_leaves_divisible_grids_alone(caplog: pytest.LogCaptureFixture) -> None:
    ds = latlon_field()
    with caplog.at_level(logging.INFO, logger="downscale.aggregate"):
        assert crop_to_factor(ds, (3, 3), variable="tas") is ds
    assert not caplog.text


def test_crop_to_factor_raises_when_not_allowed() -> None:
    with pytest.raises(InputError) as error:
        crop_to_factor(latlon_field(nlat=13), (4, 3), variable="tas", allow_crop=False)
    assert str(error.value) == ("made.nc: tas: grid 13x18 is not divisible by the factor "
                                "(4, 3). crop the grid or allow cropping (--data.crop true).")


def test_crop_to_factor_rejects_grids_smaller_than_a_coarse_cell() -> None:
    with pytest.raises(InputError, match="smaller than one coarse cell"):
        crop_to_factor(latlon_field(nlat=3), (4, 4), variable="tas")
    with pytest.raises(ValueError, match="positive integers"):
        crop_to_factor(latlon_field(), (0, 2))
