"""The bad-input catalogue: generated malformed inputs and how each entry point must react.

Each :class:`Case` writes its inputs into a temporary directory and, for every entry point
it reaches, says how to call it and what the one error line must contain. Entry points:

* ``api``: :func:`downscale.io.open_field` (the Python API every command uses).
* ``check``, ``run``, ``fit``, ``predict``: the ``downscale`` command, run in-process
  through :func:`downscale.main.main` (the subprocess path is covered in test_run.py).

Cases that are accepted after normalisation (descending latitude, 0..360 longitude) are
:class:`Accepted` instead: they state what the normalised field must look like.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import netCDF4
import numpy as np
import xarray as xr
import yaml
from conftest import TINY, VARIABLE, make_latlon_nc

#: The grid of every generated file: 8 x 8 cells, 3 steps (divisible by the factor 4).
N = 8


@dataclass(frozen=True)
class Context:
    """What every case may use: a temporary directory, the checkpoint and good files."""

    tmp: Path
    checkpoint: Path
    good: Path
    output: Path

    def nc(self, name: str, **kwargs: Any) -> Path:
        """A small air-temperature file (K, 360_day) under ``tmp``; kwargs as make_latlon_nc."""
        options: dict[str, Any] = {"nlat": N, "nlon": N, "variable": VARIABLE,
                                   "calendar": "360_day", **kwargs}
        return make_latlon_nc(self.tmp / name, **options)


@dataclass(frozen=True)
class Call:
    """One entry point called with one bad input.

    Attributes:
        argv: ``downscale`` arguments, or None for the Python API (``api`` is then called).
        fragments: Texts the error line must contain (the file, the variable, the problem).
        api: For the Python API: a callable that must raise a DownscaleError.
    """

    argv: list[str] | None
    fragments: tuple[str, ...]
    api: Callable[[], object] | None = None


Builder = Callable[[Context], dict[str, Call]]


@dataclass(frozen=True)
class Case:
    """A bad input and the calls that must refuse it."""

    name: str
    build: Builder
    note: str = ""


@dataclass(frozen=True)
class Accepted:
    """An unusual but valid input: the normalised field must satisfy ``check``."""

    name: str
    make: Callable[[Context], Path]
    check: Callable[[xr.Dataset], None]
    note: str = ""
    entries: tuple[str, ...] = field(default=("api", "run"))


# -- how each entry point is called ------------------------------------------------------
def api(path: Path | list[Path], *fragments: str, **kwargs: Any) -> Call:
    from downscale.io import open_field

    paths = path if isinstance(path, list) else [path]
    return Call(None, fragments, lambda: open_field(paths, VARIABLE, **kwargs))


def check(ctx: Context, *, coarse: Path | None = None, fine: Path, fragments: tuple[str, ...]
          ) -> Call:
    return Call(["check", "--coarse", str(coarse or ctx.good), "--fine", str(fine),
                 "--variable", VARIABLE], fragments)


def run(ctx: Context, *inputs: Path, fragments: tuple[str, ...], checkpoint: Path | None = None,
        extra: tuple[str, ...] = ()) -> Call:
    # The files here are on a 1-degree grid, not the checkpoint's coarse 5 x 7.5 degrees.
    return Call(["run", "--checkpoint", str(checkpoint or ctx.checkpoint), "--input",
                 *map(str, inputs), "--output", str(ctx.output), "--workers", "0",
                 "--no-progress", "--any-spacing", *extra], fragments)


def fit(ctx: Context, *paths: Path, fragments: tuple[str, ...], extra: tuple[str, ...] = ()
        ) -> Call:
    path = str(paths[0]) if len(paths) == 1 else "[" + ",".join(map(str, paths)) + "]"
    return Call(["fit", "--config", TINY, "--data.path", path, "--trainer.fast_dev_run", "1",
                 "--trainer.default_root_dir", str(ctx.tmp / "fit"), *extra], fragments)


def predict(ctx: Context, path: Path, *, fragments: tuple[str, ...],
            checkpoint: Path | None = None, extra: tuple[str, ...] = ()) -> Call:
    return Call(["predict", "--config", TINY, "--data.path", str(path), "--ckpt_path",
                 str(checkpoint or ctx.checkpoint), "--prediction_writer.output",
                 str(ctx.output), "--trainer.default_root_dir", str(ctx.tmp / "predict"),
                 *extra], fragments)


def everywhere(ctx: Context, path: Path, *problem: str) -> dict[str, Call]:
    """The same bad file through every entry point; the line names it and the variable."""
    fragments = (str(path), VARIABLE, *problem)
    return {"api": api(path, *fragments), "check": check(ctx, fine=path, fragments=fragments),
            "run": run(ctx, path, fragments=fragments),
            "fit": fit(ctx, path, fragments=fragments),
            "predict": predict(ctx, path, fragments=fragments)}


def on_values(ctx: Context, path: Path, *problem: str) -> dict[str, Call]:
    """Bad values (read when computing): the commands that read them refuse them."""
    fragments = (str(path), VARIABLE, *problem)
    return {"run": run(ctx, path, fragments=fragments),
            "fit": fit(ctx, path, fragments=fragments),
            "predict": predict(ctx, path, fragments=fragments)}


# -- the generated inputs ----------------------------------------------------------------
def _lat(*, repeat: int | None = None, swap: int | None = None) -> np.ndarray[Any, Any]:
    lat = np.arange(N) + 40.5
    if repeat is not None:
        lat[repeat + 1] = lat[repeat]
    if swap is not None:
        lat[[swap, swap + 1]] = lat[[swap + 1, swap]]
    return lat


def _data(value: float, *, where: tuple[int, ...] = (0, 2, 3)) -> np.ndarray[Any, Any]:
    data = 280.0 + np.random.default_rng(0).random((3, N, N))
    data[where] = value
    return data


def _curvilinear(ctx: Context) -> Path:
    y, x = np.meshgrid(np.arange(N), np.arange(N), indexing="ij")
    ds = xr.Dataset(
        {VARIABLE: (("time", "y", "x"), _data(281.0), {"units": "K",
                                                      "coordinates": "nav_lat nav_lon"})},
        coords={"time": ("time", np.arange(3.0), {"units": "days since 2000-01-01",
                                                   "calendar": "360_day"})})
    ds["nav_lat"] = (("y", "x"), 40.0 + y + 0.1 * x, {"units": "degrees_north"})
    ds["nav_lon"] = (("y", "x"), 10.0 + x + 0.1 * y, {"units": "degrees_east"})
    path = ctx.tmp / "curvilinear.nc"
    ds.to_netcdf(path)
    return path


def _rotated(ctx: Context) -> Path:
    ds = xr.Dataset(
        {VARIABLE: (("time", "rlat", "rlon"), _data(281.0),
                    {"units": "K", "grid_mapping": "rotated_pole"}),
         "rotated_pole": ((), 0, {"grid_mapping_name": "rotated_latitude_longitude",
                                  "grid_north_pole_latitude": 39.25,
                                  "grid_north_pole_longitude": -162.0})},
        coords={"time": ("time", np.arange(3.0), {"units": "days since 2000-01-01",
                                                   "calendar": "360_day"}),
                "rlat": ("rlat", np.arange(N) - 4.0, {"standard_name": "grid_latitude",
                                                      "units": "degrees"}),
                "rlon": ("rlon", np.arange(N) - 4.0, {"standard_name": "grid_longitude",
                                                      "units": "degrees"})})
    path = ctx.tmp / "rotated.nc"
    ds.to_netcdf(path)
    return path


def _truncated(ctx: Context) -> Path:
    path = ctx.nc("truncated.nc", fmt="NETCDF3_CLASSIC")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def _fine_of(ctx: Context, name: str, *, shift: float = 0.0, units: str = "K") -> Path:
    """A fine file (factor 4) over the good coarse grid, optionally shifted (not nesting)."""
    n = 4 * N
    edges = lambda start: start + np.arange(n + 1) * 0.25 + shift  # noqa: E731
    lat_edges, lon_edges = edges(40.0), edges(10.0)
    centres = {k: 0.5 * (e[1:] + e[:-1]) for k, e in (("lat", lat_edges), ("lon", lon_edges))}
    data = 281.0 + np.zeros((3, n, n)) if units == "K" else 7.85 + np.zeros((3, n, n))
    return make_latlon_nc(ctx.tmp / name, lat=centres["lat"], lon=centres["lon"], data=data,
                          variable=VARIABLE, units=units, calendar="360_day")


def _tampered_manifest(ctx: Context) -> Path:
    from downscale import manifest as mf

    doc = yaml.safe_load(mf.default_manifest_path().read_text(encoding="utf-8"))
    doc["datasets"]["e1_north_america"]["sha256"] = "0" * 64
    path = ctx.tmp / "tampered_manifest.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


class _Exploit:
    """Unpickling this would run ``touch <marker>``; weights-only loading must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def malicious_checkpoint(tmp: Path) -> tuple[Path, Path]:
    """A checkpoint-shaped pickle with a ``__reduce__`` payload, and the marker it would make."""
    import torch

    marker = tmp / "pwned"
    path = tmp / "malicious.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"factor": 4},
                "downscale_data": {"variable": VARIABLE}, "payload": _Exploit(marker)}, path,
               pickle_protocol=pickle.DEFAULT_PROTOCOL)
    return path, marker


