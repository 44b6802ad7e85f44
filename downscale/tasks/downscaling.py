"""DownscalingTask: trains the conserving decoder on coarse/fine pairs."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from downscale.baselines import UpsamplingMethod
from downscale.checkpoint import model_upgrades
from downscale.losses import fair_crps
from downscale.metrics.epoch import (
    BaselineRMSE,
    CellErrors,
    CellRMSE,
    CheckerboardIndex,
    Conservation,
    EnsembleScores,
    SpectralArtifactIndex,
)
from downscale.nn.conserving import ConstraintMode
from downscale.nn.mitigations import (
    DecoderConfigError,
    transposed_kernel_penalty,
    transposed_kernels,
)
from downscale.nn.models import ClimateDownscaler, DefaultDecoder
from downscale.nn.stochastic import ensemble_forward
from downscale.tasks.base import BaseTask


def evaluation_metrics(factor: int) -> dict[str, Metric]:
    """The validation/test metrics of a climate variable, by logged name (no stage prefix).

    ``rmse``, and ``mae`` and ``bias`` over all valid cells (variable units); exact
    conservation (``conservation_max_rel``, ``conservation_global_rel``); artifacts
    (``checkerboard_index``, ``spectral_artifact_db``); ``rmse_<baseline>`` of bilinear,
    bicubic and piecewise-constant upsampling of the same coarse input. Each is a
    :mod:`downscale.metrics.epoch` metric, reduced over the whole epoch.
    """
    metrics: dict[str, Metric] = {
        "rmse": CellRMSE(), "errors": CellErrors(), "conservation": Conservation(factor),
        "checkerboard_index": CheckerboardIndex(factor),
        "spectral_artifact_db": SpectralArtifactIndex(factor)}
    for method in UpsamplingMethod:
        metrics[f"rmse_{method.value}"] = BaselineRMSE(factor, method)
    return metrics


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


class DownscalingTask(ClimateDownscaler, BaseTask):  # type: ignore[misc]
    """Learn to downscale one variable by an integer factor, conserving mass exactly.

    The model and its forward pass are :class:`~downscale.nn.models.ClimateDownscaler`'s
    (plain torch; the same state dict), with training, evaluation and checkpoint metadata
    added here.

    The loss is the mean squared error in normalised units over valid fine cells. Logged:
    ``{train,val,test}_loss`` and ``_rmse`` (variable units); at validation and test also
    the figures of :func:`evaluation_metrics` (skill, exact conservation, checkerboard and
    spectral artifact indices, and the RMSE of the baselines on the same tiles), each over
    the whole epoch (:class:`~downscale.tasks.base.BaseTask`).

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
        train_members: Members drawn per sample in a training step when the decoder is
            stochastic (has ``noise_channels``, e.g.
            :class:`~downscale.nn.StochasticConservingDecoder`): the loss is then their
            fair ensemble CRPS (:func:`~downscale.losses.fair_crps`, normalised units)
            instead of the squared error. Ignored for deterministic decoders.

    Raises:
        DecoderConfigError: (a ``ValueError``; the CLI prints one line) if the decoder's
            factor differs from ``factor`` or the weight is negative.

    """

    def __init__(self, factor: int = 4, hidden_channels: int = 32, coarse_blocks: int = 2,
                 fine_blocks: int = 1, constraint: ConstraintMode = "additive",
                 phase_balanced: bool = True, lr: float = 2e-3, weight_decay: float = 1e-4,
                 decoder: torch.nn.Module | None = None, sobolev_weight: float = 0.0,
                 covariate_channels: int = 0, default_decoder: DefaultDecoder = "conserving",
                 train_members: int = 4) -> None:
        super().__init__(factor, hidden_channels, coarse_blocks, fine_blocks, constraint,
                         phase_balanced, decoder, covariate_channels,
                         default_decoder=default_decoder)
        self.save_hyperparameters(ignore=_unconfigured_modules(decoder=decoder))
        if not sobolev_weight >= 0:
            raise DecoderConfigError(f"sobolev_weight must be >= 0, got {sobolev_weight}")
        self.sobolev_weight = sobolev_weight
        if train_members < 2:
            raise DecoderConfigError(f"train_members must be >= 2 (the fair CRPS compares "
                                     f"members), got {train_members}")
        self.train_members = train_members
        self.configure_task(lr, weight_decay)

    @property
    def stochastic(self) -> bool:
        """Whether the decoder takes noise (trained as an ensemble)."""
        return bool(getattr(self.decoder, "noise_channels", 0))

    #: Members drawn per validation/test batch of a stochastic decoder (the ensemble scores).
    EVAL_MEMBERS = 4

    def evaluation_metrics(self) -> dict[str, Metric]:
        """:func:`evaluation_metrics`, and the ensemble scores of a stochastic decoder.

        Those are ``crps``, ``spread_skill`` and ``ensemble_rmse`` of ``EVAL_MEMBERS``
        members (:class:`~downscale.metrics.epoch.EnsembleScores`).
        """
        metrics = evaluation_metrics(self.factor)
        if self.stochastic:
            metrics["ensemble"] = EnsembleScores(self.EVAL_MEMBERS)
        return metrics

    def _evaluate(self, batch: dict[str, Tensor], batch_idx: int, stage: str) -> None:
        """The base's; a stochastic decoder is scored as an ensemble (member 0 as ``pred``)."""
        if not self.stochastic:
            super()._evaluate(batch, batch_idx, stage)
            return
        members = self.draw_members(batch, self.EVAL_MEMBERS, batch_idx)
        n = batch["fine"].shape[0]
        for name, value in self.losses(members[0], batch).items():
            self.log(f"{stage}_{name}", value, prog_bar=stage == "val" and name == "loss",
                     batch_size=n, sync_dist=True)
        inputs = self.metric_inputs(members[0], batch)
        self._stage_metrics(stage).update(**inputs, members=members)

    def predict_fine(self, batch: dict[str, Tensor], seed: int | None = None) -> Tensor:
        """The batch's fine field; for a stochastic decoder one member, drawn from ``seed``."""
        if self.stochastic:
            return self.draw_members(batch, 1, seed)[0]
        out: Tensor = self(batch["coarse"], batch["fine_area"], batch["fine_valid"],
                           bool(batch["periodic"].all()), batch.get("covariate"))
        return out

    def draw_members(self, batch: dict[str, Tensor], members: int, seed: int | None
                     ) -> Tensor:
        """``(M, B, 1, H, W)`` members of a stochastic decoder; None seeds from torch's RNG."""
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)))
        return ensemble_forward(self, members, torch.Generator().manual_seed(seed),
                                batch["coarse"], batch["fine_area"], batch["fine_valid"],
                                bool(batch["periodic"].all()), batch.get("covariate"))

    #: The name tests of the tiler compare against (the step's forward pass).
    _predict_batch = predict_fine

    def losses(self, pred: Tensor, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """``loss``: the mean squared error over valid cells, in normalised units."""
        target = batch["fine"]
        mask = torch.isfinite(target) & torch.isfinite(pred)
        diff = (pred - target)[mask]
        if diff.numel() == 0:  # a patch of land only: nothing to learn from
            return {"loss": pred.nan_to_num().sum() * 0.0}
        return {"loss": (diff**2).mean() / self.norm_std.square().mean()}

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """The base's step, plus the Sobolev penalty (logged as ``train_sobolev``).

        For a stochastic decoder the step is :meth:`_ensemble_step` (the fair CRPS).
        """
        if self.stochastic:
            loss = self._ensemble_step(batch)
        else:
            loss = super().training_step(batch, batch_idx)
        if self.sobolev_weight > 0:
            penalty = transposed_kernel_penalty(transposed_kernels(self.decoder))
            self.log("train_sobolev", penalty, batch_size=batch["fine"].shape[0])
            loss = loss + self.sobolev_weight * penalty.to(loss)
        return loss

    def _ensemble_step(self, batch: dict[str, Tensor]) -> Tensor:
        """Fair CRPS of ``train_members`` members per sample, in normalised units."""
        members = self.draw_members(batch, self.train_members, None)
        weight = batch["fine_area"] * batch["fine_valid"]
        loss = fair_crps(members, batch["fine"], weight) / self.norm_std.mean()
        n = batch["fine"].shape[0]
        self.log("train_loss", loss, prog_bar=True, batch_size=n)
        self.train_metrics(members[0], batch["fine"])
        self.log_dict(self.train_metrics, batch_size=n)
        return loss

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """A whole coarse time chunk downscaled by the one tiler (as ``downscale run``)."""
        from downscale.data.chunks import downscale_chunk

        return downscale_chunk(self, batch, self.factor)

    # -- data and checkpoint metadata --------------------------------------------------------
    def on_fit_start(self) -> None:
        """The base's statistics, the variable's name and the covariate's statistics."""
        super().on_fit_start()
        self._take_variable()
        covariate = getattr(self.trainer_datamodule, "covariate", None)
        if covariate is not None:
            self.covariate_mean.fill_(covariate.mean)
            self.covariate_std.fill_(covariate.std)

    def _take_variable(self) -> None:
        if self.data_info.get("variable"):
            self.variables = (str(self.data_info["variable"]),)

    def setup(self, stage: str) -> None:
        """Check (after the DataModule's setup) that data and model agree on a covariate."""
        datamodule = self.trainer_datamodule
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

    def trained_for(self) -> dict[str, Any]:
        """Factor, covariates, variable and units; the messages name the data files."""
        datamodule = self.trainer_datamodule
        checks: dict[str, Any] = {"factor": self.factor,
                                  "covariate_channels": self.covariate_channels,
                                  "variable": getattr(datamodule, "variable", None)}
        if datamodule is not None and hasattr(datamodule, "variable_attrs"):
            paths = ", ".join(getattr(getattr(datamodule, "source", None), "paths", []))
            checks.update(units=datamodule.variable_attrs.get("units"),
                          standard_name=datamodule.variable_attrs.get("standard_name"),
                          data=paths or "the data")
        return checks

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The base's check (factor, variable, units, covariates), then the variable's name."""
        super().on_load_checkpoint(checkpoint)
        upgrades = model_upgrades(checkpoint.get("hyper_parameters", {}), "DownscalingTask")
        if "default_decoder" in upgrades:
            # Saved before the setting existed: a default decoder is the old one, built here
            # before Lightning loads the weights into it.
            self.use_default_decoder(upgrades["default_decoder"])
            self.hparams["default_decoder"] = upgrades["default_decoder"]
        self._take_variable()
