"""Structured curvilinear grids: 2-D latitude/longitude with four cell corners.

Ocean and some regional models write their grid as 2-D ``lat``/``lon`` over index
dimensions (``y``/``x``, ``j``/``i``, ...) with CF bounds ``lat_bnds``/``lon_bnds`` of four
vertices a cell. Such a grid is nested in *index space*: the normalised field has
dimensions ``y``/``x`` with centres ``0 .. n-1`` and bounds ``[k - 1/2, k + 1/2]``, and the
grid's shape on the Earth is its corner lattice, ``(ny + 1, nx + 1)`` points.

A point at fractional index position is the bilinear interpolation of the four lattice
unit vectors around it, renormalised onto the sphere: on a cell's edge that is a point of
the great circle through the edge's two corners, so fine cells split each coarse cell
along its great-circle edges and tile it exactly. Cell areas are those of spherical
quadrilaterals with great-circle edges (two triangles, Van Oosterom & Strackee's
formula), on the sphere of radius :data:`~downscale.grid.EARTH_RADIUS_M`; the fine areas
of a coarse cell sum to its area (rounding), so conservation is exact with them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from downscale.errors import InputError
from downscale.grid import EARTH_RADIUS_M, FloatArray

#: ``grid_mapping_name`` of the internal mapping that carries a curvilinear grid's corners.
CURVILINEAR_NAME = "downscale_curvilinear"
#: The one-line refusal of a curvilinear grid whose file has no cell corners.
NO_CORNERS = ("curvilinear grids (2-D latitude/longitude {}) without cell corners are not "
              "supported")
NO_CORNERS_HINT = ("add lat_bnds/lon_bnds with 4 vertices (CF 7.1) and name them in the "
                   "'bounds' attribute of the 2-D latitude/longitude")
#: Largest distance (radians of arc) between two cells' copies of a shared corner.
_CORNER_TOL = 1e-7

Fail = Callable[[str, str], InputError]


def unit_vectors(lat: NDArray[np.floating], lon: NDArray[np.floating]) -> FloatArray:
    """Unit 3-vectors ``(..., 3)`` of points given in degrees north/east."""
    la, lo = np.deg2rad(np.asarray(lat, np.float64)), np.deg2rad(np.asarray(lon, np.float64))
    return np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=-1)


def to_latlon(v: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Latitude and longitude (degrees, longitude in ``[-180, 180]``) of vectors ``(..., 3)``."""
    lat = np.rad2deg(np.arctan2(v[..., 2], np.hypot(v[..., 0], v[..., 1])))
    lon = np.rad2deg(np.arctan2(v[..., 1], v[..., 0]))
    return np.asarray(lat, np.float64), np.asarray(lon, np.float64)


def corner_lattice(lat_bnds: NDArray[np.floating], lon_bnds: NDArray[np.floating],
                   fail: Fail) -> FloatArray:
    """The ``(ny + 1, nx + 1, 3)`` lattice of unit vectors of a grid's cell corners.

    Args:
        lat_bnds: ``(ny, nx, 4)`` corner latitudes (degrees), CF 7.1 order: the corners
            of cell ``(j, i)`` at lattice points ``(j, i), (j, i+1), (j+1, i+1), (j+1, i)``.
        lon_bnds: ``(ny, nx, 4)`` corner longitudes (degrees).
        fail: Builds the :class:`InputError` for a problem and its fix.

    Raises:
        InputError: Corners with missing values, or neighbours whose shared corners differ
            (cells that do not tile).
    """
    v = unit_vectors(lat_bnds, lon_bnds)
    if not np.all(np.isfinite(v)):
        raise fail("the cell corners (lat_bnds/lon_bnds) have missing values",
                   "give every cell its four corners")
    ny, nx = v.shape[:2]
    lattice = np.empty((ny + 1, nx + 1, 3))
    lattice[:-1, :-1], lattice[:-1, -1] = v[:, :, 0], v[:, -1, 1]
    lattice[-1, :-1], lattice[-1, -1] = v[-1, :, 3], v[-1, -1, 2]
    for k, (dj, di) in enumerate(((0, 0), (0, 1), (1, 1), (1, 0))):
        gap = np.linalg.norm(v[:, :, k] - lattice[dj:dj + ny, di:di + nx], axis=-1)
        if np.max(gap) > _CORNER_TOL:
            j, i = np.unravel_index(int(np.argmax(gap)), gap.shape)
            raise fail(f"cell ({j}, {i})'s corner {k} is not its neighbours' (cells do not "
                       "tile, or corners not in CF order (j,i), (j,i+1), (j+1,i+1), (j+1,i))",
                       "give corners that neighbouring cells share, in CF 7.1 order")
    return lattice