def _missing_variable(ctx: Context) -> dict[str, Call]:
    # Another quantity: run would otherwise take 'tas' for the checkpoint's by its meaning.
    path = ctx.nc("renamed.nc", variable="tas", attrs={"standard_name": "surface_temperature"})
    return everywhere(ctx, path, "variable not found", "tas")


def _missing_file(ctx: Context) -> dict[str, Call]:
    return everywhere(ctx, ctx.tmp / "absent.nc", "file not found")


def _empty_file(ctx: Context) -> dict[str, Call]:
    path = ctx.tmp / "empty.nc"
    path.write_bytes(b"")
    return everywhere(ctx, path, "not a readable NetCDF file")


def _corrupt(ctx: Context) -> dict[str, Call]:
    path = ctx.tmp / "corrupt.nc"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + np.random.default_rng(0).bytes(4096))
    return everywhere(ctx, path, "not a readable NetCDF file")


def _not_monotonic(ctx: Context) -> dict[str, Call]:
    return everywhere(ctx, ctx.nc("unsorted.nc", lat=_lat(swap=3)), "'lat'", "not monotonic")


def _duplicate(ctx: Context) -> dict[str, Call]:
    return everywhere(ctx, ctx.nc("duplicate.nc", lat=_lat(repeat=3)), "'lat'", "duplicate")


