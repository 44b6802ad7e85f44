"""A U-Net trunk on the coarse grid whose skip connections align for any size, odd included.

Each level halves the grid with a 2x2 average. An odd size cannot be halved, so the grid is
first **padded at its high end** (last row / column) to an even size: replicated, or wrapped
along a periodic longitude. Coarse cell ``j`` of the pooled level then covers cells
``2j, 2j + 1`` of the finer one, and nearest-neighbour upsampling puts it back on exactly
those cells; the result is ``2 ceil(n / 2)`` cells, one too many for odd ``n``, and the
extra cell at the high end (the padded one) is **cropped** before the skip connection is
concatenated. Padding and cropping on the same side keeps every cell aligned with its skip.

With an odd number of columns on a periodic grid the coarser levels are periodic only to
within the padded column; the finest level, which the decoder upsamples, is exact.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from downscale.nn.decoder import _ConvBlock
from downscale.nn.mitigations import DecoderConfigError
from downscale.nn.padding import GridConv2d
from downscale.nn.reach import conv_reach, repeat_reach, stack_reach


def pad_to_multiple(x: Tensor, multiple: int, periodic: bool = False) -> Tensor:
    """Pad the high end of the last two dims of ``(B, C, H, W)`` up to multiples of ``multiple``.

    Rows are replicated; columns too, or wrapped around when ``periodic``.
    """
    pad_h, pad_w = -x.shape[-2] % multiple, -x.shape[-1] % multiple
    if pad_w:
        x = F.pad(x, (0, pad_w, 0, 0), mode="circular" if periodic else "replicate")
    if pad_h:
        x = F.pad(x, (0, 0, 0, pad_h), mode="replicate")
    return x


def crop_to(x: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Keep the first ``size = (H, W)`` cells of the last two dims (drops high-end padding)."""
    return x[..., : size[0], : size[1]]


class _UpBlock(nn.Module):
    """Nearest x2, crop to the skip, 3x3 convolution, concatenate the skip, conv block."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = GridConv2d(in_channels, out_channels)
        self.merge = _ConvBlock(2 * out_channels, out_channels)
        self.act = nn.GELU()

    def forward(self, x: Tensor, skip: Tensor, periodic: bool) -> Tensor:
        up = crop_to(F.interpolate(x, scale_factor=2, mode="nearest"), skip.shape[-2:])
        up = self.act(self.conv(up, periodic))
        out: Tensor = self.merge(torch.cat([up, skip], dim=1), periodic)
        return out


class UNet(nn.Module):
    """Encoder-decoder with skip connections (Ronneberger et al. 2015), same size in and out.

    Args:
        channels: Width at the finest level; level ``i`` has ``channels * 2**i``.
        depth: Number of halvings. A level of one cell stays one cell (padding to two and
            averaging gives it back), so any depth works on any size.

    Shapes:
        ``forward(x, periodic)``: ``(B, channels, h, w)`` -> ``(B, channels, h, w)``, any
        ``h, w >= 1``.
    """

    def __init__(self, channels: int, depth: int = 2) -> None:
        super().__init__()
        if depth < 0:
            raise DecoderConfigError(f"depth must be >= 0, got {depth}")
        widths = [channels * 2**i for i in range(depth + 1)]
        self.encoders = nn.ModuleList(_ConvBlock(widths[max(i - 1, 0)], widths[i])
                                      for i in range(depth + 1))
        self.decoders = nn.ModuleList(_UpBlock(widths[i], widths[i - 1])
                                      for i in range(depth, 0, -1))

    @property
    def alignment(self) -> int:
        """Cells a tile's start must be a multiple of: each level pools pairs of cells."""
        return 1 << (len(self.encoders) - 1)

    def reach(self) -> int:
        """Cells on each side (finest level) that one output cell depends on.

        Level by level from the deepest (its encoder block alone): at level ``i`` an output
        cell reads the merge block and the up-convolution (``r`` cells of the upsampled
        grid), hence ``ceil(r / 2)`` cells of level ``i + 1`` around its own; with the
        level below reaching ``s`` of its cells, that is ``M = ceil(r / 2) + s`` pooled
        cells, i.e. at most ``2 M + 1`` cells of level ``i``, read through level ``i``'s
        encoder block. The skip path reads the merge block and the encoder block only.
        The padding at the high end before pooling is one more cell of the same kind.
        """
        depth = len(self.encoders) - 1
        below = stack_reach(self.encoders[depth])
        for level in range(depth - 1, -1, -1):
            up = cast(_UpBlock, self.decoders[depth - 1 - level])
            merge, encoder = stack_reach(up.merge), stack_reach(self.encoders[level])
            pooled = repeat_reach(2, merge + conv_reach(up.conv)) + below
            below = max(encoder + 2 * pooled + 1, merge + encoder)
        return below

    def forward(self, x: Tensor, periodic: bool = False) -> Tensor:
        skips: list[Tensor] = []
        for i, encoder in enumerate(self.encoders):
            if i:
                x = F.avg_pool2d(pad_to_multiple(x, 2, periodic), 2)
            x = encoder(x, periodic)
            skips.append(x)
        for decoder, skip in zip(self.decoders, reversed(skips[:-1]), strict=True):
            x = decoder(x, skip, periodic)
        return x
