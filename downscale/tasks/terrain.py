"""TerrainTask: trains the slope-penalized terrain generator on coarse/fine DEM pairs.

Also the helpers that the notebook, the tests and ``pipelines/terrain_acceptance.py``
share: :func:`train_terrain` (a short, seeded fit without logs or checkpoints) and
:func:`generate_terrain` (generate one region and score it, :class:`TerrainResult`).
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

from downscale.checkpoint import check_trained_for, model_upgrades
from downscale.losses import slope, slope_penalty
from downscale.metrics import (
    checkerboard_index,
    conservation_error,
    rmse,
    slope_violation_fraction,
    slope_wasserstein_distance,
)
from downscale.nn.models import TerrainDownscaler
from downscale.tasks.common import take_training_stats

if TYPE_CHECKING:
    from downscale.data.terrain import TerrainDataModule

FloatArray = NDArray[np.float64]


def terrain_metrics(pred: Tensor, batch: dict[str, Tensor], factor: int, theta_max_deg: float
                    ) -> dict[str, float]:
    """Validation/test figures of one batch of generated terrain against the real DEM.

    Returns ``rmse`` (m), ``slope_violation_fraction`` (share of cells steeper than
    ``theta_max_deg``) and the real terrain's own share ``real_slope_violation_fraction``,
    ``slope_wasserstein`` (1-D Wasserstein distance between the generated and real slope
    distributions, m/m), ``checkerboard_index`` (mean over samples) and
    ``conservation_max_abs`` (largest error of a coarse cell's mean elevation, m).
    """
    fine, truth = pred.detach().double(), batch["fine"].double()
    dy, dx = batch["dy"].double(), batch["dx"].double()
    generated = slope(fine, dy, dx).cpu().numpy()
    real = slope(truth, dy, dx).cpu().numpy()
    fine_np, truth_np = fine.cpu().numpy(), truth.cpu().numpy()
    area = batch["fine_area"][0, 0].double().cpu().numpy()
    err = conservation_error(fine_np, batch["coarse"].double().cpu().numpy(), area, factor)
    out = {"rmse": rmse(fine_np, truth_np),
           "slope_violation_fraction": slope_violation_fraction(generated, theta_max_deg),
           "real_slope_violation_fraction": slope_violation_fraction(real, theta_max_deg),
           "slope_wasserstein": slope_wasserstein_distance(generated, real),
           "checkerboard_index": float(np.nanmean([checkerboard_index(f[0], factor)
                                                   for f in fine_np])),
           "conservation_max_abs": err.max_abs}
    return {k: v for k, v in out.items() if np.isfinite(v)}


class TerrainTask(TerrainDownscaler, L.LightningModule):  # type: ignore[misc]
    """Learn to generate fine terrain from coarse elevation, with a slope penalty.

    The model and its forward pass are :class:`~downscale.nn.models.TerrainDownscaler`'s
    (plain torch; the same state dict), with training and evaluation added here.

    The loss is the mean squared error in normalised units (elevation divided by the
    training standard deviation) plus ``slope_weight`` times
    :func:`~downscale.losses.slope_penalty`, ``mean(relu(slope - tan(theta_max))^2)``
    with slopes in metres per metre (``dx`` shrinking with latitude on geographic grids).
    No adversarial term: the generator is trained for reconstruction, so its optional
    noise input adds no variety yet.

    Logged: ``{train,val,test}_loss``, ``_rmse`` (m) and ``_slope_penalty``; at validation
    and test also the figures of :func:`terrain_metrics`.

    Args:
        factor: Upsampling factor; linked from the DataModule by the CLI.
        theta_max_deg: The steepest slope allowed, in degrees (a setting: real DEMs have
            cliffs, so compare with the real terrain's own share over it).
        slope_weight: Weight of the slope penalty (0: reconstruction only). The penalty
            is a mean over all cells of squared excess slopes, so it is small (1e-5 to
            1e-4) when a few percent of the cells exceed the limit by a few degrees, while
            the normalised reconstruction error is about 1e-2: weights of 1e2 to 1e4 let it
            count.
        hidden_channels: Width of the generator's feature paths.
        coarse_blocks: Residual conv blocks on the coarse grid.
        fine_blocks: Conv blocks on the fine grid.
        noise_channels: Channels of fine-grid noise fed to the generator (0: none).
        conserve: Keep every coarse cell's mean elevation exactly.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        noise_seed: Seed of the noise drawn at validation, test and prediction (training
            noise follows the global seed).
        relief_radius: Half-width in coarse cells of the window whose mean elevation the
            relief is taken about (finite, so the generator can be tiled).

    """

    def __init__(self, factor: int = 4, theta_max_deg: float = 30.0, slope_weight: float = 1000.0,
                 hidden_channels: int = 32, coarse_blocks: int = 2, fine_blocks: int = 2,
                 noise_channels: int = 0, conserve: bool = True, lr: float = 2e-3,
                 weight_decay: float = 1e-4, noise_seed: int = 0, relief_radius: int = 8
                 ) -> None:
        if not 0.0 < theta_max_deg < 90.0:
            raise ValueError(f"theta_max_deg must be in (0, 90) degrees, got {theta_max_deg}")
        if slope_weight < 0:
            raise ValueError(f"slope_weight must be >= 0, got {slope_weight}")
        super().__init__(factor, hidden_channels, coarse_blocks, fine_blocks, noise_channels,
                         conserve, noise_seed, relief_radius)
        self.save_hyperparameters()
        self.theta_max_deg, self.slope_weight = theta_max_deg, slope_weight
        self.lr, self.weight_decay = lr, weight_decay
        self.data_info: dict[str, Any] = {}

    def generate(self, batch: dict[str, Tensor], seed: int | None = None) -> Tensor:
        """Generate the fine terrain of a batch, unmasked (every fine cell of a valid coarse cell).

        Noise (with ``noise_channels``) is drawn from ``seed`` if given, else from torch's
        global generator (training).
        """
        area = batch["fine_area"].expand(batch["coarse"].shape[0], -1, -1, -1)
        periodic = bool(batch["periodic"].all()) if "periodic" in batch else False
        out: Tensor = self(batch["coarse"], batch["fine_area"], torch.ones_like(
            area, dtype=torch.bool), periodic, noise=self.draw_noise(area, seed))
        return out

    # -- training and evaluation -------------------------------------------------------------
    def _losses(self, pred: Tensor, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        target = batch["fine"]
        mask = torch.isfinite(target) & torch.isfinite(pred)
        diff = (pred - target)[mask]
        mse = (diff**2).mean() if diff.numel() else pred.nan_to_num().sum() * 0.0
        penalty = slope_penalty(pred, batch["dy"], batch["dx"], self.theta_max_deg)
        reconstruction = mse / self.norm_std.square().mean()
        return {"loss": reconstruction + self.slope_weight * penalty, "rmse": mse.sqrt(),
                "slope_penalty": penalty}

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        losses = self._losses(self.generate(batch), batch)
        n = batch["fine"].shape[0]
        self.log("train_loss", losses["loss"], prog_bar=True, batch_size=n)
        self.log("train_rmse", losses["rmse"], batch_size=n)
        self.log("train_slope_penalty", losses["slope_penalty"], batch_size=n)
        return losses["loss"]

    def _evaluate(self, batch: dict[str, Tensor], batch_idx: int, prefix: str) -> None:
        pred = self.generate(batch, self.noise_seed + batch_idx)
        n = batch["fine"].shape[0]
        for name, value in self._losses(pred, batch).items():
            self.log(f"{prefix}_{name}", value, prog_bar=prefix == "val" and name != "rmse",
                     batch_size=n, sync_dist=True)
        for name, number in terrain_metrics(pred, batch, self.factor,
                                            self.theta_max_deg).items():
            if name != "rmse":  # logged above, from the loss
                self.log(f"{prefix}_{name}", number, batch_size=n, sync_dist=True)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return {"prediction": self.generate(batch, self.noise_seed + batch_idx),
                "time": batch["time"], "y0": batch["y0"], "x0": batch["x0"]}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    # -- normalisation and checkpoint metadata ---------------------------------------------
    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        self.data_info = take_training_stats(self.norm_mean, self.norm_std, datamodule) or (
            self.data_info)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["downscale_data"] = self.data_info

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint trained for another factor, before loading it.

        The variable name may differ (a generator trained on one DEM applies to another);
        both must be elevations in metres (:func:`downscale.checkpoint.check_trained_for`).
        A generator saved before local relief keeps its field-mean relief.
        """
        datamodule = getattr(getattr(self, "_trainer", None), "datamodule", None)
        units = getattr(datamodule, "variable_attrs", {}).get("units") if datamodule else None
        check_trained_for(checkpoint, "checkpoint", factor=self.factor, units=units,
                          terrain=True)
        for name, value in model_upgrades(checkpoint.get("hyper_parameters", {}),
                                          "TerrainTask").items():
            setattr(self, name, value)
        self.data_info = checkpoint.get("downscale_data", {})


# ---------------------------------------------------------------------------------------
# Short fits and evaluation (notebook, tests, acceptance pipeline)
# ---------------------------------------------------------------------------------------


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