def _duplicate_time(ctx: Context) -> dict[str, Call]:
    path = ctx.nc("dup_time.nc")
    with netCDF4.Dataset(path, "a") as nc:
        nc["time"][:] = [0.0, 1.0, 1.0]
    return everywhere(ctx, path, "'time'", "duplicate")


def _lat_out_of_range(ctx: Context) -> dict[str, Call]:
    path = ctx.nc("lat_range.nc", lat=np.arange(N) * 30.0 - 100.0)
    return everywhere(ctx, path, "latitudes outside [-90, 90]")


def _curvilinear_case(ctx: Context) -> dict[str, Call]:
    return everywhere(ctx, _curvilinear(ctx), "curvilinear", "not supported")


def _rotated_case(ctx: Context) -> dict[str, Call]:
    return everywhere(ctx, _rotated(ctx), "rotated-pole", "not supported")


def _truncated_case(ctx: Context) -> dict[str, Call]:
    return everywhere(ctx, _truncated(ctx), "truncated")


def _undeclared_fill(ctx: Context) -> dict[str, Call]:
    path = ctx.nc("fill.nc", data=_data(9.96921e36), fill_value=None)
    return on_values(ctx, path, "undeclared fill values")


def _infinite(ctx: Context) -> dict[str, Call]:
    return on_values(ctx, ctx.nc("inf.nc", data=_data(np.inf), fill_value=None), "infinite")


def _all_missing(ctx: Context) -> dict[str, Call]:
    path = ctx.nc("all_nan.nc", data=np.full((3, N, N), np.nan))
    fragments = (str(path), VARIABLE, "no valid values")
    return {"fit": fit(ctx, path, fragments=fragments),
            "predict": predict(ctx, path, fragments=fragments),
            "run --strict": run(ctx, path, extra=("--strict",), fragments=(
                str(path), VARIABLE, "all values are missing", "--strict"))}


def _missing_step(ctx: Context) -> dict[str, Call]:
    data = _data(281.0)
    data[1] = np.nan
    path = ctx.nc("gap.nc", data=data)
    return {"run --strict": run(ctx, path, extra=("--strict",), fragments=(
        str(path), VARIABLE, "1 of 3 time steps have no valid value (first: time="))}


#: Where _data puts its odd value: time step 0, latitude 42.5, longitude 13.5.
_AT = "time=2000-01-01, lat=42.5, lon=13.5"


def _sentinel(ctx: Context) -> dict[str, Call]:
    path = ctx.nc("sentinel.nc", data=_data(-9999.0), fill_value=None)
    return on_values(ctx, path, "1 value equal to -9999", "undeclared fill value", _AT,
                     "_FillValue")


def _cmip_fill(ctx: Context) -> dict[str, Call]:
    path = ctx.nc("cmip_fill.nc", data=_data(1e20), fill_value=None)
    return on_values(ctx, path, "1e+20, the CMIP fill value", _AT)


