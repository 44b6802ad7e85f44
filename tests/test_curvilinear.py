"""Structured curvilinear grids with cell corners (issue 17, item 3).

The E1 air temperature of the session's ``coarse_nc`` is placed on a generated curvilinear
grid (a lattice of corners rotated, sheared and stretched on the sphere, as an ocean or
regional model writes it: 2-D ``lat``/``lon`` over ``j``/``i`` with four-vertex bounds),
downscaled with ``downscale run``, and every coarse cell's area-weighted fine mean is
compared with its coarse value using areas computed here, independently of the package:
``pyproj.Geod`` polygons on a sphere (geodesics on a sphere are great circles, the edges
the package's cells have).
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
from conftest import VARIABLE, assert_cf_compliant, fit_tiny

import downscale.batch.cli
import downscale.check
from downscale.errors import InputError
from downscale.grid import EARTH_RADIUS_M
from downscale.io import open_field

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FACTOR = 4
SPHERE = pyproj.Geod(a=EARTH_RADIUS_M, b=EARTH_RADIUS_M)


def _lattice(h: int, w: int, lon0: float = 20.0
             ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Corner latitude/longitude ``(h + 1, w + 1)``: a sheared, stretched, rotated lattice."""
    j, i = np.meshgrid(np.arange(h + 1.0), np.arange(w + 1.0), indexing="ij")
    # Stretched (cells grow along i) and sheared in a local frame, then turned by 30 degrees
    # about the frame's origin and placed at 55 N 20 E: nothing lines up with lat/lon.
    u, v = 0.9 * i + 0.02 * i**2, 0.8 * j + 0.15 * i
    angle = np.deg2rad(30.0)
    east, north = u * np.cos(angle) - v * np.sin(angle), u * np.sin(angle) + v * np.cos(angle)
    lat = 55.0 + north - 6.0
    lon = lon0 + (east - 8.0) / np.cos(np.deg2rad(lat))
    return lat, (lon + 180.0) % 360.0 - 180.0


