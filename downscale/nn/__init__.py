"""Plain PyTorch modules (no Lightning): conserving layers, decoders, terrain generator."""

from downscale.nn.conserving import (
    LocalConservation,
    MassConservingConvTranspose2d,
    block_mean,
    block_sum,
)
from downscale.nn.decoder import ConservingDecoder

__all__ = [
    "ConservingDecoder",
    "LocalConservation",
    "MassConservingConvTranspose2d",
    "block_mean",
    "block_sum",
]
