"""Digital elevation models (DEMs): files and arrays opened as normalised fields.

:func:`open_dem` reads a DEM stored as NetCDF or as a GeoTIFF-like NumPy archive (``.npz``)
and returns the same *normalised* field as :func:`downscale.io.open_field`: a one-variable
``xr.Dataset`` with dims ``(time, lat, lon)`` (geographic grids) or ``(time, y, x)``
(projected grids in metres), ascending coordinates, ``<dim>_bnds`` bounds coordinates,
NaN for missing cells and a Dask-backed variable. A DEM has no time: the single time step
is added and marked with the ``downscale_added_time`` attribute, so writers drop it again.
Elevations are in metres; the variable carries ``standard_name: surface_altitude``.

Understood ``.npz`` layouts (matplotlib's sample DEMs use the first two):

* an elevation array with ``xmin``, ``xmax``, ``ymin``, ``ymax`` (outer cell edges, in
  degrees or metres) and optionally ``dx``, ``dy`` (cell size) and ``nodata``; rows run
  from north to south (GeoTIFF order) unless ``north_up=False``
  (``jacksboro_fault_dem``);
* an elevation array with 1-D ``latitude``/``longitude`` (or ``lat``/``lon``, or ``y``/``x``
  in metres) cell centres (``topobathy``);
* an elevation array with ``dx``, ``dy`` only: a projected grid with that spacing in metres.

Arrays already in memory go through :func:`dem_from_array` (spacing in metres) or
:func:`dem_from_latlon`. What is done with a DEM's grid lives in :mod:`downscale.dem_grid`
(re-exported here): coarse/fine pairs from :func:`coarsen_dem` (area-weighted aggregation,
:mod:`downscale.aggregate`), metre spacings for slopes from :func:`grid_spacing`, slope maps
from :func:`dem_slope` and nested fine grids from :func:`subdivide_grid`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr
from numpy.typing import ArrayLike, NDArray

from downscale.dem_grid import coarsen_dem as coarsen_dem
from downscale.dem_grid import dem_slope as dem_slope
from downscale.dem_grid import dem_variable as dem_variable
from downscale.dem_grid import grid_spacing as grid_spacing
from downscale.dem_grid import subdivide_grid as subdivide_grid
from downscale.errors import InputError
from downscale.io import SUSPICIOUS_MAGNITUDE, normalise_field, open_field

#: Attributes of an elevation variable (CF): what the generator writes as well.
DEM_ATTRS: Mapping[str, str] = {"standard_name": "surface_altitude",
                                "long_name": "surface altitude", "units": "m"}

MANIFEST_SCHEME = "manifest://"
_METRE_UNITS = ("m", "metre", "metres", "meter", "meters")
_ELEVATION_NAMES = ("elevation", "topo", "height", "altitude", "dem", "z", "band1")
_LAT_KEYS, _LON_KEYS = ("latitude", "lat"), ("longitude", "lon")
_EXTENT_KEYS = ("xmin", "xmax", "ymin", "ymax")

Crs = Literal["auto", "geographic", "projected"]
FloatArray = NDArray[np.float64]


def open_dem(source: str | os.PathLike[str], variable: str | None = None, *,
             crs: Crs = "auto", north_up: bool = True) -> xr.Dataset:
    """Open a DEM as a normalised field (see the module docstring).

    Args:
        source: A ``.npz`` or NetCDF file, or ``manifest://<id>`` for a dataset of
            ``data_manifest.yaml`` (e.g. ``manifest://jacksboro_fault_dem``).
        variable: The elevation variable; by default the file's only 2-D array (or the
            one called ``elevation``, ``topo``, ``height``, ...).
        crs: For ``.npz`` extents: ``"geographic"`` (degrees), ``"projected"`` (metres) or
            ``"auto"``: geographic when the extents lie within longitude/latitude ranges
            and the cells are smaller than a degree.
        north_up: For ``.npz`` extents: row 0 is the northern edge (GeoTIFF order).

    Returns:
        The DEM, dims ``(time, lat, lon)`` or ``(time, y, x)``, elevation in metres.

    Raises:
        InputError: The file is missing or unreadable, has no usable elevation array,
            its extents and spacing disagree, or its units are not metres.

    """
    text = os.fspath(source)
    if text.startswith(MANIFEST_SCHEME):
        from downscale.manifest import resolve

        path = resolve(text.removeprefix(MANIFEST_SCHEME))
    else:
        path = Path(text)
    if not path.is_file():
        raise InputError("file not found", path=path, variable=variable,
                         hint="check the path (DEMs are .npz or NetCDF files)")
    if path.suffix.lower() == ".npz":
        ds = _open_npz(path, variable, crs, north_up)
    else:
        ds = _open_netcdf(path, variable)
    name = dem_variable(ds)
    ds[name] = ds[name].chunk({d: (1 if d == "time" else -1) for d in ds[name].dims})
    ds.attrs["source_files"] = str(path)
    return ds


def dem_from_array(elevation: ArrayLike, spacing_m: float | tuple[float, float], *,
                   origin_m: tuple[float, float] = (0.0, 0.0), north_up: bool = True,
                   name: str = "elevation", attrs: Mapping[str, Any] | None = None
                   ) -> xr.Dataset:
    """A projected DEM from a 2-D array with a known cell size in metres.

    Args:
        elevation: Heights in metres, shape ``(rows, columns)``; NaN = missing.
        spacing_m: Cell size ``(dy, dx)`` in metres, or one number for square cells.
        origin_m: ``(y, x)`` of the grid's south-west corner (outer edge), in metres.
        north_up: Row 0 is the northern row (GeoTIFF order); otherwise the southern one.
        name: Name of the elevation variable.
        attrs: Extra attributes of the variable (``units`` must stay metres).

    Returns:
        The normalised DEM, dims ``(time, y, x)``.

    """
    values = _elevation_array(elevation, name, None)
    dy, dx = (spacing_m, spacing_m) if isinstance(spacing_m, int | float) else spacing_m
    if not (dy > 0 and dx > 0):
        raise InputError(f"cell size ({dy}, {dx}) m is not positive", variable=name,
                         hint="give the spacing in metres")
    rows, cols = values.shape
    y_edges = origin_m[0] + dy * np.arange(rows + 1)
    x_edges = origin_m[1] + dx * np.arange(cols + 1)
    return _from_edges(values, y_edges[::-1] if north_up else y_edges, x_edges,
                       geographic=False, name=name, attrs=attrs)


def dem_from_latlon(elevation: ArrayLike, lat: ArrayLike, lon: ArrayLike, *,
                    name: str = "elevation", attrs: Mapping[str, Any] | None = None,
                    path: str | os.PathLike[str] | None = None) -> xr.Dataset:
    """A geographic DEM from a 2-D array and its cell-centre latitudes and longitudes.

    Args:
        elevation: Heights in metres, shape ``(len(lat), len(lon))``; NaN = missing.
        lat: Cell-centre latitudes in degrees north, monotonic (any direction, any spacing).
        lon: Cell-centre longitudes in degrees east, monotonic (either convention).
        name: Name of the elevation variable.
        attrs: Extra attributes of the variable.
        path: The file the data came from, for messages.

    Returns:
        The normalised DEM, dims ``(time, lat, lon)``; bounds halfway between centres.

    """
    values = _elevation_array(elevation, name, path)
    lat_arr, lon_arr = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    if values.shape != (lat_arr.size, lon_arr.size):
        raise InputError(f"elevation has shape {values.shape} but there are {lat_arr.size} "
                         f"latitudes and {lon_arr.size} longitudes", path=path, variable=name,
                         hint="give one latitude per row and one longitude per column")
    da = xr.DataArray(values, dims=("lat", "lon"), name=name, attrs=_attrs(attrs), coords={
        "lat": ("lat", lat_arr, {"units": "degrees_north"}),
        "lon": ("lon", lon_arr, {"units": "degrees_east"})})
    return normalise_field(da, path=path)


# -- reading ---------------------------------------------------------------------------------


def _open_netcdf(path: Path, variable: str | None) -> xr.Dataset:
    name = variable or netcdf_elevation_name(path)
    ds = open_field(path, name)
    units = str(ds[name].attrs.get("units", "m")).strip()
    if units.lower() not in _METRE_UNITS:
        raise InputError(f"elevation units '{units}' are not metres", path=path, variable=name,
                         hint="convert the DEM to metres first")
    ds[name].attrs.update({k: v for k, v in DEM_ATTRS.items() if k not in ds[name].attrs})
    ds[name].attrs["units"] = "m"
    return ds


def netcdf_elevation_name(path: Path) -> str:
    """The elevation variable of a NetCDF DEM: its only 2-D+ variable, or a known name."""
    try:
        with xr.open_dataset(path, engine="netcdf4", decode_times=False) as ds:
            fields = [str(v) for v in ds.data_vars if ds[v].ndim >= 2 and "bnds" not in str(v)]
            altitude = [v for v in fields
                        if ds[v].attrs.get("standard_name") == DEM_ATTRS["standard_name"]]
    except Exception:
        return "elevation"  # open_field reports what is wrong with the file, in one line
    return _pick_elevation(altitude or fields, path)


def _open_npz(path: Path, variable: str | None, crs: Crs, north_up: bool) -> xr.Dataset:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: np.asarray(npz[key]) for key in npz.files}
    except (OSError, ValueError) as exc:
        raise InputError(f"not a readable .npz archive ({type(exc).__name__}: {exc})",
                         path=path, variable=variable,
                         hint="check that the file is complete and not corrupt") from exc
    grids = [k for k, v in arrays.items() if v.ndim == 2]
    if variable is not None and variable not in grids:
        raise InputError(f"no 2-D array '{variable}'; 2-D arrays: {', '.join(grids) or 'none'}",
                         path=path, variable=variable, hint="pass one of the listed names")
    name = variable or _pick_elevation(grids, path)
    values = arrays[name].astype(np.float64)
    if "nodata" in arrays:
        values = np.where(values == float(arrays["nodata"]), np.nan, values)
    values = _elevation_array(values, name, path)
    lat = next((arrays[k] for k in _LAT_KEYS if k in arrays), None)
    lon = next((arrays[k] for k in _LON_KEYS if k in arrays), None)
    if lat is not None and lon is not None:
        return dem_from_latlon(values, lat, lon, name=name, path=path)
    if "y" in arrays and "x" in arrays:
        da = xr.DataArray(values, dims=("y", "x"), name=name, attrs=_attrs(None), coords={
            "y": ("y", np.asarray(arrays["y"], dtype=np.float64), {"units": "m"}),
            "x": ("x", np.asarray(arrays["x"], dtype=np.float64), {"units": "m"})})
        return normalise_field(da, path=path)
    if all(k in arrays for k in _EXTENT_KEYS):
        return _from_extents(values, arrays, name, path, crs, north_up)
    if "dx" in arrays and "dy" in arrays:
        return dem_from_array(values, (float(arrays["dy"]), float(arrays["dx"])),
                              north_up=north_up, name=name)
    raise InputError("no grid information (xmin/xmax/ymin/ymax, latitude/longitude, y/x or "
                     "dx/dy arrays)", path=path, variable=name,
                     hint="store the extents or the coordinates with the elevation")


def _from_extents(values: FloatArray, arrays: Mapping[str, NDArray[Any]], name: str,
                  path: Path, crs: Crs, north_up: bool) -> xr.Dataset:
    """A DEM whose ``xmin..ymax`` are its outer edges, in any order.

    matplotlib's Jacksboro file stores its northern edge as ``ymin``.
    """
    xmin, xmax, ymin, ymax = (float(arrays[k]) for k in _EXTENT_KEYS)
    rows, cols = values.shape
    west, east, south, north = min(xmin, xmax), max(xmin, xmax), min(ymin, ymax), max(ymin, ymax)
    for key, size, span in (("dx", cols, east - west), ("dy", rows, north - south)):
        if key in arrays and not np.isclose(span / float(arrays[key]), size, rtol=0, atol=1e-3):
            raise InputError(f"the extents span {span / float(arrays[key]):.4f} cells of "
                             f"{key} = {float(arrays[key]):g}, but the array has {size}",
                             path=path, variable=name,
                             hint="give the outer cell edges as xmin/xmax/ymin/ymax")
    geographic = crs == "geographic" or (
        crs == "auto" and -180.0 <= west and east <= 360.0 and -90.0 <= south
        and north <= 90.0 and (east - west) / cols < 1.0 and (north - south) / rows < 1.0)
    y_edges = np.linspace(north, south, rows + 1) if north_up else np.linspace(south, north,
                                                                                 rows + 1)
    return _from_edges(values, y_edges, np.linspace(west, east, cols + 1),
                       geographic=geographic, name=name, attrs=None, path=path)


def _from_edges(values: FloatArray, y_edges: FloatArray, x_edges: FloatArray, *,
                geographic: bool, name: str, attrs: Mapping[str, Any] | None,
                path: str | os.PathLike[str] | None = None) -> xr.Dataset:
    """A normalised DEM from cell edges listed in the array's row and column order."""
    ydim, xdim = ("lat", "lon") if geographic else ("y", "x")
    units = ("degrees_north", "degrees_east") if geographic else ("m", "m")
    bounds = {ydim: np.stack([y_edges[:-1], y_edges[1:]], axis=1),
              xdim: np.stack([x_edges[:-1], x_edges[1:]], axis=1)}
    coords = {dim: (dim, b.mean(axis=1), {"units": u})
              for (dim, b), u in zip(bounds.items(), units, strict=True)}
    da = xr.DataArray(values, dims=(ydim, xdim), name=name, attrs=_attrs(attrs), coords=coords)
    ds = normalise_field(da, path=path, bounds=bounds)
    if not geographic:
        for dim in (ydim, xdim):
            ds[dim].attrs["units"] = "m"
    return ds