def lattice_points(lattice: FloatArray, p: NDArray[np.floating], q: NDArray[np.floating]
                   ) -> FloatArray:
    """Unit vectors at fractional lattice positions (bilinear, renormalised).

    Args:
        lattice: ``(ny + 1, nx + 1, 3)`` corner unit vectors.
        p: Row positions in ``[0, ny]`` (a cell ``j`` spans ``[j, j + 1]``), any shape.
        q: Column positions in ``[0, nx]``, the same shape.

    Returns:
        ``(*p.shape, 3)`` unit vectors.
    """
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    j = np.clip(np.floor(p).astype(np.int64), 0, lattice.shape[0] - 2)
    i = np.clip(np.floor(q).astype(np.int64), 0, lattice.shape[1] - 2)
    s, t = (p - j)[..., None], (q - i)[..., None]
    v = ((1 - s) * ((1 - t) * lattice[j, i] + t * lattice[j, i + 1])
         + s * ((1 - t) * lattice[j + 1, i] + t * lattice[j + 1, i + 1]))
    return np.asarray(v / np.linalg.norm(v, axis=-1, keepdims=True), np.float64)


def quad_areas(a: FloatArray, b: FloatArray, c: FloatArray, d: FloatArray,
               radius: float = EARTH_RADIUS_M) -> FloatArray:
    """Areas (m^2) of spherical quadrilaterals ``a b c d`` with great-circle edges.

    Args:
        a: ``(..., 3)`` unit vectors of the first corners.
        b: The second corners, next around the cell.
        c: The third corners.
        d: The fourth corners.
        radius: Sphere radius in metres.

    Returns:
        ``(...)`` areas, whichever way round the corners run.
    """
    return np.asarray(radius**2 * np.abs(_triangle(a, b, c) + _triangle(a, c, d)), np.float64)


def _triangle(a: FloatArray, b: FloatArray, c: FloatArray) -> FloatArray:
    """Signed spherical excess of triangles (Van Oosterom & Strackee 1983)."""
    det = np.einsum("...i,...i->...", a, np.cross(b, c))
    dots = 1.0 + np.einsum("...i,...i->...", a, b) + np.einsum(
        "...i,...i->...", b, c) + np.einsum("...i,...i->...", c, a)
    return np.asarray(2.0 * np.arctan2(det, dots), np.float64)


def index_cell_areas(lattice: FloatArray, y_bnds: NDArray[np.floating],
                     x_bnds: NDArray[np.floating], per_index: tuple[int, int] = (1, 1)
                     ) -> FloatArray:
    """Areas (m^2) ``(ny', nx')`` of the cells between index-space bounds.

    Each corner is computed once (for the cells that share it), on the outer product of
    the bounds' distinct values: bilinear interpolation is separable, rows then columns.

    Args:
        lattice: The grid's corner lattice (:func:`corner_lattice`).
        y_bnds: ``(ny', 2)`` bounds in index coordinates (centre ``j`` spans
            ``[j - 1/2, j + 1/2]``).
        x_bnds: ``(nx', 2)`` the same along x.
        per_index: Lattice cells per unit of index along y and x: a fine grid's own
            lattice indexed in a coarse grid's index space (:func:`reindexed`).
    """
    ys, yi = np.unique((np.asarray(y_bnds, np.float64) + 0.5) * per_index[0],
                       return_inverse=True)
    xs, xi = np.unique((np.asarray(x_bnds, np.float64) + 0.5) * per_index[1],
                       return_inverse=True)
    yi, xi = yi.reshape(-1, 2), xi.reshape(-1, 2)
    rows = _interpolate(lattice, ys, axis=0)  # (len(ys), nx + 1, 3)
    points = _interpolate(rows, xs, axis=1)  # (len(ys), len(xs), 3)
    points /= np.linalg.norm(points, axis=-1, keepdims=True)

    def at(r: int, c: int) -> FloatArray:
        return np.asarray(points[yi[:, r]][:, xi[:, c]])

    return quad_areas(at(0, 0), at(0, 1), at(1, 1), at(1, 0))


