"""Ensemble scores: CRPS, spread-skill ratio, rank histogram and per-member conservation.

Pure numpy, in two steps like :mod:`~downscale.metrics.conservation`:
:func:`ensemble_sums` turns one chunk into summable :class:`EnsembleSums` (add chunks with
``+``), and :meth:`EnsembleSums.finalize` gives the :class:`EnsembleScores`.
:func:`member_conservation_sums` does the same per member with the conservation sums.

Members lie on a leading axis: ``members`` ``(M, ...)``, ``truth`` ``(...)``. A cell is
scored where the truth and every member are finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

from downscale.metrics.conservation import ConservationSums, conservation_sums

FloatArray = NDArray[np.float64]


def crps_ensemble(members: ArrayLike, truth: ArrayLike, fair: bool = True) -> FloatArray:
    """The ensemble CRPS of every cell, in field units.

    ``mean_m |x_m - y| - sum_{m, m'} |x_m - x_m'| / (2 M (M - 1))`` (fair, Ferro 2014:
    unbiased for the CRPS of the distribution the members come from) or with ``2 M^2``
    (``fair=False``: the CRPS of the members' empirical distribution). One member gives
    ``|x - y|`` either way (the fair spread term is then taken as 0). The pair sum is
    computed from the sorted members, ``2 sum_i (2 i - M + 1) x_(i)``, in ``O(M log M)``.

    Args:
        members: ``(M, ...)`` members.
        truth: ``(...)`` truth, broadcastable to one member.
        fair: The fair estimator (divisor ``2 M (M - 1)``) or the plain one (``2 M^2``).

    Returns:
        ``(...)`` CRPS per cell (NaN where the truth or a member is not finite).
    """
    x = np.asarray(members, dtype=np.float64)
    y = np.broadcast_to(np.asarray(truth, dtype=np.float64), x.shape[1:])
    m = x.shape[0]
    skill: FloatArray = np.abs(x - y).mean(axis=0)
    if m == 1:
        return skill
    rank = np.arange(m, dtype=np.float64).reshape(-1, *([1] * (x.ndim - 1)))
    pairs = 2.0 * ((2.0 * rank - m + 1.0) * np.sort(x, axis=0)).sum(axis=0)
    out: FloatArray = skill - pairs / (2.0 * m * ((m - 1) if fair else m))
    return out


def rank_histogram(members: ArrayLike, truth: ArrayLike,
                   rng: np.random.Generator | None = None) -> NDArray[np.int64]:
    """Counts of the truth's rank among the members: ``M + 1`` bins summing to the cells.

    Rank ``k`` means ``k`` members lie below the truth. Ties (e.g. several members and the
    truth at 0 mm of rain) are broken at random among the tied ranks, so a calibrated
    ensemble gives a flat histogram even for fields with many equal values.

    Args:
        members: ``(M, ...)`` members.
        truth: ``(...)`` truth.
        rng: Generator of the tie-breaks; None uses a fixed seed (0), so results repeat.

    Returns:
        ``(M + 1,)`` counts over the cells where the truth and every member are finite.
    """
    x = np.asarray(members, dtype=np.float64)
    y = np.broadcast_to(np.asarray(truth, dtype=np.float64), x.shape[1:])
    ok = np.isfinite(y) & np.isfinite(x).all(axis=0)
    x, y = x[:, ok], y[ok]
    below = (x < y).sum(axis=0)
    ties = (x == y).sum(axis=0)
    rng = np.random.default_rng(0) if rng is None else rng
    rank = below + np.floor(rng.random(y.shape) * (ties + 1)).astype(np.int64)
    return np.bincount(rank, minlength=x.shape[0] + 1).astype(np.int64)


@dataclass(frozen=True)
class EnsembleScores:
    """Scores of an ensemble against the truth (field units unless said).

    Attributes:
        crps: Weighted mean fair CRPS (:func:`crps_ensemble`).
        mae: Weighted mean absolute error of the ensemble mean.
        rmse: Weighted RMSE of the ensemble mean (the skill).
        spread: ``sqrt`` of the weighted mean unbiased member variance.
        spread_skill: ``sqrt((M + 1) / M) * spread / rmse`` (dimensionless; 1 for a
            calibrated ensemble of ``M`` members, Fortin et al. 2014; NaN for one member).
        rank_counts: Rank histogram counts, ``M + 1`` bins (unweighted cells).
        n_cells: Cells scored.
    """

    crps: float
    mae: float
    rmse: float
    spread: float
    spread_skill: float
    rank_counts: tuple[int, ...]
    n_cells: int


@dataclass(frozen=True)
class EnsembleSums:
    """Summable partial sums of one chunk; ``+`` adds chunks, :meth:`finalize` scores.

    Attributes:
        members: Ensemble size ``M`` (chunks must agree; 0 for the empty sums).
        n_cells: Cells scored.
        weight: ``sum w``.
        crps: ``sum w CRPS``.
        abs_error: ``sum w |mean - y|``.
        sq_error: ``sum w (mean - y)^2``.
        variance: ``sum w var`` (unbiased member variance).
        rank_counts: Rank histogram counts.
    """

    members: int = 0
    n_cells: int = 0
    weight: float = 0.0
    crps: float = 0.0
    abs_error: float = 0.0
    sq_error: float = 0.0
    variance: float = 0.0
    rank_counts: tuple[int, ...] = field(default=())

    def __add__(self, other: EnsembleSums) -> EnsembleSums:
        if not self.members or not other.members:
            return other if not self.members else self
        if self.members != other.members:
            raise ValueError(f"cannot add sums of {self.members} and {other.members} members")
        return EnsembleSums(
            self.members, self.n_cells + other.n_cells, self.weight + other.weight,
            self.crps + other.crps, self.abs_error + other.abs_error,
            self.sq_error + other.sq_error, self.variance + other.variance,
            tuple(a + b for a, b in zip(self.rank_counts, other.rank_counts, strict=True)))

    def finalize(self) -> EnsembleScores:
        """The :class:`EnsembleScores` (NaN scores when no cell had weight)."""
        if self.weight <= 0:
            nan = math.nan
            return EnsembleScores(nan, nan, nan, nan, nan, self.rank_counts, self.n_cells)
        m = self.members
        rmse = math.sqrt(self.sq_error / self.weight)
        spread = math.sqrt(self.variance / self.weight)
        ratio = (math.sqrt((m + 1) / m) * spread / rmse if m > 1 and rmse > 0
                 else math.nan)
        return EnsembleScores(self.crps / self.weight, self.abs_error / self.weight, rmse,
                              spread, ratio, self.rank_counts, self.n_cells)


def ensemble_sums(members: ArrayLike, truth: ArrayLike, weight: ArrayLike | None = None,
                  rng: np.random.Generator | None = None) -> EnsembleSums:
    """The per-chunk step of :class:`EnsembleScores`.

    Args:
        members: ``(M, ...)`` members.
        truth: ``(...)`` truth; NaN = missing.
        weight: Non-negative cell weights (e.g. areas ``(H, W)``) broadcastable to the
            truth; equal if None.
        rng: Tie-breaking generator of the rank histogram (:func:`rank_histogram`).
    """
    x = np.asarray(members, dtype=np.float64)
    y = np.broadcast_to(np.asarray(truth, dtype=np.float64), x.shape[1:])
    w = np.broadcast_to(np.asarray(1.0 if weight is None else weight, dtype=np.float64),
                        y.shape)
    ok = np.isfinite(y) & np.isfinite(x).all(axis=0)
    xs, ys, ws = x[:, ok], y[ok], w[ok]
    m = x.shape[0]
    error = xs.mean(axis=0) - ys
    variance = xs.var(axis=0, ddof=1) if m > 1 else np.zeros_like(ys)
    return EnsembleSums(
        members=m, n_cells=int(ok.sum()), weight=float(ws.sum()),
        crps=float((ws * crps_ensemble(xs, ys)).sum()),
        abs_error=float((ws * np.abs(error)).sum()),
        sq_error=float((ws * error**2).sum()), variance=float((ws * variance).sum()),
        rank_counts=tuple(int(c) for c in rank_histogram(xs, ys, rng)))


def ensemble_scores(members: ArrayLike, truth: ArrayLike, weight: ArrayLike | None = None
                    ) -> EnsembleScores:
    """:func:`ensemble_sums` of one array, finalised."""
    return ensemble_sums(members, truth, weight).finalize()


def member_conservation_sums(members: ArrayLike, coarse: ArrayLike, fine_area: ArrayLike,
                             factor: int) -> list[ConservationSums]:
    """Each member's :class:`ConservationSums` against the coarse field (one chunk).

    Add the lists of several chunks element-wise and ``finalize`` each for the member's
    :class:`~downscale.metrics.ConservationError`.

    Args:
        members: ``(M, ..., H, W)`` fine members.
        coarse: ``(..., H / factor, W / factor)`` coarse field.
        fine_area: ``(H, W)`` fine cell areas, any unit.
        factor: Integer nesting factor.
    """
    x = np.asarray(members, dtype=np.float64)
    return [conservation_sums(member, coarse, fine_area, factor) for member in x]