def _zero_kelvin(ctx: Context) -> dict[str, Call]:
    path = ctx.nc("zero_kelvin.nc", data=_data(0.0), fill_value=None)
    return on_values(ctx, path, "1 value at or below 0 K, impossible for air_temperature", _AT)


def _negative_precipitation(ctx: Context) -> dict[str, Call]:
    data = np.abs(_data(1e-5)) * 1e-7
    data[2, 4, 5] = -2e-6  # the last step: in the test split, checked too
    path = ctx.nc("negative_pr.nc", data=data, units="kg m-2 s-1",
                  attrs={"standard_name": "precipitation_flux"})
    fragments = (str(path), VARIABLE, "1 value below 0, impossible for precipitation_flux",
                 "lat=44.5, lon=15.5: -2e-06")
    return {"fit": fit(ctx, path, fragments=fragments)}


def _radians(ctx: Context) -> dict[str, Call]:
    path = ctx.nc("radians.nc", lat=np.deg2rad(_lat()), lon=np.deg2rad(np.arange(N) + 10.5))
    with netCDF4.Dataset(path, "a") as nc:
        nc["lat"].units = "radians"
        nc["lon"].units = "radians"
    return everywhere(ctx, path, "the 'lat' coordinate is in radians, not degrees",
                      "multiply by 57.29577951")


def _projected_without_units(ctx: Context) -> dict[str, Call]:
    ds = xr.Dataset({VARIABLE: (("time", "y", "x"), _data(281.0), {"units": "K"})}, coords={
        "time": ("time", np.arange(3.0), {"units": "days since 2000-01-01",
                                          "calendar": "360_day"}),
        "y": ("y", np.arange(N) * 1000.0), "x": ("x", np.arange(N) * 1000.0)})
    path = ctx.tmp / "xy_no_units.nc"
    ds.to_netcdf(path)
    return everywhere(ctx, path, "the projected 'y' coordinate has no units")


def _not_divisible(ctx: Context) -> dict[str, Call]:
    path = ctx.nc("odd.nc", nlat=N + 2, nlon=N + 1)
    fragments = (str(path), VARIABLE, "not divisible by the factor")
    return {"fit": fit(ctx, path, fragments=fragments, extra=("--data.crop", "false")),
            "predict": predict(ctx, path, fragments=fragments, extra=("--data.crop", "false"))}


def _not_nesting(ctx: Context) -> dict[str, Call]:
    fine = _fine_of(ctx, "shifted_fine.nc", shift=0.1)
    return {"check": check(ctx, fine=fine, fragments=(str(fine), VARIABLE, "does not nest")),
            "fit": fit(ctx, fine, extra=("--data.coarse_path", str(ctx.good)),
                       fragments=(str(ctx.good), VARIABLE, "does not nest"))}


def _units(ctx: Context) -> dict[str, Call]:
    celsius = ctx.nc("celsius.nc", units="degC", data=_data(7.0))
    metres = ctx.nc("metres.nc", units="m")  # run converts degC to K; m has no conversion
    fine = _fine_of(ctx, "celsius_fine.nc", units="degC")
    return {"check": check(ctx, fine=fine, fragments=(str(fine), VARIABLE, "'degC'", "'K'")),
            "run": run(ctx, metres, fragments=(str(metres), VARIABLE, "is in m", "in K")),
            "fit": fit(ctx, _fine_of(ctx, "kelvin_fine.nc"), extra=(
                "--data.coarse_path", str(celsius)), fragments=(str(celsius), VARIABLE,
                                                                "'degC'", "'K'")),
            "predict": predict(ctx, fine, fragments=(str(fine), VARIABLE, "degC", "in K"))}


def _no_units(ctx: Context) -> dict[str, Call]:
    path = ctx.nc("no_units.nc", units=None)
    fragments = (str(path), VARIABLE, "no units")
    return {"run": run(ctx, path, fragments=fragments),
            "predict": predict(ctx, path, fragments=fragments)}


def _calendars(ctx: Context) -> dict[str, Call]:
    first = ctx.nc("noleap.nc", calendar="noleap")
    second = ctx.nc("360_day.nc", calendar="360_day", start=3)
    fragments = (str(second), VARIABLE, "calendar '360_day' differs from 'noleap'")
    return {"api": api([first, second], *fragments),
            "run": run(ctx, first, second, fragments=fragments),
            "fit": fit(ctx, first, second, fragments=fragments)}


def _empty_time(ctx: Context) -> dict[str, Call]:
    path = ctx.nc("short.nc")
    return {"api": api(path, str(path), VARIABLE, "time selection", "is empty",
                       time=slice("2100-01-01", "2101-01-01"))}


