"""Shared fixtures: the real sample files and writers of small generated NetCDF files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

from downscale.aggregate import coarsen_field, crop_to_factor
from downscale.io import open_field, write_netcdf

ROOT = Path(__file__).resolve().parents[1]
#: The tiny E1 training config (factor 4, air temperature in K).
TINY = str(ROOT / "tests" / "conf" / "e1_tiny.yaml")
VARIABLE = "air_temperature"
N_TIME = 12
#: The newest CF suite of compliance-checker 6.1.
CF_SUITE = "cf:1.11"


def field_values(nt: int, nlat: int, nlon: int, seed: int = 0) -> np.ndarray[Any, Any]:
    """A reproducible field whose every value is distinct (so reorderings are visible)."""
    rng = np.random.default_rng(seed)
    return 280.0 + np.arange(nt * nlat * nlon).reshape(nt, nlat, nlon) * 0.01 + rng.random(
        (nt, nlat, nlon)) * 1e-3


def make_latlon_nc(
    path: Path,
    nlat: int = 6,
    nlon: int = 8,
    *,
    nt: int = 3,
    lat: Any = None,
    lon: Any = None,
    data: Any = None,
    variable: str = "tas",
    units: str | None = "K",
    calendar: str | None = "noleap",
    time_units: str = "days since 2000-01-01",
    start: int = 0,
    bounds: dict[str, Any] | None = None,
    fill_value: Any = np.nan,
    fmt: str = "NETCDF4",
    extra_dims: dict[str, int] | None = None,
    dim_names: tuple[str, str] = ("lat", "lon"),
    attrs: dict[str, Any] | None = None,
) -> Path:
    """Write a small ``(time, lat, lon)`` file and return its path.

    Args:
        path: Where to write.
        nlat, nlon: Grid size (ignored where ``lat``/``lon`` are given).
        nt: Number of time steps; 0 writes a field without a time dimension.
        lat, lon: Cell centres; default a 1-degree grid at 40.5N, 10.5E upwards.
        data: The values, shape ``(nt, nlat, nlon)``; default :func:`field_values`.
        calendar: CF calendar of the time axis (None: no calendar attribute).
        start: First time value (in ``time_units``).
        bounds: Bounds arrays ``(n, 2)`` by dimension name, written as CF bounds variables.
        fill_value: ``_FillValue`` encoding of the variable (None: none declared).
        fmt: NetCDF format, e.g. ``"NETCDF3_CLASSIC"``.
        extra_dims: Extra dimensions (name: size) put between time and the grid.
        dim_names: Names of the latitude and longitude dimensions.
        attrs: Extra attributes of the variable.
    """
    lat = np.arange(nlat) + 40.5 if lat is None else np.asarray(lat, dtype=np.float64)
    lon = np.arange(nlon) + 10.5 if lon is None else np.asarray(lon, dtype=np.float64)
    ydim, xdim = dim_names
    extra = extra_dims or {}
    shape = (max(nt, 1), *extra.values(), lat.size, lon.size)
    if data is None:
        data = field_values(max(nt, 1), lat.size, lon.size).reshape(
            (max(nt, 1), *[1] * len(extra), lat.size, lon.size)) * np.ones(shape)
    dims: tuple[str, ...] = ("time", *extra, ydim, xdim)
    coords: dict[str, Any] = {
        ydim: (ydim, lat, {"units": "degrees_north", "standard_name": "latitude"}),
        xdim: (xdim, lon, {"units": "degrees_east", "standard_name": "longitude"}),
    }
    for name, size in extra.items():
        coords[name] = (name, np.arange(size, dtype=np.float64))
    if nt:
        time_attrs = {"units": time_units, "standard_name": "time"}
        if calendar is not None:
            time_attrs["calendar"] = calendar
        coords["time"] = ("time", np.arange(start, start + nt, dtype=np.float64), time_attrs)
    else:
        dims, data = dims[1:], np.asarray(data)[0]
    var_attrs = {"standard_name": "air_temperature", **(attrs or {})}
    if units is not None:
        var_attrs["units"] = units
    ds = xr.Dataset({variable: (dims, np.asarray(data, dtype=np.float64), var_attrs)},
                    coords=coords)
    for dim, values in (bounds or {}).items():
        ds[f"{dim}_bnds"] = ((dim, "nv"), np.asarray(values, dtype=np.float64))
        ds[dim].attrs["bounds"] = f"{dim}_bnds"
    ds[variable].encoding["_FillValue"] = fill_value
    ds.to_netcdf(path, format=fmt)
    return path


NcFactory = Callable[..., Path]


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a test (tiny tensors: thread start-up costs more than it saves,
    and runs batch alike, so files agree bit for bit); the setting is restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def latlon_nc(tmp_path: Path) -> NcFactory:
    """``latlon_nc(name="x.nc", **kwargs)`` writes :func:`make_latlon_nc` into tmp_path."""

    def make(name: str = "field.nc", *args: Any, **kwargs: Any) -> Path:
        return make_latlon_nc(tmp_path / name, *args, **kwargs)

    return make


@pytest.fixture(scope="session")
def e1_path() -> Path:
    """iris-sample-data's E1 scenario: 240 annual steps, 360_day calendar, no bounds."""
    iris_sample_data = pytest.importorskip("iris_sample_data")
    path = Path(os.path.join(iris_sample_data.path, "E1_north_america.nc"))
    if not path.exists():
        pytest.skip("iris-sample-data lacks E1_north_america.nc")
    return path


