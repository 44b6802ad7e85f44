"""The LightningCLI behind ``downscale fit|validate|test|predict``."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from downscale.callbacks import NetCDFPredictionWriter


class DownscaleCLI(LightningCLI):
    """LightningCLI with the factor linked from data to model and a NetCDF writer."""

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
        # "last", "best", "hpc" and "registry" are names Lightning resolves itself.
        if ckpt_path and ckpt_path not in ("last", "best", "hpc", "registry"):
            load_checkpoint_dict(ckpt_path)


def run_lightning_cli(argv: Sequence[str]) -> DownscaleCLI:
    """Run ``fit``/``validate``/``test``/``predict`` with ``argv`` (no program name)."""
    return DownscaleCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        # None when the arguments are the process's own (LightningCLI warns about both).
        args=None if list(argv) == sys.argv[1:] else list(argv),
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"log_every_n_steps": 10},
        seed_everything_default=0,
    )
