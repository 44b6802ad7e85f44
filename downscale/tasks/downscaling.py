"""DownscalingTask: trains the conserving decoder on coarse/fine pairs."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from downscale.baselines import UpsamplingMethod, upsample
from downscale.checkpoint import check_trained_for, model_upgrades
from downscale.metrics import (
    bias,
    checkerboard_index,
    conservation_error,
    mae,
    rmse,
    spectral_artifact_index,
)
from downscale.nn.conserving import ConstraintMode
from downscale.nn.mitigations import (
    DecoderConfigError,
    transposed_kernel_penalty,
    transposed_kernels,
)
from downscale.nn.models import ClimateDownscaler, DefaultDecoder
from downscale.tasks.common import take_training_stats


def evaluation_metrics(batch: dict[str, Tensor], pred: Tensor, factor: int) -> dict[str, float]:
    """Validation/test figures of one batch of whole fields or tiles, against the baselines.

    Returns skill (``mae``, ``bias``), exact conservation (``conservation_max_rel``,
    ``conservation_global_rel``), artifacts (``checkerboard_index``,
    ``spectral_artifact_db``) and ``rmse_<baseline>`` for bilinear, bicubic and
    piecewise-constant upsampling of the same coarse input.
    """
    coarse = batch["coarse"].double().cpu().numpy()
    area = batch["fine_area"][0, 0].double().cpu().numpy()
    truth = batch["fine"].double().cpu().numpy()
    fine = pred.detach().double().cpu().numpy()
    periodic = bool(batch["periodic"].all())
    valid = batch["fine_valid"].cpu().numpy()
    err = conservation_error(fine, coarse, area, factor)
    out = {"mae": mae(fine, truth), "bias": bias(fine, truth),
           "conservation_max_rel": err.max_rel, "conservation_global_rel": err.global_rel,
           "checkerboard_index": float(np.nanmean([checkerboard_index(f[0], factor)
                                                   for f in fine])),
           "spectral_artifact_db": spectral_artifact_index(fine[:, 0], factor)}
    for method in UpsamplingMethod:
        baseline = upsample(coarse, factor, method, periodic=periodic, fine_valid=valid)
        out[f"rmse_{method.value}"] = rmse(baseline, truth)
    return {k: v for k, v in out.items() if np.isfinite(v)}


def _unconfigured_modules(**modules: object) -> list[str]:
    """Names of module arguments that no config describes: not saved as hyperparameters.

    Under the CLI, Lightning saves the parsed config (a decoder is its
    ``class_path``/``init_args``), which lets ``load_from_checkpoint`` and
    ``--ckpt_path`` rebuild it. A module built in Python has no such description (its weights
    are in the state dict anyway), and Lightning warns about module hyperparameters.
    """
    # Private in Lightning (2.3+): the config the CLI is instantiating, if any.
    try:
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
    except ImportError:  # pragma: no cover - other Lightning versions
        given = None
    else:
        given = _given_hyperparameters.get()
    return [name for name, value in modules.items()
            if isinstance(value, torch.nn.Module)
            and (given is None or isinstance(given.get(name), torch.nn.Module))]


class DownscalingTask(ClimateDownscaler, L.LightningModule):  # type: ignore[misc]
    """Learn to downscale one variable by an integer factor, conserving mass exactly.

    The model and its forward pass are :class:`~downscale.nn.models.ClimateDownscaler`'s
    (plain torch; the same state dict), with training, evaluation and checkpoint metadata
    added here.

    The loss is the mean squared error in normalised units over valid fine cells. Logged:
    ``{train,val,test}_loss`` and ``_rmse`` (variable units); at validation and test also
    the figures of :func:`evaluation_metrics` (skill, exact conservation, checkerboard and
    spectral artifact indices, and the RMSE of the baselines on the same tiles).

    Args:
        factor: Upsampling factor; linked from the DataModule by the CLI.
        hidden_channels: Width of the decoder's feature paths.
        coarse_blocks: Residual conv blocks on the coarse grid.
        fine_blocks: Conv blocks on the fine grid.
        constraint: Local conservation mode: ``additive`` (any sign), ``multiplicative``
            or ``softmax`` (positive fields such as precipitation), ``none`` (no guarantee;
            for comparisons).
        phase_balanced: Phase-balanced conserving kernels (no checkerboard on flat input).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        decoder: Another decoder (``class_path``/``init_args`` in YAML), e.g. one of
            :mod:`downscale.nn.decoders`: any module with a ``factor`` attribute,
            ``forward(x, x_norm, fine_area, fine_valid, std, periodic)`` and (for tiles)
            ``receptive_field()``. Its factor must
            equal ``factor``. None builds the ``default_decoder`` from the five arguments
            above, which are ignored otherwise.
        sobolev_weight: Weight of the Sobolev H1 penalty on the decoder's transposed
            convolution kernels (:func:`~downscale.nn.transposed_kernel_penalty`), added to
            the training loss and logged as ``train_sobolev``; 0 turns it off.
        covariate_channels: Static fine-grid covariates the model reads (0 or 1): with 1,
            the DataModule's ``covariate_path`` (e.g. generated terrain) is normalised with
            its own statistics (saved in the checkpoint) and fed to the default decoder.
        default_decoder: What ``decoder: null`` builds: ``conserving``
            (:class:`~downscale.nn.ConservingDecoder`, 3x3 blocks on the fine grid too; the
            default, and what checkpoints saved before this setting hold) or
            ``coarse_grid`` (:class:`~downscale.nn.CoarseGridDecoder`, 3x3 blocks on the
            coarse grid only: faster, less skilful; docs/decoder_comparison/coarse_grid.md).

    Raises:
        DecoderConfigError: (a ``ValueError``; the CLI prints one line) if the decoder's
            factor differs from ``factor`` or the weight is negative.

    """

    def __init__(self, factor: int = 4, hidden_channels: int = 32, coarse_blocks: int = 2,
                 fine_blocks: int = 1, constraint: ConstraintMode = "additive",
                 phase_balanced: bool = True, lr: float = 2e-3, weight_decay: float = 1e-4,
                 decoder: torch.nn.Module | None = None, sobolev_weight: float = 0.0,
                 covariate_channels: int = 0, default_decoder: DefaultDecoder = "conserving"
                 ) -> None:
        super().__init__(factor, hidden_channels, coarse_blocks, fine_blocks, constraint,
                         phase_balanced, decoder, covariate_channels,
                         default_decoder=default_decoder)
        self.save_hyperparameters(ignore=_unconfigured_modules(decoder=decoder))
        self.lr, self.weight_decay = lr, weight_decay
        if not sobolev_weight >= 0:
            raise DecoderConfigError(f"sobolev_weight must be >= 0, got {sobolev_weight}")
        self.sobolev_weight = sobolev_weight
        self.data_info: dict[str, Any] = {}

    def _predict_batch(self, batch: dict[str, Tensor]) -> Tensor:
        out: Tensor = self(batch["coarse"], batch["fine_area"], batch["fine_valid"],
                           bool(batch["periodic"].all()), batch.get("covariate"))
        return out

    # -- training and evaluation -------------------------------------------------------------
    def _loss(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        mask = torch.isfinite(target) & torch.isfinite(pred)
        diff = (pred - target)[mask]
        if diff.numel() == 0:  # a patch of land only: nothing to learn from
            zero = pred.nan_to_num().sum() * 0.0
            return zero, zero
        mse = (diff**2).mean()
        return mse / self.norm_std.square().mean(), mse.sqrt()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        pred = self._predict_batch(batch)
        loss, rmse = self._loss(pred, batch["fine"])
        n = batch["fine"].shape[0]
        self.log("train_loss", loss, prog_bar=True, batch_size=n)
        self.log("train_rmse", rmse, batch_size=n)
        if self.sobolev_weight > 0:
            penalty = transposed_kernel_penalty(transposed_kernels(self.decoder))
            self.log("train_sobolev", penalty, batch_size=n)
            loss = loss + self.sobolev_weight * penalty.to(loss)
        return loss

    def _evaluate(self, batch: dict[str, Tensor], prefix: str) -> None:
        pred = self._predict_batch(batch)
        loss, rmse = self._loss(pred, batch["fine"])
        n = batch["fine"].shape[0]
        self.log(f"{prefix}_loss", loss, prog_bar=prefix == "val", batch_size=n, sync_dist=True)
        self.log(f"{prefix}_rmse", rmse, prog_bar=prefix == "val", batch_size=n, sync_dist=True)
        for name, value in evaluation_metrics(batch, pred, self.factor).items():
            self.log(f"{prefix}_{name}", value, batch_size=n, sync_dist=True)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """A whole coarse time chunk downscaled by the one tiler (as ``downscale run``)."""
        from downscale.data.chunks import downscale_chunk

        return downscale_chunk(self, batch, self.factor)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr,
                                 weight_decay=self.weight_decay)

    # -- normalisation and checkpoint metadata ---------------------------------------------
    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        self.data_info = take_training_stats(self.norm_mean, self.norm_std, datamodule) or (
            self.data_info)
        if self.data_info.get("variable"):
            self.variables = (str(self.data_info["variable"]),)
        covariate = getattr(datamodule, "covariate", None)
        if covariate is not None:
            self.covariate_mean.fill_(covariate.mean)
            self.covariate_std.fill_(covariate.std)

    def setup(self, stage: str) -> None:
        """Check (after the DataModule's setup) that data and model agree on a covariate."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        if datamodule is None or not hasattr(datamodule, "covariate_path"):
            return
        covariate = getattr(datamodule, "covariate", None)
        if (covariate is not None) != bool(self.covariate_channels):
            given = "sets" if covariate is not None else "does not set"
            raise DecoderConfigError(
                f"the data {given} covariate_path, but model.init_args.covariate_channels is "
                f"{self.covariate_channels}. Set covariate_channels: "
                f"{int(covariate is not None)} (or {'drop' if covariate is not None else 'set'}"
                " data.init_args.covariate_path).")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["downscale_data"] = self.data_info

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint trained for another factor, variable or units, before loading.

        The messages name the checkpoint file and the data files, so that the user sees
        which of the two to change (:func:`downscale.checkpoint.check_trained_for`).
        """
        trainer = getattr(self, "_trainer", None)
        where = str(getattr(trainer, "ckpt_path", None) or "checkpoint")
        datamodule = getattr(trainer, "datamodule", None)
        checks: dict[str, Any] = {"factor": self.factor,
                                  "covariate_channels": self.covariate_channels,
                                  "variable": getattr(datamodule, "variable", None)}
        if datamodule is not None and hasattr(datamodule, "variable_attrs"):
            paths = ", ".join(getattr(getattr(datamodule, "source", None), "paths", []))
            checks.update(units=datamodule.variable_attrs.get("units"),
                          data=paths or "the data")
        check_trained_for(checkpoint, where, **checks)
        upgrades = model_upgrades(checkpoint.get("hyper_parameters", {}), "DownscalingTask")
        if "default_decoder" in upgrades:
            # Saved before the setting existed: a default decoder is the old one, built here
            # before Lightning loads the weights into it.
            self.use_default_decoder(upgrades["default_decoder"])
            self.hparams["default_decoder"] = upgrades["default_decoder"]
        self.data_info = checkpoint.get("downscale_data", {})
        if self.data_info.get("variable"):
            self.variables = (str(self.data_info["variable"]),)
