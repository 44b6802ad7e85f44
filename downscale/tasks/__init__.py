"""LightningModules: the training, validation and prediction logic around plain-torch nets."""

from downscale.tasks.downscaling import DownscalingTask

__all__ = ["DownscalingTask"]