def _manifest(ctx: Context) -> dict[str, Call]:
    # The manifest override is set by the test (environment), see MANIFEST_CASES.
    fragments = ("e1_north_america", "0" * 64)
    return {"fit": Call(["fit", "--config", TINY, "--trainer.fast_dev_run", "1",
                         "--trainer.default_root_dir", str(ctx.tmp / "fit")], fragments),
            "predict": Call(["predict", "--config", TINY, "--ckpt_path", str(ctx.checkpoint),
                             "--prediction_writer.output", str(ctx.output)], fragments)}


def _other_variable(ctx: Context) -> dict[str, Call]:
    path = ctx.nc("tas.nc", variable="tas", attrs={"standard_name": "surface_temperature"})
    return {"run": run(ctx, path, extra=("--variable", "tas"),
                       fragments=(str(ctx.checkpoint), f"trained for variable '{VARIABLE}'",
                                  "'tas'")),
            "predict": predict(ctx, path, extra=("--data.variable", "tas"),
                               fragments=(str(ctx.checkpoint),
                                          f"trained for variable '{VARIABLE}'", "'tas'"))}


def _other_factor(ctx: Context) -> dict[str, Call]:
    path = ctx.nc("factor2.nc")
    return {"predict": predict(ctx, path, extra=("--data.factor", "2"),
                               fragments=(str(ctx.checkpoint), "trained for factor 4",
                                          "factor 2"))}


def _malicious(ctx: Context) -> dict[str, Call]:
    ckpt, _ = malicious_checkpoint(ctx.tmp)
    fragments = (str(ckpt), "not unpickled for safety")
    return {"run": run(ctx, ctx.good, checkpoint=ckpt, fragments=fragments),
            "predict": predict(ctx, ctx.good, checkpoint=ckpt, fragments=fragments)}


def _corrupt_checkpoint(ctx: Context) -> dict[str, Call]:
    ckpt = ctx.tmp / "garbage.ckpt"
    ckpt.write_bytes(b"not a checkpoint" * 64)
    fragments = (str(ckpt), "checkpoint")
    return {"run": run(ctx, ctx.good, checkpoint=ckpt, fragments=fragments),
            "predict": predict(ctx, ctx.good, checkpoint=ckpt, fragments=fragments)}


CASES = [
    Case("missing variable", _missing_variable),
    Case("missing file", _missing_file),
    Case("empty (0-byte) file", _empty_file),
    Case("corrupt NetCDF", _corrupt),
    Case("truncated NetCDF-3", _truncated_case),
    Case("non-monotonic latitude", _not_monotonic),
    Case("duplicate latitude", _duplicate),
    Case("duplicate time steps", _duplicate_time),
    Case("latitude outside [-90, 90]", _lat_out_of_range),
    Case("curvilinear grid", _curvilinear_case),
    Case("rotated-pole grid", _rotated_case),
    Case("undeclared fill values (9.97e36)", _undeclared_fill),
    Case("infinite values", _infinite),
    Case("all values missing (NaN)", _all_missing,
         "run without --strict warns in one line: missing in, missing out"),
    Case("one time step entirely missing", _missing_step,
         "without --strict a warning line; fit warns too"),
    Case("undeclared sentinel -9999 in K", _sentinel),
    Case("undeclared CMIP fill value 1e20", _cmip_fill),
    Case("0 K in air temperature", _zero_kelvin),
    Case("negative precipitation", _negative_precipitation,
         "run and predict refuse the checkpoint's units first"),
    Case("latitude/longitude in radians", _radians),
    Case("projected y/x without units", _projected_without_units),
    Case("size not divisible by the factor (crop off)", _not_divisible),
    Case("coarse and fine grids do not nest", _not_nesting),
    Case("unit mismatch (degC vs K)", _units,
         "run converts degC into K (and back): its row is a file in m, which has no conversion"),
    Case("no units attribute", _no_units),
    Case("mixed calendars across files", _calendars),
    Case("empty time selection", _empty_time, "only the Python API selects times"),
    Case("manifest checksum mismatch", _manifest),
    Case("checkpoint for another variable", _other_variable),
    Case("checkpoint for another factor", _other_factor),
    Case("pickle checkpoint with a __reduce__ payload", _malicious),
    Case("corrupt checkpoint", _corrupt_checkpoint),
]
#: Cases whose calls need the tampered manifest in the environment.
MANIFEST_CASES = {"manifest checksum mismatch": _tampered_manifest}
