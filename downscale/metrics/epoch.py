"""Epoch metrics: the package's metrics as torchmetrics ``Metric``s, reduced over an epoch.

A figure logged once per epoch must be the figure of the whole epoch, not a mean of
per-batch figures: the worst cell of the epoch, the RMSE over all of its cells. Each metric
here keeps summable states (sums and counts, reduced with ``"sum"``; maxima, reduced with
``"max"``), adds one batch to them in ``update`` and combines them once in ``compute``.
torchmetrics reduces the states across DDP processes before ``compute``, so the figure is
the same as on one process that saw every batch.

Every ``update`` takes keyword arguments from one vocabulary, so that one
``MetricCollection.update(**inputs)`` feeds them all (each metric takes the ones it names):

- ``pred``, ``target``: fine fields ``(B, 1, H, W)`` in field units, NaN = missing;
- ``coarse``: ``(B, 1, H / factor, W / factor)``, NaN = missing;
- ``fine_area``: ``(1 | B, 1, H, W)`` fine cell areas (any unit);
- ``fine_valid``: ``(B, 1, H, W)`` fine cells that carry a value;
- ``periodic``: whether the last axis is a whole longitude circle;
- ``dy``, ``dx``: row and column spacings in metres, broadcastable to ``(B, 1, H, W)``;
- ``members``: ``(M, B, 1, H, W)`` ensemble members of a stochastic model.

The maths is the numpy metrics' (:mod:`downscale.metrics.conservation`,
:mod:`~downscale.metrics.artifacts`, :mod:`~downscale.metrics.terrain`): this module only
keeps their per-chunk parts as states. Pure torch and torchmetrics; no Lightning.
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor
from torchmetrics import Metric

from downscale.baselines import UpsamplingMethod, upsample
from downscale.losses import slope
from downscale.metrics.artifacts import checkerboard_index, spectral_artifact_index
from downscale.metrics.conservation import ConservationError, ConservationSums, conservation_sums
from downscale.metrics.ensemble import EnsembleSums, ensemble_sums
from downscale.metrics.terrain import slope_violation_counts, slope_wasserstein_distance

#: Float64 states: sums over millions of cells lose digits in float32.
_F64 = torch.float64


def _numpy(t: Tensor) -> NDArray[np.float64]:
    return np.asarray(t.detach().double().cpu().numpy(), dtype=np.float64)


class _SumsMetric(Metric):
    """A metric whose states are float64 scalars reduced by sum (or max, if named so)."""

    full_state_update = False
    _sum_states: tuple[str, ...] = ()
    _max_states: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        for name in self._sum_states:
            self.add_state(name, torch.zeros((), dtype=_F64), dist_reduce_fx="sum")
        for name in self._max_states:
            self.add_state(name, torch.zeros((), dtype=_F64), dist_reduce_fx="max")

    def _state(self, name: str) -> Tensor:
        value: Tensor = getattr(self, name)
        return value

    def _add_to(self, name: str, value: Tensor | float) -> None:
        setattr(self, name, self._state(name) + value)


class CellRMSE(_SumsMetric):
    """Root-mean-square error over all cells valid in both fields, in field units.

    States: ``sum_squared_error`` and ``n_cells`` (sums); ``compute`` is
    ``sqrt(sum_squared_error / n_cells)``, NaN without a cell. Batches with more valid
    cells weigh more, as in :func:`downscale.metrics.rmse` of the whole epoch at once.
    """

    _sum_states = ("sum_squared_error", "n_cells")

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add the squared errors of one batch (``pred``, ``target``: same shape)."""
        both = torch.isfinite(pred) & torch.isfinite(target)
        diff = (pred.detach() - target)[both].to(_F64)
        self._add_to("sum_squared_error", diff.square().sum())
        self._add_to("n_cells", both.sum())

    def compute(self) -> Tensor:
        """The RMSE (a float64 scalar)."""
        n = self._state("n_cells")
        return (self._state("sum_squared_error") / n).sqrt() if n > 0 else n * math.nan


