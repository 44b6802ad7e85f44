"""The identity model: ``downscale run``'s I/O floor, without benchmark code in the product.

:class:`IdentityModel` block-repeats each coarse value into its ``factor x factor`` fine
cells (nearest upsampling), which conserves mass trivially and costs next to nothing, so a
run with it times reading, checking, encoding and writing alone. :func:`identity_model`
swaps it in for :func:`downscale.checkpoint.load_model` in this process and, through
``client.run``, in every Dask worker; the rest of the run (chunks, tiles, encoding, the
atomic write) is the product's own code path, unchanged.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

import downscale.checkpoint
import downscale.run
from downscale.nn.conserving import block_repeat

#: ``downscale.checkpoint.load_model`` as it was before :func:`install` replaced it.
_ORIGINAL: dict[str, Callable[..., Any]] = {}


class IdentityModel(nn.Module):
    """Nearest upsampling, called like a :class:`~downscale.tasks.DownscalingTask`.

    Args:
        factor: Fine cells per coarse cell along each axis.
    """

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor
        # downscale_field takes the device and dtype from the first parameter.
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)

    def forward(self, coarse: Tensor, fine_area: Tensor, fine_valid: Tensor,
                periodic: bool) -> Tensor:
        """``(B, 1, h, w)`` coarse values to ``(B, 1, h * factor, w * factor)`` fine ones."""
        return block_repeat(coarse, self.factor)

    def receptive_field(self) -> int:
        """No reach beyond its own coarse cell: tiles need no halo (coarse cells)."""
        return 0


@functools.lru_cache(maxsize=4)
def _identity_loader(checkpoint: str, sha256: str, device: str = "cpu",
                     task: str = "DownscalingTask") -> IdentityModel:
    """Stands in for :func:`downscale.checkpoint.load_model`: the checkpoint's factor, no weights.

    Cached like the real one, so that a chunk does not hash the checkpoint again.
    """
    return IdentityModel(downscale.checkpoint.read_checkpoint(checkpoint).factor).eval()


def install() -> None:
    """Make ``downscale.run`` load the identity model in this process (idempotent)."""
    _ORIGINAL.setdefault("load_model", downscale.checkpoint.load_model)
    downscale.checkpoint.load_model = _identity_loader  # type: ignore[assignment]


def uninstall() -> None:
    """Restore the real :func:`downscale.checkpoint.load_model` in this process."""
    if "load_model" in _ORIGINAL:
        downscale.checkpoint.load_model = _ORIGINAL.pop("load_model")  # type: ignore[assignment]


@contextlib.contextmanager
def identity_model(client: Any | None = None) -> Iterator[None]:
    """Within the block, ``downscale run`` uses the identity model here and on ``client``.

    Args:
        client: A ``distributed.Client`` whose workers run the chunks, or None (in-process
            runs only). Workers that join later keep the real model.
    """
    install()
    if client is not None:
        client.run(install)
    try:
        yield
    finally:
        if client is not None:
            client.run(uninstall)
        uninstall()
