"""LightningModules: the training, validation and prediction logic around plain-torch nets."""

from downscale.tasks.downscaling import DownscalingTask
from downscale.tasks.terrain import TerrainTask

__all__ = ["DownscalingTask", "TerrainTask"]