@pytest.fixture(scope="session")
def hadisst_path() -> Path:
    """cartopy's HadISST 1-degree global SST (one month, land missing, latitude descending)."""
    cartopy = pytest.importorskip("cartopy")
    path = Path(cartopy.__file__).parent / "data" / "netcdf" / "HadISST1_SST_update.nc"
    if not path.exists():
        pytest.skip("cartopy lacks HadISST1_SST_update.nc")
    return path


def fit_tiny(root: Path, *extra: str) -> Path:
    """Train the tiny E1 model for one step under ``root``; the checkpoint's path."""
    from downscale.main import main as cli_main

    cwd = Path.cwd()
    os.chdir(root)
    try:
        cli_main(["fit", "--config", TINY, "--trainer.max_steps", "1",
                  "--trainer.limit_val_batches", "1", "--trainer.default_root_dir", str(root),
                  "--trainer.enable_progress_bar", "false", *extra])
    finally:
        os.chdir(cwd)
    return sorted(root.glob("outputs/**/checkpoints/*.ckpt"))[-1]


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of the tiny E1 model (factor 4) after one training step (one per session)."""
    return fit_tiny(tmp_path_factory.mktemp("fit"))


@pytest.fixture(scope="session")
def coarse_nc(tmp_path_factory: pytest.TempPathFactory, e1_path: Path) -> Path:
    """12 steps of E1 air temperature (K), conservatively coarsened by 4: a 9 x 12 grid."""
    fine = crop_to_factor(open_field(e1_path, VARIABLE), (4, 4))
    coarse = coarsen_field(fine.isel(time=slice(0, N_TIME)), VARIABLE, (4, 4)).compute()
    return write_netcdf(coarse, tmp_path_factory.mktemp("inputs") / "e1_coarse.nc")


#: Compliance-checker warnings (medium priority) that the project cannot avoid, by check
#: name; empty: every warning is a failure. (Warnings about what the output inherits from
#: its input, such as a variable attribute named "Model scenario", are the user's: see
#: ``source`` of :func:`assert_cf_compliant`.)
UNAVOIDABLE_CF_WARNINGS: frozenset[str] = frozenset()


def cf_findings(path: Path, tmp: Path) -> tuple[list[str], list[str]]:
    """The compliance-checker's failed errors and warnings on ``path``, one message each."""
    from compliance_checker.runner import CheckSuite, ComplianceChecker

    CheckSuite.load_all_available_checkers()
    report = tmp / f"{path.stem}_cf.json"
    ComplianceChecker.run_checker(str(path), [CF_SUITE], 0, "normal",
                                  output_filename=str(report), output_format="json")
    result = json.loads(report.read_text())[CF_SUITE]
    assert not result.get("errors"), result.get("errors")

    def failed(priority: str) -> list[str]:
        return [f"{c['name']}: {m}" for c in result[priority] if c["value"][0] < c["value"][1]
                and c["name"] not in UNAVOIDABLE_CF_WARNINGS for m in c["msgs"] or [""]]

    return failed("high_priorities"), failed("medium_priorities")


def assert_cf_compliant(path: Path, tmp: Path, *, source: Path | None = None) -> None:
    """No failed check of the CF suite: no errors (high priority) and no warnings (medium)
    but :data:`UNAVOIDABLE_CF_WARNINGS` and those its ``source`` (the input) has too, which
    come with the user's metadata that the output keeps; xarray and ncdump reopen it."""
    errors, warnings = cf_findings(path, tmp)
    assert not errors, errors
    if source is not None:
        (tmp / "source").mkdir(exist_ok=True)
        inherited = set(cf_findings(source, tmp / "source")[1])
        warnings = [w for w in warnings if w not in inherited]
    assert not warnings, warnings
    with xr.open_dataset(path) as ds:
        assert ds.data_vars
    ncdump = shutil.which("ncdump")
    if ncdump is None:
        pytest.skip("ncdump (Debian package netcdf-bin) is not installed")
    header = subprocess.run([ncdump, "-h", str(path)], capture_output=True, text=True,
                            timeout=60, check=True).stdout
    assert "Conventions" in header
