"""Opening NetCDF inputs lazily (Dask): one variable from one or many files, normalised.

Nothing is loaded: the data stay a Dask array until computed. Also here: the checks that
need the whole file (rotated-pole and curvilinear grids, the variable's name, its CF bounds)
and joining files along time.
"""

from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from numpy.typing import NDArray

from downscale.conventions import add_file_metadata, conventions_of, join_in_time, with_conventions
from downscale.errors import InputError
from downscale.io.curvilinear_input import curvilinear_mapping
from downscale.io.normalise import (
    normalise_field,
)
from downscale.io.paths import PathLike, _reason
from downscale.io.truncation import _check_not_truncated


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

    mapping = _grid_mapping(ds, da)
    if mapping is None:
        mapping = curvilinear_mapping(ds, da, fail)
    # Lazy Dask reads of one index of every leading dimension (a time step) at a time, so
    # memory is bounded by the chunks asked for below, whatever the file's layout.
    da = da.chunk({d: (1 if i < da.ndim - 2 else -1) for i, d in enumerate(da.dims)})
    field = normalise_field(da, path=path, bounds=_file_bounds(ds, da), keep_conventions=True,
                            grid_mapping=mapping)
    record = conventions_of(field)
    if record is not None:
        with_conventions(field, add_file_metadata(record, ds))
    field[variable].encoding.pop("coordinates", None)  # names coordinates that are dropped
    field[variable] = field[variable].chunk(
        {**{d: (1 if d == "time" else -1) for d in field[variable].dims}, **(chunks or {})})
    return field


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


def _grid_mapping(ds: xr.Dataset, da: xr.DataArray) -> dict[str, Any] | None:
    """The attributes of the variable's CF grid mapping variable, or None.

    Only a mapping of the variable's own horizontal axes counts: in the extended form
    ``"crs_a: x y crs_b: lat lon"`` the first one (CF 5.6 lists the grid's own first).
    A mapping that names a latitude-longitude CRS (``latitude_longitude``) changes
    nothing and is ignored.
    """
    text = str(da.attrs.get("grid_mapping", da.encoding.get("grid_mapping", "")))
    names = [t.rstrip(":") for t in text.split() if t.endswith(":")] or text.split()
    if not names:
        return None
    if names[0] not in ds.variables:  # a dangling name: normalisation says what is missing
        return None
    attrs = dict(ds[names[0]].attrs)
    return None if attrs.get("grid_mapping_name") in (None, "latitude_longitude") else attrs


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