def _interpolate(grid: FloatArray, positions: FloatArray, axis: int) -> FloatArray:
    """Linear interpolation of ``grid`` at fractional ``positions`` along ``axis`` (0, 1)."""
    k = np.clip(np.floor(positions).astype(np.int64), 0, grid.shape[axis] - 2)
    w = positions - k
    lo, hi = np.take(grid, k, axis=axis), np.take(grid, k + 1, axis=axis)
    w = w[:, None, None] if axis == 0 else w[None, :, None]
    return np.asarray((1 - w) * lo + w * hi, np.float64)


def index_geographic(lattice: FloatArray, y: NDArray[np.floating], x: NDArray[np.floating],
                     per_index: tuple[int, int] = (1, 1)) -> tuple[FloatArray, FloatArray]:
    """Latitude and longitude (degrees) of points at index coordinates ``y``, ``x``."""
    return to_latlon(lattice_points(lattice, (np.asarray(y) + 0.5) * per_index[0],
                                    (np.asarray(x) + 0.5) * per_index[1]))


def lattice_of(mapping: Mapping[str, Any]) -> FloatArray:
    """The corner lattice ``(ny + 1, nx + 1, 3)`` an internal curvilinear mapping carries."""
    return unit_vectors(np.asarray(mapping["corner_lat"], np.float64),
                        np.asarray(mapping["corner_lon"], np.float64))


def median_spacing(lattice: FloatArray, radius: float = EARTH_RADIUS_M) -> tuple[float, float]:
    """Median great-circle length (m) of the cells' edges along y (rows) and along x."""

    def arc(a: FloatArray, b: FloatArray) -> float:
        chord = np.linalg.norm(a - b, axis=-1)
        return float(np.median(2.0 * radius * np.arcsin(np.clip(chord / 2.0, 0.0, 1.0))))

    return arc(lattice[1:], lattice[:-1]), arc(lattice[:, 1:], lattice[:, :-1])


def per_index(mapping: Mapping[str, Any]) -> tuple[int, int]:
    """Lattice cells per index unit (y, x) of an internal curvilinear mapping (default 1)."""
    fy, fx = mapping.get("cells_per_index", (1, 1))
    return int(fy), int(fx)


def reindexed(fine: Mapping[str, Any], coarse: Mapping[str, Any]
              ) -> tuple[dict[str, Any], tuple[int, int]] | None:
    """A fine grid's mapping in a coarse grid's index space, where it refines it.

    The fine grid refines the coarse one when its corner lattice has the coarse corners
    every ``f`` points along each axis (within :data:`_CORNER_TOL`); its own corners keep
    giving its areas (``cells_per_index``). None where it does not refine the coarse grid.
    """
    small, big = lattice_of(coarse), lattice_of(fine)
    steps = [(b - 1) // (s - 1) for b, s in zip(big.shape[:2], small.shape[:2], strict=True)]
    if any(f < 1 or (s - 1) * f != b - 1
           for f, s, b in zip(steps, small.shape[:2], big.shape[:2], strict=True)):
        return None
    if np.max(np.linalg.norm(big[::steps[0], ::steps[1]] - small, axis=-1)) > _CORNER_TOL:
        return None
    return {**fine, "cells_per_index": steps}, (steps[0], steps[1])
