"""Scoring for ``downscale compare``: one model's skill and artifact figures on the test fields.

A model here is a numpy function ``coarse (N, h, w) -> fine (N, H, W)``: a trained task
(:func:`torch_model`), a bare decoder (:func:`decoder_function`) or a baseline.
:func:`score` gives its row of the comparison table, :func:`radial_spectrum` its power
spectrum. Plain numpy and torch: nothing here imports Lightning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]

WHOLE_CELL, SUB_PIXEL = (0.0, 1.0), (0.0, 0.5)  # coarse cells along x (longitude)


@dataclass
class EvaluationFields:
    """Whole test fields: coarse ``(N, h, w)``, truth ``(N, H, W)``, areas and mask ``(H, W)``."""

    coarse: FloatArray
    truth: FloatArray
    area: FloatArray
    valid: NDArray[np.bool_]
    periodic: bool
    factor: int


def torch_model(task: Any, fields: EvaluationFields) -> Callable[[FloatArray], FloatArray]:
    """``coarse (N, h, w) -> fine (N, H, W)`` with the trained task, on the test fields' grid."""
    import torch

    area = torch.from_numpy(fields.area).float()[None, None]
    valid = torch.from_numpy(fields.valid)[None, None]

    def model(coarse: FloatArray) -> FloatArray:
        x = torch.from_numpy(np.ascontiguousarray(coarse, dtype=np.float32))[:, None]
        with torch.no_grad():
            y = task(x, area, valid, fields.periodic)
        out: FloatArray = y[:, 0].double().numpy()
        return out

    return model


def decoder_function(decoder: Any, *, periodic: bool = False, mean: float = 0.0,
                     std: float = 1.0, fine_area: FloatArray | None = None
                     ) -> Callable[[FloatArray], FloatArray]:
    """``coarse (N, h, w) -> fine (N, H, W)`` in numpy for a bare decoder (no task).

    Args:
        decoder: A decoder of :mod:`downscale.nn` (``factor`` attribute, the
            :class:`~downscale.nn.ConservingDecoder` forward signature), e.g. untrained.
        periodic: Whether the last axis wraps around.
        mean: Normalisation mean (``x_norm = (x - mean) / std``), field units.
        std: Normalisation scale and scale of the learnt detail, field units.
        fine_area: Fine cell areas ``(H, W)``; equal areas if None.

    Returns:
        A function for :func:`~downscale.metrics.equivariance_error` and friends (float64
        in and out; the decoder runs in its own dtype, without gradients).
    """
    import torch

    dtype = next(decoder.parameters()).dtype

    def model(coarse: FloatArray) -> FloatArray:
        x = torch.from_numpy(np.ascontiguousarray(coarse)).to(dtype)[:, None]
        f = int(decoder.factor)
        shape = (1, 1, x.shape[-2] * f, x.shape[-1] * f)
        area = (torch.ones(shape, dtype=dtype) if fine_area is None
                else torch.from_numpy(fine_area).to(dtype).reshape(shape))
        with torch.no_grad():
            y = decoder(x, torch.nan_to_num((x - mean) / std), area,
                        torch.ones(shape, dtype=torch.bool),
                        torch.full((1, 1, 1, 1), std, dtype=dtype), periodic)
        out: FloatArray = y[:, 0].double().numpy()
        return out

    return model


def score(model: Callable[[FloatArray], FloatArray], fields: EvaluationFields, *,
          equivariance: bool = True) -> dict[str, Any]:
    """The table's skill and artifact figures of one model on the test fields."""
    from downscale.metrics import (
        checkerboard_index,
        conservation_error,
        equivariance_error,
        rmse,
        spectral_artifact_index,
        spectral_replica_leakage,
    )

    f, pred = fields.factor, model(fields.coarse)
    row: dict[str, Any] = {
        "rmse": rmse(pred, fields.truth),
        "conservation_max_rel": conservation_error(pred, fields.coarse, fields.area,
                                                   f).max_rel,
        "checkerboard_index": float(np.nanmean([checkerboard_index(p, f) for p in pred])),
        "spectral_artifact_db": spectral_artifact_index(pred, f),
        "replica_leakage": spectral_replica_leakage(pred, f),
    }
    if equivariance:
        wraps = (False, fields.periodic)
        row["equivariance_int"] = equivariance_error(model, fields.coarse, f, WHOLE_CELL,
                                                     periodic=wraps)
        row["equivariance_subpixel"] = equivariance_error(model, fields.coarse, f, SUB_PIXEL,
                                                          periodic=wraps)
    return row


def radial_spectrum(fine: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Hann-tapered, radially averaged power spectrum, mean over the fields."""
    from downscale.baselines import fill_missing_nearest
    from downscale.spectra import power_spectrum_radial

    return power_spectrum_radial(fill_missing_nearest(fine), hann=True)
