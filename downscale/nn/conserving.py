"""Mass conservation by construction (docs/method.md#conservation, #artifacts).

Two pieces give the guarantee; both are exact to floating point, not penalties.

:class:`MassConservingConvTranspose2d`
    A depthwise transposed convolution on *extensive* quantities. The coarse mass
    ``m_C = A_C * x_C`` is spread with a kernel whose weights are positive and sum to one,
    the spill-over past the borders is folded back (wrapped on a periodic longitude axis,
    reflected elsewhere), and the fine value is ``y_f = m_f / a_f``. The domain total
    ``sum_f a_f y_f = sum_C A_C x_C`` therefore holds for any kernel it accepts. With
    ``phase_balanced=True`` each of the ``s^2`` polyphase sub-kernels sums to ``1/s^2``,
    so a constant input gives a constant output (no checkerboard) on equal-area cells.

    At a *reflecting* edge that holds only if the kernel spills as much past the edge as
    its missing neighbour would have brought in (``sum_{t<p} w_t == sum_{t>=s+p} w_t``
    along the axis). Any conserving fold of a general kernel breaks one of the two, so
    ``symmetric=True`` (mirror-symmetric kernels, centred padding) is offered: then
    constancy is exact at edges and corners too. On periodic axes it always is.

:class:`LocalConservation`
    The last operation on the physical field: corrects every coarse cell's block of fine
    cells so that their area-weighted mean over *valid* cells equals the coarse value
    (additive for signed fields; multiplicative or softmax for positive ones).

Shapes: coarse ``(B, C, h, w)``, fine ``(B, C, h*s, w*s)``; areas broadcast to the fine
shape and may be in any unit (only ratios within a block matter).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from downscale.nn.polyphase import fold_spill, spread
from downscale.nn.reach import transposed_reach

ConstraintMode = Literal["additive", "multiplicative", "softmax", "none"]


def block_sum(x: Tensor, factor: int) -> Tensor:
    """Sum non-overlapping ``factor x factor`` blocks of the last two dims."""
    *lead, h, w = x.shape
    return x.reshape(*lead, h // factor, factor, w // factor, factor).sum(dim=(-3, -1))


def block_repeat(x: Tensor, factor: int) -> Tensor:
    """Repeat each cell of the last two dims into a ``factor x factor`` block."""
    # One copy of a broadcast view: two repeat_interleave calls would copy twice.
    *lead, h, w = x.shape
    return x[..., :, None, :, None].expand(*lead, h, factor, w, factor).reshape(
        *lead, h * factor, w * factor)


def block_mean(x: Tensor, weight: Tensor, factor: int) -> tuple[Tensor, Tensor]:
    """Weighted mean of each block and the block's total weight.

    Args:
        x: Fine values ``(..., H, W)``; only read where ``weight > 0``.
        weight: Non-negative weights (cell area times validity), broadcastable to ``x``.
        factor: Block size.

    Returns:
        ``(mean, total_weight)`` of shape ``(..., H/factor, W/factor)``; the mean is 0 for
        blocks of zero weight.

    """
    weight = weight.expand_as(x)
    x = torch.where(weight > 0, x, 0.0)
    total = block_sum(weight, factor)
    mean = block_sum(x * weight, factor) / total.clamp_min(torch.finfo(x.dtype).tiny)
    return mean, total


class MassConservingConvTranspose2d(nn.Module):
    """Depthwise transposed convolution whose kernels sum to one: conserves the total mass.

    Args:
        channels: Number of physical variables (or feature channels), one kernel each.
        stride: Upsampling factor ``s`` (fine cells per coarse cell along each axis).
        kernel_size: ``k >= s``; default ``2 * s`` (each coarse cell reaches its neighbours'
            blocks, for smooth output).
        padding: Cells cropped at the low edge of the full output, ``0 <= p <= k - s``;
            default ``(k - s) // 2`` (centred). Whatever the padding crops is folded back.
        phase_balanced: Normalise each polyphase sub-kernel to ``1/s^2`` (no checkerboard
            on flat input). Otherwise the whole kernel is normalised to one.
        symmetric: Constrain kernels to be mirror-symmetric along both axes, so flat input
            stays flat at reflecting edges too (needs ``k - s`` even and centred padding).
        init: Starting kernel: ``"tent"`` (bilinear interpolation written as a transposed
            convolution: weight ``max(0, 1 - d/s)`` at distance ``d`` fine cells from the
            coarse centre; phase-balanced and symmetric already) or ``"uniform"``.

    Shapes:
        ``forward(x, fine_area)``: ``x`` is ``(B, C, h, w)`` intensive values (NaN is read
        as zero mass), ``fine_area`` broadcasts to ``(B, C, h*s, w*s)``; returns
        ``(B, C, h*s, w*s)`` intensive values (a strided view into the uncropped grid, not
        contiguous). ``fine_area=None`` means equal areas.

    The spread runs as a grouped convolution in polyphase form
    (:mod:`downscale.nn.polyphase`), which is faster than torch's transposed convolution.

    """

    def __init__(self, channels: int, stride: int, kernel_size: int | None = None,
                 padding: int | None = None, phase_balanced: bool = True,
                 symmetric: bool = False, init: Literal["tent", "uniform"] = "tent") -> None:
        super().__init__()
        k = 2 * stride if kernel_size is None else kernel_size
        if stride < 1 or k < stride:
            raise ValueError(f"need kernel_size >= stride >= 1, got k={k}, s={stride}")
        p = (k - stride) // 2 if padding is None else padding
        if not 0 <= p <= k - stride:
            raise ValueError(f"padding must be in [0, k - s] = [0, {k - stride}], got {p}")
        self.channels, self.stride, self.kernel_size, self.padding = channels, stride, k, p
        if symmetric and 2 * p != k - stride:
            raise ValueError(f"symmetric kernels need centred padding (k - s) / 2, got k={k}, "
                             f"s={stride}, p={p}")
        self.phase_balanced, self.symmetric = phase_balanced, symmetric
        self.logits = nn.Parameter(torch.zeros(channels, k, k))
        if init == "tent":
            with torch.no_grad():
                self.logits.copy_(_tent_logits(k, stride, p).expand(channels, k, k))
        elif init != "uniform":
            raise ValueError(f"unknown kernel init {init!r}")
        phase = (torch.arange(k) % stride)
        self.phase_id: Tensor
        self.register_buffer("phase_id", (phase[:, None] * stride + phase[None, :]).flatten(),
                             persistent=False)

    def kernel(self) -> Tensor:
        """The normalised kernel, shape ``(C, 1, k, k)``: positive weights summing to one."""
        c, k, s = self.channels, self.kernel_size, self.stride
        logits: Tensor = self.logits
        if self.symmetric:
            logits = 0.25 * (logits + logits.flip(-1) + logits.flip(-2) + logits.flip(-1, -2))
        flat = logits.reshape(c, k * k)
        if not self.phase_balanced:
            return torch.softmax(flat, dim=-1).reshape(c, 1, k, k)
        # Softmax within each phase: subtract each phase's max, divide by each phase's sum.
        # (The max must be per phase: a global max lets a phase whose logits sit far below
        # the others underflow to 0/0.)
        phase_id = self.phase_id.expand(c, -1)
        top = torch.full((c, s * s), -torch.inf, dtype=flat.dtype, device=flat.device)
        top = top.scatter_reduce(1, phase_id, flat.detach(), reduce="amax")
        expo = (flat - top.gather(1, phase_id)).exp()
        sums = torch.zeros(c, s * s, dtype=flat.dtype, device=flat.device)
        sums.scatter_add_(1, phase_id, expo)
        weights = expo / sums.gather(1, phase_id) / (s * s)
        return weights.reshape(c, 1, k, k)

    def forward(self, x: Tensor, fine_area: Tensor | None = None, periodic: bool = False
                ) -> Tensor:
        """Upsample intensive values ``x`` by spreading their mass (see class docstring).

        Args:
            x: ``(B, C, h, w)``.
            fine_area: Fine cell areas broadcastable to ``(B, C, h*s, w*s)``, or None.
            periodic: Whether the last axis is periodic (global longitude): spill-over
                wraps around instead of reflecting.

        """
        s, p = self.stride, self.padding
        # NaN is zero mass. (where, not nan_to_num: its backward is six operations.)
        x = torch.where(x.isnan(), 0.0, x)
        fine = (x.shape[-2] * s, x.shape[-1] * s)
        if fine_area is None:
            mass = x * (s * s)  # equal areas: a coarse cell is s^2 fine cells of area 1
        else:
            # Sum the areas before broadcasting: expanding to (B, C, H, W) first would copy
            # them B*C times.
            fine_area = fine_area.expand(*fine_area.shape[:-2], *fine)
            mass = x * block_sum(fine_area, s)
        blocks = spread(mass, self.kernel().to(x.dtype), s)
        return fold_spill(blocks, s, p, fine, periodic, fine_area)

    def coarse_reach(self, fine_reach: int = 0) -> int:
        """Coarse cells on each side behind its output, read ``fine_reach`` fine cells wide.

        See :func:`downscale.nn.reach.transposed_reach`; the folding of the spill-over at
        the edges stays within it.
        """
        return transposed_reach(self.stride, self.kernel_size, self.padding, fine_reach)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, stride={self.stride}, kernel_size={self.kernel_size}"
                f", padding={self.padding}, phase_balanced={self.phase_balanced}"
                f", symmetric={self.symmetric}")


def _tent_logits(k: int, s: int, p: int) -> Tensor:
    """Log-weights of the separable tent kernel (bilinear interpolation), shape ``(k, k)``."""
    # Tap t lands t - p fine cells past the block start; the coarse centre is (s - 1) / 2.
    distance = (torch.arange(k, dtype=torch.float64) - p - (s - 1) / 2).abs()
    tent = (1.0 - distance / s).clamp_min(1e-4)
    return (tent[:, None] * tent[None, :]).log().float()


class LocalConservation(nn.Module):
    """Make every coarse cell's valid fine cells carry exactly its mass.

    After this step ``sum_f a_f y_f / sum_f a_f == x_C`` over the valid fine cells f of
    every coarse cell C with a valid value. It must be the last operation on the physical
    field.

    Args:
        factor: Fine cells per coarse cell along each axis.
        mode: ``"additive"`` (any sign: shift each block by its error),
            ``"multiplicative"`` (positive fields: rescale each block; ``y`` must be > 0),
            ``"softmax"`` (positive fields: ``y`` are logits distributing the coarse mass),
            or ``"none"`` (identity; for comparisons only).

    Shapes:
        ``forward(y, x, fine_area, fine_valid)``: ``y`` ``(B, C, H, W)``, ``x``
        ``(B, C, H/f, W/f)``, ``fine_area`` and ``fine_valid`` broadcast to ``y``.
        Returns ``(B, C, H, W)`` with NaN at invalid cells and in blocks whose coarse value
        is missing.

    """

    def __init__(self, factor: int, mode: ConstraintMode = "additive") -> None:
        super().__init__()
        if mode not in ("additive", "multiplicative", "softmax", "none"):
            raise ValueError(f"unknown conservation mode {mode!r}")
        self.factor, self.mode = factor, mode

    def forward(self, y: Tensor, x: Tensor, fine_area: Tensor, fine_valid: Tensor | None = None
                ) -> Tensor:
        f = self.factor
        coarse_ok = torch.isfinite(x)
        valid = block_repeat(coarse_ok, f)
        if fine_valid is not None:
            valid = valid & fine_valid.expand_as(valid)
        weight = fine_area.expand_as(y) * valid
        x0 = torch.where(coarse_ok, x, torch.zeros_like(x))
        # Never read invalid cells: NaN there would reach the gradients (0 * NaN) even though
        # the output masks them.
        y = torch.where(valid, y, 0.0)
        if self.mode == "additive":
            mean, _ = block_mean(y, weight, f)
            # The shift broadcast over each block (a view), not repeated into a fine tensor.
            shift = (x0 - mean)[..., :, None, :, None]
            out = (y.reshape(*shift.shape[:-4], shift.shape[-4], f, shift.shape[-2], f)
                   + shift).reshape(y.shape)
        elif self.mode == "multiplicative":
            mean, _ = block_mean(y, weight, f)
            ratio = x0 / torch.where(mean.abs() > 0, mean, torch.ones_like(mean))
            out = torch.where(block_repeat(mean.abs() > 0, f), y * block_repeat(ratio, f),
                              block_repeat(x0, f))
        elif self.mode == "softmax":
            logits = torch.where(valid, y, torch.full_like(y, -torch.inf))
            blocks = logits.reshape(*y.shape[:-2], y.shape[-2] // f, f, y.shape[-1] // f, f)
            top = blocks.amax(dim=(-3, -1), keepdim=True)
            top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
            expo = (blocks - top).exp().reshape(y.shape)
            share = expo / block_repeat(block_sum(expo, f).clamp_min(1e-30), f)
            total = block_sum(weight, f)
            out = block_repeat(x0 * total, f) * share / fine_area.expand_as(y).clamp_min(1e-30)
        else:
            out = y
        return torch.where(valid, out, torch.nan)
