"""Upsampler fidelity beyond the checkerboard: spectral replicas and translation equivariance.

:func:`spectral_replica_leakage` measures the power an upsampler leaves at the images of the
coarse spectrum; :func:`equivariance_error` how far a model is from commuting with a shift
of its input (whole or sub-pixel).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from downscale.baselines import fill_missing_nearest
from downscale.metrics.artifacts import _hann, _spatial_std
from downscale.metrics.conservation import _ratio

FloatArray = NDArray[np.float64]


def spectral_replica_leakage(fine: ArrayLike, factor: int, *, hann: bool = True) -> float:
    """Power an upsampler leaves at the images of the coarse spectrum, relative to the baseband.

    Zero-insertion view of upsampling by ``f``: the fine spectrum is the coarse one (the
    baseband, ``|nu_y|, |nu_x| < 1 / (2 f)`` cycles per fine cell) plus ``f^2 - 1`` images
    of it centred on ``(j, l) / f``; together they tile the whole spectrum. An ideal
    interpolator keeps the baseband and removes the images. Definition:

    1. each 2-D slice has its mean removed (and is tapered by a periodic 2-D Hann window
       when ``hann``, against the jump at the wrap-around of a non-periodic field);
    2. ``P = sum over slices of |FFT2|^2``;
    3. ``leakage = (sum P outside the baseband) / (sum P inside)``, bins on the band edge
       (the coarse Nyquist frequency) counting half to each side.

    Zero insertion of white noise scores ``f^2 - 1`` (15 at ``f = 4``), ideal (sinc)
    interpolation 0. A real fine field has its own power beyond the coarse scales, so the
    truth's leakage is the reference: more is artifact or noise, less is over-smoothing.

    Args:
        fine: ``(..., H, W)``; missing cells are filled from their nearest valid neighbour.
        factor: Upsampling factor ``f >= 2``.
        hann: Taper with a Hann window (recommended unless the field is periodic in both
            axes).

    Returns:
        The dimensionless ratio (0 for a constant field, ``inf`` if the baseband is empty
        but the rest is not); NaN if the field has no valid cell.
    """
    values = np.asarray(fine, dtype=np.float64)
    if isinstance(factor, bool) or not isinstance(factor, int | np.integer) or factor < 2:
        raise ValueError(f"factor must be an integer >= 2, got {factor!r}")
    if values.ndim < 2:
        raise ValueError(f"expected a field of shape (..., H, W), got {values.shape}")
    if not np.isfinite(values).any():
        return math.nan
    h, w = values.shape[-2:]
    planes = fill_missing_nearest(values).reshape(-1, h, w)
    planes = planes - planes.mean(axis=(-2, -1), keepdims=True)
    if hann:
        planes = planes * np.outer(_hann(h), _hann(w))
    power = (np.abs(np.fft.fft2(planes)) ** 2).sum(axis=0)
    band = np.outer(_baseband_weight(h, factor), _baseband_weight(w, factor))
    total = float(power.sum())
    inside = float((power * band).sum())
    return _ratio(total - inside, inside) if total > 0 else 0.0


def _baseband_weight(n: int, factor: int) -> FloatArray:
    """1 inside the coarse band ``|nu| < 1/(2f)``, 1/2 on its edge, 0 outside."""
    distance = np.abs(np.abs(np.fft.fftfreq(n)) * 2 * factor - 1.0)  # 0 on the band edge
    inside = np.abs(np.fft.fftfreq(n)) * 2 * factor < 1.0
    return np.where(distance < 1e-9, 0.5, inside.astype(np.float64))


def equivariance_error(model: Callable[[FloatArray], ArrayLike], coarse: ArrayLike,
                       factor: int, shift: tuple[float, float] = (0.0, 1.0), *,
                       periodic: bool | tuple[bool, bool] = False,
                       margin: int | None = None) -> float:
    """How far a downscaling model is from commuting with a translation of its input.

    ``model(S_d x)`` is compared with ``S_{f d} model(x)``, where ``S_d`` shifts by
    ``d = (d_y, d_x)`` coarse cells and ``S_{f d}`` by the same distance on the fine grid.
    Whole-cell shifts are exact rolls; fractional ones interpolate with cubic splines
    (``scipy.ndimage.shift``), wrapping on periodic axes and holding the edge value on the
    others. A transposed convolution commutes with whole coarse-cell shifts whatever its
    kernel; sub-pixel shifts break that, more so for rough or off-centre kernels (seed
    document, "Impact on Translation Equivariance").

    Along a non-periodic shifted axis the rolled-in strip is not data, so ``margin`` coarse
    cells at both ends of that axis are left out of the comparison.

    Args:
        model: ``model(coarse) -> fine``: ``(..., h, w)`` to ``(..., h f, w f)``, numpy in
            and out (wrap a torch module in a small function).
        coarse: The input, ``(..., h, w)``.
        factor: Upsampling factor ``f``.
        shift: ``(d_y, d_x)`` in coarse cells, e.g. ``(0, 1)`` (whole cell) or
            ``(0, 0.5)`` (sub-pixel).
        periodic: Whether each axis ``(y, x)`` wraps around (one bool for both).
        margin: Coarse cells left out at each end of a shifted non-periodic axis;
            ``ceil(|d|) + 2`` by default.

    Returns:
        ``RMS(model(S_d x) - S_{f d} model(x)) / std(model(x))`` over the compared cells
        (each slice's own mean removed for the std): dimensionless, 0 for a perfectly
        equivariant model. NaN if no cell is compared.

    Raises:
        ValueError: If the model's output does not have the fine shape, or the margin
            leaves no cell.
    """
    x = np.asarray(coarse, dtype=np.float64)
    wraps = (periodic, periodic) if isinstance(periodic, bool) else tuple(periodic)
    if x.ndim < 2 or len(wraps) != 2:
        raise ValueError(f"expected coarse (..., h, w) and two periodic flags, got {x.shape}")
    reference = np.asarray(model(x), dtype=np.float64)
    expected_shape = (*x.shape[:-2], x.shape[-2] * factor, x.shape[-1] * factor)
    if reference.shape != expected_shape:
        raise ValueError(f"model output has shape {reference.shape}, expected "
                         f"{expected_shape}")
    moved = np.asarray(model(_shift_field(x, shift, wraps)), dtype=np.float64)
    expected = _shift_field(reference, (shift[0] * factor, shift[1] * factor), wraps)
    keep = np.ones(reference.shape[-2:], dtype=bool)
    for axis, (d, wrap) in enumerate(zip(shift, wraps, strict=True)):
        if d != 0 and not wrap:
            m = (math.ceil(abs(d)) + 2 if margin is None else margin) * factor
            if 2 * m >= keep.shape[axis]:
                raise ValueError(f"margin of {m} fine cells leaves nothing of axis {axis} "
                                 f"({keep.shape[axis]} cells)")
            edge = [slice(None), slice(None)]
            edge[axis] = slice(0, m)
            keep[tuple(edge)] = False
            edge[axis] = slice(keep.shape[axis] - m, None)
            keep[tuple(edge)] = False
    use = keep & np.isfinite(moved) & np.isfinite(expected) & np.isfinite(reference)
    if not use.any():
        return math.nan
    diff = (moved - expected)[use]
    return math.sqrt(float(np.mean(diff**2))) / _spatial_std(reference, use)


def _shift_field(field: FloatArray, shift: tuple[float, float], wraps: tuple[bool, ...]
                 ) -> FloatArray:
    """Shift the last two axes by ``shift`` cells: roll whole cells, splines otherwise."""
    out = field
    for axis, (d, wrap) in zip((-2, -1), zip(shift, wraps, strict=True), strict=True):
        if d == 0:
            continue
        if float(d).is_integer():
            out = np.roll(out, int(d), axis=axis)
        else:
            vector = [0.0] * out.ndim
            vector[axis] = float(d)
            out = ndimage.shift(out, vector, order=3, mode="grid-wrap" if wrap else "nearest")
    return out