class CellErrors(_SumsMetric):
    """Mean absolute error and bias (``pred - target``) over all cells valid in both.

    ``compute`` returns ``{"mae": ..., "bias": ...}`` in field units, NaN without a cell.
    """

    _sum_states = ("sum_abs_error", "sum_error", "n_cells")

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add the errors of one batch (``pred``, ``target``: same shape)."""
        both = torch.isfinite(pred) & torch.isfinite(target)
        diff = (pred.detach() - target)[both].to(_F64)
        self._add_to("sum_abs_error", diff.abs().sum())
        self._add_to("sum_error", diff.sum())
        self._add_to("n_cells", both.sum())

    def compute(self) -> dict[str, Tensor]:
        """``mae`` and ``bias`` (float64 scalars)."""
        n = self._state("n_cells")
        scale = 1.0 / n if n > 0 else n * math.nan
        return {"mae": self._state("sum_abs_error") * scale,
                "bias": self._state("sum_error") * scale}


class Conservation(_SumsMetric):
    """Local and global mass conservation over an epoch, from :class:`ConservationSums`.

    The states are the fields of :class:`~downscale.metrics.ConservationSums` (``max_abs``
    reduced by max, the others by sum), so ``compute`` gives the
    :class:`~downscale.metrics.ConservationError` of all the epoch's cells at once: e.g.
    ``max_rel`` is the worst coarse cell of the epoch over the epoch's mean ``|x_C|``,
    not a mean of per-batch maxima.

    Args:
        factor: Nesting factor of fine in coarse cells.
        errors: The :class:`ConservationError` fields to return, each as
            ``conservation_<field>``.
    """

    _sum_states = tuple(f.name for f in fields(ConservationSums) if f.name != "max_abs")
    _max_states = ("max_abs",)

    def __init__(self, factor: int, errors: tuple[str, ...] = ("max_rel", "global_rel")
                 ) -> None:
        super().__init__()
        known = {f.name for f in fields(ConservationError)}
        if not set(errors) <= known:
            raise ValueError(f"errors must be among {sorted(known)}, got {errors}")
        self.factor, self.errors = factor, tuple(errors)

    def update(self, pred: Tensor, coarse: Tensor, fine_area: Tensor) -> None:
        """Add one batch's :func:`~downscale.metrics.conservation_sums`."""
        area = fine_area[0, 0] if fine_area.ndim == 4 else fine_area
        sums = conservation_sums(_numpy(pred), _numpy(coarse), _numpy(area), self.factor)
        for name in self._sum_states:
            self._add_to(name, getattr(sums, name))
        self.max_abs = torch.maximum(self._state("max_abs"),
                                     torch.tensor(sums.max_abs, dtype=_F64, device=self.device))

    def compute(self) -> dict[str, Tensor]:
        """``conservation_<field>`` for each of ``errors`` (float64 scalars)."""
        states: dict[str, Any] = {f.name: float(self._state(f.name))
                                  for f in fields(ConservationSums)}
        totals = ConservationSums(**states)
        error = totals.finalize().as_dict()
        return {f"conservation_{name}": torch.tensor(error[name], dtype=_F64)
                for name in self.errors}


class EnsembleScores(_SumsMetric):
    """Ensemble CRPS, spread-skill ratio and ensemble-mean RMSE over an epoch.

    The states are the sums of :class:`~downscale.metrics.ensemble.EnsembleSums` (cells
    weighted by area), so ``compute`` scores all the epoch's cells at once.

    Args:
        members: Ensemble size ``M`` that ``update`` is given.
    """

    _sum_states = ("n_cells", "weight", "crps", "abs_error", "sq_error", "variance")

    def __init__(self, members: int) -> None:
        super().__init__()
        self.members = members
        self.add_state("rank_counts", torch.zeros(members + 1, dtype=_F64),
                       dist_reduce_fx="sum")

    def update(self, members: Tensor, target: Tensor, fine_area: Tensor) -> None:
        """Add one batch: ``members`` ``(M, B, 1, H, W)``, ``target`` ``(B, 1, H, W)``."""
        area = _numpy(fine_area.expand_as(target))
        sums = ensemble_sums(_numpy(members), _numpy(target), area)
        for name in self._sum_states:
            self._add_to(name, getattr(sums, name))
        self._add_to("rank_counts", torch.tensor(sums.rank_counts, dtype=_F64,
                                                 device=self.device))

    def compute(self) -> dict[str, Tensor]:
        """``crps``, ``spread_skill`` and ``ensemble_rmse`` (float64 scalars)."""
        states: dict[str, Any] = {name: float(self._state(name)) for name in self._sum_states}
        states["n_cells"] = int(states["n_cells"])
        counts = tuple(int(c) for c in self._state("rank_counts").tolist())
        scores = EnsembleSums(members=self.members, rank_counts=counts, **states).finalize()
        return {"crps": torch.tensor(scores.crps, dtype=_F64),
                "spread_skill": torch.tensor(scores.spread_skill, dtype=_F64),
                "ensemble_rmse": torch.tensor(scores.rmse, dtype=_F64)}


