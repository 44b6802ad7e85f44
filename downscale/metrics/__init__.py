"""Validation metrics: mass conservation, checkerboard artifacts, skill and terrain slopes.

Pure functions on numpy arrays (with thin xarray wrappers); no torch, no Lightning, so the
same code scores the model, the baselines and files on disk. Fine fields have shape
``(..., H, W)`` and coarse fields ``(..., h, w)`` with ``H = factor * h``,
``W = factor * w``; leading dimensions (time, batch, channel) are all included in a score.
NaN marks a missing cell everywhere.

One module per job:

- :mod:`~downscale.metrics.conservation`: local and global mass conservation
  (docs/method.md#conservation), as summable per-chunk sums and one ``finalize``;
- :mod:`~downscale.metrics.artifacts`: the two checkerboard measures of
  docs/method.md#artifacts, phase imbalance and spectral alias power;
- :mod:`~downscale.metrics.equivariance`: spectral replica leakage and translation
  equivariance of an upsampler;
- :mod:`~downscale.metrics.skill`: RMSE, MAE, bias, area-weighted RMSE (exact cell
  areas; :func:`rmse_xr` by dimension name);
- :mod:`~downscale.metrics.ensemble`: ensemble CRPS (fair estimator), spread-skill ratio,
  rank histogram and per-member conservation, as summable per-chunk sums;
- :mod:`~downscale.metrics.terrain`: slope limits and slope distributions
  (docs/method.md#terrain);
- :mod:`~downscale.metrics.epoch`: the same metrics as torchmetrics ``Metric``s whose states
  are these per-chunk parts, reduced over a training epoch and across DDP processes (torch;
  import it by name: importing :mod:`downscale.metrics` does not import torch).

The kernel diagnostics (:func:`phase_coverage`, :func:`phase_weight_sums`,
:func:`zero_insertion`) live in :mod:`downscale.nn.diagnostics`; they stay importable from
here, loaded on first use so that importing the metrics does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from downscale.metrics.artifacts import checkerboard_index, spectral_artifact_index
from downscale.metrics.conservation import (
    ConservationError,
    ConservationSums,
    conservation_error,
    conservation_error_xr,
    conservation_sums,
)
from downscale.metrics.ensemble import (
    EnsembleScores,
    EnsembleSums,
    crps_ensemble,
    ensemble_scores,
    ensemble_sums,
    member_conservation_sums,
    rank_histogram,
)
from downscale.metrics.equivariance import equivariance_error, spectral_replica_leakage
from downscale.metrics.skill import (
    area_weighted_rmse,
    bias,
    lat_weighted_rmse,
    mae,
    rmse,
    rmse_xr,
    weighted_squared_error_sums,
)
from downscale.metrics.terrain import (
    slope_angle_percentile,
    slope_violation_counts,
    slope_violation_fraction,
    slope_wasserstein_distance,
)

if TYPE_CHECKING:
    from downscale.nn.diagnostics import phase_coverage, phase_weight_sums, zero_insertion

#: Names re-exported from :mod:`downscale.nn.diagnostics` on first access: importing
#: ``downscale.nn`` imports torch, which the metrics otherwise do without.
_FROM_NN_DIAGNOSTICS = ("phase_coverage", "phase_weight_sums", "zero_insertion")

__all__ = [
    "ConservationError",
    "ConservationSums",
    "EnsembleScores",
    "EnsembleSums",
    "area_weighted_rmse",
    "bias",
    "checkerboard_index",
    "conservation_error",
    "conservation_error_xr",
    "conservation_sums",
    "crps_ensemble",
    "ensemble_scores",
    "ensemble_sums",
    "equivariance_error",
    "lat_weighted_rmse",
    "mae",
    "member_conservation_sums",
    "phase_coverage",
    "phase_weight_sums",
    "rank_histogram",
    "rmse",
    "rmse_xr",
    "slope_angle_percentile",
    "slope_violation_counts",
    "slope_violation_fraction",
    "slope_wasserstein_distance",
    "spectral_artifact_index",
    "spectral_replica_leakage",
    "weighted_squared_error_sums",
    "zero_insertion",
]


def __getattr__(name: str) -> Any:
    """Load the kernel diagnostics from :mod:`downscale.nn.diagnostics` when first asked for."""
    if name in _FROM_NN_DIAGNOSTICS:
        return getattr(importlib.import_module("downscale.nn.diagnostics"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
