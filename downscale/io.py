"""Reading and writing NetCDF: lazy Dask-backed opening, validation, atomic CF output.

Opening returns a *normalised* field (see :mod:`downscale.grid`): a one-variable
``xr.Dataset`` whose variable has dimensions ``(time, lat, lon)`` (or ``(time, y, x)``),
ascending latitude, one longitude convention, ``lat_bnds``/``lon_bnds`` coordinates (from
the file's CF ``bounds`` variables, inferred where the file has none) and missing values
as NaN. Nothing is loaded: the data stay a Dask array until computed.

Every problem the user can fix raises :class:`~downscale.errors.InputError` whose message
is one line: the file, the variable, the problem and what to do.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import difflib
import errno
import logging
import os
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import cftime
import numpy as np
import xarray as xr
from numpy.typing import ArrayLike, NDArray

from downscale.conventions import (
    add_file_metadata,
    conventions_of,
    join_in_time,
    record_field,
    with_conventions,
)
from downscale.errors import InputError
from downscale.grid import bounds_from_centres
from downscale.validate import SUSPICIOUS_MAGNITUDE as SUSPICIOUS_MAGNITUDE
from downscale.validate import check_values as check_values
from downscale.validate import coordinate_scale, mask_outside_valid_range

PathLike = str | os.PathLike[str]

_LAT_NAMES = ("lat", "latitude", "nav_lat", "y_lat")
_LON_NAMES = ("lon", "longitude", "nav_lon", "x_lon")
_LAT_UNITS = ("degrees_north", "degree_north", "degrees_n", "degree_n")
_LON_UNITS = ("degrees_east", "degree_east", "degrees_e", "degree_e")
_ROTATED_NAMES = ("rlat", "rlon", "grid_latitude", "grid_longitude")
_ROTATED_HINT = "regrid to a regular latitude-longitude grid first (e.g. cdo remapcon)"
_INDEX = "__downscale_index_{}"

Fail = Callable[[str, str], InputError]
log = logging.getLogger(__name__)


def open_field(
    paths: PathLike | Sequence[PathLike],
    variable: str,
    *,
    chunks: dict[str, int] | None = None,
    time: slice | None = None,
) -> xr.Dataset:
    """Open one variable from one or many NetCDF files, lazily, as a normalised field.

    Args:
        paths: A file or a list of files that continue each other in time.
        variable: Name of the data variable.
        chunks: Dask chunk sizes by (normalised) dimension name; dimensions not named keep
            the default of one time step per chunk and whole horizontal slices.
        time: Optional selection of time steps, e.g. ``slice("2000-01", "2009-12")``,
            applied after the files are joined.

    Returns:
        A Dataset holding the Dask-backed variable with dims ``(time, lat, lon)`` or
        ``(time, y, x)`` and its attributes, plus bounds coordinates ``<dim>_bnds`` of shape
        ``(n, 2)``. ``attrs["source_files"]`` lists the inputs.

    Raises:
        InputError: The file is missing, unreadable or truncated, lacks the variable, its
            grid cannot be used, the files do not continue each other, or the time
            selection is empty (see docs/method.md#bad-input).
    """
    path_list = [Path(paths)] if isinstance(paths, str | os.PathLike) else [Path(p) for p in paths]
    if not path_list:
        raise InputError("no input files given", variable=variable, hint="pass at least one path")
    pieces = [_open_one(p, variable, chunks) for p in path_list]
    field = pieces[0] if len(pieces) == 1 else with_conventions(
        _concat_in_time(pieces, path_list, variable),
        join_in_time([conventions_of(p) for p in pieces]))
    where = ", ".join(str(p) for p in path_list)
    if time is not None:
        field = _select_time(field, time, where, variable)
    field.attrs["source_files"] = where
    return field


def _open_one(path: Path, variable: str, chunks: dict[str, int] | None) -> xr.Dataset:
    if not path.exists():
        raise InputError("file not found", path=path, variable=variable, hint="check the path")
    if path.is_dir():
        raise InputError("is a directory, not a NetCDF file", path=path, variable=variable,
                         hint="give the path of a .nc file")
    _check_not_truncated(path, variable)
    try:
        with warnings.catch_warnings():
            # Old files write reference dates like "1-1-1"; xarray decodes them correctly.
            warnings.filterwarnings("ignore", message="Ambiguous reference date")
            # Not chunks={}: the file's own chunks make a contiguous variable one Dask chunk,
            # and reading one time step would load all of it. _normalise_opened chunks it.
            ds = xr.open_dataset(path, engine="netcdf4", chunks=None,
                                 decode_times=xr.coders.CFDatetimeCoder(use_cftime=None))
    except ValueError as exc:  # xarray's CF decoding: time units, fill values, scaling
        reason = _reason(exc, path).split(". Try ")[0]  # drop xarray's advice to programmers
        raise InputError(f"the file's CF metadata cannot be decoded ({reason})",
                         path=path, variable=variable,
                         hint="fix the units, calendar and _FillValue attributes") from exc
    except Exception as exc:  # netCDF-C raises OSError/RuntimeError with terse text
        raise InputError(f"not a readable NetCDF file ({_reason(exc, path)})", path=path,
                         variable=variable,
                         hint="check that the file is complete and not corrupt "
                              "(re-download or re-create it)") from exc
    try:
        return _normalise_opened(ds, path, variable, chunks)
    except BaseException:
        ds.close()
        raise


def _normalise_opened(ds: xr.Dataset, path: Path, variable: str,
                      chunks: dict[str, int] | None) -> xr.Dataset:
    if variable not in ds.data_vars:
        raise InputError(_missing_variable(ds, variable), path=path, variable=variable,
                         hint="pass one of the listed variables (e.g. --data.variable)")
    da = ds[variable]

    def fail(problem: str, hint: str) -> InputError:
        return InputError(problem, path=path, variable=variable, hint=hint)

    _check_grid_mapping(ds, da, fail)
    _check_auxiliary_coords(ds, da, fail)
    # Lazy Dask reads of one index of every leading dimension (a time step) at a time, so
    # memory is bounded by the chunks asked for below, whatever the file's layout.
    da = da.chunk({d: (1 if i < da.ndim - 2 else -1) for i, d in enumerate(da.dims)})
    field = normalise_field(da, path=path, bounds=_file_bounds(ds, da), keep_conventions=True)
    record = conventions_of(field)
    if record is not None:
        with_conventions(field, add_file_metadata(record, ds))
    field[variable].encoding.pop("coordinates", None)  # names coordinates that are dropped
    field[variable] = field[variable].chunk(
        {**{d: (1 if d == "time" else -1) for d in field[variable].dims}, **(chunks or {})})
    return field


def _reason(exc: BaseException, path: Path) -> str:
    """The text of a library exception on one line, without the (long) path."""
    text = " ".join(str(exc).split())
    for name in sorted({str(path.resolve()), str(path)}, key=len, reverse=True):
        text = text.replace(f": '{name}'", "").replace(f"'{name}'", "the file")
        text = text.replace(name, "the file")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def gridded_variables(ds: xr.Dataset) -> list[str]:
    """The data variables a user can choose: 2-D or more, not cell bounds, sorted.

    Bounds are the variables that a ``bounds`` attribute names (CF 7.1: ``time_bnds``,
    ``lat_bnds``, ...) and, in files that forget the attribute, names ending in ``_bnds``
    or ``_bounds``.
    """
    named = {str(var.attrs.get("bounds", var.encoding.get("bounds", "")))
             for var in ds.variables.values()}
    return sorted(str(v) for v, da in ds.data_vars.items()
                  if da.ndim >= 2 and str(v) not in named
                  and not str(v).endswith(("_bnds", "_bounds")))


def gridded_variables_in(path: PathLike, variable: str | None = None) -> list[str]:
    """:func:`gridded_variables` of a file, read from its header only.

    Args:
        path: The NetCDF file.
        variable: The variable the caller looks for, named in the error messages.

    Raises:
        InputError: The file is missing or not readable as NetCDF.
    """
    if not Path(path).is_file():
        raise InputError("file not found", path=path, variable=variable, hint="check the path")
    try:
        with xr.open_dataset(path, decode_times=False) as ds:
            return gridded_variables(ds)
    except (OSError, ValueError) as exc:
        raise InputError(f"not a readable NetCDF file ({_reason(exc, Path(path))})", path=path,
                         variable=variable,
                         hint="check that the file is complete and not corrupt") from exc


def _missing_variable(ds: xr.Dataset, variable: str) -> str:
    fields = gridded_variables(ds) or sorted(str(v) for v in ds.data_vars)
    if variable in ds.coords:
        problem = "is a coordinate, not a data variable"
    else:
        close = difflib.get_close_matches(variable, fields, n=1)
        problem = "variable not found" + (f" (did you mean '{close[0]}'?)" if close else "")
    return f"{problem}; data variables: {', '.join(sorted(fields)) or 'none'}"


def _check_grid_mapping(ds: xr.Dataset, da: xr.DataArray, fail: Fail) -> None:
    """Reject rotated-pole grids declared through the CF ``grid_mapping`` attribute."""
    mapping = str(da.attrs.get("grid_mapping", da.encoding.get("grid_mapping", "")))
    # Extended form "crs_a: x y crs_b: lat lon" names the mappings before the colons.
    names = [t.rstrip(":") for t in mapping.split() if t.endswith(":")] or mapping.split()
    for name in names:
        attrs = ds[name].attrs if name in ds.variables else {}
        if "rotated" in name.lower() or attrs.get("grid_mapping_name") in (
                "rotated_latitude_longitude", "rotated_pole"):
            raise fail("rotated-pole grids (rotated_latitude_longitude) are not supported",
                       _ROTATED_HINT)


def _check_auxiliary_coords(ds: xr.Dataset, da: xr.DataArray, fail: Fail) -> None:
    """Reject curvilinear grids whose 2-D latitude/longitude are not attached coordinates."""
    if _latlon_dims(da) is not None:
        return
    for name, var in ds.variables.items():
        if (name != da.name and var.ndim == 2 and set(var.dims) <= set(da.dims)
                and _coord_kind(str(name), var.attrs) is not None):
            raise fail(f"curvilinear grids (2-D latitude/longitude '{name}') are not supported",
                       "regrid to a regular latitude-longitude grid first (e.g. cdo remapcon)")


def _file_bounds(ds: xr.Dataset, da: xr.DataArray) -> dict[str, NDArray[np.float64]]:
    """The CF cell bounds of ``da``'s dimensions that the file provides, shape ``(n, 2)``."""
    found: dict[str, NDArray[np.float64]] = {}
    for dim in map(str, da.dims):
        if dim not in ds.variables:
            continue
        name = ds[dim].attrs.get("bounds", ds[dim].encoding.get("bounds"))
        if not isinstance(name, str) or name not in ds.variables:
            continue
        bnds = ds[name]
        other = [d for d in bnds.dims if d != dim]
        # Only numeric (horizontal) bounds; time bounds are decoded dates.
        if (bnds.ndim == 2 and np.issubdtype(bnds.dtype, np.number) and dim in bnds.dims
                and bnds.sizes[other[0]] == 2):
            found[dim] = np.asarray(bnds.transpose(dim, other[0]).values, dtype=np.float64)
    return found


def normalise_field(da: xr.DataArray, *, path: PathLike | None = None,
                    bounds: Mapping[str, ArrayLike] | None = None,
                    keep_conventions: bool = False) -> xr.Dataset:
    """Bring a field onto the package's conventions (see module docstring).

    Args:
        da: The variable as opened by xarray (lazy or not).
        path: The file it came from, for error messages.
        bounds: Cell bounds, shape ``(n, 2)``, by the dimension names of ``da``, in the
            order of ``da``'s coordinates; they are reordered with the grid. Dimensions
            without bounds get bounds inferred halfway between centres.
        keep_conventions: Record ``da``'s own form (names, order, longitude range,
            attributes) for outputs to return to
            (:func:`downscale.conventions.conventions_of`); for fields read from a user's
            file, not for arrays the package arranged itself.

    Returns:
        A Dataset with the variable, dims ``(time, lat, lon)`` or ``(time, y, x)``, and
        ``<dim>_bnds`` coordinates of shape ``(n, 2)`` in float64.

    Raises:
        InputError: For grids that cannot be normalised.
    """
    name = str(da.name)
    original = da.copy(deep=False)  # its own attribute dicts: kept for the way back

    def fail(problem: str, hint: str) -> InputError:
        return InputError(problem, path=path, variable=name, hint=hint)

    ydim, xdim, latlon = _find_horizontal_dims(da, fail)
    tdim = _find_time_dim(da, (ydim, xdim), fail)
    new_y, new_x = ("lat", "lon") if latlon else ("y", "x")
    labels = {new_y: ydim, new_x: xdim, "time": tdim or "time"}
    given = {new_y: bounds.get(ydim) if bounds else None,
             new_x: bounds.get(xdim) if bounds else None}
    for old, new in ((ydim, new_y), (xdim, new_x)):
        if old in da.coords:
            da, given[new] = _in_package_units(da, old, new, given[new], latlon, fail)
    da = mask_outside_valid_range(da, path)

    extra = [d for d in map(str, da.dims) if d not in (ydim, xdim, tdim)]
    # Scalar and auxiliary coordinates (height, forecast_period, ...) are not carried.
    da = da.drop_vars([c for c in da.coords if c not in da.dims or c in extra])
    da = da.squeeze(extra, drop=True) if extra else da
    da = da.rename({k: v for k, v in ((ydim, new_y), (xdim, new_x), (tdim, "time"))
                    if k is not None and k != v})
    added_time = "time" not in da.dims
    if added_time:
        da = da.expand_dims("time")
    da = da.transpose("time", new_y, new_x)
    ydim, xdim = new_y, new_x

    file_centres: dict[str, NDArray[np.float64]] = {}
    for dim in (ydim, xdim):
        da, file_centres[dim] = _check_axis(da, dim, labels[dim],
                                            periodic=latlon and dim == xdim, fail=fail)
        da = da.assign_coords({_INDEX.format(dim): (dim, np.arange(da.sizes[dim]))})
    da = _normalise_latlon(da, labels, fail) if latlon else _sort_ascending(da, (ydim, xdim))
    da = _normalise_time(da, labels["time"], fail)

    coords: dict[str, Any] = {}
    for dim in (ydim, xdim):
        index = np.asarray(da[_INDEX.format(dim)].values)
        coords[f"{dim}_bnds"] = ((dim, "bnds"), _bounds(
            da, dim, given[dim], file_centres[dim][index], labels[dim], fail))
        da[dim].attrs["bounds"] = f"{dim}_bnds"
    record = record_field(
        original, da, names={k: v for k, v in labels.items() if k != "time" or tdim},
        file_centres=file_centres, bounds={d: coords[f"{d}_bnds"][1] for d in (ydim, xdim)},
        positions={d: da[_INDEX.format(d)].values for d in (ydim, xdim)}, file_bounds=given)
    da = da.drop_vars([_INDEX.format(d) for d in (ydim, xdim)])
    ds = da.to_dataset().assign_coords(coords)
    if keep_conventions:
        with_conventions(ds, record)
    if added_time:
        ds.attrs["downscale_added_time"] = 1
    return ds


def _in_package_units(da: xr.DataArray, dim: str, new: str, bounds: ArrayLike | None,
                      latlon: bool, fail: Fail) -> tuple[xr.DataArray, ArrayLike | None]:
    """Check a horizontal coordinate's units; projected km become metres (with its bounds)."""
    attrs = da[dim].attrs
    scale = coordinate_scale(attrs.get("units"), new, dim, latlon=latlon, fail=fail)
    if scale == 1.0:
        return da, bounds
    log.info("%s: '%s' converted from %s to m.", da.name, dim, attrs.get("units"))
    values = np.asarray(da[dim].values, dtype=np.float64) * scale
    da = da.assign_coords({dim: (dim, values, {**attrs, "units": "m"})})
    return da, None if bounds is None else np.asarray(bounds, dtype=np.float64) * scale


def _coord_kind(name: str, attrs: Mapping[Any, Any]) -> str | None:
    """``"lat"``, ``"lon"`` or None: what a coordinate's name, standard_name or units say."""
    standard = str(attrs.get("standard_name", ""))
    units = str(attrs.get("units", "")).lower()
    if name.lower() in _LAT_NAMES or standard == "latitude" or units in _LAT_UNITS:
        return "lat"
    if name.lower() in _LON_NAMES or standard == "longitude" or units in _LON_UNITS:
        return "lon"
    return None


def _latlon_dims(da: xr.DataArray) -> tuple[str, str] | None:
    kinds: dict[str, str] = {}
    for d in map(str, da.dims):
        kind = _coord_kind(d, da[d].attrs if d in da.coords else {})
        if kind is not None:
            kinds.setdefault(kind, d)
    return (kinds["lat"], kinds["lon"]) if len(kinds) == 2 else None


def _find_horizontal_dims(da: xr.DataArray, fail: Fail) -> tuple[str, str, bool]:
    """The latitude/longitude (or y/x) dimension names of a variable, and which kind."""
    for c in map(str, list(da.coords) + list(da.dims)):
        standard = str(da[c].attrs.get("standard_name", "")) if c in da.coords else ""
        if c.lower() in _ROTATED_NAMES or standard in ("grid_latitude", "grid_longitude"):
            raise fail(f"rotated-pole grids ('{c}' is a rotated coordinate) are not supported",
                       _ROTATED_HINT)
    if "rotated" in str(da.attrs.get("grid_mapping", "")).lower():
        raise fail("rotated-pole grids (rotated_latitude_longitude) are not supported",
                   _ROTATED_HINT)
    found = _latlon_dims(da)
    if found is not None:
        return found[0], found[1], True
    for c in map(str, da.coords):
        if da[c].ndim >= 2 and _coord_kind(c, da[c].attrs) is not None:
            raise fail(f"curvilinear grids (2-D latitude/longitude '{c}') are not supported",
                       "regrid to a regular latitude-longitude grid first (e.g. cdo remapcon)")
    if "y" in da.dims and "x" in da.dims:
        return "y", "x", False
    projected = {str(da[d].attrs.get("standard_name", "")): str(d) for d in da.dims
                 if d in da.coords}
    if "projection_y_coordinate" in projected and "projection_x_coordinate" in projected:
        return projected["projection_y_coordinate"], projected["projection_x_coordinate"], False
    raise fail(f"no latitude/longitude dimensions found in {tuple(map(str, da.dims))}",
               "name them lat/lon or give them CF standard_name attributes")


def _find_time_dim(da: xr.DataArray, horizontal: tuple[str, str], fail: Fail) -> str | None:
    """The time dimension (named ``time`` or recognised by its values/attributes), if any."""
    others = [str(d) for d in da.dims if d not in horizontal]
    if "time" in others:
        candidates = ["time"]
    else:
        candidates = [d for d in others if d in da.coords and da.sizes[d] > 0 and (
            np.issubdtype(da[d].dtype, np.datetime64)
            or (da[d].dtype == object and isinstance(da[d].values.flat[0], cftime.datetime))
            or da[d].attrs.get("standard_name") == "time" or da[d].attrs.get("axis") == "T")]
    tdim = candidates[0] if candidates else None
    for d in others:
        if d != tdim and da.sizes[d] != 1:
            raise fail(f"extra dimension '{d}' of size {da.sizes[d]}",
                       f"select one level first (e.g. ds.isel({d}=0))")
    return tdim


def _check_axis(da: xr.DataArray, dim: str, label: str, *, periodic: bool, fail: Fail
                ) -> tuple[xr.DataArray, NDArray[np.float64]]:
    """Validate one horizontal axis; returns the (possibly unwrapped) field and file values."""
    if dim not in da.coords:
        raise fail(f"the '{label}' dimension has no coordinate values",
                   "add a coordinate variable with the cell centres")
    if not np.issubdtype(da[dim].dtype, np.number):
        raise fail(f"the '{label}' coordinate is not numeric", "fix the coordinate")
    values = np.asarray(da[dim].values, dtype=np.float64)
    if values.size < 2:
        raise fail(f"the '{label}' axis has fewer than two cells",
                   "a grid needs at least 2 x 2 cells")
    if not np.all(np.isfinite(values)):
        raise fail(f"the '{label}' coordinate has missing values", "fix the coordinate")
    steps = np.diff(values)
    if periodic and not (np.all(steps > 0) or np.all(steps < 0)):
        # A longitude axis that jumps once by 360 (e.g. 170..179, -180..-170) is monotonic.
        unwrapped = np.unwrap(values, period=360.0)
        unsteps = np.diff(unwrapped)
        if ((np.all(unsteps > 0) or np.all(unsteps < 0))
                and abs(unwrapped[-1] - unwrapped[0]) < 360.0):
            da = da.assign_coords({dim: (dim, unwrapped.astype(da[dim].dtype), da[dim].attrs)})
            steps = unsteps
    if np.any(steps == 0):
        i = int(np.flatnonzero(steps == 0)[0])
        raise fail(f"the '{label}' coordinate has duplicate values ({values[i]:g} at "
                   f"positions {i} and {i + 1})", "remove the duplicated cells")
    if not (np.all(steps > 0) or np.all(steps < 0)):
        raise fail(f"the '{label}' coordinate is not monotonic",
                   f"sort the grid (e.g. ds.sortby('{label}'))")
    return da, values


def _sort_ascending(da: xr.DataArray, dims: Sequence[str]) -> xr.DataArray:
    for dim in dims:
        if float(da[dim][0]) > float(da[dim][-1]):
            da = da.isel({dim: slice(None, None, -1)})
    return da


def _normalise_latlon(da: xr.DataArray, labels: Mapping[str, str], fail: Fail) -> xr.DataArray:
    lat = np.asarray(da["lat"].values, dtype=np.float64)
    if np.any(np.abs(lat) > 90):
        raise fail(f"latitudes outside [-90, 90] in '{labels['lat']}'",
                   "check the latitude coordinate and its units")
    da = _sort_ascending(da, ("lat", "lon"))
    lon = np.asarray(da["lon"].values, dtype=np.float64)
    # Prefer [-180, 180); keep [0, 360) when only that keeps the domain contiguous.
    wrapped = ((lon + 180.0) % 360.0) - 180.0
    order = np.argsort(wrapped, kind="stable")
    sorted_wrapped = wrapped[order]
    if np.any(np.diff(sorted_wrapped) < 1e-9):
        i = int(np.flatnonzero(np.diff(sorted_wrapped) < 1e-9)[0])
        a, b = lon[order[i]], lon[order[i + 1]]
        raise fail(f"longitudes {a:g} and {b:g} in '{labels['lon']}' are the same meridian "
                   "(a repeated cyclic column)", "drop the repeated column")
    lon_step = float(np.median(np.abs(np.diff(lon))))
    contiguous = bool(np.all(np.diff(sorted_wrapped) < 1.5 * lon_step + 1e-9))
    attrs, dtype = da["lon"].attrs, da["lon"].dtype
    if contiguous and not np.array_equal(wrapped, lon):
        da = da.isel(lon=order).assign_coords(lon=("lon", sorted_wrapped.astype(dtype), attrs))
    elif not contiguous:
        shifted = lon % 360.0
        if np.all(np.diff(shifted) > 0) and not np.array_equal(shifted, lon):
            da = da.assign_coords(lon=("lon", shifted.astype(dtype), attrs))
    for dim, units, std in (("lat", "degrees_north", "latitude"),
                            ("lon", "degrees_east", "longitude")):
        da[dim].attrs.update(units=units, standard_name=std)
    return da


def _normalise_time(da: xr.DataArray, label: str, fail: Fail) -> xr.DataArray:
    if "time" not in da.indexes or da.sizes["time"] < 2:
        return da
    index = da.indexes["time"]
    if not index.is_unique:
        first = index[index.duplicated()][0]
        raise fail(f"the '{label}' coordinate has duplicate values (first: {first})",
                   "remove the duplicated time steps")
    if not index.is_monotonic_increasing:
        da = da.isel(time=np.argsort(index.values, kind="stable"))
    return da


def _bounds(da: xr.DataArray, dim: str, given: ArrayLike | None,
            file_centres: NDArray[np.float64], label: str, fail: Fail) -> NDArray[np.float64]:
    """Bounds of the normalised axis: the file's, reordered and shifted, or inferred."""
    centres = np.asarray(da[dim].values, dtype=np.float64)
    clip = (-90.0, 90.0) if dim == "lat" else None
    if given is None:
        return bounds_from_centres(centres, clip=clip)
    raw = np.asarray(given, dtype=np.float64)
    if raw.shape != (file_centres.size, 2):
        raise fail(f"the bounds of '{label}' have shape {raw.shape}, expected "
                   f"({file_centres.size}, 2)", "fix or remove the bounds variable")
    index = np.asarray(da[_INDEX.format(dim)].values)
    bnds = raw[index]
    if dim == "lon":  # follow the centres' shift by whole turns (wrapping, unwrapping)
        bnds = bnds + 360.0 * np.round((centres - file_centres) / 360.0)[:, None]
    bnds = np.sort(bnds, axis=1)
    width = np.abs(np.diff(centres)).min()
    tol = 1e-6 * max(width, 1e-12)
    if not np.all(np.isfinite(bnds)) or np.any(bnds[:, 0] > centres + tol) or np.any(
            bnds[:, 1] < centres - tol):
        raise fail(f"the bounds of '{label}' do not enclose its cell centres",
                   "fix or remove the bounds variable (bounds are then inferred)")
    if clip is not None:
        if np.any(np.abs(bnds) > 90.0 + tol):
            raise fail(f"the bounds of '{label}' lie outside [-90, 90]",
                       "fix or remove the bounds variable (bounds are then inferred)")
        bnds = np.clip(bnds, *clip)
    return np.asarray(bnds, dtype=np.float64)


def _concat_in_time(pieces: list[xr.Dataset], paths: list[Path], variable: str) -> xr.Dataset:
    first = pieces[0][variable]
    for piece_ds, path in zip(pieces, paths, strict=True):
        if piece_ds.attrs.get("downscale_added_time"):
            raise InputError("has no time dimension, but several files are joined along time",
                             path=path, variable=variable,
                             hint="give a single file or files with a time coordinate")
    for piece_ds, path in zip(pieces[1:], paths[1:], strict=True):
        piece = piece_ds[variable]
        if not _same_calendar(piece, first):
            raise InputError(f"calendar '{_calendar(piece)}' differs from '{_calendar(first)}' "
                             f"of {paths[0]}", path=path, variable=variable,
                             hint="convert the files to one calendar (e.g. cdo setcalendar)")
        same_dims = piece.dims == first.dims
        for dim in first.dims[1:]:
            if not same_dims or piece.sizes[dim] != first.sizes[dim] or not np.allclose(
                    piece[dim], first[dim]):
                raise InputError(f"grid ({dim}) differs from that of {paths[0]}", path=path,
                                 variable=variable, hint="regrid the files to one grid")
        if piece.attrs.get("units") != first.attrs.get("units"):
            raise InputError(f"units '{piece.attrs.get('units')}' differ from "
                             f"'{first.attrs.get('units')}' of {paths[0]}", path=path,
                             variable=variable, hint="convert the files to the same units")
    combined = xr.concat(pieces, dim="time", data_vars="minimal", coords="minimal",
                         compat="override", join="override", combine_attrs="override")
    index = combined.indexes["time"]
    if not index.is_unique:
        step = index[index.duplicated()][0]
        owners = [str(p) for p, ds in zip(paths, pieces, strict=True)
                  if step in ds.indexes["time"]]
        raise InputError(f"time step {step} occurs in more than one file ({', '.join(owners)})",
                         path=owners[-1], variable=variable,
                         hint="give files whose time ranges do not overlap")
    return combined.sortby("time")


def _calendar(da: xr.DataArray) -> str:
    if "time" not in da.coords:
        return "none"
    return str(da["time"].encoding.get("calendar", "standard")).replace("gregorian", "standard")


def _same_calendar(a: xr.DataArray, b: xr.DataArray) -> bool:
    # Times decoded to datetime64 lie on one (proleptic Gregorian) axis whatever the label.
    if all(np.issubdtype(x["time"].dtype, np.datetime64) for x in (a, b)):
        return True
    return _calendar(a) == _calendar(b)


def _select_time(field: xr.Dataset, time: slice, where: str, variable: str) -> xr.Dataset:
    index = field.indexes.get("time")
    span = f"{index[0]} to {index[-1]}" if index is not None and len(index) else "no steps"
    try:
        selected = field.sel(time=time)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"invalid time selection {time.start}..{time.stop} "
                         f"({' '.join(str(exc).split())})", path=where, variable=variable,
                         hint=f"give dates like '2000-01-31' within {span}") from exc
    if selected.sizes["time"] == 0:
        raise InputError(f"the time selection {time.start}..{time.stop} is empty (the data "
                         f"cover {span})", path=where, variable=variable,
                         hint="choose dates within that range")
    return selected


