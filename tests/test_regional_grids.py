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


def _run(tmp_path: Path, checkpoint: Path, source: Path) -> Path:
    out = tmp_path / f"{source.stem}_fine.nc"
    downscale.batch.cli.main(["--checkpoint", str(checkpoint), "--input", str(source),
                              "--output", str(out), "--workers", "0", "--time-chunk", "4"])
    return out


def _block_means(fine: np.ndarray[Any, Any], area: np.ndarray[Any, Any]
                 ) -> np.ndarray[Any, Any]:
    t, h, w = fine.shape
    mass = (fine * area).reshape(t, h // FACTOR, FACTOR, w // FACTOR, FACTOR).sum((2, 4))
    return mass / area.reshape(h // FACTOR, FACTOR, w // FACTOR, FACTOR).sum((1, 3))


def _check_output(out: Path, tmp_path: Path, source: Path) -> xr.Dataset:
    cf_xarray = pytest.importorskip("cf_xarray")
    assert cf_xarray
    assert_cf_compliant(out, tmp_path, source=source)
    ds = xr.open_dataset(out).load()
    assert ds[VARIABLE].attrs["grid_mapping"] == "crs"
    assert list(ds.cf[[VARIABLE]].cf.grid_mapping_names) != []
    assert ds.cf["latitude"].dims == ds[VARIABLE].dims[-2:]
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
    area = ROTATED["earth_radius"] ** 2 * np.outer(
        np.sin(yb[:, 1]) - np.sin(yb[:, 0]), xb[:, 1] - xb[:, 0])
    means = _block_means(ds[VARIABLE].values.astype(np.float64), area)
    np.testing.assert_allclose(means, values, rtol=2e-6)
    # The 2-D latitude/longitude of one cell: the rotation as PROJ's ob_tran spells it
    # (lon_0 = 180 + the pole's longitude), not through the CF attributes.
    rotation = pyproj.Transformer.from_crs(
        pyproj.CRS.from_proj4("+proj=ob_tran +o_proj=longlat +o_lat_p=39.25 +o_lon_p=0 "
                              "+lon_0=18 +R=6371229 +no_defs"),
        pyproj.CRS.from_proj4("+proj=longlat +R=6371229 +no_defs"), always_xy=True)
    lon, lat = rotation.transform(ds["rlon"].values[5], ds["rlat"].values[7])
    assert abs(ds["lat"].values[7, 5] - lat) < 1e-6 and abs(ds["lon"].values[7, 5] - lon) < 1e-6


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
    planar = (step_km * 1e3 / FACTOR) ** 2
    with capsys.disabled():
        print(f"\nLambert test grid: dx*dy areas off by up to "
              f"{np.max(np.abs(planar / area - 1)):.2%} (true areas {area.min():.4g} to "
              f"{area.max():.4g} m2)")
