"""Mitigations of upsampling artifacts, each one setting of a decoder (docs/method.md#artifacts).

A transposed convolution of stride ``s`` splits its output into ``s^2`` phases; when the
phases receive unequal weight the output carries a pattern that repeats every ``s`` cells
(a checkerboard; Odena et al. 2016, "Deconvolution and Checkerboard Artifacts", Distill).
In the zero-insertion view of upsampling the same defect is power left at the images of the
coarse spectrum, at the frequencies ``j / s`` cycles per fine cell. The pieces here fight it
at three levels:

:func:`sobolev_h1_penalty` / :func:`transposed_kernel_penalty`
    Regularise the kernels themselves: the Sobolev H1 semi-norm (sum of squared differences
    of neighbouring weights) is zero for a flat kernel and grows with its roughness, and a
    smooth kernel spreads its weight evenly over the phases. Added to the loss by
    :class:`downscale.tasks.DownscalingTask` (``sobolev_weight``).
:class:`PhaseMixingConv`
    A dilated convolution after the upsampler. Its taps sit ``d`` cells apart, so they read
    output phases ``a, a + d, a + 2d, ... (mod s)``: they mix phases only if ``d`` is not a
    multiple of ``s`` (all of them when ``gcd(d, s) = 1``). A multiple is refused.
:class:`SpatialAttentionSmoothing`
    A non-local attention block (Wang et al. 2018, "Non-local Neural Networks") whose keys
    and values are averaged over ``s x s`` blocks, so what it mixes in carries no phase
    pattern; a learnt gate blends it with the features.
:class:`AntiAliasFilter`
    A fixed low-pass filter with zeros at the image frequencies, for sub-pixel convolution
    (pixel shuffle) whose output is otherwise a per-phase mosaic.

All are plain torch modules (no Lightning). Shapes: features ``(B, C, H, W)`` on the fine
grid; every module keeps the shape.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from downscale.errors import DownscaleError
from downscale.nn.conserving import MassConservingConvTranspose2d
from downscale.nn.padding import pad_grid
from downscale.nn.protocol import NotTileableError


class DecoderConfigError(DownscaleError, ValueError):
    """A decoder setting that cannot work (a ``ValueError``; the CLI prints one line)."""


# ---------------------------------------------------------------------------------------
# Kernel smoothness
# ---------------------------------------------------------------------------------------


def sobolev_h1_penalty(kernel: Tensor) -> Tensor:
    """Sobolev H1 semi-norm of 2-D kernels: summed squared differences of neighbours.

    ``|w|^2 = sum_ij (w[i+1, j] - w[i, j])^2 + sum_ij (w[i, j+1] - w[i, j])^2`` over the
    last two axes, summed over any leading axes (one kernel per channel).

    Args:
        kernel: Weights ``(..., k_y, k_x)``, any units.

    Returns:
        A scalar in the kernel's units squared: 0 for a constant kernel, growing with
        roughness (a kernel scaled by ``a`` scores ``a^2`` times as much).
    """
    if kernel.ndim < 2:
        raise ValueError(f"expected kernels of shape (..., k, k), got {tuple(kernel.shape)}")
    dy = kernel[..., 1:, :] - kernel[..., :-1, :]
    dx = kernel[..., :, 1:] - kernel[..., :, :-1]
    return dy.square().sum() + dx.square().sum()


def transposed_kernels(module: nn.Module) -> list[Tensor]:
    """The transposed-convolution kernels of a network, as differentiable tensors.

    A module with a ``transposed_kernels()`` method answers for itself; otherwise the
    normalised kernel of every :class:`MassConservingConvTranspose2d` and the weight of
    every ``nn.ConvTranspose2d`` inside it are collected.

    Returns:
        Tensors of shape ``(..., k, k)``.
    """
    own = getattr(module, "transposed_kernels", None)
    if callable(own):
        return list(own())
    found: list[Tensor] = []
    for sub in module.modules():
        if isinstance(sub, MassConservingConvTranspose2d):
            found.append(sub.kernel())
        elif isinstance(sub, nn.ConvTranspose2d):
            found.append(sub.weight)
    return found


def transposed_kernel_penalty(kernels: Iterable[Tensor]) -> Tensor:
    """Mean H1 semi-norm per 2-D kernel (:func:`sobolev_h1_penalty`) over ``kernels``.

    Averaging (not summing) over kernels keeps a loss weight meaningful when the width or
    depth of the network changes. Conserving kernels sum to one, so their weights are about
    ``1 / k^2`` and a tent kernel of size 8 scores about 1e-3: weights of order 1-10 make
    the penalty felt beside a normalised mean squared error.

    Returns:
        A scalar tensor (0 when there are no kernels).
    """
    total: Tensor | None = None
    count = 0
    for kernel in kernels:
        flat = kernel.reshape(-1, *kernel.shape[-2:])
        term = sobolev_h1_penalty(flat)
        total = term if total is None else total + term.to(total)
        count += flat.shape[0]
    if total is None:
        return torch.zeros(())
    return total / count


# ---------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------


class PhaseMixingConv(nn.Module):
    """Residual dilated convolution after an upsampler of stride ``stride``: mixes phases.

    ``y = x + conv_d(x)`` with a ``kernel_size x kernel_size`` convolution of dilation
    ``d``, padded like the grid (:func:`~downscale.nn.padding.pad_grid`). Output cell ``i``
    reads cells ``i + m d``, i.e. phases ``(i + m d) mod s``: with ``d`` a multiple of ``s``
    every tap reads the phase of ``i`` itself and the layer cannot even out the phases
    (seed document, "Mitigation Strategies"). ``gcd(d, s) = 1`` reaches all of them.

    Args:
        channels: Feature channels in and out.
        stride: The phase period of the input (the upsampler's last stride).
        dilation: Tap spacing ``d >= 1``; must not be a multiple of ``stride``.
        kernel_size: Odd number of taps per axis.

    Raises:
        DecoderConfigError: (a ``ValueError``) for a dilation that is a multiple of the
            stride, or a non-positive dilation or even kernel size.
    """

    def __init__(self, channels: int, stride: int, dilation: int, kernel_size: int = 3) -> None:
        super().__init__()
        check_phase_mixing_dilation(dilation, stride)
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise DecoderConfigError(f"kernel_size must be odd and >= 3, got {kernel_size}")
        self.stride, self.dilation = stride, dilation
        self.reach = dilation * (kernel_size // 2)
        self.conv = nn.Conv2d(channels, channels, kernel_size, dilation=dilation)

    def forward(self, x: Tensor, periodic: bool = False) -> Tensor:
        out: Tensor = x + self.conv(pad_grid(x, self.reach, periodic))
        return out

    def extra_repr(self) -> str:
        return f"stride={self.stride}, dilation={self.dilation}"


def check_phase_mixing_dilation(dilation: int, stride: int) -> None:
    """Refuse a dilation that cannot mix the ``stride`` output phases of an upsampler.

    Raises:
        DecoderConfigError: With a message that says why and what to choose instead.
    """
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
        raise DecoderConfigError(f"dilation must be a positive integer, got {dilation!r}")
    if dilation % stride == 0:
        better = [d for d in range(1, 2 * stride + 2) if math.gcd(d, stride) == 1][:3]
        raise DecoderConfigError(
            f"dilation {dilation} is a multiple of the upsampling stride {stride}: the "
            f"dilated convolution would only combine cells of the same output phase and "
            f"cannot remove a checkerboard. Choose a dilation coprime to {stride}, e.g. "
            f"{', '.join(map(str, better))}.")


class SpatialAttentionSmoothing(nn.Module):
    """Gated non-local attention over block-averaged features: a global, phase-free smoother.

    Queries come from every fine cell; keys and values from the features averaged over
    ``stride x stride`` blocks. A block average has zeros at the frequencies ``j / stride``
    (``j != 0``), so the values carry no pattern of period ``stride``; each cell receives
    a softmax-weighted mean of them. A per-channel gate ``g = sigmoid(gate)`` (starting at
    about 0.12) blends: ``y = x + g * (attended - x)``. The seed document notes that even a
    uniform spatial average collapses the polyphase components behind a checkerboard; the
    attention weights let the block keep large-scale structure while it does so.

    Args:
        channels: Feature channels in and out.
        stride: Phase period of the input (block size of the keys and values).
        key_channels: Width of queries and keys.

    Shapes:
        ``forward(x)``: ``(B, C, H, W)`` -> ``(B, C, H, W)``; cost ``O(H W * H W / s^2)``.
    """

    def __init__(self, channels: int, stride: int, key_channels: int = 8) -> None:
        super().__init__()
        self.stride = stride
        self.query = nn.Conv2d(channels, key_channels, 1)
        self.key = nn.Conv2d(channels, key_channels, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gate = nn.Parameter(torch.full((1, channels, 1, 1), -2.0))

    def reach(self) -> int:
        """None: every cell attends to every block of the field, so tiles cannot be exact.

        Raises:
            NotTileableError: Always.
        """
        raise NotTileableError(
            "spatial attention smoothing (attention: true) mixes every cell with the whole "
            "field, so tiles would differ from the whole field: leave out --tile-size (run "
            "whole fields) or use a decoder without attention")

    def forward(self, x: Tensor, periodic: bool = False) -> Tensor:
        b, c, h, w = x.shape
        pooled = F.avg_pool2d(x, self.stride, ceil_mode=True)
        q = self.query(x).flatten(2).transpose(1, 2)  # (B, HW, K)
        k = self.key(pooled).flatten(2)  # (B, K, N)
        v = self.value(pooled).flatten(2).transpose(1, 2)  # (B, N, C)
        weights = torch.softmax(q @ k / math.sqrt(q.shape[-1]), dim=-1)
        attended = (weights @ v).transpose(1, 2).reshape(b, c, h, w)
        out: Tensor = x + torch.sigmoid(self.gate) * (attended - x)
        return out


class AntiAliasFilter(nn.Module):
    """Fixed separable low-pass filter that removes the images of an upsampling by ``factor``.

    Taps ``t_j = (f - |j|) / f^2`` for ``|j| < f`` (a box of width ``f`` convolved with
    itself; they sum to one, so the filter keeps means and, on equal areas, mass). Its
    frequency response ``(sin(pi f nu) / (f sin(pi nu)))^2`` has double zeros at
    ``nu = j / f`` cycles per cell: a pattern of period ``f`` is removed exactly and the
    spectral images around those frequencies are damped. Applied depthwise after grid
    padding (:func:`~downscale.nn.padding.pad_grid`).

    Args:
        factor: The upsampling factor ``f``.

    Shapes:
        ``forward(x, periodic)``: ``(B, C, H, W)`` -> ``(B, C, H, W)``.
    """

    def __init__(self, factor: int) -> None:
        super().__init__()
        if factor < 1:
            raise DecoderConfigError(f"factor must be >= 1, got {factor}")
        self.factor = factor
        self.reach = factor - 1  # fine cells on each side
        j = torch.arange(-factor + 1, factor, dtype=torch.float64)
        taps = (factor - j.abs()) / factor**2
        self.taps: Tensor
        self.register_buffer("taps", taps.float(), persistent=False)

    def forward(self, x: Tensor, periodic: bool = False) -> Tensor:
        if self.factor == 1:
            return x
        c = x.shape[1]
        taps = self.taps.to(x.dtype)
        padded = pad_grid(x, self.factor - 1, periodic)
        rows = F.conv2d(padded, taps.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
        out: Tensor = F.conv2d(rows, taps.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return out

    def extra_repr(self) -> str:
        return f"factor={self.factor}"
