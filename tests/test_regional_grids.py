"""Rotated-pole and projected grids (issue 17): true areas, conservation, grid mapping out.

The E1 air temperature of the session's ``coarse_nc`` is placed on a CORDEX-like
rotated-pole grid and on a Lambert conformal grid in km, downscaled with ``downscale run``,
and every coarse cell's area-weighted fine mean is compared with its coarse value using
areas computed here, independently of the package: the exact spherical formula on the
rotated bounds, and ``pyproj.Geod`` on densified cell outlines for the Lambert grid.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pyproj
import pytest
import xarray as xr
from conftest import VARIABLE, assert_cf_compliant

import downscale.batch.cli
import downscale.check

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FACTOR = 4
ROTATED = {"grid_mapping_name": "rotated_latitude_longitude",
           "grid_north_pole_latitude": 39.25, "grid_north_pole_longitude": -162.0,
           "earth_radius": 6371229.0}
LAMBERT = {"grid_mapping_name": "lambert_conformal_conic", "standard_parallel": [35.0, 65.0],
           "longitude_of_central_meridian": 10.0, "latitude_of_projection_origin": 52.0,
           "false_easting": 0.0, "false_northing": 0.0, "semi_major_axis": 6378137.0,
           "inverse_flattening": 298.257223563}


def _coarse(coarse_nc: Path) -> tuple[np.ndarray[Any, Any], xr.DataArray, dict[str, Any]]:
    with xr.open_dataset(coarse_nc) as ds:
        da = ds[VARIABLE].load()
    return np.asarray(da.values), da["time"], dict(da.attrs)


def _write(path: Path, values: np.ndarray[Any, Any], time: xr.DataArray, attrs: dict[str, Any],
           y: np.ndarray[Any, Any], x: np.ndarray[Any, Any], axes: dict[str, Any],
           mapping: dict[str, Any]) -> Path:
    (yname, yattrs), (xname, xattrs) = axes["y"], axes["x"]
    ds = xr.Dataset({VARIABLE: (("time", yname, xname), values,
                                {**{k: v for k, v in attrs.items() if k != "grid_mapping"},
                                 "grid_mapping": "crs"}),
                     "crs": ((), np.int32(0), mapping)},
                    coords={"time": time, yname: (yname, y, yattrs), xname: (xname, x, xattrs)})
    ds.to_netcdf(path)
    return path


def _run(tmp_path: Path, checkpoint: Path, source: Path, suffix: str = ".nc") -> Path:
    out = tmp_path / f"{source.stem}_fine{suffix}"
    downscale.batch.cli.main(["--checkpoint", str(checkpoint), "--input", str(source),
                              "--output", str(out), "--workers", "0", "--time-chunk", "4",
                              "--any-spacing"])  # the E1 model on grids of other spacings
    return out


def _block_means(fine: np.ndarray[Any, Any], area: np.ndarray[Any, Any]
                 ) -> np.ndarray[Any, Any]:
    t, h, w = fine.shape
    mass = (fine * area).reshape(t, h // FACTOR, FACTOR, w // FACTOR, FACTOR).sum((2, 4))
    return np.asarray(mass / area.reshape(h // FACTOR, FACTOR, w // FACTOR, FACTOR).sum((1, 3)))


def _check_output(out: Path, tmp_path: Path, source: Path, variable: str = VARIABLE
                  ) -> xr.Dataset:
    cf_xarray = pytest.importorskip("cf_xarray")
    assert cf_xarray
    assert_cf_compliant(out, tmp_path, source=source)
    ds = xr.open_dataset(out).load()
    assert ds[variable].attrs["grid_mapping"] in ds.variables
    assert ds.cf.grid_mapping_names
    assert ds.cf["latitude"].ndim == 2 and ds.cf["longitude"].ndim == 2
    assert ds["lat_bnds"].shape == (*ds["lat"].shape, 4)
    cdo = shutil.which("cdo")
    if cdo is not None:  # Debian package cdo; skipped without it
        info = subprocess.run([cdo, "sinfo", str(out)], capture_output=True, text=True,
                              timeout=60)
        assert info.returncode == 0, info.stderr
    return ds


def test_rotated_pole_run_conserves_on_the_sphere(tmp_path: Path, checkpoint: Path,
                                                  coarse_nc: Path) -> None:
    values, time, attrs = _coarse(coarse_nc)
    _, h, w = values.shape
    step = 0.88
    rlat, rlon = -4.0 + step * np.arange(h), -8.0 + step * np.arange(w)
    source = _write(tmp_path / "rotated.nc", values, time, attrs, rlat, rlon, {
        "y": ("rlat", {"standard_name": "grid_latitude", "units": "degrees"}),
        "x": ("rlon", {"standard_name": "grid_longitude", "units": "degrees"})}, ROTATED)
    out = _run(tmp_path, checkpoint, source)
    ds = _check_output(out, tmp_path, source)
    assert ds["crs"].attrs["grid_mapping_name"] == "rotated_latitude_longitude"
    yb, xb = np.deg2rad(ds["rlat_bnds"].values), np.deg2rad(ds["rlon_bnds"].values)
    # A rotation keeps areas: R^2 dlon (sin lat_n - sin lat_s) in rotated coordinates.
    area = float(ROTATED["earth_radius"]) ** 2 * np.outer(
        np.sin(yb[:, 1]) - np.sin(yb[:, 0]), xb[:, 1] - xb[:, 0])
    means = _block_means(ds[VARIABLE].values.astype(np.float64), area)
    np.testing.assert_allclose(means, values, rtol=2e-6)
    downscale.check.main(["--coarse", str(source), "--fine", str(out), "--tolerance", "1e-6"])
    # The 2-D latitude/longitude of one cell: the rotation as PROJ's ob_tran spells it
    # (lon_0 = 180 + the pole's longitude), not through the CF attributes.
    rotation = pyproj.Transformer.from_crs(
        pyproj.CRS.from_proj4("+proj=ob_tran +o_proj=longlat +o_lat_p=39.25 +o_lon_p=0 "
                              "+lon_0=18 +R=6371229 +no_defs"),
        pyproj.CRS.from_proj4("+proj=longlat +R=6371229 +no_defs"), always_xy=True)
    lon, lat = rotation.transform(ds["rlon"].values[5], ds["rlat"].values[7])
    assert abs(ds["lat"].values[7, 5] - lat) < 1e-6 and abs(ds["lon"].values[7, 5] - lon) < 1e-6
    with xr.open_zarr(_run(tmp_path, checkpoint, source, ".zarr")) as store:
        assert store.cf.grid_mapping_names and store.cf["latitude"].ndim == 2
        np.testing.assert_array_equal(store[VARIABLE].values, ds[VARIABLE].values)


def _geod_areas(ybounds: np.ndarray[Any, Any], xbounds: np.ndarray[Any, Any]
                ) -> np.ndarray[Any, Any]:
    """Areas (m^2) of map cells on the WGS84 ellipsoid: geodesic polygons of 4 x 64 points."""
    crs = pyproj.CRS.from_cf(LAMBERT)
    to_geo = pyproj.Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True)
    geod = pyproj.Geod(ellps="WGS84")
    s = np.linspace(0.0, 1.0, 64, endpoint=False)
    area = np.empty((len(ybounds), len(xbounds)))
    for i, (y0, y1) in enumerate(ybounds):
        for j, (x0, x1) in enumerate(xbounds):
            px = np.concatenate([x0 + (x1 - x0) * s, np.full(64, x1), x1 - (x1 - x0) * s,
                                 np.full(64, x0)])
            py = np.concatenate([np.full(64, y0), y0 + (y1 - y0) * s, np.full(64, y1),
                                 y1 - (y1 - y0) * s])
            lon, lat = to_geo.transform(px, py)
            area[i, j] = abs(geod.polygon_area_perimeter(lon, lat)[0])
    return area


def test_lambert_run_conserves_on_the_ellipsoid(tmp_path: Path, checkpoint: Path,
                                                coarse_nc: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    values, time, attrs = _coarse(coarse_nc)
    _, h, w = values.shape
    step_km = 200.0  # a continent: 1800 km x 2400 km around the projection's origin
    y, x = step_km * (np.arange(h) - h / 2), step_km * (np.arange(w) - w / 2)
    source = _write(tmp_path / "lambert.nc", values, time, attrs, y, x, {
        "y": ("y", {"standard_name": "projection_y_coordinate", "units": "km"}),
        "x": ("x", {"standard_name": "projection_x_coordinate", "units": "km"})}, LAMBERT)
    out = _run(tmp_path, checkpoint, source)
    ds = _check_output(out, tmp_path, source)
    assert ds["y"].attrs["units"] == "km"
    area = _geod_areas(ds["y_bnds"].values * 1e3, ds["x_bnds"].values * 1e3)
    means = _block_means(ds[VARIABLE].values.astype(np.float64), area)
    np.testing.assert_allclose(means, values, rtol=2e-6)
    downscale.check.main(["--coarse", str(source), "--fine", str(out), "--tolerance", "1e-6"])
    assert f"{VARIABLE} [K] factor 4: PASS" in capsys.readouterr().out
    planar = (step_km * 1e3 / FACTOR) ** 2
    with capsys.disabled():
        print(f"\nLambert test grid: dx*dy areas off by up to "
              f"{np.max(np.abs(planar / area - 1)):.2%} (true areas {area.min():.4g} to "
              f"{area.max():.4g} m2)")


# -- the geometry on its own -------------------------------------------------------------
PROJECTIONS = {
    "lambert_conformal_conic": LAMBERT,
    "polar_stereographic": {"grid_mapping_name": "polar_stereographic",
                            "straight_vertical_longitude_from_pole": -45.0,
                            "latitude_of_projection_origin": 90.0,
                            "standard_parallel": 70.0, "false_easting": 0.0,
                            "false_northing": 0.0, "semi_major_axis": 6378137.0,
                            "inverse_flattening": 298.257223563},
    "transverse_mercator": {"grid_mapping_name": "transverse_mercator",
                            "longitude_of_central_meridian": 9.0,
                            "latitude_of_projection_origin": 0.0,
                            "scale_factor_at_central_meridian": 0.9996,
                            "false_easting": 500000.0, "false_northing": 0.0,
                            "semi_major_axis": 6378137.0, "inverse_flattening": 298.257223563},
    "albers_conical_equal_area": {"grid_mapping_name": "albers_conical_equal_area",
                                  "standard_parallel": [29.5, 45.5],
                                  "longitude_of_central_meridian": -96.0,
                                  "latitude_of_projection_origin": 23.0,
                                  "false_easting": 0.0, "false_northing": 0.0,
                                  "semi_major_axis": 6378137.0,
                                  "inverse_flattening": 298.257223563},
}
#: Grid origins (m) that put each test grid over land it is made for.
ORIGINS = {"lambert_conformal_conic": (-500e3, -500e3), "polar_stereographic": (-2e6, -1e6),
           "transverse_mercator": (300e3, 5.3e6), "albers_conical_equal_area": (-1e6, 1e6)}


@pytest.mark.parametrize("name", sorted(PROJECTIONS))
def test_projected_areas_match_geodesic_polygons(name: str) -> None:
    from downscale.grid_geometry import geometry_from_mapping

    mapping = PROJECTIONS[name]
    y0, x0 = ORIGINS[name]
    edges_y, edges_x = y0 + 100e3 * np.arange(4), x0 + 100e3 * np.arange(5)
    yb = np.stack([edges_y[:-1], edges_y[1:]], axis=1)
    xb = np.stack([edges_x[:-1], edges_x[1:]], axis=1)
    areas = geometry_from_mapping(mapping).cell_areas(yb, xb)
    crs = pyproj.CRS.from_cf(mapping)
    to_geo = pyproj.Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True)
    geod = pyproj.Geod(ellps="WGS84")
    s = np.linspace(0.0, 1.0, 400, endpoint=False)
    for i, (ya, yz) in enumerate(yb):
        for j, (xa, xz) in enumerate(xb):
            px = np.concatenate([xa + (xz - xa) * s, np.full(s.size, xz),
                                 xz - (xz - xa) * s, np.full(s.size, xa)])
            py = np.concatenate([np.full(s.size, ya), ya + (yz - ya) * s,
                                 np.full(s.size, yz), yz - (yz - ya) * s])
            lon, lat = to_geo.transform(px, py)
            expected = abs(geod.polygon_area_perimeter(lon, lat)[0])
            assert areas[i, j] == pytest.approx(expected, rel=1e-8), (name, i, j)
    if name == "albers_conical_equal_area":  # an equal-area map: dx * dy is right there
        np.testing.assert_allclose(areas, 1e10, rtol=1e-8)


def test_planar_grid_without_mapping_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    import downscale.grid_geometry as gg

    gg._warned_planar = False
    bounds = np.array([[0.0, 1000.0], [1000.0, 2000.0]])
    with caplog.at_level("WARNING", logger="downscale.grid_geometry"):
        first = gg.PLANAR.cell_areas(bounds, bounds)
        gg.PLANAR.cell_areas(bounds, bounds)
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "planar dx*dy" in caplog.records[0].message
    np.testing.assert_array_equal(first, 1e6)


# -- the real samples of iris-sample-data ----------------------------------------------
@pytest.mark.parametrize(("dataset", "variable"), [
    ("rotated_pole_mslp", "air_pressure_at_sea_level"),
    ("toa_brightness_stereographic", "data")])
def test_real_regional_sample_keeps_its_grid_mapping(dataset: str, variable: str,
                                                     tmp_path: Path) -> None:
    """Open a real file, put a fine field on its nested grid, write it: CF, CDO, cf-xarray."""
    from downscale.batch.plan import fine_template
    from downscale.cf import downscaled_dataset
    from downscale.grid import cell_areas
    from downscale.io import open_field
    from downscale.manifest import resolve

    path = resolve(dataset)
    coarse = open_field(path, variable).load()
    area = cell_areas(coarse).values
    with xr.open_dataset(path) as raw:
        mapping = dict(raw[raw[variable].attrs["grid_mapping"]].attrs)
    if dataset == "rotated_pole_mslp":  # the exact spherical formula on rotated bounds
        yb, xb = np.deg2rad(coarse["y_bnds"].values), np.deg2rad(coarse["x_bnds"].values)
        expected = mapping["semi_major_axis"] ** 2 * np.outer(
            np.sin(yb[:, 1]) - np.sin(yb[:, 0]), xb[:, 1] - xb[:, 0])
        np.testing.assert_allclose(area, expected, rtol=1e-12)
    else:  # a stereographic map shrinks cells away from its pole: not dx * dy
        assert np.ptp(area) / area.mean() > 0.3
    fine_grid = fine_template(coarse, 2, 0, 1)
    fine = np.repeat(np.repeat(coarse[variable].values, 2, axis=1), 2, axis=2)
    out = downscaled_dataset(fine, fine_grid, variable, dict(coarse[variable].attrs),
                             factor=2, checkpoint="none")
    target = tmp_path / f"{dataset}_fine.nc"
    out.to_netcdf(target)
    ds = _check_output(target, tmp_path, path, variable)
    assert np.isfinite(ds["lat"].values).all() and np.isfinite(ds["lon_bnds"].values).all()


def test_training_and_predict_chunks_use_true_areas(tmp_path: Path, checkpoint: Path,
                                                    coarse_nc: Path) -> None:
    """A fine Lambert field as training/predict read it: true fine areas and a predict chunk
    (:mod:`downscale.data.chunks`) that conserves with them."""
    from downscale.checkpoint import file_sha256, load_model
    from downscale.data.chunks import TimeChunkDataset, downscale_chunk
    from downscale.data.source import FieldSource

    values, time, attrs = _coarse(coarse_nc)
    fine_values = np.repeat(np.repeat(values, FACTOR, axis=1), FACTOR, axis=2)
    _, h, w = fine_values.shape
    step = 50e3
    y, x = step * (np.arange(h) - h / 2 + 0.5), step * (np.arange(w) - w / 2 + 0.5)
    path = _write(tmp_path / "lambert_fine_input.nc", fine_values, time, attrs, y, x, {
        "y": ("y", {"standard_name": "projection_y_coordinate", "units": "m"}),
        "x": ("x", {"standard_name": "projection_x_coordinate", "units": "m"})}, LAMBERT)
    source = FieldSource(str(path), VARIABLE, FACTOR)
    ds = source.dataset
    area = _geod_areas(ds["y_bnds"].values, ds["x_bnds"].values)
    np.testing.assert_allclose(source.fine_area, area, rtol=1e-8)
    chunks = TimeChunkDataset(source, range(4), 4, np.ones((h, w), dtype=bool))
    item = chunks[0]
    assert "lambert_conformal_conic" in item["grid_mapping"]
    model = load_model(str(checkpoint), file_sha256(checkpoint))
    fine = downscale_chunk(model, item, FACTOR)["prediction"].astype(np.float64)
    np.testing.assert_allclose(_block_means(fine, area), item["coarse"], rtol=2e-6)
