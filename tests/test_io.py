"""downscale.io: normalisation on real and generated files, bad inputs, atomic writing."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cftime
import dask.array as dsa
import numpy as np
import pytest
import xarray as xr
from conftest import NcFactory, field_values

from downscale.errors import InputError
from downscale.grid import bounds_from_centres, is_periodic_longitude
from downscale.io import check_values, normalise_field, open_field, write_netcdf


def assert_one_line(error: pytest.ExceptionInfo[InputError], path: Path | str, variable: str,
                    expected: str) -> str:
    """The message is ``<file>: <variable>: <problem>. <what to do>.`` on one line."""
    message = str(error.value)
    assert "\n" not in message
    assert re.match(rf"^{re.escape(str(path))}: {re.escape(variable)}: .+\. .+\.$", message), (
        message)
    assert expected in message, message
    return message


# --- real data -------------------------------------------------------------------------


def test_e1_north_america_is_normalised(e1_path: Path) -> None:
    ds = open_field(e1_path, "air_temperature")
    da = ds["air_temperature"]
    assert da.dims == ("time", "lat", "lon")
    assert isinstance(da.data, dsa.Array)
    assert da.sizes == {"time": 240, "lat": 37, "lon": 49}
    assert isinstance(ds["time"].values[0], cftime.Datetime360Day)
    assert ds["time"].encoding["calendar"] == "360_day"
    # 225..315 degrees east is a region that [-180, 180) keeps contiguous.
    assert float(ds.lon[0]) == -135.0 and float(ds.lon[-1]) == -45.0
    assert np.all(np.diff(ds.lat) > 0) and np.all(np.diff(ds.lon) > 0)
    assert ds["lat_bnds"].shape == (37, 2) and ds["lon_bnds"].shape == (49, 2)
    assert not is_periodic_longitude(ds["lon_bnds"].values)
    assert set(ds.coords) == {"time", "lat", "lon", "lat_bnds", "lon_bnds"}
    assert da.attrs["units"] == "K"
    raw = xr.open_dataset(e1_path)["air_temperature"].isel(time=3).values
    np.testing.assert_array_equal(da.isel(time=3).values, raw)


def test_hadisst_is_normalised(hadisst_path: Path) -> None:
    ds = open_field(hadisst_path, "sst")
    sst = ds["sst"]
    assert sst.dims == ("time", "lat", "lon") and sst.shape == (1, 180, 360)
    assert isinstance(sst.data, dsa.Array)
    assert float(ds.lat[0]) == -89.5 and float(ds.lat[-1]) == 89.5
    assert is_periodic_longitude(ds["lon_bnds"].values)
    np.testing.assert_allclose(ds["lat_bnds"].values[[0, -1]], [[-90, -89], [89, 90]])
    values = sst.values
    land = np.isnan(values)
    assert 0.2 < land.mean() < 0.5  # land (and sea ice) is missing, not -1e30
    check_values(sst, values)
    raw = xr.open_dataset(hadisst_path, decode_times=False)["sst"].values
    np.testing.assert_array_equal(values, raw[:, ::-1, :])


# --- generated files: normalisation --------------------------------------------------


def test_descending_latitude_is_flipped(latlon_nc: NcFactory) -> None:
    lat = np.arange(45.5, 39, -1.0)
    data = field_values(3, lat.size, 8)
    ds = open_field(latlon_nc(lat=lat, data=data), "tas")
    np.testing.assert_array_equal(ds.lat, lat[::-1])
    np.testing.assert_array_equal(ds["tas"].values, data[:, ::-1, :])
    np.testing.assert_allclose(ds["lat_bnds"].values, bounds_from_centres(lat[::-1]))


def test_global_0_360_becomes_minus180_180_and_periodic(latlon_nc: NcFactory) -> None:
    lon = np.arange(0.5, 360, 10.0)
    data = field_values(2, 4, lon.size)
    ds = open_field(latlon_nc(nt=2, nlat=4, lon=lon, data=data), "tas")
    np.testing.assert_array_equal(ds.lon, np.arange(-179.5, 180, 10.0))
    assert is_periodic_longitude(ds["lon_bnds"].values)
    # The column at 190.5E is now at -169.5.
    np.testing.assert_array_equal(ds["tas"].sel(lon=-169.5).values,
                                  data[:, :, list(lon).index(190.5)])


@pytest.mark.parametrize(("lon", "expected"), [
    (np.arange(150.5, 211, 5.0), np.arange(150.5, 211, 5.0)),      # across the dateline
    (np.arange(-209.5, -149, 5.0), np.arange(150.5, 211, 5.0)),    # same, given negative
    (np.r_[np.arange(170.5, 180, 2.0), np.arange(-179.5, -169, 2.0)],
     np.arange(170.5, 191, 2.0)),                                  # wraps inside the file
    (np.arange(200.0, 251, 5.0), np.arange(-160.0, -109, 5.0)),    # 0..360, not across 180
    (np.arange(10.0, 51, 5.0), np.arange(10.0, 51, 5.0)),          # nothing to do
    (np.arange(350.0, 371, 5.0), np.arange(-10.0, 11, 5.0)),       # across the meridian
], ids=["dateline", "dateline-negative", "dateline-wrapped", "west-0-360", "east", "greenwich"])
def test_regional_longitudes_stay_contiguous(latlon_nc: NcFactory, lon: Any,
                                             expected: Any) -> None:
    data = field_values(2, 3, len(lon))
    ds = open_field(latlon_nc(nt=2, nlat=3, lon=lon, data=data), "tas")
    np.testing.assert_allclose(ds.lon, expected)
    assert np.all(np.diff(ds["lon_bnds"].values[:, 0]) > 0)
    assert not is_periodic_longitude(ds["lon_bnds"].values)
    # The values follow their longitudes.
    order = np.argsort((np.asarray(lon) - expected[0]) % 360)
    np.testing.assert_array_equal(ds["tas"].values, data[:, :, order])


@pytest.mark.parametrize(("lon", "first", "last", "periodic"), [
    (np.arange(-180.0, 180, 1.0), -180.0, 179.0, True),
    (np.arange(-179.0, 181, 1.0), -180.0, 179.0, True),
    (np.arange(170.0, 181, 1.0), 170.0, 180.0, False),
    (np.arange(-180.0, -169, 1.0), -180.0, -170.0, False),
    (np.arange(180.0, 191, 1.0), -180.0, -170.0, False),
])
def test_longitudes_of_exactly_180(latlon_nc: NcFactory, lon: Any, first: float, last: float,
                                   periodic: bool) -> None:
    ds = open_field(latlon_nc(nt=1, nlat=2, lon=lon), "tas")
    assert (float(ds.lon[0]), float(ds.lon[-1])) == (first, last)
    assert np.all(np.diff(ds.lon) > 0)
    assert is_periodic_longitude(ds["lon_bnds"].values) is periodic


def test_file_bounds_are_used_and_reordered(latlon_nc: NcFactory) -> None:
    # Uneven cells, so inferred bounds would differ; lat descending, lon global in 0..360.
    lat_edges = np.array([90.0, 60.0, 20.0, 0.0, -30.0, -90.0])
    lat = 0.5 * (lat_edges[1:] + lat_edges[:-1])
    lat_bnds = np.stack([lat_edges[:-1], lat_edges[1:]], axis=1)   # (north, south) pairs
    lon_edges = np.array([0.0, 100.0, 180.0, 200.0, 360.0])
    lon = 0.5 * (lon_edges[1:] + lon_edges[:-1])
    lon_bnds = np.stack([lon_edges[:-1], lon_edges[1:]], axis=1)
    ds = open_field(latlon_nc(nt=2, lat=lat, lon=lon, bounds={"lat": lat_bnds, "lon": lon_bnds}),
                    "tas")
    np.testing.assert_allclose(ds.lat, lat[::-1])
    np.testing.assert_allclose(ds["lat_bnds"].values,
                               [[-90, -30], [-30, 0], [0, 20], [20, 60], [60, 90]])
    np.testing.assert_allclose(ds.lon, [-170.0, -80.0, 50.0, 140.0])
    np.testing.assert_allclose(ds["lon_bnds"].values,
                               [[-180, -160], [-160, 0], [0, 100], [100, 180]])
    assert is_periodic_longitude(ds["lon_bnds"].values)


def test_normalise_field_takes_bounds_for_a_dataarray() -> None:
    lat = np.array([10.0, 0.0])
    da = xr.DataArray(np.arange(4.0).reshape(2, 2), dims=("lat", "lon"), name="pr",
                      coords={"lat": lat, "lon": [0.0, 1.0]})
    ds = normalise_field(da, bounds={"lat": [[15.0, 5.0], [5.0, -5.0]]})
    assert ds["pr"].dims == ("time", "lat", "lon") and ds.attrs["downscale_added_time"] == 1
    np.testing.assert_allclose(ds["lat_bnds"].values, [[-5, 5], [5, 15]])
    np.testing.assert_allclose(ds["lon_bnds"].values, [[-0.5, 0.5], [0.5, 1.5]])


def test_open_is_lazy(latlon_nc: NcFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    from xarray.backends.netCDF4_ import NetCDF4ArrayWrapper

    path = latlon_nc(nt=5)
    read: list[str] = []
    original = NetCDF4ArrayWrapper.__getitem__

    def spy(self: Any, key: Any) -> Any:
        read.append(self.variable_name)
        return original(self, key)

    monkeypatch.setattr(NetCDF4ArrayWrapper, "__getitem__", spy)
    ds = open_field(path, "tas")
    assert isinstance(ds["tas"].data, dsa.Array)
    assert ds["tas"].chunks == ((1,) * 5, (6,), (8,))
    assert "tas" not in read  # the field itself is not read on opening
    ds["tas"].isel(time=0).load()
    assert "tas" in read  # (and the spy does see reads)


def test_chunks_override_the_default(latlon_nc: NcFactory) -> None:
    ds = open_field(latlon_nc(nt=6), "tas", chunks={"time": 3})
    assert ds["tas"].chunks == ((3, 3), (6,), (8,))


def test_many_files_join_in_time(latlon_nc: NcFactory) -> None:
    paths = [latlon_nc(f"part{i}.nc", nt=3, start=3 * i,
                       data=field_values(3, 6, 8, seed=i)) for i in range(4)]
    ds = open_field(paths[::-1], "tas")  # any order: sorted by time
    assert ds.sizes["time"] == 12
    assert isinstance(ds["tas"].data, dsa.Array)
    assert ds["time"].encoding["calendar"] == "noleap"
    assert ds.indexes["time"].is_monotonic_increasing
    np.testing.assert_array_equal(ds["tas"].isel(time=slice(6, 9)).values,
                                  field_values(3, 6, 8, seed=2))
    assert ds.attrs["source_files"] == ", ".join(map(str, paths[::-1]))


@pytest.mark.parametrize(("calendar", "kind"), [("noleap", cftime.DatetimeNoLeap),
                                                ("360_day", cftime.Datetime360Day)])
def test_non_standard_calendars_are_kept(latlon_nc: NcFactory, calendar: str,
                                         kind: type) -> None:
    paths = [latlon_nc(f"{calendar}{i}.nc", nt=2, start=400 * i, calendar=calendar)
             for i in range(2)]
    ds = open_field(paths, "tas")
    assert isinstance(ds["time"].values[0], kind)
    assert ds["time"].encoding["calendar"] == calendar


def test_time_selection(latlon_nc: NcFactory) -> None:
    ds = open_field(latlon_nc(nt=40), "tas", time=slice("2000-01-10", "2000-01-19"))
    assert ds.sizes["time"] == 10


def test_singleton_extra_dimension_and_missing_time(latlon_nc: NcFactory) -> None:
    ds = open_field(latlon_nc(extra_dims={"height": 1}), "tas")
    assert ds["tas"].dims == ("time", "lat", "lon")
    ds = open_field(latlon_nc("static.nc", nt=0), "tas")
    assert ds["tas"].dims == ("time", "lat", "lon") and ds.sizes["time"] == 1
    assert ds.attrs["downscale_added_time"] == 1


def test_coordinates_found_by_attributes(latlon_nc: NcFactory) -> None:
    ds = open_field(latlon_nc(dim_names=("yc", "xc")), "tas")
    assert ds["tas"].dims == ("time", "lat", "lon")


def test_time_dimension_found_by_its_values(tmp_path: Path) -> None:
    ds = xr.Dataset({"tas": (("valid_time", "lat", "lon"), np.ones((2, 2, 2)))},
                    coords={"valid_time": ("valid_time", [0.0, 1.0],
                                           {"units": "days since 2000-01-01"}),
                            "lat": [0.5, 1.5], "lon": [0.5, 1.5]})
    ds.to_netcdf(tmp_path / "vt.nc")
    assert open_field(tmp_path / "vt.nc", "tas")["tas"].dims == ("time", "lat", "lon")


def test_labelled_dimension_is_not_time(tmp_path: Path) -> None:
    ds = xr.Dataset({"tas": (("member", "lat", "lon"), np.ones((3, 2, 2)))},
                    coords={"member": ["a", "b", "c"], "lat": [0.5, 1.5], "lon": [0.5, 1.5]})
    ds.to_netcdf(tmp_path / "ens.nc")
    with pytest.raises(InputError, match="extra dimension 'member' of size 3"):
        open_field(tmp_path / "ens.nc", "tas")


def test_file_bounds_follow_a_longitude_axis_that_wraps(latlon_nc: NcFactory) -> None:
    lon = np.r_[np.arange(170.5, 180, 1.0), np.arange(-179.5, -175, 1.0)]
    bounds = {"lon": np.stack([lon - 0.5, lon + 0.5], axis=1)}
    ds = open_field(latlon_nc(nt=1, nlat=2, lon=lon, bounds=bounds), "tas")
    np.testing.assert_allclose(ds.lon, np.arange(170.5, 185, 1.0))
    np.testing.assert_allclose(ds["lon_bnds"].values[:, 0], np.arange(170.0, 185, 1.0))


# --- bad input ---------------------------------------------------------------------------

Case = Callable[[Path, NcFactory], tuple[Any, str, Path]]


def _truncated(fmt: str) -> Case:
    def case(tmp: Path, nc: NcFactory) -> tuple[Any, str, Path]:
        path = nc(nt=20, fmt=fmt)
        os.truncate(path, path.stat().st_size // 2)
        return path, "tas", path
    return case


def _text_file(tmp: Path, nc: NcFactory) -> tuple[Any, str, Path]:
    path = tmp / "notes.nc"
    path.write_text("these are not the data you are looking for\n")
    return path, "tas", path


def _truncated_header(tmp: Path, nc: NcFactory) -> tuple[Any, str, Path]:
    path = nc(fmt="NETCDF3_CLASSIC", attrs={"comment": "x" * 400})
    os.truncate(path, 200)
    return path, "tas", path


def _two(first: dict[str, Any], second: dict[str, Any]) -> Case:
    def case(tmp: Path, nc: NcFactory) -> tuple[Any, str, Path]:
        a = nc("a.nc", **{"start": 0, **first})
        b = nc("b.nc", **{"start": 10, **second})
        return [a, b], "tas", b
    return case


def _one(**kwargs: Any) -> Case:
    def case(tmp: Path, nc: NcFactory) -> tuple[Any, str, Path]:
        variable = kwargs.pop("open_variable", "tas")
        path = nc(**kwargs)
        return path, variable, path
    return case


def _curvilinear(attached: bool) -> Case:
    def case(tmp: Path, nc: NcFactory) -> tuple[Any, str, Path]:
        y, x = np.meshgrid(np.arange(4.0), np.arange(5.0), indexing="ij")
        ds = xr.Dataset({"tas": (("time", "y", "x"), np.ones((2, 4, 5)), {"units": "K"}),
                         "lat": (("y", "x"), 40 + y + 0.1 * x, {"units": "degrees_north"}),
                         "lon": (("y", "x"), 10 + x - 0.1 * y, {"units": "degrees_east"})},
                        coords={"time": [0.0, 1.0]})
        if attached:
            ds = ds.set_coords(["lat", "lon"])
        path = tmp / "curvilinear.nc"
        ds.to_netcdf(path)
        return path, "tas", path
    return case


def _rotated(by: str) -> Case:
    def case(tmp: Path, nc: NcFactory) -> tuple[Any, str, Path]:
        names = ("rlat", "rlon") if by == "unmapped" else ("lat", "lon")
        ds = xr.Dataset(
            {"tas": (("time", *names), np.ones((1, 3, 4)), {"units": "K",
                                                           "grid_mapping": "rotated_pole"}),
             "rotated_pole": ((), 0, {"grid_mapping_name": "rotated_latitude_longitude",
                                      "grid_north_pole_latitude": 39.25,
                                      "grid_north_pole_longitude": -162.0})},
            coords={"time": [0.0], names[0]: (names[0], [0.0, 1.0, 2.0],
                                              {"standard_name": "grid_latitude"}
                                              if by == "unmapped" else {}),
                    names[1]: (names[1], [0.0, 1.0, 2.0, 3.0],
                               {"standard_name": "grid_longitude"} if by == "unmapped" else {})})
        if by == "unmapped":
            ds = ds.drop_vars("rotated_pole")
        path = tmp / f"rotated_{by}.nc"
        ds.to_netcdf(path)
        return path, "tas", path
    return case


def _missing_file(tmp: Path, nc: NcFactory) -> tuple[Any, str, Path]:
    return tmp / "nowhere.nc", "tas", tmp / "nowhere.nc"


def _directory(tmp: Path, nc: NcFactory) -> tuple[Any, str, Path]:
    path = tmp / "adir.nc"
    path.mkdir()
    return path, "tas", path


def _overlap(tmp: Path, nc: NcFactory) -> tuple[Any, str, Path]:
    a, b = nc("a.nc", start=0, nt=3), nc("b.nc", start=2, nt=3)
    return [a, b], "tas", b


BAD_INPUTS: dict[str, tuple[Case, str]] = {
    "missing file": (_missing_file, "file not found"),
    "directory": (_directory, "is a directory"),
    "missing variable": (_one(open_variable="pr"), "variable not found; data variables: tas"),
    "misspelt variable": (_one(open_variable="tass"), "did you mean 'tas'?"),
    "coordinate as variable": (_one(open_variable="lat"), "is a coordinate"),
    "truncated netcdf4": (_truncated("NETCDF4"), "not a readable NetCDF file"),
    "truncated netcdf3": (_truncated("NETCDF3_CLASSIC"), "the file is truncated"),
    "truncated 64-bit offset": (_truncated("NETCDF3_64BIT"), "the file is truncated"),
    "truncated header": (_truncated_header, "header is incomplete"),
    "text file": (_text_file, "Unknown file format"),
    "undecodable time": (_one(time_units="months since 2000-01-01", calendar="standard"),
                         "CF metadata cannot be decoded"),
    "non-monotonic lat": (_one(lat=[40.5, 42.5, 41.5, 43.5]), "'lat' coordinate is not monotonic"),
    "non-monotonic lon": (_one(lon=[10.0, 12.0, 11.0, 13.0]), "'lon' coordinate is not monotonic"),
    "duplicate lat": (_one(lat=[40.5, 41.5, 41.5, 42.5]), "'lat' coordinate has duplicate values"),
    "duplicate cyclic lon": (_one(lon=np.arange(0.0, 361, 30.0)), "same meridian"),
    "duplicate time": (lambda tmp, nc: _dup_time(tmp), "'time' coordinate has duplicate"),
    "latitude beyond 90": (_one(lat=[80.0, 90.0, 100.0]), "latitudes outside [-90, 90]"),
    "bounds not enclosing": (_one(lat=[0.5, 1.5], bounds={"lat": [[5, 6], [6, 7]]}),
                             "do not enclose its cell centres"),
    "single cell": (_one(lat=[10.0]), "fewer than two cells"),
    "curvilinear": (_curvilinear(attached=True), "curvilinear grids"),
    "curvilinear, unattached": (_curvilinear(attached=False), "curvilinear grids"),
    # Rotated-pole grids with their grid mapping are read (tests/test_regional_grids.py);
    # without one, or without rotated axes, they are refused.
    "rotated pole coords without mapping": (_rotated("unmapped"), "without a rotated_latitude"),
    "rotated pole grid_mapping": (_rotated("grid_mapping"), "no dimensions with standard_name"),
    "extra dimension": (_one(extra_dims={"plev": 3}), "extra dimension 'plev' of size 3"),
    "unknown dimensions": (lambda tmp, nc: _unknown_dims(tmp), "no latitude/longitude"),
    "mixed calendars": (_two({"calendar": "noleap"}, {"calendar": "360_day"}),
                        "calendar '360_day' differs from 'noleap'"),
    "different grids": (_two({}, {"lat": np.arange(6) + 41.0}), "grid (lat) differs"),
    "different grid sizes": (_two({}, {"nlon": 9}), "grid (lon) differs"),
    "different units": (_two({}, {"units": "degC"}), "units 'degC' differ from 'K'"),
    "overlapping times": (_overlap, "occurs in more than one file"),
    "static in several files": (_two({}, {"nt": 0}), "has no time dimension"),
}


def _dup_time(tmp: Path) -> tuple[Any, str, Path]:
    ds = xr.Dataset({"tas": (("time", "lat", "lon"), np.ones((3, 2, 2)), {"units": "K"})},
                    coords={"time": ("time", [0.0, 1.0, 1.0], {"units": "days since 2000-01-01",
                                                               "calendar": "noleap"}),
                            "lat": [0.5, 1.5], "lon": [0.5, 1.5]})
    path = tmp / "dup_time.nc"
    ds.to_netcdf(path)
    return path, "tas", path


def _unknown_dims(tmp: Path) -> tuple[Any, str, Path]:
    ds = xr.Dataset({"tas": (("time", "j", "i"), np.ones((1, 2, 2)), {"units": "K"})},
                    coords={"time": [0.0]})
    path = tmp / "unknown.nc"
    ds.to_netcdf(path)
    return path, "tas", path


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_one_clear_line(name: str, tmp_path: Path, latlon_nc: NcFactory) -> None:
    build, expected = BAD_INPUTS[name]
    paths, variable, culprit = build(tmp_path, latlon_nc)
    with pytest.raises(InputError) as error:
        open_field(paths, variable)
    assert_one_line(error, culprit, variable, expected)


def test_empty_time_selection(latlon_nc: NcFactory) -> None:
    path = latlon_nc(nt=5)
    with pytest.raises(InputError) as error:
        open_field(path, "tas", time=slice("2010-01-01", "2010-12-31"))
    assert_one_line(error, path, "tas", "the time selection 2010-01-01..2010-12-31 is empty "
                    "(the data cover 2000-01-01 00:00:00 to 2000-01-05 00:00:00)")


def test_no_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no input files given"):
        open_field([], "tas")


@pytest.mark.parametrize(("bad", "expected"), [
    (-1e30, "values of magnitude 1e+30 look like undeclared fill values"),
    (9.96921e36, "values of magnitude 9.96921e+36 look like undeclared fill values"),
    (np.inf, "the field contains 1 infinite value. replace"),
])
def test_check_values_rejects_undeclared_fills(latlon_nc: NcFactory, bad: float,
                                               expected: str) -> None:
    data = field_values(2, 6, 8)
    data[1, 2, 3] = bad
    path = latlon_nc(nt=2, data=data, fill_value=None)
    ds = open_field(path, "tas")
    values = ds["tas"].values
    with pytest.raises(InputError) as error:
        check_values(ds["tas"], values)
    assert_one_line(error, path, "tas", expected)
    check_values(ds["tas"], values[0])  # the first step is clean


def test_check_values_passes_declared_fills(latlon_nc: NcFactory) -> None:
    data = field_values(2, 6, 8)
    data[0, 0, 0] = -1e30
    ds = open_field(latlon_nc(nt=2, data=data, fill_value=-1e30), "tas")
    values = ds["tas"].values
    assert np.isnan(values[0, 0, 0])
    check_values(ds["tas"], values, path="given.nc")


# --- writing -------------------------------------------------------------------------------


@pytest.fixture
def normalised(latlon_nc: NcFactory) -> xr.Dataset:
    lat = np.arange(45.5, 39, -1.0)
    bounds = {"lat": np.stack([lat + 0.5, lat - 0.5], axis=1)}
    path = latlon_nc("in.nc", nt=4, lat=lat, calendar="360_day", bounds=bounds,
                     attrs={"long_name": "Near-surface air temperature",
                            "cell_methods": "time: mean"})
    ds = open_field(path, "tas")
    ds.attrs.update(title="round trip", institution="nowhere")
    return ds


def test_write_round_trip(normalised: xr.Dataset, tmp_path: Path) -> None:
    out = tmp_path / "out" / "tas.nc"
    out.parent.mkdir()
    assert write_netcdf(normalised, out) == out
    assert sorted(p.name for p in out.parent.iterdir()) == ["tas.nc"]  # no temporary left
    back = open_field(out, "tas")
    assert back["time"].encoding["calendar"] == "360_day"
    assert isinstance(back["time"].values[0], cftime.Datetime360Day)
    xr.testing.assert_identical(back["tas"].drop_vars(["lat_bnds", "lon_bnds"],
                                                      errors="ignore"),
                                normalised["tas"].drop_vars(["lat_bnds", "lon_bnds"],
                                                            errors="ignore"))
    for name in ("time", "lat", "lon", "lat_bnds", "lon_bnds"):
        xr.testing.assert_identical(back[name], normalised[name])
    with xr.open_dataset(out) as raw:
        assert raw.attrs["title"] == "round trip"
        assert raw.attrs["institution"] == "nowhere"
        assert raw.attrs["source_files"] == normalised.attrs["source_files"]


def _partial_writer(message: str, exc: type[BaseException] = RuntimeError) -> Any:
    def to_netcdf(self: xr.Dataset, path: Any, *args: Any, **kwargs: Any) -> None:
        Path(path).write_bytes(b"\x89HDF\r\n\x1a\n half a file")
        raise exc(message)
    return to_netcdf


def test_failed_write_leaves_nothing(normalised: xr.Dataset, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "tas.nc"
    monkeypatch.setattr(xr.Dataset, "to_netcdf", _partial_writer("disk on fire"))
    before = set(tmp_path.iterdir())
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_netcdf(normalised, out)
    assert not out.exists()
    assert set(tmp_path.iterdir()) == before


def test_failed_write_keeps_the_previous_file(normalised: xr.Dataset, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "tas.nc"
    write_netcdf(normalised, out)
    previous = out.read_bytes()
    monkeypatch.setattr(xr.Dataset, "to_netcdf", _partial_writer("disk on fire"))
    with pytest.raises(RuntimeError):
        write_netcdf(normalised.isel(time=slice(0, 1)), out)
    assert out.read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nc", "tas.nc"]


def test_write_that_fails_verification_is_removed(normalised: xr.Dataset, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    original = xr.Dataset.to_netcdf

    def drops_the_variable(self: xr.Dataset, path: Any, *args: Any, **kwargs: Any) -> Any:
        return original(self.drop_vars("tas"), path, *args, **kwargs)

    monkeypatch.setattr(xr.Dataset, "to_netcdf", drops_the_variable)
    with pytest.raises(OSError, match="verification"):
        write_netcdf(normalised, tmp_path / "tas.nc")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nc"]


def test_write_permission_error_is_one_line(normalised: xr.Dataset, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "tas.nc"

    def denied(self: xr.Dataset, path: Any, *args: Any, **kwargs: Any) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(xr.Dataset, "to_netcdf", denied)
    with pytest.raises(InputError) as error:
        write_netcdf(normalised, out)
    assert_one_line(error, out, "tas", "cannot write the file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nc"]


def test_write_to_missing_directory(normalised: xr.Dataset, tmp_path: Path) -> None:
    out = tmp_path / "missing" / "tas.nc"
    with pytest.raises(InputError) as error:
        write_netcdf(normalised, out)
    assert_one_line(error, out, "tas", f"output directory {out.parent} does not exist")


def test_write_to_unwritable_directory(normalised: xr.Dataset, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "locked" / "tas.nc"
    out.parent.mkdir()
    out.parent.chmod(0o555)
    if os.access(out.parent, os.W_OK):  # root ignores permissions: pretend
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: (
            False if Path(p) == out.parent and mode == os.W_OK else real_access(p, mode)))
    try:
        with pytest.raises(InputError) as error:
            write_netcdf(normalised, out)
    finally:
        out.parent.chmod(0o755)
    assert_one_line(error, out, "tas", f"output directory {out.parent} is not writable")
    assert not any(out.parent.iterdir())


def test_write_to_a_directory_path(normalised: xr.Dataset, tmp_path: Path) -> None:
    out = tmp_path / "taken.nc"
    out.mkdir()
    with pytest.raises(InputError) as error:
        write_netcdf(normalised, out)
    assert_one_line(error, out, "tas", "the output path is a directory")