def _pick_elevation(names: list[str], path: Path) -> str:
    if len(names) == 1:
        return names[0]
    for known in _ELEVATION_NAMES:
        if known in names:
            return known
    raise InputError(f"cannot tell which array is the elevation among {', '.join(names) or 'none'}",
                     path=path, hint="pass the variable name (e.g. --data.variable)")


def _elevation_array(elevation: ArrayLike, name: str, path: str | os.PathLike[str] | None
                     ) -> FloatArray:
    """The elevation as float64, checked: 2-D, no infinities or undeclared fill values."""
    values = np.asarray(elevation, dtype=np.float64)
    if values.ndim != 2 or min(values.shape) < 2:
        raise InputError(f"elevation must be a 2-D array of at least 2 x 2 cells, got shape "
                         f"{values.shape}", path=path, variable=name,
                         hint="give one elevation per grid cell")
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise InputError("the DEM has no valid elevation", path=path, variable=name,
                         hint="check the nodata value")
    if np.abs(finite).max() >= SUSPICIOUS_MAGNITUDE or np.isinf(values).any():
        raise InputError(f"values of magnitude {np.abs(values).max():.3g} look like undeclared "
                         "fill values", path=path, variable=name,
                         hint="mark missing cells as NaN (or store a 'nodata' array in .npz)")
    return values


def _attrs(extra: Mapping[str, Any] | None) -> dict[str, Any]:
    attrs = {**DEM_ATTRS, **(extra or {})}
    if str(attrs["units"]).lower() not in _METRE_UNITS:
        raise InputError(f"elevation units '{attrs['units']}' are not metres",
                         hint="convert the DEM to metres first")
    attrs["units"] = "m"
    return attrs
