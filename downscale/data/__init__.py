"""Training data: coarse/fine pairs, patches and tiles, the Lightning DataModule."""

from downscale.data.datamodule import DownscalingDataModule
from downscale.data.source import FieldSource, NormStats
from downscale.data.terrain import DEMSource, TerrainDataModule

__all__ = [
    "DEMSource",
    "DownscalingDataModule",
    "FieldSource",
    "NormStats",
    "TerrainDataModule",
]
