"""The LightningCLI behind ``downscale fit|validate|test|predict``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

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
