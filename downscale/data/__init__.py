"""Training data: coarse/fine pairs, patches and tiles, the Lightning DataModule."""

from downscale.data.datamodule import DownscalingDataModule
from downscale.data.source import FieldSource, NormStats

__all__ = ["DownscalingDataModule", "FieldSource", "NormStats"]