_NC_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 4, 6: 8, 7: 1, 8: 2, 9: 4, 10: 8, 11: 8}


class _Header:
    """Just enough of a NetCDF-3 (CDF-1/2/5) header parser to compute the file's size."""

    def __init__(self, buf: bytes) -> None:
        self.buf, self.pos, self.version = buf, 4, buf[3]

    def read(self, size: int) -> int:
        if self.pos + size > len(self.buf):
            raise EOFError
        value = int.from_bytes(self.buf[self.pos:self.pos + size], "big")
        self.pos += size
        return value

    def count(self) -> int:
        return self.read(8 if self.version == 5 else 4)

    def skip(self, nbytes: int) -> None:
        self.pos += -(-nbytes // 4) * 4
        if self.pos > len(self.buf):
            raise EOFError

    def attributes(self) -> None:
        self.read(4)
        for _ in range(self.count()):
            self.skip(self.count())
            nc_type = self.read(4)
            self.skip(self.count() * _NC_TYPE_SIZES.get(nc_type, 1))

    def required_size(self) -> int | None:
        """Bytes a complete file needs, or None for streamed files."""
        numrecs = self.count()
        if numrecs == (1 << (64 if self.version == 5 else 32)) - 1:
            return None
        self.read(4)
        dims = []
        for _ in range(self.count()):
            self.skip(self.count())
            dims.append(self.count())
        self.attributes()
        self.read(4)
        variables = []
        for _ in range(self.count()):
            self.skip(self.count())
            dimids = [self.count() for _ in range(self.count())]
            self.attributes()
            size = _NC_TYPE_SIZES.get(self.read(4), 1)
            self.count()  # vsize, unreliable for large variables
            begin = self.read(4 if self.version == 1 else 8)
            record = bool(dimids) and dims[dimids[0]] == 0
            size *= int(np.prod([dims[d] for d in dimids[int(record):]], dtype=np.int64))
            variables.append((begin, size, record))
        recs = [size for _, size, record in variables if record]
        recsize = recs[0] if len(recs) == 1 else sum(-(-s // 4) * 4 for s in recs)
        ends = [begin + size + (max(numrecs - 1, 0) * recsize if record else 0)
                for begin, size, record in variables if size and (numrecs or not record)]
        return max(ends, default=self.pos)


def _check_not_truncated(path: Path, variable: str) -> None:
    """Catch truncated NetCDF-3 files, which netCDF-C opens and reads as fill values.

    (NetCDF-4/HDF5 files record their length, so the library itself rejects those.)
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            buf = handle.read(min(size, 16 << 20))
    except OSError:
        return  # unreadable: the library's error says why
    if len(buf) < 4 or buf[:3] != b"CDF" or buf[3] not in (1, 2, 5):
        return
    try:
        required = _Header(buf).required_size()
    except EOFError:
        if len(buf) < size:
            return  # a header over 16 MiB: leave it to the library
        raise InputError("the file is truncated (its header is incomplete)", path=path,
                         variable=variable, hint="re-download or re-create it") from None
    except (IndexError, ValueError):
        return
    if required is not None and size < required:
        raise InputError(f"the file is truncated ({size} of {required} bytes)", path=path,
                         variable=variable, hint="re-download or re-create it")


def write_netcdf(ds: xr.Dataset, path: PathLike, *, verify: bool = True) -> Path:
    """Write a Dataset to NetCDF atomically: temporary name, verify, rename.

    A crash at any point leaves either the previous file or nothing at ``path``, never a
    partial one. The temporary file lives in the same directory so the rename is atomic,
    and it is removed when anything fails.

    Args:
        ds: The dataset; encodings in ``ds[v].encoding`` are respected.
        path: The final path.
        verify: Reopen the temporary file and check its variables before renaming.

    Returns:
        The final path.

    Raises:
        InputError: If the output directory is missing or not writable, or the disk is
            full.
    """
    final = Path(path)
    check_output_target(final, ds)
    tmp = temporary_path(final)
    with output_errors(final, tmp, ds), _removed_on_error(tmp):
        ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4")
        commit_output(tmp, final, ds if verify else None)
    return final


def _names(ds: xr.Dataset) -> str | None:
    return ", ".join(sorted(map(str, ds.data_vars))) or None


def check_output_target(final: Path, ds: xr.Dataset) -> None:
    """Check that ``final`` can be written: its directory exists and is writable.

    Raises:
        InputError: The directory is missing or not writable, or ``final`` is a directory.
    """
    directory, names = final.parent, _names(ds)
    if not directory.is_dir():
        raise InputError(f"output directory {directory} does not exist", path=final,
                         variable=names, hint="create it first or choose another output path")
    if not os.access(directory, os.W_OK):
        raise InputError(f"output directory {directory} is not writable", path=final,
                         variable=names, hint="choose a writable output path")
    if final.is_dir() and final.suffix != ".zarr":
        raise InputError("the output path is a directory", path=final, variable=names,
                         hint="give a file name ending in .nc")


def temporary_path(final: Path, tag: str | None = None) -> Path:
    """The temporary name of ``final`` while it is written: same directory, hidden.

    ``.<name>.<tag>.tmp``; the tag defaults to this process and a random suffix (a
    resumable output passes a stable one). Stale ones match ``.<name>.*.tmp``.
    """
    tag = tag or f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return final.parent / f".{final.name}.{tag}.tmp"


@contextlib.contextmanager
def output_errors(final: Path, tmp: Path, ds: xr.Dataset) -> Iterator[None]:
    """Turn a full disk or a refused write into an :class:`InputError` (one line)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise InputError(f"cannot write the file ({_reason(exc, tmp)})", path=final,
                             variable=_names(ds), hint="check the free space and "
                             "permissions of the output directory") from exc
        raise


def commit_output(tmp: Path, final: Path, verify: xr.Dataset | None = None) -> None:
    """Make a complete temporary output durable and give it its final name, atomically.

    Args:
        tmp: The temporary NetCDF file, or Zarr store (a directory).
        final: The final path. An existing Zarr store there is replaced.
        verify: Reopen ``tmp`` and check that it holds these variables and shapes first.
    """
    for file in (tmp.rglob("*") if tmp.is_dir() else [tmp]):
        if file.is_file():
            with open(file, "rb+") as handle:
                os.fsync(handle.fileno())
    if verify is not None:
        _verify_written(verify, tmp)
    if tmp.is_dir() and final.is_dir():  # a directory cannot be replaced in one rename
        old = temporary_path(final, "replaced")
        os.replace(final, old)
        shutil.rmtree(old)
    os.replace(tmp, final)
    with contextlib.suppress(OSError):  # make the rename itself durable where possible
        fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _verify_written(ds: xr.Dataset, tmp: Path) -> None:
    engine = "zarr" if tmp.is_dir() else "netcdf4"
    with xr.open_dataset(tmp, engine=engine, decode_times=False) as check:
        missing = set(map(str, ds.data_vars)) - set(map(str, check.data_vars))
        wrong = [str(v) for v in ds.data_vars if str(v) in check.data_vars
                 and check[v].shape != ds[v].shape]
    if missing or wrong:
        raise OSError(f"verification of {tmp} failed: missing {sorted(missing)}, "
                      f"wrong shape {wrong}")


@contextlib.contextmanager
def _removed_on_error(path: Path) -> Iterator[None]:
    try:
        yield
    except BaseException:
        remove_output(path)
        raise


def remove_output(path: Path) -> None:
    """Delete a (temporary) output: a NetCDF file or a Zarr store; nothing if absent."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    path.unlink(missing_ok=True)


def make_output_folder(path: PathLike) -> Path:
    """Create the output folder ``path`` (and parents) for a command's ``--output``.

    Raises:
        InputError: It cannot be created (not writable, a file in the way, ...).
    """
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder ({exc.strerror})", path=out,
                         hint="choose a writable folder with --output") from exc
    return out


def history_line(action: str) -> str:
    """A CF ``history`` entry: ISO timestamp and what was done."""
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{stamp}: {action}"