class BaselineRMSE(CellRMSE):
    """:class:`CellRMSE` of a classical upsampling of the coarse input (a reference skill).

    Args:
        factor: Upsampling factor.
        method: The :class:`~downscale.baselines.UpsamplingMethod`.
    """

    def __init__(self, factor: int, method: UpsamplingMethod) -> None:
        super().__init__()
        self.factor, self.method = factor, UpsamplingMethod(method)

    def update(self, target: Tensor, coarse: Tensor,  # type: ignore[override]
               fine_valid: Tensor, periodic: bool) -> None:
        """Add the squared errors of the baseline of one batch against ``target``."""
        baseline = upsample(_numpy(coarse), self.factor, self.method, periodic=periodic,
                            fine_valid=fine_valid.cpu().numpy())
        super().update(torch.from_numpy(baseline), target.detach().double().cpu())


class _SampleMean(_SumsMetric):
    """Mean over samples of a per-sample (or per-batch, weighted by samples) figure."""

    _sum_states = ("total", "n_samples")

    def _add(self, value: float, weight: int) -> None:
        if math.isfinite(value):
            self._add_to("total", value * weight)
            self._add_to("n_samples", weight)

    def compute(self) -> Tensor:
        """The mean (a float64 scalar), NaN without a sample."""
        n = self._state("n_samples")
        return self._state("total") / n if n > 0 else n * math.nan


class CheckerboardIndex(_SampleMean):
    """Mean over the epoch's samples of :func:`~downscale.metrics.checkerboard_index`.

    Args:
        factor: The stride whose phases are compared.
    """

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor

    def update(self, pred: Tensor) -> None:
        """Add the index of each sample (first channel) of one batch."""
        for field in _numpy(pred)[:, 0]:
            self._add(checkerboard_index(field, self.factor), 1)


class SpectralArtifactIndex(_SampleMean):
    """:func:`~downscale.metrics.spectral_artifact_index` per batch, averaged over samples.

    The index of a batch is one figure for its stack of fields (a periodogram averaged over
    them); the epoch's figure is the mean of the batches' weighted by their sizes, in dB.

    Args:
        factor: The stride whose alias frequencies are measured.
    """

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor

    def update(self, pred: Tensor) -> None:
        """Add one batch's index, weighted by its number of samples."""
        self._add(spectral_artifact_index(_numpy(pred)[:, 0], self.factor), pred.shape[0])


class SlopeViolationFraction(_SumsMetric):
    """Share of the epoch's cells steeper than a limit (slopes by :func:`downscale.losses.slope`).

    Args:
        theta_max_deg: The limit in degrees.
        of: ``"pred"`` (the generated terrain) or ``"target"`` (the real terrain's own share).
    """

    _sum_states = ("n_over", "n_cells")

    def __init__(self, theta_max_deg: float, of: str = "pred") -> None:
        super().__init__()
        if of not in ("pred", "target"):
            raise ValueError(f"of must be 'pred' or 'target', got {of!r}")
        self.theta_max_deg, self.of = theta_max_deg, of

    def update(self, pred: Tensor, target: Tensor, dy: Tensor, dx: Tensor) -> None:
        """Add the counts of one batch."""
        field = pred.detach() if self.of == "pred" else target
        over, total = slope_violation_counts(_numpy(slope(field.double(), dy.double(),
                                                          dx.double())), self.theta_max_deg)
        self._add_to("n_over", over)
        self._add_to("n_cells", total)

    def compute(self) -> Tensor:
        """The share (a float64 scalar), NaN without a cell."""
        n = self._state("n_cells")
        return self._state("n_over") / n if n > 0 else n * math.nan


class SlopeWasserstein(_SampleMean):
    """:func:`~downscale.metrics.slope_wasserstein_distance` per batch, averaged over samples.

    The distance between the generated and the real slope distributions of each batch
    (m/m); the epoch's figure is the batches' mean weighted by their sizes.
    """

    def update(self, pred: Tensor, target: Tensor, dy: Tensor, dx: Tensor) -> None:
        """Add one batch's distance, weighted by its number of samples."""
        dy, dx = dy.double(), dx.double()
        generated = _numpy(slope(pred.detach().double(), dy, dx))
        real = _numpy(slope(target.double(), dy, dx))
        self._add(slope_wasserstein_distance(generated, real), pred.shape[0])
