"""Radially averaged power spectra of 2-D fields (numpy only).

A transposed convolution of stride ``s`` that treats its ``s^2`` output phases unequally
leaves a pattern repeating every ``s`` cells: power at the alias frequencies ``j / s``
cycles per cell (docs/method.md#artifacts). At stride 2 that is 0.5 cycles per cell along
an axis and
``0.5 * sqrt(2)`` on the diagonal. :func:`power_spectrum_radial` makes such peaks visible on
a log-log plot; :func:`downscale.metrics.spectral_artifact_index` scores them.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]


def power_spectrum_radial(field: ArrayLike, *, spacing: float = 1.0,
                          hann: bool = False) -> tuple[FloatArray, FloatArray]:
    """Radially averaged 2-D power spectrum of a field.

    Each 2-D slice has its mean removed and is transformed with ``numpy.fft.fft2``; the
    power of a Fourier mode is ``|F|^2 / (H W)^2``, so that the powers of all modes of a
    slice add up to its variance (Parseval). Modes are binned by their radial frequency
    ``|k| = hypot(k_y, k_x)`` into rings of width ``dk = 1 / (min(H, W) * spacing)``
    (ring ``n`` holds ``(n - 1/2) dk <= |k| < (n + 1/2) dk``); the power of a ring is the
    mean over its modes and over the leading dimensions. The rings reach the corners of
    the spectrum (``|k|`` up to ``sqrt(2) / (2 spacing)``), where the diagonal alias of a
    stride-2 checkerboard lies.

    The transform assumes a periodic field. A field that is not periodic has a jump at
    the wrap-around that leaks power to all frequencies; ``hann=True`` tapers each slice
    with a 2-D Hann window first (the powers then add up to the variance of the windowed
    field, not of the field).

    Args:
        field: Field of shape ``(..., H, W)`` with ``H, W >= 2``, any units; all values
            must be finite.
        spacing: Grid spacing (the same on both axes); frequencies are in cycles per unit
            of ``spacing``, i.e. cycles per cell for the default of 1.
        hann: Taper each slice with a 2-D Hann window before transforming it.

    Returns:
        ``(frequencies, power)``, both of shape ``(n,)``: the ring centres ``n * dk`` for
        ``n = 1, 2, ...`` in cycles per unit of ``spacing`` (the zero frequency is left
        out), and the mean power per Fourier mode in each ring, in field units squared.
        Rings without a mode are left out.

    Raises:
        ValueError: For a field with fewer than two axes, fewer than 2 cells along one,
            non-finite values or a non-positive spacing.
    """
    values = np.asarray(field, dtype=np.float64)
    if values.ndim < 2 or min(values.shape[-2:]) < 2:
        raise ValueError(f"expected a field of shape (..., H, W) with H, W >= 2, got "
                         f"{values.shape}")
    if not np.isfinite(values).all():
        raise ValueError("the field has missing or infinite values; fill them first "
                         "(e.g. downscale.baselines.fill_missing_nearest)")
    if not spacing > 0:
        raise ValueError(f"spacing must be positive, got {spacing!r}")
    h, w = values.shape[-2:]
    planes = values.reshape(-1, h, w)
    planes = planes - planes.mean(axis=(-2, -1), keepdims=True)
    if hann:
        planes = planes * np.outer(np.hanning(h), np.hanning(w))
    power = (np.abs(np.fft.fft2(planes)) ** 2).mean(axis=0) / float(h * w) ** 2
    radius = np.hypot(np.fft.fftfreq(h)[:, None] * min(h, w),
                      np.fft.fftfreq(w)[None, :] * min(h, w))  # in units of dk
    ring = np.rint(radius).astype(np.int64).ravel()
    counts = np.bincount(ring)
    totals = np.bincount(ring, weights=power.ravel())
    keep = np.flatnonzero(counts)
    keep = keep[keep > 0]
    dk = 1.0 / (min(h, w) * spacing)
    return keep * dk, totals[keep] / counts[keep]
