"""Short terrain fits and their evaluation, shared by the notebook, tests and pipelines.

:func:`train_terrain` (a short, seeded fit of a :class:`~downscale.tasks.TerrainTask`
without logs or checkpoints), :func:`generate_terrain` (generate one region and score it:
:class:`TerrainResult`) and :func:`compare_slope_penalty` (the same generator trained
without and with the slope penalty: :class:`PenaltyComparison`).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from downscale.losses import slope
from downscale.metrics import (
    checkerboard_index,
    rmse,
    slope_violation_fraction,
    slope_wasserstein_distance,
)
from downscale.tasks.terrain import TerrainTask

if TYPE_CHECKING:
    from downscale.data.terrain import TerrainDataModule

FloatArray = NDArray[np.float64]


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence Lightning's banner and its advice on DataLoader workers for a short fit."""
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*treespec.*deprecated.*")
            yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _cpu_threads(n: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_terrain(datamodule: TerrainDataModule, *, max_steps: int = 200, seed: int = 0,
                  accelerator: str = "cpu", num_threads: int | None = 1, **task_args: Any
                  ) -> TerrainTask:
    """Fit a :class:`TerrainTask` for ``max_steps`` optimiser steps, seeded, without logs.

    Args:
        datamodule: A :class:`~downscale.data.TerrainDataModule` (its ``factor`` is used).
        max_steps: Optimiser steps (batches).
        seed: Seeds the weights, the patches' order and the training noise.
        accelerator: Lightning accelerator (``"cpu"``, ``"gpu"``, ``"auto"``).
        num_threads: CPU threads for the fit (restored afterwards); None keeps torch's.
            One by default: on patches this small, synchronising threads costs more than
            it saves (tens of times more on a busy machine).
        **task_args: Arguments of :class:`TerrainTask` (``theta_max_deg``,
            ``slope_weight``, ``hidden_channels``, ...).

    Returns:
        The trained task, in evaluation mode.

    """
    L.seed_everything(seed, verbose=False)
    task = TerrainTask(factor=datamodule.factor, **task_args)
    with _quiet_lightning(), _cpu_threads(num_threads):
        trainer = L.Trainer(max_steps=max_steps, max_epochs=-1, accelerator=accelerator,
                            devices=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False,
                            limit_val_batches=0, num_sanity_val_steps=0)
        trainer.fit(task, datamodule=datamodule)
    return task.eval()


@dataclass(frozen=True)
class TerrainResult:
    """Generated and real terrain of one region, with their slopes.

    Attributes:
        prediction: Generated elevation (m), ``(H, W)``.
        truth: Real elevation (m), ``(H, W)``; NaN where there is none.
        coarse: The coarse input (m), ``(H / factor, W / factor)``.
        slope: Slope magnitude of the generated terrain (m/m), ``(H, W)``.
        true_slope: Slope magnitude of the real terrain (m/m), ``(H, W)``.
        dy: Row spacing (m), ``(H, 1)``.
        dx: Column spacing per row (m), ``(H, 1)``.
        factor: Upsampling factor.

    """

    prediction: FloatArray
    truth: FloatArray
    coarse: FloatArray
    slope: FloatArray
    true_slope: FloatArray
    dy: FloatArray
    dx: FloatArray
    factor: int

    def scores(self, theta_max_deg: float) -> dict[str, float]:
        """The region's figures against the real terrain.

        Returns:
            ``rmse_m`` (m), ``violation_fraction`` and ``real_violation_fraction`` (shares
            of cells steeper than ``theta_max_deg``), ``slope_wasserstein`` (m/m) and
            ``checkerboard_index``.
        """
        return {"rmse_m": rmse(self.prediction, self.truth),
                "violation_fraction": slope_violation_fraction(self.slope, theta_max_deg),
                "real_violation_fraction": slope_violation_fraction(self.true_slope,
                                                                    theta_max_deg),
                "slope_wasserstein": slope_wasserstein_distance(self.slope, self.true_slope),
                "checkerboard_index": checkerboard_index(self.prediction, self.factor)}


@torch.no_grad()
def generate_terrain(task: TerrainTask, datamodule: TerrainDataModule, split: str = "test"
                     ) -> TerrainResult:
    """Generate one whole region of a :class:`~downscale.data.TerrainDataModule`.

    Args:
        task: A trained task (its normalisation travels with it).
        datamodule: The DataModule; ``setup()`` is called if needed. Its ``tile_size``
            must be None (whole regions).
        split: ``train``, ``val``, ``test``, ``heldout`` or ``all``.

    Returns:
        The generated and real terrain of the region, in float64.

    """
    if datamodule.tile_size is not None:
        raise ValueError("generate_terrain needs whole regions: set tile_size=None")
    datamodule.setup()
    sample = datamodule.tiles(split)[0]
    batch = {k: v[None].to(task.device) for k, v in sample.items()}
    task.eval()
    pred = task.generate(batch, task.noise_seed).double()
    dy, dx = batch["dy"].double(), batch["dx"].double()

    def numpy(t: Tensor) -> FloatArray:
        return np.asarray(t.cpu().numpy()[0, 0], dtype=np.float64)

    truth = batch["fine"].double()
    return TerrainResult(prediction=numpy(pred), truth=numpy(truth),
                         coarse=numpy(batch["coarse"].double()),
                         slope=numpy(slope(pred, dy, dx)), true_slope=numpy(slope(truth, dy, dx)),
                         dy=numpy(dy), dx=numpy(dx), factor=task.factor)


@dataclass(frozen=True)
class PenaltyComparison:
    """Two generators trained alike, without and with the slope penalty.

    Attributes:
        theta_max_deg: The slope limit both are scored against (and the penalized one was
            trained with), in degrees.
        unpenalized: Trained with ``slope_weight = 0``.
        penalized: Trained with the penalty.

    """

    theta_max_deg: float
    unpenalized: TerrainTask
    penalized: TerrainTask

    def results(self, datamodule: TerrainDataModule, split: str = "heldout"
                ) -> dict[str, TerrainResult]:
        """Generated terrain of one region by both generators."""
        return {"unpenalized": generate_terrain(self.unpenalized, datamodule, split),
                "penalized": generate_terrain(self.penalized, datamodule, split)}

    def scores(self, datamodule: TerrainDataModule, split: str = "heldout",
               theta_max_deg: float | None = None) -> dict[str, dict[str, float]]:
        """:meth:`TerrainResult.scores` of both on one region (at another limit if given)."""
        theta = self.theta_max_deg if theta_max_deg is None else theta_max_deg
        return {name: result.scores(theta)
                for name, result in self.results(datamodule, split).items()}


def compare_slope_penalty(datamodule: TerrainDataModule, *, theta_max_deg: float,
                          slope_weight: float, max_steps: int = 200, seed: int = 0,
                          **task_args: Any) -> PenaltyComparison:
    """Train the same generator (same seed, data and steps) without and with the penalty.

    Args:
        datamodule: The training data.
        theta_max_deg: The slope limit in degrees.
        slope_weight: Weight of the penalty in the penalized run.
        max_steps: Optimiser steps of each run.
        seed: Seed of both runs.
        **task_args: Further :class:`TerrainTask` arguments, the same for both.

    Returns:
        The two trained generators.

    """
    runs = {weight: train_terrain(datamodule, max_steps=max_steps, seed=seed,
                                  theta_max_deg=theta_max_deg, slope_weight=weight, **task_args)
            for weight in (0.0, slope_weight)}
    return PenaltyComparison(theta_max_deg, runs[0.0], runs[slope_weight])
