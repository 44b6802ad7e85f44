"""Grid geometry: cell bounds, spherical cell areas, nesting, refinement and coarsening.

Conventions used throughout the package:

* The horizontal dimensions are called ``lat`` and ``lon`` (degrees north / east), or
  ``y`` and ``x`` (metres) for projected grids such as DEMs.
* Latitude is ascending. Longitude is in ``[-180, 180)`` unless the domain is only
  contiguous in ``[0, 360)`` (a region across the dateline).
* Bounds are stored as ``(n, 2)`` arrays of (lower, upper) edges.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from numpy.typing import NDArray

#: Mean Earth radius in metres (IUGG), used for cell areas and slopes.
EARTH_RADIUS_M = 6_371_008.8

FloatArray = NDArray[np.float64]


def bounds_from_centres(centres: NDArray[np.floating], *, clip: tuple[float, float] | None = None
                        ) -> FloatArray:
    """Infer cell edges halfway between centres, extrapolating at both ends.

    Args:
        centres: Monotonic cell centres, shape ``(n,)``, ``n >= 2``.
        clip: Optional ``(low, high)`` to clip the outermost edges to, e.g. ``(-90, 90)``.

    Returns:
        Bounds of shape ``(n, 2)`` in the units of ``centres``.
    """
    c = np.asarray(centres, dtype=np.float64)
    if c.ndim != 1:
        raise ValueError(f"cell centres must be 1-D, got shape {c.shape}")
    if c.size < 2:
        raise ValueError("at least two cell centres are needed to infer bounds")
    mid = 0.5 * (c[1:] + c[:-1])
    edges = np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])
    if clip is not None:
        edges = np.clip(edges, *clip)
    return np.stack([edges[:-1], edges[1:]], axis=1)


def is_periodic_longitude(lon_bounds: NDArray[np.floating], tol: float = 1e-3) -> bool:
    """Whether longitude cells cover the full circle (a global, periodic axis).

    Args:
        lon_bounds: Longitude bounds in degrees, shape ``(n, 2)``, ascending.
        tol: Tolerance in degrees on the 360-degree span.
    """
    b = np.asarray(lon_bounds, dtype=np.float64)
    if b.ndim != 2 or b.shape[1] != 2 or b.shape[0] == 0:
        raise ValueError(f"longitude bounds must have shape (n, 2), got {b.shape}")
    span = float(b[-1, 1] - b[0, 0])
    return abs(span - 360.0) < tol


def cell_areas_latlon(lat_bounds: NDArray[np.floating], lon_bounds: NDArray[np.floating],
                      radius: float = EARTH_RADIUS_M) -> FloatArray:
    """Spherical cell areas of a latitude-longitude grid.

    ``area = R^2 * dlon * (sin(lat_north) - sin(lat_south))`` with ``dlon`` in radians.

    Args:
        lat_bounds: Latitude bounds in degrees, shape ``(ny, 2)``.
        lon_bounds: Longitude bounds in degrees, shape ``(nx, 2)``.
        radius: Sphere radius in metres.

    Returns:
        Cell areas in m^2, shape ``(ny, nx)``.
    """
    lat_b = np.deg2rad(np.asarray(lat_bounds, dtype=np.float64))
    lon_b = np.deg2rad(np.asarray(lon_bounds, dtype=np.float64))
    band = np.abs(np.sin(lat_b[:, 1]) - np.sin(lat_b[:, 0]))
    width = np.abs(lon_b[:, 1] - lon_b[:, 0])
    return radius**2 * np.outer(band, width)


def cell_areas_projected(y_bounds: NDArray[np.floating], x_bounds: NDArray[np.floating]
                         ) -> FloatArray:
    """Cell areas of a projected grid whose bounds are in metres, shape ``(ny, nx)`` in m^2."""
    dy = np.abs(np.diff(np.asarray(y_bounds, dtype=np.float64), axis=1))[:, 0]
    dx = np.abs(np.diff(np.asarray(x_bounds, dtype=np.float64), axis=1))[:, 0]
    return np.outer(dy, dx)


def cell_areas(da: xr.DataArray | xr.Dataset) -> xr.DataArray:
    """Cell areas (m^2) of a normalised field, from its ``*_bnds`` coordinates.

    Works for ``lat``/``lon`` grids (spherical areas) and ``y``/``x`` grids in metres.
    """
    ydim, xdim = horizontal_dims(da)
    yb = np.asarray(da[f"{ydim}_bnds"].values)
    xb = np.asarray(da[f"{xdim}_bnds"].values)
    area = cell_areas_latlon(yb, xb) if ydim == "lat" else cell_areas_projected(yb, xb)
    return xr.DataArray(area, dims=(ydim, xdim), coords={ydim: da[ydim], xdim: da[xdim]},
                        attrs={"units": "m2", "standard_name": "cell_area"})


def horizontal_dims(da: xr.DataArray | xr.Dataset) -> tuple[str, str]:
    """The (y, x) dimension names of a normalised field: ``("lat", "lon")`` or ``("y", "x")``."""
    for pair in (("lat", "lon"), ("y", "x")):
        if pair[0] in da.dims and pair[1] in da.dims:
            return pair
    raise ValueError(f"no (lat, lon) or (y, x) dimensions in {tuple(da.dims)}")


def nesting_factor(coarse_bounds: NDArray[np.floating], fine_bounds: NDArray[np.floating],
                   tol: float = 1e-4) -> int | None:
    """The integer factor by which a fine axis nests in a coarse one, or None.

    The fine cells nest when every coarse cell is exactly ``factor`` consecutive fine cells
    whose outer edges coincide with the coarse edges (within ``tol`` of a fine cell width).

    Args:
        coarse_bounds: Coarse bounds, shape ``(n, 2)``, ascending.
        fine_bounds: Fine bounds, shape ``(n * factor, 2)``, ascending.
        tol: Relative tolerance, as a fraction of the smallest fine cell width.
    """
    coarse = np.asarray(coarse_bounds, dtype=np.float64)
    fine = np.asarray(fine_bounds, dtype=np.float64)
    for b in (coarse, fine):
        if b.ndim != 2 or b.shape[1] != 2:
            raise ValueError(f"bounds must have shape (n, 2), got {b.shape}")
    n_coarse, n_fine = len(coarse), len(fine)
    if n_coarse == 0 or n_fine < n_coarse or n_fine % n_coarse:
        return None
    factor = n_fine // n_coarse
    width = float(np.min(np.abs(np.diff(fine, axis=1))))
    atol = tol * width
    lower = fine[::factor, 0]
    upper = fine[factor - 1 :: factor, 1]
    # Inside a coarse cell the fine cells must tile it: each starts where the last ended.
    inner = np.ones(n_fine - 1, dtype=bool)
    inner[factor - 1 :: factor] = False
    ok = (np.allclose(lower, coarse[:, 0], atol=atol, rtol=0)
          and np.allclose(upper, coarse[:, 1], atol=atol, rtol=0)
          and np.allclose(fine[1:, 0][inner], fine[:-1, 1][inner], atol=atol, rtol=0))
    return factor if ok else None


# -- refinement and coarsening of bounds: the one place ----------------------------------
def fine_bounds(coarse_bounds: NDArray[np.floating], factor: int) -> NDArray[np.float64]:
    """Split each coarse cell evenly into ``factor`` fine cells.

    Args:
        coarse_bounds: ``(n, 2)`` ascending (lower, upper) edges, degrees or metres.
        factor: Fine cells per coarse cell.

    Returns:
        Fine bounds of shape ``(n * factor, 2)`` in the same units.
    """
    cb = np.asarray(coarse_bounds, dtype=np.float64)
    step = (cb[:, 1] - cb[:, 0]) / factor
    lower = cb[:, :1] + step[:, None] * np.arange(factor)
    upper = cb[:, :1] + step[:, None] * np.arange(1, factor + 1)
    upper[:, -1] = cb[:, 1]  # the coarse edge itself, not a rounded sum
    return np.stack([lower.ravel(), upper.ravel()], axis=1)


def fine_cell_areas(coarse_y_bnds: NDArray[np.floating], coarse_x_bnds: NDArray[np.floating],
                    factor: int, *, latlon: bool = True) -> NDArray[np.float64]:
    """Cell areas (m^2) of the fine grid that splits each coarse cell ``factor x factor``.

    Args:
        coarse_y_bnds: ``(h, 2)`` latitude (degrees) or y (metres) bounds.
        coarse_x_bnds: ``(w, 2)`` longitude (degrees) or x (metres) bounds.
        factor: Fine cells per coarse cell along each axis.
        latlon: Spherical areas of a latitude-longitude grid, else planar areas.

    Returns:
        ``(h * factor, w * factor)`` areas in m^2.
    """
    yb, xb = fine_bounds(coarse_y_bnds, factor), fine_bounds(coarse_x_bnds, factor)
    return cell_areas_latlon(yb, xb) if latlon else cell_areas_projected(yb, xb)


def coarse_bounds(fine_bounds: NDArray[np.floating], factor: int) -> NDArray[np.float64]:
    """Bounds of the coarse cells that ``factor`` consecutive fine cells form, ``(n, 2)``."""
    fb = np.asarray(fine_bounds, dtype=np.float64)
    return np.stack([fb[::factor, 0], fb[factor - 1 :: factor, 1]], axis=1)


def nested_fine_coords(coarse: xr.Dataset | xr.DataArray, factor: int
                       ) -> dict[str, tuple[Any, ...]]:
    """The horizontal coordinates of the fine grid nested in ``coarse``'s.

    Each coarse cell is split into ``factor x factor`` cells of equal width in the grid's
    own coordinates (:func:`fine_bounds`); the centres keep the coarse coordinates'
    attributes.

    Returns:
        ``{dim: (dim, centres, attrs), f"{dim}_bnds": ((dim, "bnds"), bounds)}`` for both
        horizontal dimensions, ready for :class:`xarray.Dataset`'s ``coords``.
    """
    coords: dict[str, tuple[Any, ...]] = {}
    for dim in horizontal_dims(coarse):
        bnds = fine_bounds(coarse[f"{dim}_bnds"].values, factor)
        coords[dim] = (dim, bnds.mean(axis=1), dict(coarse[dim].attrs))
        coords[f"{dim}_bnds"] = ((dim, "bnds"), bnds)
    return coords
