"""Skill scores of a prediction against the truth: RMSE, MAE, bias, latitude-weighted RMSE."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

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


def lat_weighted_rmse(pred: ArrayLike, truth: ArrayLike, lat: ArrayLike) -> float:
    """RMSE with each cell weighted by ``cos(lat)``, normalised over the valid cells.

    ``sqrt(sum w e^2 / sum w)`` over the cells valid in both fields, so equal latitudes
    give :func:`rmse`.

    Args:
        pred: Prediction, shape ``(..., H, W)``.
        truth: Reference, same shape; NaN = missing in either.
        lat: Cell-centre latitudes in degrees, shape ``(H,)`` (or broadcastable to the
            fields, e.g. ``(H, W)`` for a curvilinear grid).

    Returns:
        The weighted RMSE in field units; NaN if no cell has weight.
    """
    p, t = np.broadcast_arrays(np.asarray(pred, dtype=np.float64),
                               np.asarray(truth, dtype=np.float64))
    lat_arr = np.asarray(lat, dtype=np.float64)
    if lat_arr.ndim == 1:
        lat_arr = lat_arr[:, None]
    weight = np.broadcast_to(np.clip(np.cos(np.deg2rad(lat_arr)), 0.0, None), p.shape)
    both = np.isfinite(p) & np.isfinite(t)
    total = float(weight[both].sum())
    if total <= 0:
        return math.nan
    return math.sqrt(float((weight[both] * (p[both] - t[both]) ** 2).sum()) / total)


def _paired_difference(pred: ArrayLike, truth: ArrayLike
                       ) -> tuple[FloatArray, NDArray[np.bool_]]:
    p, t = np.broadcast_arrays(np.asarray(pred, dtype=np.float64),
                               np.asarray(truth, dtype=np.float64))
    both = np.isfinite(p) & np.isfinite(t)
    return p[both] - t[both], both
