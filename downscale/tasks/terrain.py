"""TerrainTask: trains the slope-penalized terrain generator on coarse/fine DEM pairs.

The short fits and their evaluation (:func:`train_terrain`, :func:`generate_terrain`,
:func:`compare_slope_penalty`) live in :mod:`downscale.tasks.terrain_fit`; they stay
importable from here.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from downscale.checkpoint import model_upgrades
from downscale.losses import slope_penalty
from downscale.metrics.epoch import (
    CellRMSE,
    CheckerboardIndex,
    Conservation,
    SlopeViolationFraction,
    SlopeWasserstein,
)
from downscale.nn.models import TerrainDownscaler
from downscale.tasks.base import BaseTask, batch_figures

#: Names that moved to :mod:`downscale.tasks.terrain_fit`, loaded from there on first use.
_FROM_TERRAIN_FIT = ("PenaltyComparison", "TerrainResult", "compare_slope_penalty",
                     "generate_terrain", "train_terrain")


def evaluation_metrics(factor: int, theta_max_deg: float) -> dict[str, Metric]:
    """The validation/test metrics of generated terrain, by logged name (no stage prefix).

    ``rmse`` (m), ``slope_violation_fraction`` (share of cells steeper than
    ``theta_max_deg``) and the real terrain's own share ``real_slope_violation_fraction``,
    ``slope_wasserstein`` (1-D Wasserstein distance between the generated and real slope
    distributions, m/m), ``checkerboard_index`` (mean over samples) and
    ``conservation_max_abs`` (largest error of a coarse cell's mean elevation, m). Each is
    a :mod:`downscale.metrics.epoch` metric, reduced over the whole epoch.
    """
    return {"rmse": CellRMSE(),
            "slope_violation_fraction": SlopeViolationFraction(theta_max_deg),
            "real_slope_violation_fraction": SlopeViolationFraction(theta_max_deg, "target"),
            "slope_wasserstein": SlopeWasserstein(),
            "checkerboard_index": CheckerboardIndex(factor),
            "conservation": Conservation(factor, errors=("max_abs",))}


def terrain_metrics(pred: Tensor, batch: dict[str, Tensor], factor: int, theta_max_deg: float
                    ) -> dict[str, float]:
    """The figures of :func:`evaluation_metrics` of one batch of generated terrain."""
    return batch_figures(evaluation_metrics(factor, theta_max_deg),
                         **BaseTask.metric_inputs(pred, batch))


class TerrainTask(TerrainDownscaler, BaseTask):  # type: ignore[misc]
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
    and test also the figures of :func:`evaluation_metrics`, over the whole epoch.

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
        self.configure_task(lr, weight_decay)

    def evaluation_metrics(self) -> dict[str, Metric]:
        return evaluation_metrics(self.factor, self.theta_max_deg)

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

    def predict_fine(self, batch: dict[str, Tensor], seed: int | None) -> Tensor:
        """:meth:`generate`; the noise of an evaluation batch is ``noise_seed + seed``."""
        return self.generate(batch, None if seed is None else self.noise_seed + seed)

    def losses(self, pred: Tensor, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """``loss`` (normalised squared error plus the weighted penalty), ``slope_penalty``."""
        target = batch["fine"]
        mask = torch.isfinite(target) & torch.isfinite(pred)
        diff = (pred - target)[mask]
        mse = (diff**2).mean() if diff.numel() else pred.nan_to_num().sum() * 0.0
        penalty = slope_penalty(pred, batch["dy"], batch["dx"], self.theta_max_deg)
        reconstruction = mse / self.norm_std.square().mean()
        return {"loss": reconstruction + self.slope_weight * penalty, "slope_penalty": penalty}

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return {"prediction": self.predict_fine(batch, batch_idx),
                "time": batch["time"], "y0": batch["y0"], "x0": batch["x0"]}

    # -- checkpoint metadata -----------------------------------------------------------------
    def trained_for(self) -> dict[str, Any]:
        """The factor, and elevation in metres.

        The variable's name may differ: a generator trained on one DEM applies to another.
        """
        datamodule = self.trainer_datamodule
        units = getattr(datamodule, "variable_attrs", {}).get("units") if datamodule else None
        return {"factor": self.factor, "units": units, "terrain": True}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The base's check; a generator saved before local relief keeps its field-mean relief."""
        super().on_load_checkpoint(checkpoint)
        for name, value in model_upgrades(checkpoint.get("hyper_parameters", {}),
                                          "TerrainTask").items():
            setattr(self, name, value)


def __getattr__(name: str) -> Any:
    """Load the names that moved to :mod:`downscale.tasks.terrain_fit` on first use."""
    if name in _FROM_TERRAIN_FIT:
        return getattr(importlib.import_module("downscale.tasks.terrain_fit"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
