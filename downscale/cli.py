"""The LightningCLI behind ``downscale fit|validate|test|predict``.

Where a run writes, without anything in the configs (README.md, "Use"):

- ``fit`` logs to ``DIR/version_N/`` (CSV metrics, ``config.yaml``, ``hparams.yaml``) and
  keeps its checkpoints in ``DIR/checkpoints/`` (``last.ckpt`` is always the latest run's
  last epoch), where ``DIR`` is ``--trainer.default_root_dir`` (default ``outputs``). A
  logger given in a config keeps its own folder; the checkpoints then go to its
  ``save_dir/name/checkpoints``.
- ``validate``, ``test`` and ``predict`` write no logs or configs; ``--ckpt_path last``
  finds ``DIR/checkpoints/last.ckpt``.
- A fit that fails before its first logged metric leaves no empty ``version_N`` folder.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger

from downscale.callbacks import NetCDFPredictionWriter
from downscale.cli_args import DEFAULT_MAX_EPOCHS, DEFAULT_ROOT, EARLY_STOPPING_PATIENCE

#: Files a run folder holds before its first logged metric (nothing worth keeping).
_SETUP_ONLY_FILES = {"config.yaml", "hparams.yaml"}


class DownscaleCLI(LightningCLI):
    """LightningCLI with the factor linked from data to model, and a NetCDF writer.

    It fills in where outputs go, checkpointing and early stopping (module docstring).
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The factor is stated once, in the data section; the model takes it from there.
        parser.link_arguments("data.factor", "model.init_args.factor", apply_on="instantiate")
        parser.add_lightning_class_args(NetCDFPredictionWriter, "prediction_writer")
        parser.set_defaults({
            "model": {"class_path": "downscale.tasks.DownscalingTask"},
            "data": {"class_path": "downscale.data.DownscalingDataModule"},
        })

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then check ``--ckpt_path`` safely before Lightning unpickles it.

        Lightning reads the checkpoint's hyperparameters right after parsing and raises a
        long traceback for a missing, corrupt or unsafe file; the same weights-only load
        here turns that into a :class:`~downscale.errors.CheckpointError` (one line).
        """
        from downscale.checkpoint import load_checkpoint_dict

        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand) if subcommand else self.config
        ckpt_path = config.get("ckpt_path") if config is not None else None
        if subcommand == "predict" and config.get("return_predictions") is None:
            # The writer streams each chunk to the file; Lightning would otherwise keep
            # every prediction in memory as well (the whole output: unbounded memory).
            config["return_predictions"] = False
        if ckpt_path == "last" and subcommand != "fit":
            # Resolved here, not by Lightning, so that the checkpoint's hyperparameters
            # (model size, factor) are read from it as for any other checkpoint file.
            ckpt_path = config["ckpt_path"] = str(last_checkpoint(config.get("trainer")))
        # "last", "best", "hpc" and "registry" are names Lightning resolves itself.
        if ckpt_path and ckpt_path not in ("last", "best", "hpc", "registry"):
            load_checkpoint_dict(ckpt_path)

    def before_instantiate_classes(self) -> None:
        # Only training records its configuration; evaluation and prediction leave no folder.
        if not self._training():
            self.save_config_callback = None

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The trainer with the default logger, checkpointing and early stopping filled in."""
        config = self._get(self.config_init, "trainer", default={})
        root = str(config.get("default_root_dir") or DEFAULT_ROOT)
        logger = config.get("logger")
        if not self._training():
            logger = False
        elif logger is None or logger is True:
            logger = CSVLogger(root, name="")
        callbacks = list(config.get("callbacks") or [])
        kwargs.update(default_root_dir=root, logger=logger,
                      callbacks=default_callbacks(
                          callbacks, run_folder(logger, root),
                          checkpointing=config.get("enable_checkpointing") is not False))
        return super().instantiate_trainer(**kwargs)

    def _training(self) -> bool:
        """Whether this run trains: ``fit``, or classes built without a subcommand (demo)."""
        return self.subcommand in (None, "fit")

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            remove_unused_log_dirs(self.trainer.loggers)
            raise


def last_checkpoint(trainer: Any) -> Path:
    """``last.ckpt`` of the run folder that the parsed trainer configuration names.

    Raises:
        CheckpointError: There is none yet.
    """
    from downscale.errors import CheckpointError

    trainer = trainer or {}
    root = str(trainer.get("default_root_dir") or DEFAULT_ROOT)
    folder = Path(root)
    logger = trainer.get("logger")
    init = logger.get("init_args") if hasattr(logger, "get") else None
    if init is not None and init.get("save_dir") is not None:
        folder = Path(init["save_dir"]) / str(init.get("name", "lightning_logs") or "")
    path = folder / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise CheckpointError(f"{path}: no last checkpoint (--ckpt_path last). Train first "
                              "with the same --config and --trainer.default_root_dir, or "
                              "give the checkpoint's file with --ckpt_path.")
    return path


