"""BaseTask: what the Lightning tasks share, in the shape of torchgeo's trainers.

A task is its plain-torch model with training added: ``class DownscalingTask(
ClimateDownscaler, BaseTask)``. The model's constructor builds the networks and the
normalisation buffers (torchgeo's ``configure_models`` step, done by the model so that a
task's state dict is the model's and a checkpoint loads into either), and the task's
constructor then calls :meth:`BaseTask.configure_task`, which configures the metrics once
and clones them per stage (``train_``, ``val_``, ``test_``).

The base runs the loop: a step predicts the fine field, logs the task's losses (mean over
the epoch's batches, weighted by batch size) and updates the stage's
:mod:`~downscale.metrics.epoch` metrics; at the end of a validation or test epoch the
metrics are computed once over the whole epoch (across DDP processes, by torchmetrics) and
logged as ``<stage>_<name>``. It also takes the training statistics into the buffers, keeps
the ``downscale_data`` record in checkpoints and refuses a checkpoint trained for other
data (:func:`downscale.checkpoint.check_trained_for`).
"""

from __future__ import annotations

from typing import Any, cast

import lightning as L
import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection

from downscale.checkpoint import check_trained_for
from downscale.metrics.epoch import CellRMSE

#: The metric whose figure is also shown in the progress bar.
_PROGRESS_METRIC = "rmse"


def take_training_stats(norm_mean: Tensor, norm_std: Tensor, datamodule: Any) -> dict[str, Any]:
    """Copy the training split's mean and std into the model's buffers (saved in checkpoints).

    Args:
        norm_mean: The task's ``(1,)`` mean buffer, filled in place (variable units).
        norm_std: The task's ``(1,)`` std buffer, filled in place.
        datamodule: The trainer's DataModule (or None); its ``stats`` and ``state_dict()``.

    Returns:
        What the data were (variable, factor, units, ...) without the statistics: the
        ``downscale_data`` record of the checkpoint. Empty without a DataModule.
    """
    stats = getattr(datamodule, "stats", None)
    if stats is not None:
        norm_mean.fill_(stats.mean)
        norm_std.fill_(stats.std)
    if datamodule is None or not hasattr(datamodule, "state_dict"):
        return {}
    return {k: v for k, v in datamodule.state_dict().items() if k != "stats"}


def batch_figures(metrics: dict[str, Metric], **inputs: Any) -> dict[str, float]:
    """The figures of one batch by a task's metrics (the finite ones), as floats.

    Args:
        metrics: Metrics such as a task's :meth:`BaseTask.evaluation_metrics`; used once.
        **inputs: The metrics' ``update`` arguments (see :mod:`downscale.metrics.epoch`).
    """
    collection = MetricCollection(cast(dict[str, Metric | MetricCollection], metrics),
                                  compute_groups=False)
    collection.update(**inputs)
    return {k: float(v) for k, v in collection.compute().items() if torch.isfinite(v)}


