"""Receptive-field arithmetic: how far (in cells) a stack of grid layers reads.

Each layer kind has one rule; modules add them up in their own ``receptive_field()``
(see :mod:`downscale.nn.protocol`). Reaches are per side and per axis, in cells of the
grid named: a same-size convolution of odd kernel ``k`` and dilation ``d`` reads
``d (k - 1) / 2`` cells on each side; a stack of them reads the sum. Padding at the
field's border (replicate, circular, the conserving layers' folding) acts within the
same reach, so a tile extended by the reach sees no difference from the whole field.

Upsampling by ``s`` turns a reach of ``r`` fine cells after it into coarse cells before:

- a conserving transposed convolution (kernel ``k``, padding ``p``) writes fine cell ``i``
  from coarse cells ``j`` with ``0 <= i + p - j s < k``; fine cell ``i = c s + q``
  (``0 <= q < s``) reading fine cells ``i - r .. i + r`` reads coarse cells
  ``c - (k - 1 - p + r) // s .. c + (s - 1 + p + r) // s`` (:func:`transposed_reach`);
- repeating each coarse cell (nearest, pixel shuffle) gives ``ceil(r / s)``
  (:func:`repeat_reach`); bilinear interpolation one more (:func:`bilinear_reach`).
"""

from __future__ import annotations

from torch import nn


def conv_reach(conv: nn.Conv2d) -> int:
    """Cells on each side read by a same-size convolution (odd kernel, any dilation)."""
    return int(conv.kernel_size[0]) // 2 * int(conv.dilation[0])


def stack_reach(modules: nn.Module) -> int:
    """Reach of the same-size convolutions of ``modules``, run one after the other."""
    return sum(conv_reach(m) for m in modules.modules()
               if isinstance(m, nn.Conv2d) and not isinstance(m, nn.ConvTranspose2d))


def transposed_reach(stride: int, kernel_size: int, padding: int, fine_reach: int = 0) -> int:
    """Coarse cells on each side behind a conserving transposed convolution's output.

    Args:
        stride: ``s``.
        kernel_size: ``k``.
        padding: ``p`` (cells cropped at the low edge of the full output).
        fine_reach: Fine cells on each side that the layers after it read (``r``).

    Returns:
        ``max((k - 1 - p + r) // s, (s - 1 + p + r) // s)``.
    """
    s, k, p, r = stride, kernel_size, padding, fine_reach
    return max((k - 1 - p + r) // s, (s - 1 + p + r) // s)


def repeat_reach(factor: int, fine_reach: int = 0) -> int:
    """Coarse cells on each side behind a block repeat (nearest, pixel shuffle): ``ceil(r/s)``."""
    return -(-fine_reach // factor)


def bilinear_reach(factor: int, fine_reach: int = 0) -> int:
    """Coarse cells behind cell-centred bilinear upsampling: one more than a repeat."""
    return repeat_reach(factor, fine_reach) + 1
