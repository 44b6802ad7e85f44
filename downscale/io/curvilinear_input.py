"""Curvilinear inputs: a variable's 2-D latitude/longitude and their four-vertex corners.

The grid's geometry, once found, is :mod:`downscale.curvilinear`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import xarray as xr
from numpy.typing import NDArray

from downscale.curvilinear import (
    CURVILINEAR_NAME,
    NO_CORNERS,
    NO_CORNERS_HINT,
    corner_lattice,
    reindexed,
    to_latlon,
)
from downscale.errors import InputError
from downscale.grid import fine_bounds
from downscale.grid_geometry import GRID_MAPPING_COORD, GridKind, geometry_of, mapping_coord
from downscale.io.normalise import _coord_kind, _latlon_dims

Fail = Callable[[str, str], InputError]


def curvilinear_mapping(ds: xr.Dataset, da: xr.DataArray, fail: Fail
                        ) -> dict[str, Any] | None:
    """The internal grid mapping of ``da``'s curvilinear grid, or None for other grids.

    A grid is curvilinear when 2-D latitude and longitude (attached or not) span the
    variable's two last dimensions. Their CF bounds, four vertices a cell, give the corner
    lattice, carried as ``corner_lat``/``corner_lon`` (nested lists, degrees) with the
    index dimension names ``dims``.

    Raises:
        InputError: 2-D latitude/longitude without cell corners (:data:`NO_CORNERS`), or
            corners that do not tile.
    """
    if _latlon_dims(da) is not None:  # a lat/lon grid; other 2-D lat/lon are extras
        return None
    found: dict[str, xr.DataArray] = {}
    for name in map(str, ds.variables):
        var = ds[name]
        if name != da.name and var.ndim == 2 and set(var.dims) <= set(da.dims):
            kind = _coord_kind(name, var.attrs)
            if kind is not None:
                found.setdefault(kind, var)
    if not found:
        return None
    if len(found) < 2:
        only = next(iter(found.values()))
        raise fail(NO_CORNERS.format(f"'{only.name}' without its partner"), NO_CORNERS_HINT)
    lat, lon = found["lat"], found["lon"]
    dims = tuple(map(str, lat.dims))
    corners = [_corners(ds, var, dims) for var in (lat, lon)]
    if corners[0] is None or corners[1] is None:
        raise fail(NO_CORNERS.format(f"'{lat.name}'/'{lon.name}'"), NO_CORNERS_HINT)
    lattice = corner_lattice(corners[0], corners[1], fail)
    lat_c, lon_c = to_latlon(lattice)
    return {"grid_mapping_name": CURVILINEAR_NAME, "dims": list(dims),
            "corner_lat": lat_c.tolist(), "corner_lon": lon_c.tolist()}



def _corners(ds: xr.Dataset, var: xr.DataArray, dims: tuple[str, ...]
             ) -> NDArray[np.float64] | None:
    """A 2-D coordinate's ``(ny, nx, 4)`` bounds, in ``dims`` order, or None."""
    name = var.attrs.get("bounds", var.encoding.get("bounds"))
    if not isinstance(name, str) or name not in ds.variables:
        return None
    bnds = ds[name]
    vertex = [d for d in map(str, bnds.dims) if d not in dims]
    if bnds.ndim != 3 or len(vertex) != 1 or bnds.sizes[vertex[0]] != 4:
        return None
    return np.asarray(bnds.transpose(*dims, vertex[0]).values, np.float64)


def in_coarse_index_space(coarse: xr.Dataset, fine: xr.Dataset) -> xr.Dataset:
    """A curvilinear fine field indexed in its coarse field's index space, to nest in it.

    Both normalised. Each index-space grid numbers its own cells, so a fine file read on
    its own does not nest in its coarse file; where its corners refine the coarse ones
    (:func:`downscale.curvilinear.reindexed`) its cells are renumbered ``factor`` to a
    coarse index, its own corners still giving its areas. Other fields: unchanged.
    """
    kinds = {geometry_of(coarse).kind, geometry_of(fine).kind}
    if kinds != {GridKind.CURVILINEAR}:
        return fine
    found = reindexed(geometry_of(fine).mapping, geometry_of(coarse).mapping)
    if found is None:
        return fine
    mapping, steps = found
    coords: dict[str, Any] = {GRID_MAPPING_COORD: mapping_coord(mapping)}
    for dim, step in zip(("y", "x"), steps, strict=True):
        bnds = fine_bounds(coarse[f"{dim}_bnds"].values, step)
        coords[dim] = (dim, bnds.mean(axis=1), fine[dim].attrs)
        coords[f"{dim}_bnds"] = ((dim, "bnds"), bnds)
    return fine.assign_coords(coords)