class BaseTask(L.LightningModule):
    """Training, evaluation and checkpoint logic shared by the downscaling tasks.

    Subclasses put their plain model first in the bases, call :meth:`configure_task` at the
    end of their constructor and implement :meth:`predict_fine`, :meth:`losses`,
    :meth:`evaluation_metrics` and :meth:`trained_for`. They own the buffers
    ``norm_mean``, ``norm_std`` and the attribute ``factor`` (the plain model's).

    Logged: ``train_<loss>`` per step for each of :meth:`losses` and ``train_rmse`` (the
    batch's); ``val_``/``test_<loss>`` averaged over the epoch; and once per validation or
    test epoch each of :meth:`evaluation_metrics` over the epoch's cells.
    """

    norm_mean: Tensor
    norm_std: Tensor
    factor: int

    def configure_task(self, lr: float, weight_decay: float) -> None:
        """Set the optimiser's settings and configure the metrics (end of ``__init__``).

        Args:
            lr: AdamW learning rate.
            weight_decay: AdamW weight decay.
        """
        self.lr, self.weight_decay = lr, weight_decay
        self.data_info: dict[str, Any] = {}
        self.configure_metrics()

    def configure_metrics(self) -> None:
        """The metrics, configured once and cloned with a prefix per stage.

        Training keeps the cheap cell RMSE only; validation and test clone
        :meth:`evaluation_metrics`. ``compute_groups`` is off: metrics whose states happen
        to agree after a batch must not be merged.
        """
        self.train_metrics = MetricCollection({_PROGRESS_METRIC: CellRMSE()}, prefix="train_",
                                              compute_groups=False)
        metrics = MetricCollection(
            cast(dict[str, Metric | MetricCollection], self.evaluation_metrics()),
            compute_groups=False)
        self.val_metrics = metrics.clone(prefix="val_")
        self.test_metrics = metrics.clone(prefix="test_")

    # -- what a task states ------------------------------------------------------------------
    def predict_fine(self, batch: dict[str, Tensor], seed: int | None) -> Tensor:
        """The fine field of a batch, ``(B, 1, H, W)`` physical values.

        Args:
            batch: A batch of the task's DataModule.
            seed: Seed of any noise (evaluation); None draws from the global generator.
        """
        raise NotImplementedError

    def losses(self, pred: Tensor, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Differentiable terms of one batch: ``loss`` (optimised) and any others to log."""
        raise NotImplementedError

    def evaluation_metrics(self) -> dict[str, Metric]:
        """The validation and test metrics, by logged name (without the stage prefix)."""
        return {_PROGRESS_METRIC: CellRMSE()}

    def trained_for(self) -> dict[str, Any]:
        """Keyword arguments of :func:`~downscale.checkpoint.check_trained_for` for this run."""
        raise NotImplementedError

    @staticmethod
    def metric_inputs(pred: Tensor, batch: dict[str, Tensor]) -> dict[str, Any]:
        """The ``update`` arguments of the metrics (:mod:`downscale.metrics.epoch`)."""
        inputs: dict[str, Any] = {"pred": pred, "target": batch["fine"],
                                  "coarse": batch["coarse"], "fine_area": batch["fine_area"]}
        if "fine_valid" in batch:
            inputs["fine_valid"] = batch["fine_valid"]
        inputs["periodic"] = bool(batch["periodic"].all()) if "periodic" in batch else False
        for name in ("dy", "dx"):
            if name in batch:
                inputs[name] = batch[name]
        return inputs

    # -- the loop ----------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        pred = self.predict_fine(batch, None)
        losses = self.losses(pred, batch)
        n = batch["fine"].shape[0]
        for name, value in losses.items():
            self.log(f"train_{name}", value, prog_bar=name == "loss", batch_size=n)
        self.train_metrics(pred, batch["fine"])
        self.log_dict(self.train_metrics, batch_size=n)
        return losses["loss"]

    def _evaluate(self, batch: dict[str, Tensor], batch_idx: int, stage: str) -> None:
        pred = self.predict_fine(batch, batch_idx)
        n = batch["fine"].shape[0]
        for name, value in self.losses(pred, batch).items():
            self.log(f"{stage}_{name}", value, prog_bar=stage == "val" and name == "loss",
                     batch_size=n, sync_dist=True)
        self._stage_metrics(stage).update(**self.metric_inputs(pred, batch))

    def _stage_metrics(self, stage: str) -> MetricCollection:
        metrics: MetricCollection = getattr(self, f"{stage}_metrics")
        return metrics

    def _log_epoch(self, stage: str) -> None:
        """Log the stage's metrics over the whole epoch, then reset them.

        ``compute`` reduces the states across processes first, so every process logs the
        same figures (``sync_dist`` then only averages equal numbers).
        """
        metrics = self._stage_metrics(stage)
        if not any(m.update_called for m in metrics.values()):
            return
        figures = {k: v.float() for k, v in metrics.compute().items() if torch.isfinite(v)}
        metrics.reset()
        for name, value in figures.items():
            self.log(name, value, prog_bar=name == f"{stage}_{_PROGRESS_METRIC}",
                     sync_dist=True)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    # -- normalisation and checkpoint metadata ---------------------------------------------
    @property
    def trainer_datamodule(self) -> Any:
        """The trainer's DataModule, or None (no trainer, or none given)."""
        return getattr(getattr(self, "_trainer", None), "datamodule", None)

    def on_fit_start(self) -> None:
        """Take the training statistics into the buffers and record what the data were."""
        self.data_info = take_training_stats(self.norm_mean, self.norm_std,
                                             self.trainer_datamodule) or self.data_info

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["downscale_data"] = self.data_info

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint trained for other data (:meth:`trained_for`), before loading."""
        trainer = getattr(self, "_trainer", None)
        where = str(getattr(trainer, "ckpt_path", None) or "checkpoint")
        check_trained_for(checkpoint, where, **self.trained_for())
        self.data_info = checkpoint.get("downscale_data", {})
