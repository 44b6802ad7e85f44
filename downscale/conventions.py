"""The input's conventions, recorded when a field is normalised, and the way back to them.

:func:`downscale.io.open_field` brings every input onto one internal form (dims
``(time, lat, lon)`` or ``(time, y, x)``, ascending latitude, longitude in -180..180,
bounds ``lat_bnds``...). Users' scripts, like CDO and xESMF, expect the output in *their*
form: ``latitude`` stays ``latitude``, a 0..360 longitude stays 0..360, a descending
latitude stays descending, and time bounds and the variable's attributes survive.

:class:`FieldConventions` records that form when a field is normalised. It lives in the
normalised Dataset's ``encoding``, which xarray keeps through ``isel``, ``sel``, ``chunk``,
``concat`` and pickling and never writes to a file; :func:`conventions_of` gets it back.
:func:`restore` turns a fine-grid Dataset in the internal form into the user's form, and
:class:`UserLayout` does the same for the bare ``(time, H, W)`` arrays of time slabs.

The way back: each fine cell lies in one cell of the recorded grid (its *parent*). It
takes the parent's shift back to the file's longitude range (a whole number of turns) and
is ordered by the parent's position in the file, then by its own coordinate in the file's
direction. When the fine grid nests in the recorded one (the recorded grid is the coarse
input, or the fine grid itself), its bounds are computed afresh from the file's own bounds
with :func:`downscale.inference.fine_bounds`: a 0..360 grid gets exactly the fine
coordinates a 0..360 computation gives, not shifted and rounded ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import xarray as xr
from numpy.typing import NDArray

from downscale.grid import nesting_factor

#: Key of the record in a normalised Dataset's ``encoding``.
KEY = "downscale_conventions"

#: Variable attributes that describe the input's values or storage, not the fine field's.
DROPPED_ATTRS = ("actual_range", "actual_min", "actual_max", "chunksizes", "_ChunkSizes",
                 "coordinates", "bounds", "_Netcdf4Dimid", "_Netcdf4Coordinates")
_COMPRESSION = ("zlib", "complevel", "shuffle", "fletcher32")


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
    out: dict[str, Any] = {k: enc[k] for k in _COMPRESSION if k in enc}
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


@dataclass(frozen=True, eq=False)
class UserLayout:
    """Where the cells of a normalised fine grid go in the user's layout, and their coordinates.

    Attributes:
        dims: The variable's dimensions in the user's order, by normalised name.
        names: The user's name of each normalised dimension.
        order: By horizontal axis: the normalised index of each cell in the user's order.
        centres: By horizontal axis: the cell centres in the user's order and range.
        bounds: By horizontal axis: ``(n, 2)`` bounds in the user's order and range, each
            cell's pair running the axis's way.
    """

    dims: tuple[str, ...]
    names: dict[str, str]
    order: dict[str, NDArray[np.int64]]
    centres: dict[str, NDArray[np.float64]]
    bounds: dict[str, NDArray[np.float64]]

    def apply(self, values: Any) -> Any:
        """Values on the normalised fine grid, in the user's layout.

        For the writers of time slabs: what :func:`restore` does to a Dataset, done to a
        bare array.

        Args:
            values: ``(T, H, W)`` (or ``(H, W)``) values on the normalised fine grid of the
                template the layout was made from; numpy or Dask (stays lazy).

        Returns:
            The same values with axes in the user's order (:attr:`dims`), latitude and
            longitude in the user's order (a descending latitude runs north to south, a
            0..360 longitude starts at 0).
        """
        normal = ("time", *self.order)[-values.ndim:]
        for axis, dim in enumerate(normal):
            index = self.order.get(dim)
            if index is not None and not np.array_equal(index, np.arange(index.size)):
                values = values[(slice(None),) * axis + (index,)]
        wanted = [d for d in self.dims if d in normal]
        return values.transpose([normal.index(d) for d in wanted])

    @property
    def user_dims(self) -> tuple[str, ...]:
        """The variable's dimension names in the user's file, in order."""
        return tuple(self.names.get(d, d) for d in self.dims)


def user_layout(grid: xr.Dataset, record: FieldConventions) -> UserLayout:
    """The user's layout of a normalised fine grid (a template, or a slab of one).

    Args:
        grid: A Dataset in normalised form with ``<dim>_bnds`` coordinates: the fine grid.
        record: The input's conventions.
    """
    from downscale.inference import fine_bounds  # torch: only for writing, not for reading

    horizontal = [str(d) for d in grid.dims if f"{d}_bnds" in grid.variables]
    layout = UserLayout(dims=record.dims, names=dict(record.names), order={}, centres={},
                        bounds={})
    for dim in horizontal:
        centres = np.asarray(grid[dim].values, dtype=np.float64)
        fine = np.asarray(grid[f"{dim}_bnds"].values, dtype=np.float64)
        axis = record.axes.get(dim)
        if axis is None:
            layout.order[dim], layout.centres[dim], layout.bounds[dim] = (
                np.arange(centres.size), centres, fine)
            continue
        parent = np.clip(np.searchsorted(axis.bounds[:, 0], centres, side="right") - 1,
                         0, len(axis.bounds) - 1)
        factor = nesting_factor(axis.bounds, fine)
        if factor is not None:  # computed in the user's range, not shifted into it
            bnds = fine_bounds(axis.bounds + axis.shift[:, None], factor)
        else:
            bnds = fine + axis.shift[parent][:, None]
        if factor is not None and factor > 1:  # as the fine template does
            centres = bnds.mean(axis=1)
        else:
            centres = centres + axis.shift[parent]
        sign = -1.0 if axis.descending else 1.0
        order = np.lexsort((sign * centres, axis.position[parent]))
        bnds = bnds[order][:, ::-1] if axis.descending else bnds[order]
        layout.order[dim], layout.centres[dim] = order, centres[order]
        layout.bounds[dim] = np.ascontiguousarray(bnds)
    if not record.dims:  # a record without the variable's dims: keep the normalised order
        return replace(layout, dims=tuple(map(str, grid.dims)))
    return layout


def restore(ds: xr.Dataset, record: FieldConventions | None = None) -> xr.Dataset:
    """A fine-grid Dataset in normalised form, in the user's conventions.

    Names (dimensions, coordinates, bounds), the variable's dimension order, longitude
    range, latitude order, coordinate attributes, the time bounds of the Dataset's own time
    steps, the variable's attributes (less those that describe the input's values or
    storage: :data:`DROPPED_ATTRS`) and its encoding (float type, fill value, compression,
    chunk sizes scaled to the fine grid). Values stay lazy when they are Dask arrays.

    Args:
        ds: What :func:`downscale.cf.downscaled_dataset` builds, or any time slab of it:
            variables on ``(time, Y, X)`` with ``<dim>_bnds`` bounds (coordinates or data
            variables) in normalised form.
        record: The input's conventions; default: the one ``ds`` carries. Without one,
            ``ds`` is returned as it is.
    """
    record = record or conventions_of(ds)
    if record is None:
        return ds
    layout = user_layout(ds, record)
    out = ds.isel({d: o for d, o in layout.order.items()
                   if not np.array_equal(o, np.arange(o.size))})
    renames: dict[str, str] = {}
    for dim in layout.order:
        axis = record.axes.get(dim)
        name = axis.name if axis is not None else dim
        bounds_name = axis.bounds_name if axis is not None and axis.bounds_name else (
            f"{name}_bnds")
        attrs = {**out[dim].attrs, **(axis.attrs if axis is not None else {})}
        attrs = {k: v for k, v in attrs.items() if k not in ("_FillValue", "actual_range")}
        out = out.assign_coords({dim: (dim, layout.centres[dim], {**attrs,
                                                                  "bounds": bounds_name})})
        was_coord = f"{dim}_bnds" in out.coords
        out[f"{dim}_bnds"] = ((dim, "bnds"), layout.bounds[dim])
        out[f"{dim}_bnds"].encoding["_FillValue"] = None
        if was_coord:
            out = out.set_coords(f"{dim}_bnds")
        out[dim].encoding["_FillValue"] = None
        renames.update({dim: name, f"{dim}_bnds": bounds_name})
        if axis is not None:
            renames["bnds"] = axis.bounds_dim
    if "time" in out.dims:
        out = _restore_time(out, record)
        renames["time"] = record.names.get("time", "time")
    if record.variable in out.data_vars:
        out[record.variable] = _restore_variable(out[record.variable], record, layout)
    if record.grid_mapping is not None and record.grid_mapping[0] not in out.variables:
        out[record.grid_mapping[0]] = ((), np.int32(0), dict(record.grid_mapping[1]))
    return out.rename({k: v for k, v in renames.items() if k != v})


def _restore_time(out: xr.Dataset, record: FieldConventions) -> xr.Dataset:
    """The file's time attributes, and the time bounds of ``out``'s own steps."""
    attrs = {k: v for k, v in record.time_attrs.items() if k not in ("bounds", "_FillValue")}
    out["time"].attrs = {**attrs, **{k: v for k, v in out["time"].attrs.items()
                                     if k != "bounds"}}
    tb = record.time_bounds
    if tb is None:
        return out
    table = xr.DataArray(tb.values, dims=("time", tb.dim), coords={"time": tb.times})
    try:
        rows = table.sel(time=out["time"].values)
    except (KeyError, TypeError, ValueError):
        return out  # steps the input does not have (e.g. a model's own time axis): no bounds
    out[tb.name] = (("time", tb.dim), np.asarray(rows.values), dict(tb.attrs))
    out[tb.name].encoding["_FillValue"] = None
    out["time"].attrs["bounds"] = tb.name
    return out


def _restore_variable(var: xr.DataArray, record: FieldConventions, layout: UserLayout
                      ) -> xr.DataArray:
    """The variable in the user's dimension order, with its attributes and encoding."""
    order = [d for d in layout.dims if d in var.dims]
    var = var.transpose(*order, *[d for d in var.dims if d not in order])
    attrs = {k: v for k, v in record.attrs.items() if k not in DROPPED_ATTRS}
    attrs.pop("grid_mapping", None)  # only where its variable goes with it (not dangling)
    if record.grid_mapping is not None:
        attrs["grid_mapping"] = record.grid_mapping[0]
    rec = record.encoding
    if "unpack" in rec:  # valid_* of packed data are in packed units: unpack them
        scale, offset = rec["unpack"]
        for key in ("valid_range", "valid_min", "valid_max"):
            if key in attrs:
                attrs[key] = (np.asarray(attrs[key]) * scale + offset).astype(np.float32)
    var.attrs = {**attrs, **var.attrs}
    enc = {k: v for k, v in var.encoding.items() if k not in ("chunksizes", "dtype")}
    enc.update({k: rec[k] for k in _COMPRESSION if k in rec})
    dtype = np.dtype(rec.get("dtype", np.float32))
    enc["dtype"] = dtype
    fill = rec.get("_FillValue", rec.get("missing_value", enc.get("_FillValue", np.nan)))
    enc["_FillValue"] = dtype.type(fill)
    if "missing_value" in rec and _same_value(rec["missing_value"], fill):
        enc["missing_value"] = dtype.type(rec["missing_value"])
    for key in ("valid_range", "valid_min", "valid_max"):  # CF: the variable's own type
        if key in var.attrs:
            var.attrs[key] = np.asarray(var.attrs[key]).astype(dtype)
    chunks = _fine_chunks(var, record, layout)
    if chunks is not None:
        enc["chunksizes"] = chunks
    var.encoding = enc
    return var


def _same_value(a: Any, b: Any) -> bool:
    a, b = float(np.ravel(a)[0]), float(np.ravel(b)[0])
    return bool(a == b or (np.isnan(a) and np.isnan(b)))


def _fine_chunks(var: xr.DataArray, record: FieldConventions, layout: UserLayout
                 ) -> tuple[int, ...] | None:
    """The input's chunk shape on the fine grid: horizontal chunks scaled by the factor.

    None when the input was not chunked or its chunks name dimensions the output lacks.
    """
    if "chunksizes" not in record.encoding:
        return None
    roles = {file: role for role, file in record.names.items()}
    by_role = {roles.get(d, d): int(c) for d, c in zip(
        record.encoding["chunk_dims"], record.encoding["chunksizes"], strict=True)}
    sizes = []
    for dim in map(str, var.dims):
        if dim not in by_role:
            return None
        axis = record.axes.get(dim)
        factor = max(1, var.sizes[dim] // len(axis.position)) if axis is not None else 1
        sizes.append(max(1, min(by_role[dim] * factor, var.sizes[dim])))
    return tuple(sizes)
