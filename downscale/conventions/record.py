"""The record of an input's conventions, taken when its field is normalised.

:func:`downscale.io.open_field` takes it and keeps it in the normalised Dataset's
``encoding`` (see the package docstring).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import xarray as xr
from numpy.typing import NDArray

#: Key of the record in a normalised Dataset's ``encoding``.
KEY = "downscale_conventions"

#: Compression settings of the input reused for the output.
COMPRESSION = ("zlib", "complevel", "shuffle", "fletcher32")


@dataclass(frozen=True, eq=False)
class AxisConventions:
    """How one horizontal axis is written in the file.

    Attributes:
        name: The file's dimension (and coordinate) name, e.g. ``"latitude"``.
        attrs: The file coordinate's attributes.
        bounds_name: The file's bounds variable, or None (then ``<name>_bnds`` is written).
        bounds_dim: The second dimension of the file's bounds (``"bnds"``, ``"nv"``, ...).
        position: File index of each normalised cell, ``(n,)``.
        shift: File value minus normalised value of each normalised cell, ``(n,)``, in the
            coordinate's units: whole turns (0, +-360) for longitude, zero otherwise.
        bounds: The normalised bounds, ``(n, 2)`` ascending (to find a fine cell's parent).
        descending: The file's values run downwards (a north-to-south latitude).
    """

    name: str
    attrs: dict[str, Any]
    bounds_name: str | None
    bounds_dim: str
    position: NDArray[np.int64]
    shift: NDArray[np.float64]
    bounds: NDArray[np.float64]
    descending: bool


@dataclass(frozen=True, eq=False)
class TimeBounds:
    """The file's time bounds, keyed by time value so any time slab finds its own rows.

    Attributes:
        name: The bounds variable's name, e.g. ``"time_bnds"``.
        dim: Its second dimension, e.g. ``"bnds"``.
        times: The (decoded) time values, ``(n,)``.
        values: The (decoded) bounds, ``(n, 2)``.
        attrs: The bounds variable's attributes.
    """

    name: str
    dim: str
    times: NDArray[Any]
    values: NDArray[Any]
    attrs: dict[str, Any]


@dataclass(frozen=True, eq=False)
class FieldConventions:
    """The form of one input field: what the output must look like to its user.

    Attributes:
        variable: The variable's name.
        dims: The variable's dimensions in the file's order, by normalised role
            (``("time", "lat", "lon")``; no ``"time"`` for a field without one).
        names: File name of each normalised dimension (``{"lat": "latitude", ...}``).
        axes: The horizontal axes by normalised name (``"lat"``/``"lon"`` or ``"y"``/``"x"``).
        time_attrs: The file's time coordinate attributes (units, calendar are decoded away).
        time_bounds: The file's time bounds, or None.
        attrs: The variable's own attributes.
        encoding: The variable's storage, reduced to what a fine field can reuse (see
            :func:`_reusable_encoding`).
        grid_mapping: ``(name, attrs)`` of the file's grid mapping variable, or None.
    """

    variable: str
    dims: tuple[str, ...]
    names: dict[str, str]
    axes: dict[str, AxisConventions]
    time_attrs: dict[str, Any] = field(default_factory=dict)
    time_bounds: TimeBounds | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    encoding: dict[str, Any] = field(default_factory=dict)
    grid_mapping: tuple[str, dict[str, Any]] | None = None


def conventions_of(ds: xr.Dataset) -> FieldConventions | None:
    """The record of a normalised Dataset (or a template, slab or selection of it), if any."""
    record = ds.encoding.get(KEY)
    return record if isinstance(record, FieldConventions) else None


def with_conventions(ds: xr.Dataset, record: FieldConventions | None) -> xr.Dataset:
    """``ds`` carrying ``record`` (in place, and returned); None leaves it as it is."""
    if record is not None:
        ds.encoding[KEY] = record
    return ds


def record_field(original: xr.DataArray, normalised: xr.DataArray, *,
                 names: Mapping[str, str], file_centres: Mapping[str, NDArray[np.float64]],
                 positions: Mapping[str, NDArray[np.int64]],
                 bounds: Mapping[str, NDArray[np.float64]],
                 file_bounds: Mapping[str, Any]) -> FieldConventions:
    """Record what normalisation changed (called by :func:`downscale.io.normalise_field`).

    Args:
        original: The variable as given, before normalisation (its attributes unchanged).
        normalised: The normalised variable, dims ``(time, Y, X)``.
        names: File dimension name by normalised name (``"time"`` only if the file has one).
        file_centres: The file's coordinate values by normalised axis, in file order.
        positions: File index of each normalised cell, by normalised axis.
        bounds: The normalised ``(n, 2)`` bounds by normalised axis.
        file_bounds: The file's own bounds (file order), by normalised axis; None if none.
    """
    roles = {file: role for role, file in names.items()}
    axes = {}
    for role in map(str, normalised.dims[1:]):
        file_name = names[role]
        position = np.asarray(positions[role], dtype=np.int64)
        shift = file_centres[role][position] - np.asarray(normalised[role].values, np.float64)
        given = file_bounds.get(role)
        coord = original[file_name] if file_name in original.coords else None
        attrs = dict(coord.attrs) if coord is not None else {}
        bounds_name = attrs.pop("bounds", None) or (coord.encoding.get("bounds")
                                                    if coord is not None else None)
        descending = bool(position.size > 1 and np.median(np.diff(position)) < 0)
        axes[role] = AxisConventions(
            name=file_name, attrs=attrs,
            bounds_name=str(bounds_name) if bounds_name and given is not None else None,
            bounds_dim="bnds", position=position,
            shift=360.0 * np.round(shift / 360.0), bounds=np.asarray(bounds[role], np.float64),
            descending=descending)
    time_name = names.get("time")
    time_attrs = dict(original[time_name].attrs) if time_name in original.coords else {}
    return FieldConventions(
        variable=str(original.name),
        dims=tuple(roles[str(d)] for d in original.dims if str(d) in roles),
        names=dict(names), axes=axes, time_attrs=time_attrs,
        attrs=dict(original.attrs), encoding=_reusable_encoding(original))


def add_file_metadata(record: FieldConventions, ds: xr.Dataset) -> FieldConventions:
    """Add what only the file knows: bounds dimensions, time bounds, the grid mapping.

    Args:
        record: The record :func:`record_field` made of the file's variable.
        ds: The file, as xarray opened it.
    """
    axes = dict(record.axes)
    for role, axis in axes.items():
        if axis.bounds_name is not None and axis.bounds_name in ds.variables:
            other = [str(d) for d in ds[axis.bounds_name].dims if d != axis.name]
            axes[role] = replace(axis, bounds_dim=other[0] if other else axis.bounds_dim)
    time_bounds = None
    tname = record.names.get("time")
    if tname is not None and tname in ds.variables:
        name = ds[tname].attrs.get("bounds", ds[tname].encoding.get("bounds"))
        bnds = ds[name] if isinstance(name, str) and name in ds.variables else None
        if bnds is not None and bnds.ndim == 2 and tname in bnds.dims:
            pair = next(str(d) for d in bnds.dims if d != tname)
            time_bounds = TimeBounds(str(name), pair, np.asarray(ds[tname].values),
                                     np.asarray(bnds.transpose(tname, pair).values),
                                     dict(bnds.attrs))
    mapping = None
    gm = record.attrs.get("grid_mapping", ds[record.variable].encoding.get("grid_mapping"))
    if isinstance(gm, str) and gm in ds.variables:  # the simple form: one mapping's name
        mapping = (gm, dict(ds[gm].attrs))
    return replace(record, axes=axes, time_bounds=time_bounds, grid_mapping=mapping)


def join_in_time(records: Sequence[FieldConventions | None]) -> FieldConventions | None:
    """The record of files joined in time: the first file's, with every file's time bounds.

    Time bounds are kept only when every file has them (a partial set would be wrong).
    """
    first = records[0]
    if first is None or any(r is None or r.time_bounds is None for r in records):
        return replace(first, time_bounds=None) if first is not None else None
    pieces = [r.time_bounds for r in records if r is not None and r.time_bounds is not None]
    assert first.time_bounds is not None
    joined = replace(first.time_bounds, times=np.concatenate([p.times for p in pieces]),
                     values=np.concatenate([p.values for p in pieces]))
    return replace(first, time_bounds=joined)


def _reusable_encoding(original: xr.DataArray) -> dict[str, Any]:
    """What a fine field can reuse of the variable's storage.

    Floats keep their type and fill value. Packed integers (``scale_factor``/``add_offset``)
    are not reused: the packing range was chosen for the coarse values, and quantising the
    fine field to it would clip new extremes and break exact conservation; they are written
    as float32, unpacked. Compression settings are kept; chunk sizes are kept for
    :func:`restore` to fit them to the fine grid.
    """
    enc = original.encoding
    # Values made in memory (no storage) are written as the package writes them: float32.
    dtype = np.dtype(enc.get("dtype", np.float32))
    out: dict[str, Any] = {k: enc[k] for k in COMPRESSION if k in enc}
    if not out.get("zlib"):
        out = {}
    float_storage = np.issubdtype(dtype, np.floating) and "scale_factor" not in enc and (
        "add_offset" not in enc)
    out["dtype"] = dtype if float_storage else np.dtype(np.float32)
    if float_storage:
        for key in ("_FillValue", "missing_value"):
            if enc.get(key) is not None:
                out[key] = dtype.type(np.ravel(enc[key])[0])
    if "chunksizes" in enc and enc["chunksizes"] is not None:
        out["chunksizes"] = tuple(int(c) for c in enc["chunksizes"])
        out["chunk_dims"] = tuple(map(str, original.dims))
    if not float_storage and ("scale_factor" in enc or "add_offset" in enc):
        out["unpack"] = (float(enc.get("scale_factor", 1.0)), float(enc.get("add_offset", 0.0)))
    return out

