"""Outputs keep the input's conventions (issue 13 item 6): names, dimension order, longitude
range, latitude order, time bounds, attributes and storage, through
``downscaled_dataset`` + ``write_netcdf``, through ``downscale run``, and back through
``open_field`` and ``downscale check``."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import dask.array as dsa
import numpy as np
import xarray as xr
from conftest import VARIABLE, assert_cf_compliant, make_latlon_nc

from downscale.aggregate import coarsen_field
from downscale.cf import downscaled_dataset
from downscale.conventions import conventions_of, restore, user_layout, with_conventions
from downscale.grid import fine_bounds, horizontal_dims, nesting_factor
from downscale.io import open_field, write_netcdf
from downscale.main import main as cli_main

FACTOR = 2
EXTRA_ATTRS = {"long_name": "Near-surface air temperature", "comment": "a test field",
               "valid_range": np.array([150.0, 350.0]), "actual_range": np.array([250.0, 300.0]),
               "institution_note": "kept"}


def user_file(path: Path, *, variable: str = "tas", nt: int = 4,
              time_bounds: str = "time_bnds") -> Path:
    """A global 30-degree grid the way many users have it: ``latitude`` north to south,
    ``longitude`` 0..360 (no bounds), time bounds, extra attributes, float64 storage."""
    lat = np.arange(75.0, -90.0, -30.0)
    lon = np.arange(15.0, 360.0, 30.0)
    rng = np.random.default_rng(0)
    data = 280.0 + rng.standard_normal((nt, lat.size, lon.size))
    time = np.arange(nt) + 0.5
    ds = xr.Dataset(
        {variable: (("time", "latitude", "longitude"), data,
                    {"standard_name": "air_temperature", "units": "K", **EXTRA_ATTRS}),
         time_bounds: (("time", "nv"), np.stack([time - 0.5, time + 0.5], axis=1))},
        coords={"latitude": ("latitude", lat, {"units": "degrees_north", "long_name": "Lat",
                                               "standard_name": "latitude", "axis": "Y"}),
                "longitude": ("longitude", lon, {"units": "degrees_east", "long_name": "Lon",
                                                 "standard_name": "longitude", "axis": "X"}),
                "time": ("time", time, {"units": "days since 2001-01-01", "calendar": "noleap",
                                        "standard_name": "time", "bounds": time_bounds})})
    ds[variable].encoding.update(dtype=np.float64, _FillValue=-999.0, zlib=True, complevel=2,
                                 chunksizes=(1, lat.size, lon.size))
    ds.to_netcdf(path, format="NETCDF4")
    return path


def fine_grid(coarse: xr.Dataset, factor: int = FACTOR) -> xr.Dataset:
    """A normalised fine template of ``coarse`` carrying its record (as the writers build)."""
    coords: dict[str, Any] = {"time": coarse["time"]}
    for dim in horizontal_dims(coarse):
        bnds = fine_bounds(coarse[f"{dim}_bnds"].values, factor)
        coords[dim] = (dim, bnds.mean(axis=1), dict(coarse[dim].attrs))
        coords[f"{dim}_bnds"] = ((dim, "bnds"), bnds)
    return with_conventions(xr.Dataset(coords=coords, attrs=dict(coarse.attrs)),
                            conventions_of(coarse))


def block_values(coarse: xr.Dataset, variable: str, factor: int = FACTOR) -> np.ndarray:
    """Each coarse value repeated over its fine cells (normalised layout): a traceable field."""
    values = np.asarray(coarse[variable].values, dtype=np.float32)
    return np.repeat(np.repeat(values, factor, axis=1), factor, axis=2)


def test_record_survives_selection_and_pickling(tmp_path: Path) -> None:
    coarse = open_field(user_file(tmp_path / "in.nc"), "tas")
    record = conventions_of(coarse)
    assert record is not None
    assert record.names == {"lat": "latitude", "lon": "longitude", "time": "time"}
    assert record.axes["lat"].descending and not record.axes["lon"].descending
    assert record.time_bounds is not None and record.time_bounds.name == "time_bnds"
    assert conventions_of(coarse.isel(time=slice(1, 3))) is record
    assert conventions_of(coarse.sel(time=coarse["time"][:2]).chunk({"time": 1})) is record
    again = conventions_of(pickle.loads(pickle.dumps(coarse)))  # sent to Dask workers
    assert again is not None and again.names == record.names
    assert again.time_bounds is not None
    np.testing.assert_array_equal(again.time_bounds.values, record.time_bounds.values)


def test_user_conventions_round_trip(tmp_path: Path) -> None:
    source = user_file(tmp_path / "in.nc")
    coarse = open_field(source, "tas")
    assert float(coarse["lon"].min()) < 0  # normalised to -180..180 inside
    template = fine_grid(coarse)
    values = block_values(coarse, "tas")
    ds = downscaled_dataset(values, template, "tas", dict(coarse["tas"].attrs), factor=FACTOR,
                            checkpoint="model.ckpt")
    out = write_netcdf(ds, tmp_path / "out.nc")
    with xr.open_dataset(source) as src, xr.open_dataset(out) as res:
        assert res["tas"].dims == ("time", "latitude", "longitude")
        assert "lat" not in res.variables and "lon" not in res.variables
        lon, lat = res["longitude"].values, res["latitude"].values
        assert lon.min() >= 0 and lon.max() < 360 and np.all(np.diff(lon) > 0)
        assert np.all(np.diff(lat) < 0)
        # The fine grid in the user's range, computed there: each coarse cell's fine
        # cells split it evenly, exactly (bounds inferred halfway: 0..30, 30..60, ...).
        coarse_lon = np.stack([src["longitude"].values - 15, src["longitude"].values + 15], 1)
        np.testing.assert_array_equal(res["longitude_bnds"].values,
                                      fine_bounds(coarse_lon, FACTOR))
        np.testing.assert_array_equal(lon, res["longitude_bnds"].values.mean(axis=1))
        lat_b = res["latitude_bnds"].values
        assert np.all(lat_b[:, 0] > lat_b[:, 1])  # pairs run the axis's way (north first)
        coarse_lat = np.stack([src["latitude"].values + 15, src["latitude"].values - 15], 1)
        np.testing.assert_array_equal(lat_b[::FACTOR, 0], coarse_lat[:, 0])
        np.testing.assert_array_equal(lat_b[FACTOR - 1::FACTOR, 1], coarse_lat[:, 1])
        np.testing.assert_array_equal(lat_b[1:, 0], lat_b[:-1, 1])  # contiguous
        assert lat_b[0, 0] == 90.0 and lat_b[-1, 1] == -90.0
        # Values follow their cells: each fine block holds its coarse cell's value.
        np.testing.assert_allclose(res["tas"].values[:, ::FACTOR, ::FACTOR],
                                   src["tas"].values, rtol=1e-6)
        np.testing.assert_allclose(res["tas"].values[:, 1::FACTOR, 1::FACTOR],
                                   src["tas"].values, rtol=1e-6)
        # Time bounds carried; the variable's attributes and storage kept.
        assert res["time"].attrs["bounds"] == "time_bnds"
        np.testing.assert_array_equal(res["time_bnds"].values, src["time_bnds"].values)
        for key in ("long_name", "comment", "institution_note"):
            assert res["tas"].attrs[key] == src["tas"].attrs[key]
        np.testing.assert_array_equal(res["tas"].attrs["valid_range"], [150.0, 350.0])
        assert "actual_range" not in res["tas"].attrs
        assert res["latitude"].attrs["long_name"] == "Lat"
        assert res["tas"].encoding["dtype"] == np.float64
        assert res["tas"].encoding["_FillValue"] == -999.0
        assert res["tas"].encoding["complevel"] == 2
        assert res["tas"].encoding["chunksizes"] == (1, 6 * FACTOR, 12 * FACTOR)
        assert "coordinates" not in res.attrs
    assert_cf_compliant(out, tmp_path)


def test_fine_grid_nests_in_the_coarse_one(tmp_path: Path) -> None:
    """The output reopened and normalised nests exactly in the normalised input."""
    coarse = open_field(user_file(tmp_path / "in.nc"), "tas")
    ds = downscaled_dataset(block_values(coarse, "tas"), fine_grid(coarse), "tas",
                            dict(coarse["tas"].attrs), factor=FACTOR, checkpoint="m.ckpt")
    fine = open_field(write_netcdf(ds, tmp_path / "out.nc"), "tas")
    for dim in ("lat", "lon"):
        assert nesting_factor(coarse[f"{dim}_bnds"].values, fine[f"{dim}_bnds"].values,
                              tol=1e-12) == FACTOR
    np.testing.assert_allclose(fine["tas"].values[:, ::FACTOR, ::FACTOR],
                               coarse["tas"].values, rtol=1e-6)


def test_time_slabs_and_lazy_values(tmp_path: Path) -> None:
    """A time slab gets its own time bounds; Dask values stay lazy; the array form agrees."""
    coarse = open_field(user_file(tmp_path / "in.nc", nt=6), "tas")
    template = fine_grid(coarse).isel(time=slice(2, 5))
    values = block_values(coarse, "tas")[2:5]
    lazy = dsa.from_array(values, chunks=(1, -1, -1))
    ds = downscaled_dataset(lazy, template, "tas", dict(coarse["tas"].attrs), factor=FACTOR,
                            checkpoint="m.ckpt")
    assert isinstance(ds["tas"].data, dsa.Array)
    record = conventions_of(template)
    assert record is not None and record.time_bounds is not None
    np.testing.assert_array_equal(ds["time_bnds"].values, record.time_bounds.values[2:5])
    layout = user_layout(template, record)
    np.testing.assert_array_equal(layout.apply(values), ds["tas"].values)
    np.testing.assert_array_equal(np.asarray(layout.apply(lazy)), ds["tas"].values)
    assert layout.user_dims == ds["tas"].dims


def test_layout_follows_the_grid_not_the_order_of_its_coordinates(tmp_path: Path) -> None:
    coarse = open_field(user_file(tmp_path / "in.nc"), "tas")
    template = fine_grid(coarse)
    shuffled = with_conventions(xr.Dataset(coords={k: template[k] for k in (
        "lon_bnds", "lon", "time", "lat_bnds", "lat")}), conventions_of(template))
    record = conventions_of(template)
    assert record is not None
    values = block_values(coarse, "tas")
    np.testing.assert_array_equal(user_layout(shuffled, record).apply(values),
                                  user_layout(template, record).apply(values))


def test_a_field_without_time(tmp_path: Path) -> None:
    path = make_latlon_nc(tmp_path / "static.nc", nt=0, dim_names=("latitude", "longitude"),
                          lat=np.arange(45.0, 39.0, -1.0))
    coarse = open_field(path, "tas")
    template, values = fine_grid(coarse), block_values(coarse, "tas")
    record = conventions_of(template)
    assert record is not None and record.dims == ("lat", "lon")
    slab = user_layout(template, record).apply(values)  # a slab writer's (1, H, W)
    np.testing.assert_array_equal(slab, values[:, ::-1])  # north to south, as the file
    ds = downscaled_dataset(values, template, "tas", dict(coarse["tas"].attrs), factor=FACTOR,
                            checkpoint="m.ckpt")
    assert ds["tas"].dims == ("latitude", "longitude")
    np.testing.assert_array_equal(ds["tas"].values, slab[0])
    assert_cf_compliant(write_netcdf(ds, tmp_path / "out.nc"), tmp_path)


def test_other_dimension_order_and_names(tmp_path: Path) -> None:
    """(lon, lat, t) with a time called ``t``: same order and names back."""
    path = user_file(tmp_path / "in.nc")
    with xr.open_dataset(path) as ds:
        moved = ds.rename(time="t", nv="bnds2").transpose("longitude", "latitude", "t", ...)
        moved["t"].attrs["bounds"] = "time_bnds"
        moved.load().to_netcdf(tmp_path / "moved.nc")
    coarse = open_field(tmp_path / "moved.nc", "tas")
    out = downscaled_dataset(block_values(coarse, "tas"), fine_grid(coarse), "tas",
                             dict(coarse["tas"].attrs), factor=FACTOR, checkpoint="m.ckpt")
    assert out["tas"].dims == ("longitude", "latitude", "t")
    assert out["time_bnds"].dims == ("t", "bnds2")


def test_projected_grid_keeps_names_order_and_mapping(tmp_path: Path) -> None:
    """An x/y grid with y north to south, named ``northing``/``easting``, and a CRS."""
    y = np.arange(5.0, 0.0, -1.0) * 1000.0 + 500.0
    x = np.arange(4.0) * 1000.0 + 500.0
    attrs = {"units": "m", "axis": "Y", "standard_name": "projection_y_coordinate"}
    src = xr.Dataset(
        {"orog": (("northing", "easting"), np.arange(20.0).reshape(5, 4),
                  {"standard_name": "surface_altitude", "units": "m", "grid_mapping": "crs"}),
         "crs": ((), 0, {"grid_mapping_name": "transverse_mercator",
                         "longitude_of_central_meridian": 9.0,
                         "scale_factor_at_central_meridian": 0.9996,
                         "latitude_of_projection_origin": 0.0, "false_easting": 500000.0,
                         "false_northing": 0.0})},
        coords={"northing": ("northing", y, attrs),
                "easting": ("easting", x, {**attrs, "axis": "X",
                                           "standard_name": "projection_x_coordinate"})})
    src.to_netcdf(tmp_path / "dem.nc")
    coarse = open_field(tmp_path / "dem.nc", "orog")
    assert coarse["orog"].dims == ("time", "y", "x")
    template = fine_grid(coarse)
    values = np.repeat(np.repeat(coarse["orog"].values, FACTOR, 1), FACTOR, 2)
    ds = downscaled_dataset(values.astype(np.float32), template, "orog",
                            dict(coarse["orog"].attrs), factor=FACTOR, checkpoint="m.ckpt")
    out = write_netcdf(ds, tmp_path / "out.nc")
    with xr.open_dataset(out) as res:
        assert res["orog"].dims == ("northing", "easting")
        assert np.all(np.diff(res["northing"].values) < 0)
        assert res["orog"].attrs["grid_mapping"] == "crs"
        assert res["crs"].attrs["grid_mapping_name"] == "transverse_mercator"
        np.testing.assert_array_equal(res["orog"].values[::FACTOR, ::FACTOR],
                                      src["orog"].values)
        assert res["northing_bnds"].values[0, 0] == 6000.0
    assert_cf_compliant(out, tmp_path)


def test_without_a_record_the_normalised_form_is_written(tmp_path: Path) -> None:
    coarse = open_field(user_file(tmp_path / "in.nc"), "tas")
    template = fine_grid(coarse)
    template.encoding.clear()
    ds = downscaled_dataset(block_values(coarse, "tas"), template, "tas",
                            dict(coarse["tas"].attrs), factor=FACTOR, checkpoint="m.ckpt")
    assert ds["tas"].dims == ("time", "lat", "lon") and float(ds["lon"].min()) < 0
    assert restore(ds) is ds


def test_run_keeps_the_users_conventions(checkpoint: Path, tmp_path: Path) -> None:
    """``downscale run`` on a 0..360, north-to-south ``latitude``/``longitude`` input."""
    source = user_file(tmp_path / "in.nc", variable=VARIABLE)
    with xr.open_dataset(source) as ds:  # the checkpoint's region needs 8 x 8 coarse cells
        big = ds.interp(latitude=np.arange(80.0, -80.0, -20.0),
                        longitude=np.arange(10.0, 360.0, 20.0),
                        kwargs={"fill_value": "extrapolate"}).drop_vars("time_bnds")
        big["time_bnds"] = ds["time_bnds"]
        big[VARIABLE].encoding.update(dtype=np.float64, _FillValue=-999.0)
        big.load().to_netcdf(tmp_path / "big.nc")
    out = tmp_path / "out.nc"
    cli_main(["run", "--checkpoint", str(checkpoint), "--input", str(tmp_path / "big.nc"),
              "--output", str(out), "--workers", "0", "--no-progress", "--any-spacing"])
    with xr.open_dataset(out) as res, xr.open_dataset(tmp_path / "big.nc") as src:
        assert res[VARIABLE].dims == ("time", "latitude", "longitude")
        assert res["longitude"].min() >= 0 and res["longitude"].max() < 360
        assert np.all(np.diff(res["longitude"].values) > 0)
        assert np.all(np.diff(res["latitude"].values) < 0)
        np.testing.assert_array_equal(res["time_bnds"].values, src["time_bnds"].values)
        assert res[VARIABLE].attrs["comment"] == "a test field"
        assert res[VARIABLE].encoding["dtype"] == np.float64
        assert res[VARIABLE].encoding["_FillValue"] == -999.0
        # Fine cells split the 0..360 coarse cells (edges 0, 20, ..., 360) exactly.
        lon_b = res["longitude_bnds"].values
        np.testing.assert_array_equal(lon_b[::4, 0], np.arange(0.0, 360.0, 20.0))
        np.testing.assert_array_equal(lon_b[3::4, 1], np.arange(20.0, 380.0, 20.0))
        # Conservation: the output read back like any input, coarsened, is the input.
        fine = open_field(out, VARIABLE)
        coarse = open_field(tmp_path / "big.nc", VARIABLE)
        back = coarsen_field(fine, VARIABLE, (4, 4))
        np.testing.assert_allclose(back[VARIABLE].values, coarse[VARIABLE].values, rtol=1e-5)
    assert_cf_compliant(out, tmp_path)


def test_check_reads_restored_outputs(tmp_path: Path) -> None:
    """``downscale check`` opens outputs in the user's conventions like any input, and
    finds the variable itself (time bounds named ``time_limits`` are not one)."""
    coarse = open_field(user_file(tmp_path / "in.nc", time_bounds="time_limits"), "tas")
    ds = downscaled_dataset(block_values(coarse, "tas"), fine_grid(coarse), "tas",
                            dict(coarse["tas"].attrs), factor=FACTOR, checkpoint="m.ckpt")
    out = write_netcdf(ds, tmp_path / "out.nc")
    assert cli_main(["check", "--coarse", str(tmp_path / "in.nc"), "--fine", str(out)]
                    ) in (0, None)


def test_files_joined_in_time_keep_every_files_time_bounds(tmp_path: Path) -> None:
    first = user_file(tmp_path / "a.nc", nt=3)
    with xr.open_dataset(first, decode_times=False) as ds:
        later = ds.load().assign_coords(time=("time", ds["time"].values + 3,
                                               ds["time"].attrs))
        later["time_bnds"] = (ds["time_bnds"].dims, ds["time_bnds"].values + 3)
        later.to_netcdf(tmp_path / "b.nc")
    joined = open_field([tmp_path / "b.nc", first], "tas")
    template = fine_grid(joined).isel(time=slice(2, 5))  # a slab across the files
    ds = downscaled_dataset(block_values(joined, "tas")[2:5], template, "tas",
                            dict(joined["tas"].attrs), factor=FACTOR, checkpoint="m.ckpt")
    with xr.open_dataset(write_netcdf(ds, tmp_path / "out.nc"), decode_times=False) as res:
        np.testing.assert_array_equal(res["time_bnds"].values,
                                      [[2.0, 3.0], [3.0, 4.0], [4.0, 5.0]])


def test_packed_input_is_written_unpacked_as_float32(tmp_path: Path) -> None:
    """int16 with scale_factor: the coarse packing cannot hold the fine field (see why in
    ``conventions.record._reusable_encoding``); valid_range is given in unpacked units."""
    path = user_file(tmp_path / "in.nc")
    with xr.open_dataset(path) as ds:
        packed = ds.load()
    packed["tas"].attrs["valid_range"] = np.array([-5000, 5000], dtype=np.int16)
    packed["tas"].encoding = {"dtype": np.int16, "scale_factor": 0.01, "add_offset": 280.0,
                              "_FillValue": np.int16(-32767)}
    packed.to_netcdf(tmp_path / "packed.nc")
    coarse = open_field(tmp_path / "packed.nc", "tas")
    ds = downscaled_dataset(block_values(coarse, "tas"), fine_grid(coarse), "tas",
                            dict(coarse["tas"].attrs), factor=FACTOR, checkpoint="m.ckpt")
    out = write_netcdf(ds, tmp_path / "out.nc")
    with xr.open_dataset(out, mask_and_scale=False) as raw:
        assert raw["tas"].dtype == np.float32 and "scale_factor" not in raw["tas"].attrs
        np.testing.assert_allclose(raw["tas"].attrs["valid_range"], [230.0, 330.0])
    assert_cf_compliant(out, tmp_path)
