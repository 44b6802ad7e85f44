"""Skill scores of a prediction against the truth: RMSE, MAE, bias, area-weighted RMSE."""

from __future__ import annotations

import math

import numpy as np
import xarray as xr
from numpy.typing import ArrayLike, NDArray

from downscale.grid import cell_areas, cell_areas_latlon, horizontal_dims
from downscale.metrics.conservation import _data_array

FloatArray = NDArray[np.float64]


def rmse(pred: ArrayLike, truth: ArrayLike) -> float:
    """Root-mean-square error over the cells valid in both, in field units (NaN if none)."""
    diff, _ = _paired_difference(pred, truth)
    return math.sqrt(float(np.mean(diff**2))) if diff.size else math.nan


def mae(pred: ArrayLike, truth: ArrayLike) -> float:
    """Mean absolute error over the cells valid in both, in field units (NaN if none)."""
    diff, _ = _paired_difference(pred, truth)
    return float(np.mean(np.abs(diff))) if diff.size else math.nan


def bias(pred: ArrayLike, truth: ArrayLike) -> float:
    """Mean of ``pred - truth`` over the cells valid in both, in field units (NaN if none)."""
    diff, _ = _paired_difference(pred, truth)
    return float(np.mean(diff)) if diff.size else math.nan


def area_weighted_rmse(pred: ArrayLike, truth: ArrayLike, area: ArrayLike) -> float:
    """RMSE with each cell weighted by its area: ``sqrt(sum a e^2 / sum a)``.

    Over the cells valid in both fields; equal areas give :func:`rmse`. On a sphere the
    exact areas are :func:`downscale.grid.cell_areas_latlon`'s (:func:`rmse_xr` takes them
    from a field's bounds).

    Args:
        pred: Prediction, shape ``(..., H, W)``.
        truth: Reference, same shape; NaN = missing in either.
        area: Cell areas (any unit), broadcastable to the fields, e.g. ``(H, W)``.

    Returns:
        The weighted RMSE in field units; NaN if no cell has area.
    """
    total, weight = weighted_squared_error_sums(pred, truth, area)
    return math.sqrt(total / weight) if weight > 0 else math.nan


def weighted_squared_error_sums(pred: ArrayLike, truth: ArrayLike, weight: ArrayLike
                                ) -> tuple[float, float]:
    """The per-chunk step of the weighted RMSE: ``(sum w e^2, sum w)`` over valid cells.

    Add the pairs of several chunks (Dask chunks, workers) and take
    ``sqrt(sum w e^2 / sum w)`` once.

    Args:
        pred: Prediction, any shape.
        truth: Reference, same shape; NaN = missing in either.
        weight: Non-negative weights broadcastable to the fields.
    """
    p, t = np.broadcast_arrays(np.asarray(pred, dtype=np.float64),
                               np.asarray(truth, dtype=np.float64))
    w = np.broadcast_to(np.asarray(weight, dtype=np.float64), p.shape)
    both = np.isfinite(p) & np.isfinite(t)
    return float((w[both] * (p[both] - t[both]) ** 2).sum()), float(w[both].sum())


def lat_weighted_rmse(pred: ArrayLike, truth: ArrayLike, lat: ArrayLike | None = None, *,
                      lat_bounds: ArrayLike | None = None) -> float:
    """RMSE with each cell weighted by its area on the sphere, from its latitudes.

    With ``lat_bounds`` the weights are the exact band areas
    ``sin(lat_north) - sin(lat_south)`` (:func:`downscale.grid.cell_areas_latlon`). With
    cell-centre latitudes ``lat`` they are ``cos(lat)``, which equals the exact areas only
    on a grid of equal latitude spacing; on another grid pass ``lat_bounds``, or use
    :func:`rmse_xr`, which reads the bounds of an xarray field.

    Args:
        pred: Prediction, shape ``(..., H, W)``.
        truth: Reference, same shape; NaN = missing in either.
        lat: Cell-centre latitudes in degrees, ``(H,)`` or curvilinear ``(H, W)``.
        lat_bounds: Latitude bounds in degrees, ``(H, 2)``; instead of ``lat``.

    Returns:
        The weighted RMSE in field units; NaN if no cell has weight.

    Raises:
        ValueError: Unless exactly one of ``lat`` and ``lat_bounds`` is given.
    """
    if (lat is None) == (lat_bounds is None):
        raise ValueError("pass exactly one of lat (cell centres) and lat_bounds")
    if lat_bounds is not None:  # a band of 1 degree of longitude per row: (H, 1)
        weight = cell_areas_latlon(np.asarray(lat_bounds, dtype=np.float64),
                                   np.array([[0.0, 1.0]]))
    else:
        centres = np.asarray(lat, dtype=np.float64)
        weight = np.clip(np.cos(np.deg2rad(centres)), 0.0, None)
        if weight.ndim == 1:
            weight = weight[:, None]
    return area_weighted_rmse(pred, truth, weight)


def rmse_xr(pred: xr.Dataset | xr.DataArray, truth: xr.Dataset | xr.DataArray, *,
            variable: str | None = None, area: xr.DataArray | None = None) -> float:
    """Area-weighted RMSE of xarray fields over all their cells, by dimension name.

    The horizontal dimensions are ``(lat, lon)`` or ``(y, x)``; the fields are aligned by
    name, so their dimension orders may differ.

    Args:
        pred: Prediction, a normalised field: a Dataset whose ``<dim>_bnds`` coordinates
            give the exact cell areas (:func:`downscale.grid.cell_areas`: spherical for
            lat/lon, planar for y/x in metres), or a DataArray together with ``area``.
        truth: Reference on the same grid, Dataset or DataArray; NaN = missing in either.
        variable: The data variable of Dataset inputs; optional when there is only one.
        area: Cell areas with the horizontal dimensions (any unit); overrides the bounds.

    Returns:
        The RMSE in field units; NaN if no cell has area.

    Raises:
        ValueError: If the fields have no horizontal dimensions, or no areas are found.
    """
    pred_da, truth_da = _data_array(pred, variable), _data_array(truth, variable)
    ydim, xdim = horizontal_dims(pred_da)
    if area is None:
        if not isinstance(pred, xr.Dataset):
            raise ValueError("pass area=, or the prediction as a Dataset with "
                             f"{ydim}_bnds/{xdim}_bnds coordinates")
        area = cell_areas(pred)
    error = pred_da - truth_da
    weight = area.where(error.notnull(), 0.0)
    total, weights = float((weight * error.fillna(0.0) ** 2).sum()), float(weight.sum())
    return math.sqrt(total / weights) if weights > 0 else math.nan


def _paired_difference(pred: ArrayLike, truth: ArrayLike
                       ) -> tuple[FloatArray, NDArray[np.bool_]]:
    p, t = np.broadcast_arrays(np.asarray(pred, dtype=np.float64),
                               np.asarray(truth, dtype=np.float64))
    both = np.isfinite(p) & np.isfinite(t)
    return p[both] - t[both], both
