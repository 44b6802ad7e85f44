"""Reading and writing NetCDF: lazy Dask-backed opening, validation, atomic CF output.

Opening returns a *normalised* field (see :mod:`downscale.grid`): a one-variable
``xr.Dataset`` whose variable has dimensions ``(time, lat, lon)`` (or ``(time, y, x)``), ascending latitude, one longitude convention,
``lat_bnds``/``lon_bnds`` coordinates (inferred where the file has none) and missing
values as NaN. Nothing is loaded: every array stays a Dask array until computed.

Every problem the user can fix raises :class:`~downscale.errors.InputError` with the file,
the variable, the problem and what to do.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from downscale.errors import InputError
from downscale.grid import bounds_from_centres

PathLike = str | os.PathLike[str]

#: Values at or beyond this magnitude in a field are undeclared fill values, not data.
SUSPICIOUS_MAGNITUDE = 1e20

_LAT_NAMES = ("lat", "latitude", "nav_lat", "y_lat")
_LON_NAMES = ("lon", "longitude", "nav_lon", "x_lon")


def open_field(
    paths: PathLike | Sequence[PathLike],
    variable: str,
    *,
    chunks: dict[str, int] | None = None,
) -> xr.Dataset:
    """Open one variable from one or many NetCDF files, lazily, as a normalised field.

    Args:
        paths: A file or a list of files that continue each other in time.
        variable: Name of the data variable.
        chunks: Dask chunk sizes by dimension name; default one time step per chunk and
            whole horizontal slices.

    Returns:
        A Dataset holding the Dask-backed variable with dims ``(time, lat, lon)`` or
        ``(time, y, x)`` and its attributes, plus bounds coordinates ``<dim>_bnds`` of shape
        ``(n, 2)``. ``attrs["source_files"]`` lists the inputs.

    Raises:
        InputError: The file is missing, unreadable, lacks the variable, or its grid cannot
            be used (see DESIGN.md §7).
    """
    path_list = [Path(paths)] if isinstance(paths, str | os.PathLike) else [Path(p) for p in paths]
    if not path_list:
        raise InputError("no input files given", variable=variable, hint="pass at least one path")
    pieces = [_open_one(p, variable, chunks) for p in path_list]
    field = pieces[0] if len(pieces) == 1 else _concat_in_time(pieces, path_list, variable)
    field.attrs["source_files"] = ", ".join(str(p) for p in path_list)
    return field


def _open_one(path: Path, variable: str, chunks: dict[str, int] | None) -> xr.Dataset:
    if not path.exists():
        raise InputError("file not found", path=path, hint="check the path")
    try:
        with warnings.catch_warnings():
            # Old files write reference dates like "1-1-1"; xarray decodes them correctly.
            warnings.filterwarnings("ignore", message="Ambiguous reference date")
            ds = xr.open_dataset(path, engine="netcdf4", chunks={},
                                 decode_times=xr.coders.CFDatetimeCoder(use_cftime=None))
    except Exception as exc:  # netCDF-C raises OSError/RuntimeError with terse text
        raise InputError(f"not a readable NetCDF file ({type(exc).__name__}: {exc})", path=path,
                         hint="check the file is complete and not corrupt") from exc
    if variable not in ds.data_vars:
        names = ", ".join(sorted(str(v) for v in ds.data_vars)) or "none"
        raise InputError(f"variable not found (data variables: {names})", path=path,
                         variable=variable, hint="pass one of these with --data.variable")
    field = normalise_field(ds[variable], path=path)
    default_chunks = {d: (1 if d == "time" else -1) for d in field[variable].dims}
    field[variable] = field[variable].chunk(chunks or default_chunks)
    return field.assign_coords({c: field[c].compute() for c in field.coords
                                if str(c).endswith("_bnds")})


def normalise_field(da: xr.DataArray, *, path: PathLike | None = None) -> xr.Dataset:
    """Bring a field onto the package's conventions (see module docstring).

    Args:
        da: The variable as opened by xarray (lazy or not).
        path: The file it came from, for error messages.

    Raises:
        InputError: For grids that cannot be normalised.
    """
    name = str(da.name)

    def fail(problem: str, hint: str) -> InputError:
        return InputError(problem, path=path, variable=name, hint=hint)

    if da.attrs.get("grid_mapping") and _is_rotated(da):
        raise fail("rotated-pole grids are not supported",
                   "regrid to a regular latitude-longitude grid first (e.g. cdo remapcon)")
    ydim, xdim = _find_horizontal_dims(da, fail)
    da = da.rename({ydim: "lat", xdim: "lon"}) if ydim in _LAT_NAMES + ("lat",) else da
    if "lat" not in da.dims:
        da = da.rename({ydim: "y", xdim: "x"})
    ydim, xdim = ("lat", "lon") if "lat" in da.dims else ("y", "x")

    extra = [d for d in da.dims if d not in (ydim, xdim, "time")]
    for d in extra:
        if da.sizes[d] != 1:
            raise fail(f"extra dimension '{d}' of size {da.sizes[d]}",
                       f"select one level first (e.g. ds.isel({d}=0))")
    da = da.squeeze(extra, drop=True) if extra else da
    added_time = "time" not in da.dims
    if added_time:
        da = da.expand_dims("time")
    da = da.transpose("time", ydim, xdim)
    # Scalar and auxiliary coordinates (height, forecast_period, ...) are not carried.
    da = da.drop_vars([c for c in da.coords if c not in ("time", ydim, xdim)])

    for dim in (ydim, xdim):
        values = np.asarray(da[dim].values, dtype=np.float64)
        if values.size < 2:
            raise fail(f"the '{dim}' axis has fewer than two cells",
                       "a grid needs at least 2 x 2 cells")
        if not np.all(np.isfinite(values)):
            raise fail(f"the '{dim}' coordinate has missing values", "fix the coordinate")
        steps = np.diff(values)
        if np.any(steps == 0):
            raise fail(f"the '{dim}' coordinate has duplicate values",
                       "remove the duplicated cells")
        if not (np.all(steps > 0) or np.all(steps < 0)):
            raise fail(f"the '{dim}' coordinate is not monotonic", "sort the grid")
    if "time" in da.coords and da.sizes["time"] > 1:
        t = da["time"].values
        if len(np.unique(t)) != len(t):
            raise fail("the time coordinate has duplicate values", "remove duplicated steps")

    if ydim == "lat":
        da = _normalise_latlon(da, fail)
        ds = da.to_dataset()
        ds = ds.assign_coords(lat_bnds=(("lat", "bnds"), bounds_from_centres(
            da["lat"].values, clip=(-90.0, 90.0))), lon_bnds=(("lon", "bnds"),
                                                                bounds_from_centres(da["lon"].values)))
    else:
        ds = da.sortby("y").sortby("x").to_dataset()
        for dim in ("y", "x"):
            ds = ds.assign_coords({f"{dim}_bnds": ((dim, "bnds"),
                                                   bounds_from_centres(ds[dim].values))})
    if added_time:
        ds.attrs["downscale_added_time"] = 1
    return ds


def _is_rotated(da: xr.DataArray) -> bool:
    return any(str(da[c].attrs.get("standard_name", "")).startswith("grid_")
               for c in da.coords) or "rotated" in str(da.attrs.get("grid_mapping", ""))


def _find_horizontal_dims(da: xr.DataArray, fail: Any) -> tuple[str, str]:
    """Find the latitude/longitude (or y/x) dimension names of a variable."""
    for c in da.coords:
        if str(da[c].attrs.get("standard_name", "")) in ("grid_latitude", "grid_longitude"):
            raise fail("rotated-pole grids are not supported",
                       "regrid to a regular latitude-longitude grid first (e.g. cdo remapcon)")
        if da[c].ndim == 2 and str(da[c].attrs.get("standard_name", c)) in ("latitude",
                                                                           "longitude"):
            raise fail("curvilinear grids (2-D latitude/longitude) are not supported",
                       "regrid to a regular latitude-longitude grid first")

    def pick(names: tuple[str, ...], standard: str, units: tuple[str, ...]) -> str | None:
        for d in da.dims:
            coord = da[d] if d in da.coords else None
            attrs = coord.attrs if coord is not None else {}
            if (str(d).lower() in names or attrs.get("standard_name") == standard
                    or str(attrs.get("units", "")).lower() in units):
                return str(d)
        return None

    lat = pick(_LAT_NAMES, "latitude", ("degrees_north", "degree_north", "degrees_n"))
    lon = pick(_LON_NAMES, "longitude", ("degrees_east", "degree_east", "degrees_e"))
    if lat and lon:
        return lat, lon
    if "y" in da.dims and "x" in da.dims:
        return "y", "x"
    raise fail(f"no latitude/longitude dimensions found in {tuple(map(str, da.dims))}",
               "name them lat/lon or give them CF standard_name attributes")


def _normalise_latlon(da: xr.DataArray, fail: Any) -> xr.DataArray:
    lat = np.asarray(da["lat"].values, dtype=np.float64)
    if np.any(np.abs(lat) > 90):
        raise fail("latitudes outside [-90, 90]", "check the latitude coordinate and its units")
    if lat[0] > lat[-1]:
        da = da.isel(lat=slice(None, None, -1))
    lon = np.asarray(da["lon"].values, dtype=np.float64)
    if lon[0] > lon[-1]:
        da = da.isel(lon=slice(None, None, -1))
        lon = lon[::-1]
    # Prefer [-180, 180); keep [0, 360) when only that keeps the domain contiguous.
    wrapped = ((lon + 180.0) % 360.0) - 180.0
    order = np.argsort(wrapped, kind="stable")
    sorted_wrapped = wrapped[order]
    lon_step = float(np.median(np.abs(np.diff(lon))))
    contiguous = np.all(np.diff(sorted_wrapped) < 1.5 * lon_step + 1e-9)
    if contiguous and not np.array_equal(wrapped, lon):
        da = da.isel(lon=order).assign_coords(lon=("lon", sorted_wrapped.astype(lon.dtype),
                                                   da["lon"].attrs))
    elif not contiguous:
        shifted = lon % 360.0
        if np.all(np.diff(shifted) > 0):
            da = da.assign_coords(lon=("lon", shifted.astype(lon.dtype), da["lon"].attrs))

    for dim, units, std in (("lat", "degrees_north", "latitude"),
                            ("lon", "degrees_east", "longitude")):
        da[dim].attrs.update(units=units, standard_name=std, bounds=f"{dim}_bnds")
    return da


def _concat_in_time(pieces: list[xr.Dataset], paths: list[Path], variable: str) -> xr.Dataset:
    first = pieces[0][variable]
    calendar0 = _calendar(first)
    for piece_ds, path in zip(pieces[1:], paths[1:], strict=True):
        piece = piece_ds[variable]
        if _calendar(piece) != calendar0:
            raise InputError(f"calendar '{_calendar(piece)}' differs from '{calendar0}' of "
                             f"{paths[0]}", path=path, variable=variable,
                             hint="convert the files to one calendar")
        for dim in first.dims[1:]:
            if piece.sizes[dim] != first.sizes[dim] or not np.allclose(piece[dim], first[dim]):
                raise InputError(f"grid ({dim}) differs from that of {paths[0]}", path=path,
                                 variable=variable, hint="regrid the files to one grid")
        if piece.attrs.get("units") != first.attrs.get("units"):
            raise InputError(f"units '{piece.attrs.get('units')}' differ from "
                             f"'{first.attrs.get('units')}' of {paths[0]}", path=path,
                             variable=variable, hint="convert the files to the same units")
    combined = xr.concat(pieces, dim="time", data_vars="minimal", coords="minimal",
                         compat="override", join="override", combine_attrs="override")
    return combined.sortby("time")


def _calendar(da: xr.DataArray) -> str:
    if "time" not in da.coords:
        return "none"
    return str(da["time"].encoding.get("calendar", "standard")).replace("gregorian", "standard")


def check_values(da: xr.DataArray, values: np.ndarray[Any, Any], *, path: PathLike | None = None
                 ) -> None:
    """Reject undeclared fill values in a block of data read from ``da``.

    Args:
        da: The field the values came from (for its name and declared fill values).
        values: A block of its data, any shape.
        path: The file, for the error message.

    Raises:
        InputError: If the block holds magnitudes >= 1e20 (fill values the file does not
            declare as ``_FillValue``/``missing_value``) or infinities.
    """
    finite = values[np.isfinite(values)]
    if finite.size and float(np.max(np.abs(finite))) >= SUSPICIOUS_MAGNITUDE:
        raise InputError(f"values of magnitude {float(np.max(np.abs(finite))):.3g} look like "
                         "undeclared fill values", path=path or da.attrs.get("source_files"),
                         variable=str(da.name),
                         hint="declare them with the _FillValue or missing_value attribute")
    if np.any(np.isinf(values)):
        raise InputError("the field contains infinite values",
                         path=path or da.attrs.get("source_files"), variable=str(da.name),
                         hint="replace them with a declared _FillValue")


def write_netcdf(ds: xr.Dataset, path: PathLike, *, verify: bool = True) -> Path:
    """Write a Dataset to NetCDF atomically: temporary name, verify, rename.

    A crash at any point leaves either the previous file or nothing at ``path``, never a
    partial one. The temporary file lives in the same directory so the rename is atomic.

    Args:
        ds: The dataset; encodings in ``ds[v].encoding`` are respected.
        path: The final path.
        verify: Reopen the temporary file and check its variables before renaming.

    Returns:
        The final path.

    Raises:
        InputError: If the output directory is missing or not writable.
    """
    final = Path(path)
    directory = final.parent if str(final.parent) else Path(".")
    if not directory.is_dir():
        raise InputError("output directory does not exist", path=directory,
                         hint="create it first or choose another output path")
    if not os.access(directory, os.W_OK):
        raise InputError("output directory is not writable", path=directory,
                         hint="choose a writable output path")
    tmp = directory / f".{final.name}.tmp-{os.getpid()}"
    with _removed_on_error(tmp):
        ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4")
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        if verify:
            with xr.open_dataset(tmp, engine="netcdf4", decode_times=False) as check:
                missing = set(map(str, ds.data_vars)) - set(map(str, check.data_vars))
                if missing:
                    raise OSError(f"verification of {tmp} failed: missing {sorted(missing)}")
        os.replace(tmp, final)
    return final


@contextlib.contextmanager
def _removed_on_error(path: Path) -> Iterator[None]:
    try:
        yield
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def history_line(action: str) -> str:
    """A CF ``history`` entry: ISO timestamp and what was done."""
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{stamp}: {action}"
