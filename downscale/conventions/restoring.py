"""The way back: a fine-grid Dataset or array in normalised form, in the user's conventions.

Used by every writer (through :func:`downscale.cf.downscaled_dataset`, or
:class:`UserLayout` for writers of bare time slabs); see the package docstring for how a
fine cell finds its place and coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import xarray as xr
from numpy.typing import NDArray

from downscale.conventions.record import COMPRESSION, FieldConventions, conventions_of
from downscale.grid import horizontal_dims, nesting_factor

#: Variable attributes that describe the input's values or storage, not the fine field's.
DROPPED_ATTRS = ("actual_range", "actual_min", "actual_max", "chunksizes", "_ChunkSizes",
                 "coordinates", "bounds", "_Netcdf4Dimid", "_Netcdf4Coordinates")


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
            if index is None or _is_identity(index):
                continue
            where = _indexer(index)
            # np.take: about twice as fast as fancy indexing on numpy; Dask's own on Dask.
            values = (values[(slice(None),) * axis + (where,)] if isinstance(where, slice)
                      else np.take(values, where, axis=axis))
        return values.transpose([normal.index(d) for d in _user_order(normal, self.dims)])

    @property
    def user_dims(self) -> tuple[str, ...]:
        """The variable's dimension names in the user's file, in order."""
        return tuple(self.names.get(d, d) for d in self.dims)


def _user_order(dims: tuple[str, ...], user: tuple[str, ...]) -> list[str]:
    """``dims`` in the user's order; any the user's variable lacks (an added time) first."""
    return [d for d in dims if d not in user] + [d for d in user if d in dims]


def _is_identity(order: NDArray[np.int64]) -> bool:
    return bool(np.array_equal(order, np.arange(order.size)))


def _indexer(order: NDArray[np.int64]) -> slice | NDArray[np.int64]:
    """A reversal as a slice (a view, no copy), any other order as it is."""
    if order.size > 1 and np.array_equal(order, np.arange(order.size)[::-1]):
        return slice(None, None, -1)
    return order


def user_layout(grid: xr.Dataset, record: FieldConventions) -> UserLayout:
    """The user's layout of a normalised fine grid (a template, or a slab of one).

    Args:
        grid: A Dataset in normalised form with ``<dim>_bnds`` coordinates: the fine grid.
        record: The input's conventions.
    """
    from downscale.grid import fine_bounds

    horizontal = horizontal_dims(grid)  # (y, x): the order of the values' last two axes
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
    out = ds.isel({d: _indexer(o) for d, o in layout.order.items() if not _is_identity(o)})
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
    var = var.transpose(*_user_order(tuple(map(str, var.dims)), layout.dims))
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
    enc.update({k: rec[k] for k in COMPRESSION if k in rec})
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
