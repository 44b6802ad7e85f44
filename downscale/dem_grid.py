"""A normalised DEM's grid: its variable, cell spacing in metres, slopes, coarse/fine grids.

The DEMs come from :mod:`downscale.dem` (files and arrays). Here: :func:`grid_spacing`
(the metre spacings slopes need), :func:`dem_slope` (slope maps), :func:`coarsen_dem`
(area-weighted coarse/fine pairs, :mod:`downscale.aggregate`) and :func:`subdivide_grid`
(the fine grid nested in a coarse one, to generate into).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from numpy.typing import NDArray

from downscale.aggregate import coarsen_field, crop_to_factor
from downscale.grid import EARTH_RADIUS_M, horizontal_dims, nested_fine_coords

FloatArray = NDArray[np.float64]


def dem_variable(ds: xr.Dataset) -> str:
    """The name of the (only) data variable of a normalised DEM."""
    names = [str(v) for v in ds.data_vars]
    if len(names) != 1:
        raise ValueError(f"expected one data variable in the DEM, got {names}")
    return names[0]


def grid_spacing(ds: xr.Dataset | xr.DataArray) -> tuple[FloatArray, FloatArray]:
    """Distances between neighbouring cell centres in metres, per row.

    On a latitude-longitude grid ``dy = R dlat`` and ``dx = R cos(lat) dlon`` (``R`` the
    mean Earth radius, angles in radians), so ``dx`` shrinks with latitude. ``dy`` is the
    centred difference of the row coordinates (one-sided at the first and last row), which
    makes ``gradient(h) / dy`` the exact centred slope on unevenly spaced rows such as
    Mercator-spaced ones. The column step is taken as the mean step: regular grids stored
    in single precision jitter by a few parts in ten thousand.

    Args:
        ds: A normalised field with ``(lat, lon)`` or ``(y, x)`` in metres.

    Returns:
        ``(dy, dx)``, each of shape ``(H, 1)`` in metres, ready to broadcast against
        ``(..., H, W)`` elevation in :func:`downscale.losses.slope`.

    """
    ydim, xdim = horizontal_dims(ds)
    y = np.asarray(ds[ydim].values, dtype=np.float64)
    x = np.asarray(ds[xdim].values, dtype=np.float64)
    if y.size < 2 or x.size < 2:
        raise ValueError(f"grid spacing needs at least 2 x 2 cells, got {y.size} x {x.size}")
    x_step = float(np.abs(np.diff(x)).mean())
    if ydim == "lat":
        lat = np.deg2rad(y)
        dy = EARTH_RADIUS_M * np.abs(np.gradient(lat))
        dx = EARTH_RADIUS_M * np.cos(lat) * np.deg2rad(x_step)
    else:
        dy = np.abs(np.gradient(y))
        dx = np.full_like(y, x_step)
    return dy[:, None], dx[:, None]


def dem_slope(ds: xr.Dataset, variable: str | None = None) -> xr.DataArray:
    """Slope magnitude ``|grad h|`` (m/m) of a normalised DEM, same dims and coordinates.

    Args:
        ds: A normalised DEM (elevation in metres).
        variable: The elevation variable; the only one by default.

    Returns:
        The slope (``tan`` of the slope angle), NaN next to missing cells.

    """
    import torch

    from downscale.losses import slope

    name = variable or dem_variable(ds)
    dy, dx = grid_spacing(ds)
    h = torch.from_numpy(np.asarray(ds[name].values, dtype=np.float64))
    values = slope(h, torch.from_numpy(dy), torch.from_numpy(dx)).numpy()
    return xr.DataArray(values, dims=ds[name].dims, coords=ds[name].coords, name="slope",
                        attrs={"units": "1", "long_name": f"slope magnitude of {name}"})


def coarsen_dem(ds: xr.Dataset, factor: int, variable: str | None = None, *,
                crop: bool = True) -> tuple[xr.Dataset, xr.Dataset]:
    """A conservative coarse/fine pair: the (cropped) DEM and its area-weighted aggregate.

    Args:
        ds: A normalised DEM.
        factor: Fine cells per coarse cell along each axis.
        variable: The elevation variable; the only one by default.
        crop: Crop trailing rows/columns that do not divide by ``factor``.

    Returns:
        ``(fine, coarse)``: every coarse cell is the area-weighted mean of its
        ``factor x factor`` fine cells (exact mass on the sphere).

    """
    name = variable or dem_variable(ds)
    fine = crop_to_factor(ds, (factor, factor), variable=name, allow_crop=crop)
    return fine, coarsen_field(fine, name, (factor, factor))


def subdivide_grid(coarse: xr.Dataset, factor: int, variable: str | None = None) -> xr.Dataset:
    """The fine grid nested in a coarse DEM, filled with NaN: a template to generate into.

    Every coarse cell is split into ``factor x factor`` cells of equal width in the grid's
    coordinates (degrees or metres), so aggregating the fine grid gives the coarse one.

    Args:
        coarse: A normalised coarse DEM.
        factor: Fine cells per coarse cell along each axis.
        variable: The elevation variable; the only one by default.

    Returns:
        A normalised field on the fine grid with the coarse variable's name, attributes
        and time axis, and NaN values.

    """
    name = variable or dem_variable(coarse)
    ydim, xdim = horizontal_dims(coarse)
    coords: dict[str, Any] = nested_fine_coords(coarse, factor)
    if "time" in coarse.coords:
        coords["time"] = coarse["time"]
    shape = (coarse.sizes["time"], coarse.sizes[ydim] * factor, coarse.sizes[xdim] * factor)
    values = np.full(shape, np.nan, dtype=np.float32)
    return xr.Dataset({name: (("time", ydim, xdim), values, coarse[name].attrs)},
                      coords=coords, attrs=coarse.attrs)
