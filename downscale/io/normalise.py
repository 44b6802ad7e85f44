"""CF normalisation: bring a variable onto the package's one internal form.

A *normalised* field (see :mod:`downscale.grid`) is a one-variable ``xr.Dataset`` whose
variable has dimensions ``(time, lat, lon)`` (or ``(time, y, x)``), ascending latitude, one
longitude convention, ``lat_bnds``/``lon_bnds`` coordinates (from the file's CF ``bounds``
variables, inferred where the file has none) and missing values as NaN. What normalisation
changed is recorded (:mod:`downscale.conventions`) so outputs can return to the input's form.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cftime
import numpy as np
import xarray as xr
from numpy.typing import ArrayLike, NDArray

from downscale.conventions import record_field, with_conventions
from downscale.coordinate_units import LAT_UNITS, LON_UNITS
from downscale.curvilinear import NO_CORNERS, NO_CORNERS_HINT
from downscale.errors import InputError
from downscale.grid import bounds_from_centres
from downscale.grid_geometry import (
    GRID_MAPPING_COORD,
    GridGeometry,
    GridKind,
    geometry_from_mapping,
    mapping_coord,
)
from downscale.io.paths import PathLike
from downscale.validate import coordinate_scale, mask_outside_valid_range

_LAT_NAMES = ("lat", "latitude", "nav_lat", "y_lat")
_LON_NAMES = ("lon", "longitude", "nav_lon", "x_lon")
_ROTATED_NAMES = ("rlat", "rlon", "grid_latitude", "grid_longitude")
_ROTATED_HINT = ("add the CF grid mapping variable (grid_mapping_name = "
                 "rotated_latitude_longitude) and name it in the variable's grid_mapping")
_INDEX = "__downscale_index_{}"

Fail = Callable[[str, str], InputError]
log = logging.getLogger(__name__)


def normalise_field(da: xr.DataArray, *, path: PathLike | None = None,
                    bounds: Mapping[str, ArrayLike] | None = None,
                    keep_conventions: bool = False,
                    grid_mapping: Mapping[str, Any] | None = None) -> xr.Dataset:
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
        grid_mapping: The attributes of the variable's CF grid mapping (default: those of
            ``da``'s :data:`~downscale.grid_geometry.GRID_MAPPING_COORD` coordinate, if
            any). Rotated-pole and projected grids with one get dims ``(time, y, x)``
            (rotated degrees or metres) and keep it as that coordinate, for their true
            cell areas (:mod:`downscale.grid_geometry`).

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

    if grid_mapping is None and GRID_MAPPING_COORD in da.coords:
        grid_mapping = dict(da[GRID_MAPPING_COORD].attrs)
    geometry = None if grid_mapping is None else _geometry(grid_mapping, fail)
    ydim, xdim, latlon = _find_horizontal_dims(da, fail, geometry)
    index_space = geometry is not None and geometry.kind is GridKind.CURVILINEAR
    if index_space:  # nested in index space: centres 0 .. n-1 (downscale.curvilinear)
        da = da.assign_coords({d: (d, np.arange(da.sizes[d], dtype=np.float64))
                               for d in (ydim, xdim)})
    angular = latlon or (geometry is not None and geometry.kind is GridKind.ROTATED)
    tdim = _find_time_dim(da, (ydim, xdim), fail)
    new_y, new_x = ("lat", "lon") if latlon else ("y", "x")
    labels = {new_y: ydim, new_x: xdim, "time": tdim or "time"}
    given = {new_y: bounds.get(ydim) if bounds else None,
             new_x: bounds.get(xdim) if bounds else None}
    for old, new in ((ydim, new_y), (xdim, new_x)):
        if old in da.coords and not index_space:
            da, given[new] = _in_package_units(da, old, new, given[new], angular, fail)
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
    if geometry is not None:
        ds = ds.assign_coords({GRID_MAPPING_COORD: mapping_coord(geometry.mapping)})
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
    if name.lower() in _LAT_NAMES or standard == "latitude" or units in LAT_UNITS:
        return "lat"
    if name.lower() in _LON_NAMES or standard == "longitude" or units in LON_UNITS:
        return "lon"
    return None


def _latlon_dims(da: xr.DataArray) -> tuple[str, str] | None:
    kinds: dict[str, str] = {}
    for d in map(str, da.dims):
        kind = _coord_kind(d, da[d].attrs if d in da.coords else {})
        if kind is not None:
            kinds.setdefault(kind, d)
    return (kinds["lat"], kinds["lon"]) if len(kinds) == 2 else None


def _geometry(attrs: Mapping[str, Any], fail: Fail) -> GridGeometry:
    try:
        return geometry_from_mapping(attrs)
    except ValueError as exc:
        raise fail(str(exc), "fix the grid mapping variable's attributes (CF section 5.6)"
                   ) from exc


def _mapped_dims(da: xr.DataArray, geometry: GridGeometry, fail: Fail) -> tuple[str, str]:
    """The (y, x) dimensions of a rotated-pole or projected grid with a grid mapping."""
    wanted = (("grid_latitude", "grid_longitude") if geometry.kind is GridKind.ROTATED
              else ("projection_y_coordinate", "projection_x_coordinate"))
    names = (("rlat", "rlon") if geometry.kind is GridKind.ROTATED else ("y", "x"))
    found: dict[str, str] = {}
    for d in map(str, da.dims):
        standard = str(da[d].attrs.get("standard_name", "")) if d in da.coords else ""
        for role, std, name in zip(("y", "x"), wanted, names, strict=True):
            if standard == std or (not standard and d.lower() == name):
                found.setdefault(role, d)
    if len(found) < 2:
        raise fail(f"grid mapping '{geometry.mapping.get('grid_mapping_name')}' but no "
                   f"dimensions with standard_name {wanted[0]}/{wanted[1]} in "
                   f"{tuple(map(str, da.dims))}", "add the standard_name attributes")
    return found["y"], found["x"]


def _find_horizontal_dims(da: xr.DataArray, fail: Fail, geometry: GridGeometry | None = None
                          ) -> tuple[str, str, bool]:
    """The latitude/longitude (or y/x) dimension names of a variable, and which kind."""
    if geometry is not None and geometry.kind is GridKind.CURVILINEAR:
        ydim, xdim = map(str, geometry.mapping["dims"])
        return ydim, xdim, False
    if geometry is not None and geometry.mapped:
        return (*_mapped_dims(da, geometry, fail), False)
    for c in map(str, list(da.coords) + list(da.dims)):
        standard = str(da[c].attrs.get("standard_name", "")) if c in da.coords else ""
        if c.lower() in _ROTATED_NAMES or standard in ("grid_latitude", "grid_longitude"):
            raise fail(f"rotated coordinate '{c}' without a rotated_latitude_longitude "
                       "grid mapping (the pole's position is unknown)", _ROTATED_HINT)
    if "rotated" in str(da.attrs.get("grid_mapping", "")).lower():
        raise fail("rotated-pole grid whose grid mapping variable is missing", _ROTATED_HINT)
    found = _latlon_dims(da)
    if found is not None:
        return found[0], found[1], True
    for c in map(str, da.coords):
        if da[c].ndim >= 2 and _coord_kind(c, da[c].attrs) is not None:
            raise fail(NO_CORNERS.format(f"'{c}'"), NO_CORNERS_HINT)
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
