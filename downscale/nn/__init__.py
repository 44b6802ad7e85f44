"""Plain PyTorch modules (no Lightning): layers, decoders and the Downscaler models."""

from downscale.nn.coarse_grid import CoarseGridDecoder
from downscale.nn.conserving import (
    LocalConservation,
    MassConservingConvTranspose2d,
    block_mean,
    block_sum,
)
from downscale.nn.decoder import ConservingDecoder
from downscale.nn.decoders import (
    PixelShuffleDecoder,
    ResizeConvDecoder,
    TransposedConvDecoder,
    UNetDecoder,
)
from downscale.nn.mitigations import (
    AntiAliasFilter,
    DecoderConfigError,
    PhaseMixingConv,
    SpatialAttentionSmoothing,
    sobolev_h1_penalty,
    transposed_kernel_penalty,
    transposed_kernels,
)
from downscale.nn.models import ClimateDownscaler, TerrainDownscaler
from downscale.nn.protocol import Downscaler, NotTileableError
from downscale.nn.stochastic import StochasticConservingDecoder, ensemble_forward
from downscale.nn.terrain import TerrainGenerator

__all__ = [
    "ClimateDownscaler",
    "CoarseGridDecoder",
    "ConservingDecoder",
    "Downscaler",
    "LocalConservation",
    "MassConservingConvTranspose2d",
    "NotTileableError",
    "StochasticConservingDecoder",
    "TerrainDownscaler",
    "TerrainGenerator",
    "block_mean",
    "block_sum",
    "ensemble_forward",
]
__all__ += [
    "AntiAliasFilter",
    "DecoderConfigError",
    "PhaseMixingConv",
    "PixelShuffleDecoder",
    "ResizeConvDecoder",
    "SpatialAttentionSmoothing",
    "TransposedConvDecoder",
    "UNetDecoder",
    "sobolev_h1_penalty",
    "transposed_kernel_penalty",
    "transposed_kernels",
]
