"""Checkerboard artifacts of an upsampled field (docs/method.md#artifacts).

Two measures: :func:`checkerboard_index`, the phase imbalance in the space domain, and
:func:`spectral_artifact_index`, the excess power at the stride's alias frequencies.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from downscale.baselines import fill_missing_nearest
from downscale.metrics.conservation import _ratio

FloatArray = NDArray[np.float64]


def checkerboard_index(field: ArrayLike, stride: int, *, smooth_width: int | None = None
                       ) -> float:
    """Phase-imbalance index of a field upsampled with stride ``stride`` (docs/method.md#artifacts).

    Definition:

    1. ``smooth`` = the field filtered along each horizontal axis by a centred trapezoid of
       width ``smooth_width`` cells (taps ``[1/2, 1, ..., 1, 1/2] / smooth_width``). With a
       width that is a multiple of ``stride`` the filter removes any pattern that repeats
       every ``stride`` cells and has zero mean, and it reproduces linear fields exactly.
       Missing cells are left out (normalised convolution).
    2. ``residual = field - smooth`` on the valid cells whose whole filter window lies on
       valid cells inside the grid (all valid cells if that leaves a phase empty).
    3. The ``stride**2`` phase means of the residual, phase ``(i % stride, j % stride)`` on
       the last two axes, pooled over the leading dimensions.
    4. ``index = (max - min of the phase means) / std``, where ``std`` is the field's
       spatial standard deviation (each 2-D slice's own mean removed).

    Args:
        field: Field of shape ``(..., H, W)``, any units; NaN = missing.
        stride: The upsampling stride (factor) whose phases are compared.
        smooth_width: Even filter width in cells, ideally a multiple of ``stride``;
            ``2 * stride`` by default.

    Returns:
        The dimensionless index: 0 for a constant field, about 0 for smooth or bicubic
        output, about ``2 a / std`` for a checkerboard of amplitude ``a``. NaN if the field
        has no valid cell.

    Raises:
        ValueError: For a bad stride or width, or a grid too small for every phase.
    """
    values = np.asarray(field, dtype=np.float64)
    width = 2 * stride if smooth_width is None else smooth_width
    if isinstance(stride, bool) or not isinstance(stride, int | np.integer) or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride!r}")
    if width < 2 or width % 2:
        raise ValueError(f"smooth_width must be an even number >= 2, got {width}")
    if values.ndim < 2:
        raise ValueError(f"expected a field of shape (..., H, W), got {values.shape}")
    valid = np.isfinite(values)
    if not valid.any():
        return math.nan
    if np.ptp(values[valid]) == 0 or stride == 1:
        return 0.0
    smooth, support = _normalised_smooth(values, valid, width)
    residual = np.where(valid, values - smooth, 0.0)
    means = _phase_means(residual, valid & (support > 1.0 - 1e-9), stride)
    if means is None:
        means = _phase_means(residual, valid, stride)
    if means is None:
        raise ValueError(f"grid {values.shape[-2:]} has phases without valid cells at "
                         f"stride {stride}")
    return float((means.max() - means.min()) / _spatial_std(values, valid))


def _normalised_smooth(values: FloatArray, valid: NDArray[np.bool_], width: int
                       ) -> tuple[FloatArray, FloatArray]:
    """NaN-aware separable trapezoid smoothing; also returns each cell's window support."""
    taps = np.ones(width + 1)
    taps[[0, -1]] = 0.5
    taps /= width
    num = np.where(valid, values, 0.0)
    den = valid.astype(np.float64)
    for axis in (-2, -1):
        num = ndimage.convolve1d(num, taps, axis=axis, mode="constant")
        den = ndimage.convolve1d(den, taps, axis=axis, mode="constant")
    smooth = num / np.where(den > 0, den, 1.0)
    return smooth, den


def _phase_means(residual: FloatArray, use: NDArray[np.bool_], stride: int
                 ) -> FloatArray | None:
    used = np.where(use, residual, 0.0)
    means = np.empty(stride * stride)
    for k, (a, b) in enumerate(np.ndindex(stride, stride)):
        count = use[..., a::stride, b::stride].sum()
        if count == 0:
            return None
        means[k] = used[..., a::stride, b::stride].sum() / count
    return means


def _spatial_std(values: FloatArray, valid: NDArray[np.bool_]) -> float:
    """RMS over slices of each slice's standard deviation; floored against rounding."""
    count = valid.sum(axis=(-2, -1), keepdims=True)
    zeroed = np.where(valid, values, 0.0)
    mean = zeroed.sum(axis=(-2, -1), keepdims=True) / np.maximum(count, 1)
    var = float(np.where(valid, (values - mean) ** 2, 0.0).sum() / valid.sum())
    # A field this flat is constant to working precision: its residual is rounding noise.
    floor = 1e-10 * float(np.abs(values[valid]).max())
    return max(math.sqrt(var), floor, np.finfo(np.float64).tiny)


def spectral_artifact_index(field: ArrayLike, stride: int, *, tile: int | None = None
                            ) -> float:
    """Excess power at the alias frequencies of ``stride``, in decibels (docs/method.md#artifacts).

    Definition (a Welch periodogram compared bin by bin):

    1. The field is cut into ``tile x tile`` windows overlapping by half (clipped to the
       grid, last two axes, every leading slice). Windows with a missing cell are skipped,
       so a land mask costs windows, not accuracy. If every window has one, windows of
       half the size are tried (down to ``8 * stride``), and as a last resort the missing
       cells are filled with their nearest valid value.
    2. Each window has its mean removed and is multiplied by a periodic 2-D Hann window;
       ``P`` is the mean of ``|FFT2|^2`` over the windows (``tile x tile`` bins).
    3. The alias frequencies are ``(j / stride, k / stride)`` cycles per cell for
       ``0 <= j, k < stride``, ``(j, k) != (0, 0)``; an artifact that repeats every
       ``stride`` cells has all its power there.
    4. For each alias bin, ``peak`` is the mean of ``P`` over the 3 x 3 bins around it (the
       Hann window spreads a tone over exactly these) and ``ring`` the mean over the bins at
       Chebyshev distance 2 (wrapping), leaving out bins next to any alias bin or to 0.
    5. ``index = 10 log10(sum(peak) / sum(ring))`` over the alias bins.

    Args:
        field: Field of shape ``(..., H, W)``; NaN = missing.
        stride: The upsampling stride (at least 2).
        tile: Window size in cells; ``16 * stride`` by default. A multiple of ``stride``
            puts the alias frequencies on exact bins; it needs to be at least
            ``5 * stride`` to leave neighbouring bins.

    Returns:
        Index in dB: 0 for a constant field, about 0 for white noise, below 0 for smooth or
        interpolated fields (their spectrum falls towards the alias frequencies), and tens
        of dB for a checkerboard. ``+inf`` if all the power is at the alias bins, ``-inf``
        if none is; NaN if the field has no valid cell.

    Raises:
        ValueError: For a bad stride, or a grid too small to leave neighbouring bins.
    """
    values = np.asarray(field, dtype=np.float64)
    if isinstance(stride, bool) or not isinstance(stride, int | np.integer) or stride < 2:
        raise ValueError(f"stride must be an integer >= 2, got {stride!r}")
    if values.ndim < 2:
        raise ValueError(f"expected a field of shape (..., H, W), got {values.shape}")
    valid = np.isfinite(values)
    if not valid.any():
        return math.nan
    if np.ptp(values[valid]) == 0:
        return 0.0
    size = 16 * stride if tile is None else tile
    sizes = [size]
    while sizes[-1] // 2 >= 8 * stride:  # smaller windows fit between coastlines
        sizes.append(sizes[-1] // 2)
    power = None
    for n in sizes:
        power = _welch_periodogram(values, (min(n, values.shape[-2]), min(n, values.shape[-1])))
        if power is not None:
            break
    if power is None:
        shape = (min(size, values.shape[-2]), min(size, values.shape[-1]))
        power = _welch_periodogram(fill_missing_nearest(values), shape)
    assert power is not None
    peak, ring = _alias_peaks_and_rings(power, stride)
    if peak == 0 and ring == 0:
        return 0.0
    ratio = _ratio(peak, ring)
    return 10.0 * math.log10(ratio) if ratio > 0 else -math.inf


def _welch_periodogram(values: FloatArray, shape: tuple[int, int]) -> FloatArray | None:
    """Mean Hann-windowed power spectrum of the complete half-overlapping tiles, or None."""
    th, tw = shape
    window = np.outer(_hann(th), _hann(tw))
    total, count = np.zeros(shape), 0
    for plane in values.reshape(-1, *values.shape[-2:]):
        tiles = np.lib.stride_tricks.sliding_window_view(plane, shape)
        tiles = tiles[::max(th // 2, 1), ::max(tw // 2, 1)].reshape(-1, th, tw)
        tiles = tiles[np.isfinite(tiles).all(axis=(-2, -1))]
        if len(tiles):
            tiles = tiles - tiles.mean(axis=(-2, -1), keepdims=True)
            total += (np.abs(np.fft.fft2(tiles * window)) ** 2).sum(axis=0)
            count += len(tiles)
    return total / count if count else None


def _hann(n: int) -> FloatArray:
    """Periodic Hann window: its DFT has exactly three non-zero bins."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def _alias_peaks_and_rings(power: FloatArray, stride: int) -> tuple[float, float]:
    h, w = power.shape
    centres = {(round(j * h / stride) % h, round(k * w / stride) % w)
               for j in range(stride) for k in range(stride)}
    near = {((cy + dy) % h, (cx + dx) % w) for cy, cx in centres
            for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
    ring_offsets = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                    if max(abs(dy), abs(dx)) == 2]
    peak_total, ring_total, used = 0.0, 0.0, 0
    for cy, cx in centres - {(0, 0)}:
        block = {((cy + dy) % h, (cx + dx) % w) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
        ring = {((cy + dy) % h, (cx + dx) % w) for dy, dx in ring_offsets} - near
        if ring:
            peak_total += float(np.mean([power[b] for b in block]))
            ring_total += float(np.mean([power[r] for r in ring]))
            used += 1
    if not used:
        raise ValueError(f"grid {power.shape} is too small for alias frequencies of stride "
                         f"{stride}: no neighbouring bins are left")
    return peak_total, ring_total
