"""The transposed convolution of the conserving layer, in polyphase form, and its fold.

A depthwise transposed convolution with stride ``s`` and a ``k x k`` kernel ``w`` writes

    full[s*J + a, s*I + b] = sum_{e, g < m} w[a + s*e, b + s*g] * mass[J - e, I - g]

for phases ``a, b < s`` and ``m = ceil(k / s)`` (taps past ``k`` are zero). For each phase
that is an ordinary ``m x m`` correlation of the coarse grid, so the whole spread is one
grouped :func:`torch.nn.functional.conv2d` with ``s^2`` outputs per channel: the same
multiply-adds as :func:`~torch.nn.functional.conv_transpose2d`, which on CPU runs 2-4x
slower for depthwise kernels (``benchmarks/RESULTS.md``). The result stays in *block
layout* ``(B, C*s*s, h + m - 1, w + m - 1)``, channel ``c*s*s + a*s + b``; the fold below
reads it through a strided view, so the fine grid is assembled, cropped, folded and divided
by the areas in one pass instead of a pixel shuffle followed by a fold.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor


def polyphase_kernel(kernel: Tensor, stride: int) -> Tensor:
    """The ``(C, 1, k, k)`` kernel as ``(C*s*s, 1, m, m)`` per-phase correlation kernels.

    Entry ``[c*s*s + a*s + b, 0, q, r]`` is ``kernel[c, 0, a + s*(m-1-q), b + s*(m-1-r)]``
    (zero past ``k``): the flip turns the transposed convolution's spread into a correlation.
    """
    c, _, k, _ = kernel.shape
    s, m = stride, -(-k // stride)
    padded = F.pad(kernel, (0, m * s - k, 0, m * s - k))
    phases = padded.reshape(c, m, s, m, s).flip(1, 3).permute(0, 2, 4, 1, 3)
    return phases.reshape(c * s * s, 1, m, m)


def spread(mass: Tensor, kernel: Tensor, stride: int) -> Tensor:
    """Depthwise transposed convolution of ``mass`` ``(B, C, h, w)`` in block layout.

    Returns ``(B, C*s*s, h + m - 1, w + m - 1)``: block ``(J, I)``, phase ``(a, b)`` is cell
    ``(s*J + a, s*I + b)`` of the uncropped transposed convolution (module docstring).
    """
    m = -(-kernel.shape[-1] // stride)
    # Contiguous: the fold views the result as blocks (a channels-last input would give a
    # channels-last result).
    return F.conv2d(mass.contiguous(), polyphase_kernel(kernel, stride), padding=m - 1,
                    groups=kernel.shape[0])


def fold_spill(blocks: Tensor, stride: int, p: int, fine: tuple[int, int], periodic: bool,
               fine_area: Tensor | None = None) -> Tensor:
    """Crop the spread masses to the fine grid, fold the spill-over back, divide by areas.

    In the uncropped grid (``s * (h + m - 1)`` rows) rows ``[p, p + H)`` and columns
    ``[p, p + W)`` are kept. What lies outside is added back mirrored at the edge (fine
    index ``-1 - j`` lands on ``j``, ``H + j`` on ``H - 1 - j``), or, along a periodic last
    axis, wrapped (``-j`` on ``W - j``, ``W + j`` on ``j``). The fold keeps the total
    exactly. Rows are folded first, so corners go to corners.

    Args:
        blocks: ``(B, C*s*s, hb, wb)`` masses in block layout (:func:`spread`).
        stride: ``s``.
        p: Spill-over cells at the low edge of each axis.
        fine: ``(H, W)``, with ``H <= s*hb - p`` and ``W <= s*wb - p``.
        periodic: Whether the last axis wraps.
        fine_area: Areas broadcastable to ``(B, C, H, W)`` (never differentiated), or None
            to return the folded masses themselves.

    Returns:
        ``(B, C, H, W)``: folded masses, divided by ``fine_area`` if given. It is a view into
        the uncropped grid (row stride ``s * wb``), not contiguous.
    """
    height, width = fine
    r_rows = stride * blocks.shape[-2] - p - height
    r_cols = stride * blocks.shape[-1] - p - width
    if max(p, r_rows) > height or max(p, r_cols) > width:
        raise ValueError(f"kernel spill-over ({p}, {max(r_rows, r_cols)}) exceeds the grid "
                         f"{height} x {width}")
    if fine_area is not None and fine_area.requires_grad:
        raise ValueError("fold_spill does not differentiate the cell areas")
    folded: Tensor = _FoldSpill.apply(  # type: ignore[no-untyped-call]
        blocks, stride, p, fine, periodic, fine_area)
    return folded


@functools.lru_cache(maxsize=64)
def _destination(length: int, p: int, n: int, periodic: bool, device: torch.device) -> Tensor:
    """Kept index (``< n``) that each of ``length`` uncropped cells folds onto."""
    index = torch.arange(length, device=device) - p
    if periodic:
        return index % n
    index = torch.where(index < 0, -1 - index, index)
    return torch.where(index >= n, 2 * n - 1 - index, index)


def _as_blocks(grid: Tensor, stride: int) -> Tensor:
    """View a contiguous ``(..., s*hb, s*wb)`` grid as ``(..., hb, s, wb, s)``."""
    *lead, rows, cols = grid.shape
    return grid.view(*lead, rows // stride, stride, cols // stride, stride)


def _block_view(blocks: Tensor, stride: int) -> Tensor:
    """``(B, C*s*s, hb, wb)`` block layout seen as ``(B, C, hb, s, wb, s)`` (a view)."""
    b, cs, hb, wb = blocks.shape
    return blocks.view(b, cs // stride**2, stride, stride, hb, wb).permute(0, 1, 4, 2, 5, 3)


class _FoldSpill(torch.autograd.Function):
    """:func:`fold_spill` with a hand-written adjoint: one pass over the fine grid each way.

    Forward: one multiply assembles the uncropped grid from the block layout already
    divided by the areas, each spilled cell by the area of the cell it folds onto; then the
    thin spill strips are added in place. Backward: the gradient is mirrored (or wrapped)
    out to the uncropped grid, then multiplied into the block layout in one pass.
    Autograd through slices would instead fill a full-size zero tensor per slice.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, blocks: Tensor, stride: int, p: int,
                fine: tuple[int, int], periodic: bool, fine_area: Tensor | None) -> Tensor:
        height, width = fine
        hb, wb = blocks.shape[-2:]
        scale = None
        if fine_area is not None:
            # 1 / area of the destination of every uncropped cell; contiguous, (..., s*hb, s*wb).
            inverse = fine_area.expand(*fine_area.shape[:-2], *fine).reciprocal()
            rows = _destination(stride * hb, p, height, False, blocks.device)
            cols = _destination(stride * wb, p, width, periodic, blocks.device)
            scale = inverse.index_select(-2, rows).index_select(-1, cols)
        grid = blocks.new_empty(blocks.shape[0], blocks.shape[1] // stride**2,
                                stride * hb, stride * wb)
        source = _block_view(blocks, stride)
        if scale is None:
            _as_blocks(grid, stride).copy_(source)
        else:
            torch.mul(source, _as_blocks(scale, stride), out=_as_blocks(grid, stride))
        _fold_in_place(grid, p, fine, periodic)
        ctx.save_for_backward(*([] if scale is None else [scale]))
        ctx.geometry = (stride, p, periodic, tuple(blocks.shape))  # type: ignore[attr-defined]
        return grid[..., p : p + height, p : p + width]

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, *grads: Tensor
                 ) -> tuple[Tensor, None, None, None, None, None]:
        saved = ctx.saved_tensors  # type: ignore[attr-defined]
        stride, p, periodic, shape = ctx.geometry  # type: ignore[attr-defined]
        grad = grads[0]
        height, width = grad.shape[-2:]
        # The adjoint of the fold copies each kept cell's gradient to the cells folded onto it.
        # (Strips, not index_select with _destination: that gather is 1.3x slower in all.)
        spilled = grad.new_empty(*grad.shape[:-2], stride * shape[-2], stride * shape[-1])
        r_rows, r_cols = spilled.shape[-2] - p - height, spilled.shape[-1] - p - width
        mid = spilled[..., p : p + height, :]
        mid[..., p : p + width] = grad
        if periodic:
            if p:
                mid[..., :p] = grad[..., width - p :]
            if r_cols:
                mid[..., p + width :] = grad[..., :r_cols]
        else:
            if p:
                mid[..., :p] = grad[..., :p].flip(-1)
            if r_cols:
                mid[..., p + width :] = grad[..., width - r_cols :].flip(-1)
        if p:
            spilled[..., :p, :] = spilled[..., p : 2 * p, :].flip(-2)
        if r_rows:
            spilled[..., p + height :, :] = spilled[..., p + height - r_rows : p + height, :
                                                    ].flip(-2)
        out = grad.new_empty(shape)
        target = _block_view(out, stride)
        if saved:
            torch.mul(_as_blocks(spilled, stride), _as_blocks(saved[0], stride), out=target)
        else:
            target.copy_(_as_blocks(spilled, stride))
        return out, None, None, None, None, None


def _fold_in_place(grid: Tensor, p: int, fine: tuple[int, int], periodic: bool) -> None:
    """Add the spill strips of the uncropped ``grid`` onto the kept cells, in place."""
    height, width = fine
    r_rows, r_cols = grid.shape[-2] - p - height, grid.shape[-1] - p - width
    if p:  # rows first, over the whole width, so that corners land in corners
        grid[..., p : 2 * p, :] += grid[..., :p, :].flip(-2)
    if r_rows:
        grid[..., p + height - r_rows : p + height, :] += grid[..., p + height :, :].flip(-2)
    rows = grid[..., p : p + height, :]
    if periodic:
        if p:
            rows[..., width : width + p] += rows[..., :p]
        if r_cols:
            rows[..., p : p + r_cols] += rows[..., p + width :]
    else:
        if p:
            rows[..., p : 2 * p] += rows[..., :p].flip(-1)
        if r_cols:
            rows[..., p + width - r_cols : p + width] += rows[..., p + width :].flip(-1)