def run_folder(logger: Logger | Sequence[Logger] | bool, root: str) -> Path:
    """The folder holding a run's ``version_N`` logs and its ``checkpoints``."""
    first = logger[0] if isinstance(logger, Sequence) and logger else logger
    if isinstance(first, Logger) and first.save_dir is not None:
        return Path(first.save_dir) / str(first.name or "")
    return Path(root)


def default_callbacks(callbacks: list[Callback], folder: Path, *, checkpointing: bool = True
                      ) -> list[Callback]:
    """``callbacks`` plus checkpointing and early stopping where the user gave none.

    No checkpointing is added when the trainer's ``enable_checkpointing`` is false.

    Checkpoints go to the fixed folder ``folder/checkpoints`` and overwrite the names of
    an earlier run (no ``last-v1.ckpt``), so ``last.ckpt`` there is always the latest run's
    and ``--ckpt_path last`` resumes it.
    """
    out = list(callbacks)
    for callback in out:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
            callback.dirpath = str(folder / "checkpoints")
    if checkpointing and not any(isinstance(c, ModelCheckpoint) for c in out):
        out.append(ModelCheckpoint(dirpath=folder / "checkpoints", monitor="val_loss",
                                   save_last=True, enable_version_counter=False))
    if not any(isinstance(c, EarlyStopping) for c in out):
        # Not strict: a run without validation (limit_val_batches=0) trains to max_epochs.
        out.append(EarlyStopping(monitor="val_loss", patience=EARLY_STOPPING_PATIENCE,
                                 strict=False))
    return out


def remove_unused_log_dirs(loggers: Sequence[Logger]) -> None:
    """Delete the ``version_N`` folders of a failed run that logged nothing yet."""
    for logger in loggers:
        log_dir = getattr(logger, "log_dir", None)
        if log_dir is None or not os.path.isdir(log_dir):
            continue
        files = {p.name for p in Path(log_dir).rglob("*") if p.is_file()}
        if files <= _SETUP_ONLY_FILES:
            shutil.rmtree(log_dir, ignore_errors=True)


_CLI_OPTIONS: dict[str, Any] = {
    "save_config_kwargs": {"overwrite": True},
    "trainer_defaults": {"log_every_n_steps": 10, "default_root_dir": DEFAULT_ROOT,
                         "max_epochs": DEFAULT_MAX_EPOCHS},
    "seed_everything_default": 0,
}

#: Lightning messages that do not apply to a user of this package (hidden unless --verbose):
#: the srun hint fires on any machine with SLURM installed, the LeafSpec deprecation comes
#: from Lightning's own code, and one DataLoader worker is this package's choice (the step
#: cache makes workers unnecessary on the shipped data).
_QUIET_WARNINGS = (
    r"(?s).*The `srun` command is available",
    r"(?s).*isinstance\(treespec, LeafSpec\)",
    r"(?s).*does not have many workers",
    r"(?s).*Checkpoint directory .* exists and is not empty",
    r"(?s).*LightningCLI's args parameter is intended",
    r"(?s).*is smaller than the logging interval",
)


#: Lightning's informational lines that do not help a user of this package: tips for
#: other products, hardware availability (the accelerator in use is in the configuration),
#: the seed (in config.yaml). Distributed set-up and the model summary stay.
_QUIET_INFO = re.compile(r"Tip: |^[GTHI]PU available|^Seed set to")
#: The loggers those lines come from (Lightning routes rank_zero_info through the first).
_QUIET_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.seed")


class _QuietFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _QUIET_INFO.search(record.getMessage())


def quiet_lightning(verbose: bool = False) -> None:
    """Hide Lightning's tips, hardware lines and warnings that do not apply (not verbose)."""
    for name in _QUIET_LOGGERS:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, _QuietFilter)]:
            logger.removeFilter(old)
        if not verbose:
            logger.addFilter(_QuietFilter())
    if not verbose:
        for pattern in _QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)


def run_cli_classes(argv: Sequence[str]) -> DownscaleCLI:
    """The CLI's model, datamodule and trainer from ``argv`` (no subcommand), not run."""
    return DownscaleCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True,
                        subclass_mode_data=True, args=list(argv), run=False,
                        **_CLI_OPTIONS)


def run_lightning_cli(argv: Sequence[str], *, verbose: bool = False) -> DownscaleCLI:
    """Run ``fit``/``validate``/``test``/``predict`` with ``argv`` (no program name).

    Args:
        argv: The command and its arguments.
        verbose: Show Lightning's informational messages and all its warnings.
    """
    quiet_lightning(verbose)
    return DownscaleCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        # None when the arguments are the process's own (LightningCLI warns about both).
        args=None if list(argv) == sys.argv[1:] else list(argv),
        **_CLI_OPTIONS,
    )
