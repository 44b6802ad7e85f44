"""DEM loading: matplotlib's real DEMs, .npz layouts, NetCDF, spacing, coarse/fine pairs."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from downscale.aggregate import area_weighted_block_mean
from downscale.data import DEMSource
from downscale.dem import (
    coarsen_dem,
    dem_from_array,
    dem_slope,
    grid_spacing,
    open_dem,
    subdivide_grid,
)
from downscale.errors import InputError
from downscale.grid import cell_areas, nesting_factor
from downscale.manifest import load_manifest, resolve

JACKSBORO, TOPOBATHY = "manifest://jacksboro_fault_dem", "manifest://topobathy"


def test_jacksboro_opens_as_a_normalised_geographic_field() -> None:
    ds = open_dem(JACKSBORO)
    da = ds["elevation"]
    assert da.dims == ("time", "lat", "lon") and da.shape == (1, 344, 403)
    assert da.attrs["standard_name"] == "surface_altitude" and da.attrs["units"] == "m"
    assert ds.attrs["downscale_added_time"] == 1
    assert np.all(np.diff(ds["lat"].values) > 0)
    with np.load(resolve("jacksboro_fault_dem")) as raw:
        # The file's ymin is its northern edge and its row 0 the northernmost row.
        assert ds["lat_bnds"].values[-1, 1] == pytest.approx(float(raw["ymin"]), abs=1e-9)
        assert ds["lat_bnds"].values[0, 0] == pytest.approx(float(raw["ymax"]), abs=1e-9)
        assert ds["lon_bnds"].values[0, 0] == pytest.approx(float(raw["xmin"]), abs=1e-9)
        np.testing.assert_array_equal(da.values[0, -1], raw["elevation"][0])
    # Cell centres lie half a cell inside the extents.
    assert ds["lon"].values[0] == pytest.approx(float(ds["lon_bnds"].values[0, 0]) + 1 / 2400)


def test_topobathy_opens_with_longitudes_east_of_minus_180_and_uneven_rows() -> None:
    ds = open_dem(TOPOBATHY)
    assert ds["topo"].dims == ("time", "lat", "lon") and ds["topo"].shape == (1, 91, 120)
    assert -126.0 < ds["lon"].values[0] < ds["lon"].values[-1] < -122.0
    dy, _ = grid_spacing(ds)
    assert dy[0, 0] > dy[-1, 0] + 90.0  # Mercator rows shrink northwards


@pytest.mark.parametrize("dataset", ["jacksboro_fault_dem", "topobathy"])
def test_grid_spacing_agrees_with_the_manifest_in_metres(dataset: str) -> None:
    spacing = load_manifest()[dataset].grid["spacing_m"]
    dy, dx = grid_spacing(open_dem(f"manifest://{dataset}"))
    assert dy.shape == dx.shape == (dy.size, 1)
    np.testing.assert_allclose([dy.min(), dy.max()], spacing["dy"], atol=0.06)
    np.testing.assert_allclose([dx.min(), dx.max()], spacing["dx"], atol=0.06)


def test_dem_slope_of_jacksboro_is_plausible() -> None:
    s = dem_slope(open_dem(JACKSBORO))
    assert s.dims == ("time", "lat", "lon") and s.attrs["units"] == "1"
    assert np.isfinite(s.values).all()
    assert 0.2 < float(np.median(s.values)) < 0.3  # about 13 degrees, a hilly landscape


def test_coarsen_dem_gives_area_weighted_block_means() -> None:
    fine, coarse = coarsen_dem(open_dem(JACKSBORO), 4)
    assert fine["elevation"].shape == (1, 344, 400)  # 403 columns cropped to 400
    assert coarse["elevation"].shape == (1, 86, 100)
    area = cell_areas(fine).values
    expected, _ = area_weighted_block_mean(fine["elevation"].values, area, (4, 4))
    np.testing.assert_allclose(coarse["elevation"].values, expected, rtol=1e-12)
    assert nesting_factor(coarse["lat_bnds"].values, fine["lat_bnds"].values) == 4


def test_subdivide_grid_nests_in_the_coarse_grid() -> None:
    _, coarse = coarsen_dem(open_dem(JACKSBORO), 4)
    template = subdivide_grid(coarse, 4)
    assert template["elevation"].shape == (1, 344, 400)
    assert np.isnan(template["elevation"].values).all()
    for dim in ("lat", "lon"):
        assert nesting_factor(coarse[f"{dim}_bnds"].values, template[f"{dim}_bnds"].values) == 4
    assert template["elevation"].attrs["standard_name"] == "surface_altitude"


def test_dem_from_array_with_known_spacing_in_metres() -> None:
    h = np.arange(12.0).reshape(3, 4)
    ds = dem_from_array(h, (30.0, 20.0), origin_m=(1000.0, 500.0))
    assert ds["elevation"].dims == ("time", "y", "x")
    np.testing.assert_allclose(ds["y_bnds"].values[0], [1000.0, 1030.0])
    np.testing.assert_allclose(ds["x_bnds"].values[-1], [560.0, 580.0])
    np.testing.assert_array_equal(ds["elevation"].values[0, -1], h[0])  # row 0 is north
    dy, dx = grid_spacing(ds)
    np.testing.assert_allclose(dy, 30.0)
    np.testing.assert_allclose(dx, 20.0)
    assert ds["x"].attrs["units"] == "m"


def test_npz_layouts(tmp_path: Path) -> None:
    h = np.arange(20.0).reshape(4, 5)
    np.savez(tmp_path / "yx.npz", z=h, y=np.arange(4) * 10.0, x=np.arange(5) * 10.0)
    np.savez(tmp_path / "spacing.npz", elevation=h, dx=25.0, dy=25.0)
    np.savez(tmp_path / "extent_m.npz", elevation=h, xmin=0.0, xmax=5000.0, ymin=0.0,
             ymax=4000.0, nodata=7.0)
    by_coords = open_dem(tmp_path / "yx.npz")
    assert by_coords["z"].dims == ("time", "y", "x")
    np.testing.assert_array_equal(by_coords["z"].values[0], h)  # y ascends already
    assert open_dem(tmp_path / "spacing.npz")["elevation"].dims == ("time", "y", "x")
    by_extent = open_dem(tmp_path / "extent_m.npz")
    assert by_extent["elevation"].dims == ("time", "y", "x")  # metres: too large for degrees
    assert np.isnan(by_extent["elevation"].values).sum() == 1  # the nodata cell


def test_npz_geographic_extents_are_recognised(tmp_path: Path) -> None:
    h = np.ones((4, 6))
    np.savez(tmp_path / "deg.npz", elevation=h, xmin=10.0, xmax=10.06, ymin=45.04, ymax=45.0,
             dx=0.01, dy=0.01)
    ds = open_dem(tmp_path / "deg.npz")
    assert ds["elevation"].dims == ("time", "lat", "lon")
    np.testing.assert_allclose(ds["lat_bnds"].values[[0, -1]], [[45.0, 45.01], [45.03, 45.04]])


@pytest.mark.parametrize(("arrays", "message"), [
    ({"elevation": np.ones((4, 5)), "xmin": 0.0, "xmax": 0.05, "ymin": 0.0, "ymax": 0.04,
      "dx": 0.02}, "extents span"),
    ({"elevation": np.ones((4, 5))}, "no grid information"),
    ({"a": np.ones((4, 5)), "b": np.ones((4, 5)), "dx": 1.0, "dy": 1.0}, "which array"),
    ({"elevation": np.full((3, 3), 1e30), "dx": 1.0, "dy": 1.0}, "fill values"),
])
def test_bad_npz_files_fail_with_one_clear_line(tmp_path: Path, arrays: dict[str, object],
                                                message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=message) as info:
        open_dem(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_file_and_unknown_variable(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found"):
        open_dem(tmp_path / "nope.npz")
    with pytest.raises(InputError, match="no 2-D array 'height'"):
        open_dem(JACKSBORO, "height")


def _netcdf_dem(path: Path, units: str = "m") -> Path:
    lat = 45.0 + (np.arange(8) + 0.5) * 0.01
    lon = 7.0 + (np.arange(12) + 0.5) * 0.01
    values = 1000.0 + 50.0 * np.sin(np.arange(96.0)).reshape(8, 12)
    xr.Dataset({"height": (("lat", "lon"), values, {"units": units})},
               coords={"lat": ("lat", lat, {"units": "degrees_north"}),
                       "lon": ("lon", lon, {"units": "degrees_east"})}).to_netcdf(path)
    return path


def test_netcdf_dem_without_time(tmp_path: Path) -> None:
    ds = open_dem(_netcdf_dem(tmp_path / "dem.nc"))
    assert ds["height"].dims == ("time", "lat", "lon") and ds["height"].shape == (1, 8, 12)
    assert ds.attrs["downscale_added_time"] == 1
    assert ds["height"].attrs["standard_name"] == "surface_altitude"
    with pytest.raises(InputError, match="'ft' are not metres"):
        open_dem(_netcdf_dem(tmp_path / "feet.nc", units="ft"))


def test_dem_source_pickles_with_its_data() -> None:
    fine, _ = coarsen_dem(open_dem(JACKSBORO), 4)
    source = DEMSource(fine, 4, "jacksboro")
    again = pickle.loads(pickle.dumps(source))
    assert again.shape == (1, 344, 400)
    np.testing.assert_array_equal(again.read(0, slice(0, 4), slice(0, 4)),
                                  source.read(0, slice(0, 4), slice(0, 4)))
    stats, valid = again.scan([0])
    assert 236 < stats.mean < 1076 and valid.all()
