"""DownscalingTask: trains the conserving decoder on coarse/fine pairs."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from downscale.baselines import UpsamplingMethod, upsample
from downscale.errors import CheckpointError
from downscale.metrics import (
    bias,
    checkerboard_index,
    conservation_error,
    mae,
    rmse,
    spectral_artifact_index,
)
from downscale.nn import ConservingDecoder
from downscale.nn.conserving import ConstraintMode
from downscale.nn.mitigations import (
    DecoderConfigError,
    transposed_kernel_penalty,
    transposed_kernels,
)
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


class DownscalingTask(L.LightningModule):
    """Learn to downscale one variable by an integer factor, conserving mass exactly.

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
            :mod:`downscale.nn.decoders`: any module with a ``factor`` attribute and
            ``forward(x, x_norm, fine_area, fine_valid, std, periodic)``. Its factor must
            equal ``factor``. None builds :class:`~downscale.nn.ConservingDecoder` from the
            five arguments above, which are ignored otherwise.
        sobolev_weight: Weight of the Sobolev H1 penalty on the decoder's transposed
            convolution kernels (:func:`~downscale.nn.transposed_kernel_penalty`), added to
            the training loss and logged as ``train_sobolev``; 0 turns it off.
        covariate_channels: Static fine-grid covariates the model reads (0 or 1): with 1,
            the DataModule's ``covariate_path`` (e.g. generated terrain) is normalised with
            its own statistics (saved in the checkpoint) and fed to the default decoder.

    Raises:
        DecoderConfigError: (a ``ValueError``; the CLI prints one line) if the decoder's
            factor differs from ``factor`` or the weight is negative.

    """

    def __init__(self, factor: int = 4, hidden_channels: int = 32, coarse_blocks: int = 2,
                 fine_blocks: int = 1, constraint: ConstraintMode = "additive",
                 phase_balanced: bool = True, lr: float = 2e-3, weight_decay: float = 1e-4,
                 decoder: torch.nn.Module | None = None, sobolev_weight: float = 0.0,
                 covariate_channels: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=_unconfigured_modules(decoder=decoder))
        self.factor, self.lr, self.weight_decay = factor, lr, weight_decay
        if covariate_channels not in (0, 1):
            raise DecoderConfigError(f"covariate_channels must be 0 or 1, got "
                                     f"{covariate_channels}")
        if decoder is None:
            decoder = ConservingDecoder(1, factor, hidden_channels, coarse_blocks, fine_blocks,
                                        constraint, phase_balanced, covariate_channels)
        elif getattr(decoder, "covariate_channels", 0) != covariate_channels:
            raise DecoderConfigError(
                f"model.decoder ({type(decoder).__name__}) reads "
                f"{getattr(decoder, 'covariate_channels', 0)} covariate channel(s), but "
                f"covariate_channels is {covariate_channels}. Use the default decoder "
                "(decoder: null) for a static covariate.")
        elif getattr(decoder, "factor", None) != factor:
            raise DecoderConfigError(
                f"model.decoder ({type(decoder).__name__}) upsamples by factor "
                f"{getattr(decoder, 'factor', '(none: it has no factor attribute)')}, but the "
                f"data use factor {factor}. Set model.init_args.decoder.init_args.factor: "
                f"{factor} (or --data.factor to the decoder's factor).")
        if not sobolev_weight >= 0:
            raise DecoderConfigError(f"sobolev_weight must be >= 0, got {sobolev_weight}")
        self.decoder = decoder
        self.sobolev_weight = sobolev_weight
        # Normalisation of the training split, filled at fit start, saved in checkpoints.
        self.norm_mean: Tensor
        self.norm_std: Tensor
        self.register_buffer("norm_mean", torch.zeros(1))
        self.register_buffer("norm_std", torch.ones(1))
        self.covariate_channels = covariate_channels
        # The covariate's own statistics (e.g. altitude in m), from the training data.
        self.covariate_mean: Tensor
        self.covariate_std: Tensor
        self.register_buffer("covariate_mean", torch.zeros(max(covariate_channels, 1)))
        self.register_buffer("covariate_std", torch.ones(max(covariate_channels, 1)))
        self.data_info: dict[str, Any] = {}

    # -- model -----------------------------------------------------------------------------
    def forward(self, coarse: Tensor, fine_area: Tensor, fine_valid: Tensor,
                periodic: bool = False, covariate: Tensor | None = None) -> Tensor:
        """Downscale ``(B, 1, h, w)`` physical values to ``(B, 1, h*f, w*f)``.

        ``covariate`` is the ``(B, covariate_channels, h*f, w*f)`` static covariate in its
        own units (NaN = missing), required when ``covariate_channels > 0``.
        """
        mean = self.norm_mean.view(1, -1, 1, 1)
        std = self.norm_std.view(1, -1, 1, 1)
        x_norm = torch.nan_to_num((coarse - mean) / std, nan=0.0)
        if not self.covariate_channels:
            out: Tensor = self.decoder(coarse, x_norm, fine_area, fine_valid, std, periodic)
            return out
        if covariate is None:
            raise ValueError("this model was built with a static covariate: pass covariate=")
        c_mean = self.covariate_mean.view(1, -1, 1, 1)
        c_std = self.covariate_std.view(1, -1, 1, 1)
        c_norm = torch.nan_to_num((covariate.to(coarse.dtype) - c_mean) / c_std, nan=0.0)
        out = self.decoder(coarse, x_norm, fine_area, fine_valid, std, periodic, c_norm)
        return out

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
        which of the two to change.
        """
        trained = checkpoint.get("downscale_data", {})
        trainer = getattr(self, "_trainer", None)
        where = str(getattr(trainer, "ckpt_path", None) or "checkpoint")
        saved_factor = checkpoint.get("hyper_parameters", {}).get("factor")
        saved_covariates = checkpoint.get("hyper_parameters", {}).get("covariate_channels", 0)
        if saved_covariates != self.covariate_channels:
            raise CheckpointError(f"checkpoint: trained with {saved_covariates} static "
                                  f"covariate channel(s), but the model is configured for "
                                  f"{self.covariate_channels}. Set "
                                  f"--model.init_args.covariate_channels {saved_covariates}.")
        if saved_factor is not None and saved_factor != self.factor:
            raise CheckpointError(f"{where}: trained for factor {saved_factor}, but the data "
                                  f"use factor {self.factor}. Use a checkpoint trained "
                                  f"for factor {self.factor} or set --data.factor "
                                  f"{saved_factor}.")
        datamodule = getattr(trainer, "datamodule", None)
        wanted = getattr(datamodule, "variable", None)
        if trained.get("variable") and wanted and trained["variable"] != wanted:
            raise CheckpointError(f"{where}: trained for variable '{trained['variable']}', "
                                  f"but the data select '{wanted}'. Use a checkpoint trained "
                                  f"for '{wanted}'.")
        if datamodule is not None and hasattr(datamodule, "variable_attrs"):
            units = datamodule.variable_attrs.get("units")
            data = ", ".join(getattr(getattr(datamodule, "source", None), "paths", []))
            if trained.get("units") and units != trained["units"]:
                raise CheckpointError(
                    f"{where}: trained on '{trained.get('variable')}' in {trained['units']}, "
                    f"but {data or 'the data'} is in {units or 'no units (no units attribute)'}"
                    f". Convert the input to {trained['units']}.")
        self.data_info = trained
