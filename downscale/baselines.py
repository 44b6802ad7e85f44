"""Classical upsampling baselines: bilinear, bicubic and conservative (piecewise constant).

The learned model is compared against these. All of them are **cell-centre aligned**: the
centre of fine cell ``i`` lies at coarse index coordinate ``(i + 0.5) / factor - 0.5``, so a
coarse cell's ``factor`` children sit symmetrically around its centre (the convention of
``scipy.ndimage.zoom(..., grid_mode=True)``).

Only :func:`piecewise_constant` conserves each coarse cell's mass
(docs/method.md#conservation); bilinear
and bicubic interpolation generally do not, which is exactly what
:func:`downscale.metrics.conservation_error` shows. The module is numpy/scipy only (no torch).

Missing values: NaN coarse cells are first filled from their nearest valid neighbour so that
they do not spread into the valid cells' interpolation stencils; the fine cells they cover
are NaN again in the output. An optional ``fine_valid`` mask (a land-sea mask, say) sets
further fine cells to NaN.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from downscale.aggregate import block_repeat

FloatArray = NDArray[np.floating]


class UpsamplingMethod(StrEnum):
    """Choice of baseline for :func:`upsample`."""

    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    CONSERVATIVE = "conservative"


def upsample(coarse: ArrayLike, factor: int, method: UpsamplingMethod | str,
             periodic: bool = False, *, fine_valid: ArrayLike | None = None) -> FloatArray:
    """Upsample a coarse field by ``factor`` with a classical method.

    Args:
        coarse: Coarse field, shape ``(..., h, w)``; NaN marks missing cells.
        factor: Integer upsampling factor on both horizontal axes.
        method: An :class:`UpsamplingMethod` or its value (``"bilinear"``, ``"bicubic"``,
            ``"conservative"``).
        periodic: Whether the last axis (longitude) wraps around (a global grid); ignored
            by the conservative method, which has no stencil.
        fine_valid: Optional boolean mask broadcastable to ``(..., h * factor, w * factor)``;
            False cells are NaN in the output.

    Returns:
        Fine field of shape ``(..., h * factor, w * factor)`` in the units of ``coarse``;
        float inputs keep their dtype, other inputs give float64.

    Raises:
        ValueError: For an unknown method, a factor below 1 or a field with fewer than two
            dimensions.
    """
    method = UpsamplingMethod(method)
    if method is UpsamplingMethod.CONSERVATIVE:
        return piecewise_constant(coarse, factor, fine_valid=fine_valid)
    order = 1 if method is UpsamplingMethod.BILINEAR else 3
    return _spline_upsample(coarse, factor, order, periodic, fine_valid)


def bilinear(coarse: ArrayLike, factor: int, *, periodic: bool = False,
             fine_valid: ArrayLike | None = None) -> FloatArray:
    """Cell-centre aligned bilinear interpolation; see :func:`upsample` for the arguments.

    Beyond the outermost coarse centres the edge value is held (``mode="nearest"``), except
    along a periodic last axis, which wraps.
    """
    return _spline_upsample(coarse, factor, 1, periodic, fine_valid)


def bicubic(coarse: ArrayLike, factor: int, *, periodic: bool = False,
            fine_valid: ArrayLike | None = None) -> FloatArray:
    """Cell-centre aligned cubic B-spline interpolation; see :func:`upsample`.

    The spline interpolates the coarse values (spline prefilter), and reproduces linear
    fields exactly away from bounded edges (the edge condition decays by a factor of about
    0.27 per coarse cell). Bounded edges use ``mode="nearest"``; a periodic last axis wraps.
    """
    return _spline_upsample(coarse, factor, 3, periodic, fine_valid)


def piecewise_constant(coarse: ArrayLike, factor: int, *,
                       fine_valid: ArrayLike | None = None) -> FloatArray:
    """Repeat each coarse value over its ``factor x factor`` fine cells.

    This is the conservative baseline: on any grid, with any areas and any ``fine_valid``
    mask, the area-weighted mean of a coarse cell's valid children equals its value.

    Args:
        coarse: Coarse field, shape ``(..., h, w)``; NaN marks missing cells.
        factor: Integer upsampling factor.
        fine_valid: Optional boolean mask broadcastable to the output; False cells are NaN.

    Returns:
        Fine field of shape ``(..., h * factor, w * factor)``.
    """
    values = _as_float(coarse)
    _check_factor(factor)
    out = block_repeat(values, (factor, factor))
    return _apply_mask(out, fine_valid)


def fill_missing_nearest(values: ArrayLike) -> NDArray[np.float64]:
    """Replace non-finite cells by the value of the nearest finite cell.

    Each 2-D slice over the last two axes is filled on its own (Euclidean distance in
    index space, no wrap-around). Slices without any finite cell are returned unchanged.

    Args:
        values: Field of shape ``(..., H, W)``.

    Returns:
        A float64 copy of shape ``(..., H, W)``.
    """
    arr = np.array(values, dtype=np.float64, order="C")
    if arr.ndim < 2:
        raise ValueError(f"expected a field with at least 2 dimensions, got shape {arr.shape}")
    missing = ~np.isfinite(arr)
    if not missing.any():
        return arr
    planes = arr.reshape(-1, *arr.shape[-2:])
    for plane, miss in zip(planes, missing.reshape(planes.shape), strict=True):
        if miss.any() and not miss.all():
            index = ndimage.distance_transform_edt(miss, return_distances=False,
                                                   return_indices=True)
            plane[...] = plane[tuple(index)]
    return arr


def _spline_upsample(coarse: ArrayLike, factor: int, order: int, periodic: bool,
                     fine_valid: ArrayLike | None) -> FloatArray:
    values = _as_float(coarse)
    _check_factor(factor)
    *lead, h, w = values.shape
    filled = fill_missing_nearest(values).reshape(-1, h, w)
    # The spline is a tensor product, so interpolating one axis after the other is exact and
    # lets each axis have its own boundary mode (bounded latitude, periodic longitude).
    y_pass = np.meshgrid(_centre_coordinates(h, factor), np.arange(w, dtype=np.float64),
                         indexing="ij")
    x_pass = np.meshgrid(np.arange(h * factor, dtype=np.float64),
                         _centre_coordinates(w, factor), indexing="ij")
    x_mode = "grid-wrap" if periodic else "nearest"
    out = np.full((filled.shape[0], h * factor, w * factor), np.nan)
    for k, plane in enumerate(filled):
        if np.isfinite(plane).all():
            tall = ndimage.map_coordinates(plane, y_pass, order=order, mode="nearest")
            out[k] = ndimage.map_coordinates(tall, x_pass, order=order, mode=x_mode)
    out = out.reshape(*lead, h * factor, w * factor)
    out[block_repeat(~np.isfinite(np.asarray(values, dtype=np.float64)),
                     (factor, factor))] = np.nan
    return _apply_mask(out, fine_valid).astype(values.dtype, copy=False)


def _centre_coordinates(n: int, factor: int) -> NDArray[np.float64]:
    """Coarse index coordinate of each of the ``n * factor`` fine cell centres."""
    return (np.arange(n * factor, dtype=np.float64) + 0.5) / factor - 0.5


def _as_float(values: ArrayLike) -> FloatArray:
    arr = np.asarray(values)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if arr.ndim < 2:
        raise ValueError(f"expected a field of shape (..., h, w), got shape {arr.shape}")
    return arr


def _check_factor(factor: int) -> None:
    if isinstance(factor, bool) or not isinstance(factor, int | np.integer) or factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor!r}")


def _apply_mask(out: FloatArray, fine_valid: ArrayLike | None) -> FloatArray:
    if fine_valid is None:
        return out
    valid = np.broadcast_to(np.asarray(fine_valid, dtype=bool), out.shape)
    return np.where(valid, out, np.nan).astype(out.dtype, copy=False)
