"""Terrain slopes against a limit and against real terrain (docs/method.md#terrain)."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]


def slope_violation_fraction(slope: ArrayLike, theta_max_deg: float) -> float:
    """Share of cells steeper than the limit ``theta_max_deg`` (docs/method.md#terrain).

    Args:
        slope: Slope magnitudes ``|grad h|`` (m/m, the tangent of the slope angle), any
            shape, e.g. from :func:`downscale.losses.slope`; NaN = undefined, left out.
        theta_max_deg: The limit in degrees, ``0 < theta_max_deg < 90``.

    Returns:
        The fraction in ``[0, 1]`` of the finite slopes with ``slope > tan(theta_max)``;
        NaN if no slope is finite.

    Raises:
        ValueError: If ``theta_max_deg`` is not in ``(0, 90)``.
    """
    over, total = slope_violation_counts(slope, theta_max_deg)
    return over / total if total else math.nan


def slope_violation_counts(slope: ArrayLike, theta_max_deg: float) -> tuple[int, int]:
    """The per-chunk step of :func:`slope_violation_fraction`: summable counts.

    Args:
        slope: Slope magnitudes (m/m), any shape; NaN = undefined, left out.
        theta_max_deg: The limit in degrees, ``0 < theta_max_deg < 90``.

    Returns:
        ``(cells steeper than the limit, finite cells)``; add them over chunks and divide.

    Raises:
        ValueError: If ``theta_max_deg`` is not in ``(0, 90)``.
    """
    if not 0.0 < theta_max_deg < 90.0:
        raise ValueError(f"theta_max_deg must be in (0, 90) degrees, got {theta_max_deg}")
    values = np.asarray(slope, dtype=np.float64)
    values = values[np.isfinite(values)]
    return int((values > math.tan(math.radians(theta_max_deg))).sum()), int(values.size)


def slope_wasserstein_distance(slope: ArrayLike, reference: ArrayLike, *,
                               weights: ArrayLike | None = None,
                               reference_weights: ArrayLike | None = None) -> float:
    """1-D Wasserstein (earth mover's) distance between two slope distributions.

    Every finite cell is one sample of its distribution (optionally weighted, e.g. by cell
    area); the two fields need not have the same shape. The distance is the area between
    the two cumulative distribution functions (:func:`scipy.stats.wasserstein_distance`).

    Args:
        slope: Slope magnitudes of the generated terrain (m/m), any shape; NaN left out.
        reference: Slope magnitudes of the real terrain (m/m), any shape; NaN left out.
        weights: Non-negative weights of ``slope``'s cells, same shape, or None (equal).
        reference_weights: Weights of ``reference``'s cells, same shape, or None.

    Returns:
        The distance in m/m (0 for identical distributions); NaN if either has no finite
        slope.
    """
    # Imported here: only this metric needs scipy.stats.
    from scipy.stats import wasserstein_distance

    samples: list[tuple[FloatArray, FloatArray | None]] = []
    for values, w in ((slope, weights), (reference, reference_weights)):
        arr = np.asarray(values, dtype=np.float64)
        keep = np.isfinite(arr)
        if w is not None:
            w_arr = np.broadcast_to(np.asarray(w, dtype=np.float64), arr.shape)
            keep &= np.isfinite(w_arr) & (w_arr >= 0)
            samples.append((arr[keep], w_arr[keep]))
        else:
            samples.append((arr[keep], None))
    (u, u_w), (v, v_w) = samples
    if u.size == 0 or v.size == 0:
        return math.nan
    return float(wasserstein_distance(u, v, u_w, v_w))


def slope_angle_percentile(slope: ArrayLike, q: float) -> float:
    """The ``q``-th percentile of the slope angle in degrees: a data-driven slope limit.

    Args:
        slope: Slope magnitudes (m/m), any shape; NaN left out.
        q: Percentile in ``[0, 100]``.

    Returns:
        ``degrees(arctan(percentile(slope, q)))``; NaN if no slope is finite.
    """
    values = np.asarray(slope, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan
    return float(np.degrees(np.arctan(np.percentile(values, q))))
