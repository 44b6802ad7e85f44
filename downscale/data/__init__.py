"""Training data: coarse/fine pairs, patches and tiles, the Lightning DataModule.

The names are imported on first use (PEP 562), so that inference, which reads covariates
and sources from this package, does not import Lightning with the DataModules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from downscale.data.datamodule import DownscalingDataModule
    from downscale.data.source import FieldSource, NormStats
    from downscale.data.terrain import DEMSource, TerrainDataModule

_WHERE = {"DownscalingDataModule": "downscale.data.datamodule",
          "FieldSource": "downscale.data.source", "NormStats": "downscale.data.source",
          "DEMSource": "downscale.data.terrain", "TerrainDataModule": "downscale.data.terrain"}

__all__ = [
    "DEMSource",
    "DownscalingDataModule",
    "FieldSource",
    "NormStats",
    "TerrainDataModule",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'downscale.data' has no attribute {name!r}")
