"""The identity model: ``downscale run``'s I/O floor, without benchmark code in the product.

:class:`IdentityModel` block-repeats each coarse value into its ``factor x factor`` fine
cells (nearest upsampling), which conserves mass trivially and costs next to nothing, so a
run with it times reading, checking, encoding and writing alone. :data:`IDENTITY_HOOKS`
injects it as the run's model loader (:class:`downscale.batch.execute.Hooks`), here and,
pickled with each task, in every Dask worker; the rest of the run (chunks, tiles, encoding,
the atomic write) is the product's own code path, unchanged. Nothing is monkeypatched.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

import downscale.checkpoint
from downscale.batch.execute import Hooks
from downscale.nn.conserving import block_repeat


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


#: ``downscale.batch.cli.main(argv, hooks=IDENTITY_HOOKS)`` runs with the identity model.
IDENTITY_HOOKS = Hooks(load_model=_identity_loader)
