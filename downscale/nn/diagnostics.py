"""Kernel diagnostics of a transposed convolution: phase coverage, phase sums, zero insertion.

What the layer does by construction, whatever it learnt (docs/method.md#artifacts): how many
input cells reach each output phase, how a kernel's weights split over the phases (the
response to a flat input), and the zero-insertion half of the upsampling. Plain numpy: the
kernels are passed as arrays.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]


def phase_coverage(kernel_size: int, stride: int) -> NDArray[np.int64]:
    """How many input cells reach each output phase of a transposed convolution.

    With stride ``s`` and a ``k x k`` kernel, output cell ``i`` (full output, before
    cropping) receives tap ``t`` of input cell ``(i - t) / s`` exactly when
    ``t = i (mod s)``; the number of taps per phase along one axis is ``ceil(k/s)`` or
    ``floor(k/s)``, so it varies by ``ceil(k/s) - floor(k/s)`` (zero iff ``s`` divides
    ``k``; Odena et al. 2016). Cropping (padding) only relabels the phases.

    Args:
        kernel_size: ``k >= 1``.
        stride: ``s >= 1``.

    Returns:
        Integer array ``(s, s)``: entry ``(a, b)`` counts the input cells that reach an
        output cell of phase ``(a, b)`` (the product of the two axes' counts).
    """
    if kernel_size < 1 or stride < 1:
        raise ValueError(f"need kernel_size, stride >= 1, got {kernel_size}, {stride}")
    counts = np.bincount(np.arange(kernel_size) % stride, minlength=stride).astype(np.int64)
    return np.outer(counts, counts)


def phase_weight_sums(kernel: ArrayLike, stride: int) -> FloatArray:
    """Per-phase sums of a transposed-convolution kernel: the response to a flat input.

    A constant input ``c`` gives ``c * sums[a, b]`` at output phase ``(a, b)``
    (docs/method.md#artifacts), so the output is flat only if every phase sums to
    ``1 / s^2`` (for a kernel that sums to one).

    Args:
        kernel: Weights ``(..., k, k)``.
        stride: ``s``.

    Returns:
        ``(..., s, s)``: ``sums[..., a, b] = sum(kernel[..., a::s, b::s])``.
    """
    w = np.asarray(kernel, dtype=np.float64)
    if w.ndim < 2 or stride < 1:
        raise ValueError(f"expected kernels (..., k, k) and stride >= 1, got {w.shape}, "
                         f"{stride}")
    out = np.empty((*w.shape[:-2], stride, stride))
    for a, b in np.ndindex(stride, stride):
        out[..., a, b] = w[..., a::stride, b::stride].sum(axis=(-2, -1))
    return out


def zero_insertion(coarse: ArrayLike, factor: int) -> FloatArray:
    """Upsample by inserting zeros: each coarse value times ``factor^2`` on one fine cell.

    The first half of a transposed convolution (the second is a convolution with its
    kernel). On equal areas it keeps the mass; its spectrum is the coarse spectrum repeated
    at the image frequencies ``(j, l) / factor`` cycles per fine cell, which an
    interpolation filter must remove.

    Args:
        coarse: ``(..., h, w)``.
        factor: ``f >= 1``.

    Returns:
        ``(..., h f, w f)`` with the coarse values (times ``f^2``) at cells ``(f i, f j)``.
    """
    values = np.asarray(coarse, dtype=np.float64)
    if values.ndim < 2 or factor < 1:
        raise ValueError(f"expected (..., h, w) and factor >= 1, got {values.shape}, {factor}")
    *lead, h, w = values.shape
    fine = np.zeros((*lead, h * factor, w * factor))
    fine[..., ::factor, ::factor] = values * factor**2
    return fine