def _cell_corners(corner: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """``(h, w, 4)`` CF bounds of a ``(h + 1, w + 1)`` lattice, CF 7.1 order."""
    return np.stack([corner[:-1, :-1], corner[:-1, 1:], corner[1:, 1:], corner[1:, :-1]], -1)


def _write(path: Path, coarse_nc: Path, *, corners: bool = True) -> tuple[Path, Any]:
    with xr.open_dataset(coarse_nc) as src:
        da = src[VARIABLE].load()
    _, h, w = da.shape
    lat_c, lon_c = _lattice(h, w)
    lat_b, lon_b = _cell_corners(lat_c), _cell_corners(lon_c)
    lat, lon = lat_b.mean(-1), lon_b.mean(-1)  # centres: for CF, not used for areas
    ds = xr.Dataset(
        {VARIABLE: (("time", "j", "i"), da.values,
                    {**{k: v for k, v in da.attrs.items() if k != "grid_mapping"},
                     "coordinates": "lat lon"})},
        coords={"time": da["time"]})
    ds["lat"] = (("j", "i"), lat, {"standard_name": "latitude", "units": "degrees_north"})
    ds["lon"] = (("j", "i"), lon, {"standard_name": "longitude", "units": "degrees_east"})
    if corners:
        ds["lat"].attrs["bounds"] = "lat_bnds"
        ds["lon"].attrs["bounds"] = "lon_bnds"
        ds["lat_bnds"] = (("j", "i", "nv"), lat_b)
        ds["lon_bnds"] = (("j", "i", "nv"), lon_b)
    ds.to_netcdf(path)
    return path, da.values


def _areas(lat_b: np.ndarray[Any, Any], lon_b: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Spherical polygon areas (m^2) of ``(..., 4)`` corners, by pyproj.Geod."""
    flat_lat, flat_lon = lat_b.reshape(-1, 4), lon_b.reshape(-1, 4)
    return np.array([abs(SPHERE.polygon_area_perimeter(lo, la)[0])
                     for la, lo in zip(flat_lat, flat_lon, strict=True)]
                    ).reshape(lat_b.shape[:-1])


def _blocks(a: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Sums over each coarse cell's ``FACTOR x FACTOR`` fine cells (last two axes)."""
    *lead, h, w = a.shape
    return np.asarray(a.reshape(*lead, h // FACTOR, FACTOR, w // FACTOR, FACTOR).sum((-3, -1)))


def test_curvilinear_run_conserves_on_the_sphere(tmp_path: Path, checkpoint: Path,
                                                 coarse_nc: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    source, values = _write(tmp_path / "curvilinear.nc", coarse_nc)
    out = tmp_path / "curvilinear_fine.nc"
    downscale.batch.cli.main(["--checkpoint", str(checkpoint), "--input", str(source),
                              "--output", str(out), "--workers", "0", "--time-chunk", "4",
                              "--any-spacing"])
    assert_cf_compliant(out, tmp_path, source=source)
    ds = xr.open_dataset(out).load()
    assert ds[VARIABLE].dims == ("time", "j", "i")
    assert set(ds[VARIABLE].encoding["coordinates"].split()) == {"lat", "lon"}
    assert ds["lat"].dims == ("j", "i") and ds["lat_bnds"].shape == (*ds["lat"].shape, 4)
    assert "grid_mapping" not in ds[VARIABLE].attrs
    fine_area = _areas(ds["lat_bnds"].values, ds["lon_bnds"].values)
    with xr.open_dataset(source) as src:
        coarse_area = _areas(src["lat_bnds"].values, src["lon_bnds"].values)
        # The fine grid's outer corners are the input's own.
        np.testing.assert_allclose(ds["lat_bnds"].values[::FACTOR, ::FACTOR, 0],
                                   src["lat_bnds"].values[..., 0], atol=1e-9)
    # Great-circle edges, fine corners on them: the fine cells tile each coarse cell.
    np.testing.assert_allclose(_blocks(fine_area), coarse_area, rtol=1e-9)
    assert fine_area.max() / fine_area.min() > 1.4  # cells of many sizes: a real test
    mass = _blocks(ds[VARIABLE].values.astype(np.float64) * fine_area)
    np.testing.assert_allclose(mass / coarse_area, values, rtol=2e-6)
    # check renumbers the fine file's cells in the coarse file's index space to nest them.
    downscale.check.main(["--coarse", str(source), "--fine", str(out), "--tolerance", "1e-6"])
    assert f"{VARIABLE} [K] factor 4: PASS" in capsys.readouterr().out
    cdo = shutil.which("cdo")
    if cdo is not None:  # Debian package cdo; skipped without it
        info = subprocess.run([cdo, "sinfo", str(out)], capture_output=True, text=True,
                              timeout=60)
        assert info.returncode == 0, info.stderr
        assert "curvilinear" in info.stdout


def test_curvilinear_spacing_in_metres(tmp_path: Path, coarse_nc: Path) -> None:
    from downscale.spacing import coarse_spacing

    source, values = _write(tmp_path / "curvilinear.nc", coarse_nc)
    lat_c, lon_c = _lattice(*values.shape[1:])
    along_y = SPHERE.inv(lon_c[:-1], lat_c[:-1], lon_c[1:], lat_c[1:])[2]
    along_x = SPHERE.inv(lon_c[:, :-1], lat_c[:, :-1], lon_c[:, 1:], lat_c[:, 1:])[2]
    spacing = coarse_spacing(open_field(source, VARIABLE))
    np.testing.assert_allclose(spacing.metres, (np.median(along_y), np.median(along_x)),
                               rtol=1e-6)
    assert spacing.widths == spacing.metres and not spacing.latlon


@pytest.mark.parametrize("lon0", [20.0, 179.0])  # 179: across the antimeridian
def test_fine_areas_sum_to_coarse_areas(lon0: float) -> None:
    from downscale.grid import fine_cell_areas
    from downscale.grid_geometry import geometry_from_mapping

    lat_c, lon_c = _lattice(5, 7, lon0)
    geometry = geometry_from_mapping({"grid_mapping_name": "downscale_curvilinear",
                                      "dims": ["j", "i"], "corner_lat": lat_c.tolist(),
                                      "corner_lon": lon_c.tolist()})
    yb, xb = (np.stack([np.arange(n) - 0.5, np.arange(n) + 0.5], 1) for n in (5, 7))
    coarse = geometry.cell_areas(yb, xb)
    np.testing.assert_allclose(coarse, _areas(_cell_corners(lat_c), _cell_corners(lon_c)),
                               rtol=1e-9)
    for factor in (2, 3, 8):
        fine = fine_cell_areas(yb, xb, factor, geometry=geometry)
        assert fine.shape == (5 * factor, 7 * factor)
        np.testing.assert_allclose(
            fine.reshape(5, factor, 7, factor).sum((1, 3)), coarse, rtol=1e-12)


def test_curvilinear_without_corners_refused_in_one_line(tmp_path: Path,
                                                         coarse_nc: Path) -> None:
    source, _ = _write(tmp_path / "no_corners.nc", coarse_nc, corners=False)
    with pytest.raises(InputError) as err:
        open_field(source, VARIABLE)
    message = str(err.value)
    assert "\n" not in message
    assert str(source) in message and VARIABLE in message
    assert "without cell corners" in message and "lat_bnds/lon_bnds with 4 vertices" in message


def test_corners_that_do_not_tile_refused(tmp_path: Path, coarse_nc: Path) -> None:
    source, _ = _write(tmp_path / "broken.nc", coarse_nc)
    with xr.open_dataset(source) as ds:
        broken = ds.load()
    broken["lat_bnds"][2, 3, 1] += 0.5  # one corner no longer its neighbour's
    broken.to_netcdf(tmp_path / "broken2.nc")
    with pytest.raises(InputError, match=r"cell \(2, 3\)'s corner 1"):
        open_field(tmp_path / "broken2.nc", VARIABLE)


def test_trained_on_curvilinear_runs_at_its_spacing(tmp_path: Path, checkpoint: Path,
                                                    coarse_nc: Path) -> None:
    """fit on a curvilinear truth, then run on its coarse grid: spacings agree in metres."""
    source, values = _write(tmp_path / "curvilinear.nc", coarse_nc)
    truth = tmp_path / "truth.nc"
    downscale.batch.cli.main(["--checkpoint", str(checkpoint), "--input", str(source),
                              "--output", str(truth), "--workers", "0", "--any-spacing"])
    (tmp_path / "fit").mkdir()
    trained = fit_tiny(tmp_path / "fit", "--data.path", str(truth), "--data.variable", VARIABLE)
    out = tmp_path / "out.nc"
    downscale.batch.cli.main(["--checkpoint", str(trained), "--input", str(source),
                              "--output", str(out), "--workers", "0"])  # no --any-spacing
    with xr.open_dataset(out) as ds:
        fine_area = _areas(ds["lat_bnds"].values, ds["lon_bnds"].values)
        mass = _blocks(ds[VARIABLE].values.astype(np.float64) * fine_area)
    np.testing.assert_allclose(mass / _blocks(fine_area), values, rtol=2e-6)
