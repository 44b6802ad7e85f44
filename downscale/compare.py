r"""``downscale compare``: train decoder variants alike, tabulate skill and artifacts.

Each variant is a YAML fragment composed after the base config(s) (last one wins), usually
a ``model.init_args.decoder`` from ``configs/model/decoders/``. Every variant trains with
the same seed, data and budget (``--max-epochs``, with ``--max-time`` seconds as a safety
cap), then predicts the whole fields of the test split. One table (Markdown and CSV) gets,
per variant and for the classical baselines: RMSE, the worst per-coarse-cell conservation
error, the checkerboard index, the spectral artifact index, the spectral replica leakage,
the equivariance error for a whole-cell and a sub-pixel shift, parameters and seconds per
training epoch; a figure shows the radially averaged power spectra against the truth's.

Example::

    downscale compare --config configs/experiments/e1_north_america.yaml \
        --variants configs/model/decoders/*.yaml --output docs/decoder_comparison

Writes ``table.md``, ``table.csv`` and ``spectra.png`` into ``--output``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shlex
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from numpy.typing import NDArray

from downscale.compare_report import COLUMNS as COLUMNS
from downscale.compare_report import Comparison, write_outputs
from downscale.compare_report import plot_spectra as plot_spectra
from downscale.compare_scoring import SUB_PIXEL as SUB_PIXEL
from downscale.compare_scoring import WHOLE_CELL as WHOLE_CELL
from downscale.compare_scoring import EvaluationFields, radial_spectrum, score, torch_model
from downscale.compare_scoring import decoder_function as decoder_function
from downscale.errors import InputError
from downscale.helptext import plain
from downscale.io import make_output_folder

log = logging.getLogger(__name__)
FloatArray = NDArray[np.float64]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="downscale compare", description=plain(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", required=True,
                        help="base LightningCLI YAML (repeatable; data, model, trainer)")
    parser.add_argument("--variants", nargs="+", required=True,
                        help="variant YAML fragments, one training run each")
    parser.add_argument("--output", default="decoder_comparison",
                        help="output folder (default: ./decoder_comparison)")
    parser.add_argument("--max-epochs", type=int, default=20,
                        help="training epochs per variant (default: 20)")
    parser.add_argument("--max-time", type=float, default=60.0,
                        help="safety cap on training seconds per variant (default: 60)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Run the comparison (see module docstring) and print the Markdown table."""
    args = _parser().parse_args(argv)
    for path in [*args.config, *args.variants]:
        if not Path(path).is_file():
            raise InputError("no such config file", path=path,
                             hint="check the --config and --variants paths")
    if args.max_epochs < 1 or args.max_time <= 0:
        raise InputError("--max-epochs and --max-time must be positive")
    out = make_output_folder(args.output)
    command = "downscale compare " + shlex.join(list(argv) if argv is not None else [])
    result = run_comparison(args.config, args.variants, args.max_epochs, args.max_time,
                            args.seed)
    print(write_outputs(result, out, command))


def run_comparison(configs: Sequence[str], variants: Sequence[str], max_epochs: int,
                   max_time: float, seed: int) -> Comparison:
    """Train and score every variant, then the baselines and the truth on the same fields."""
    from downscale.baselines import UpsamplingMethod, upsample

    load_start = _load_average()

    rows: list[dict[str, Any]] = []
    spectra: dict[str, tuple[FloatArray, FloatArray]] = {}
    fields: EvaluationFields | None = None
    units = ""
    for variant in variants:
        name = Path(variant).stem
        task, dm, per_epoch, epochs = train_variant(configs, variant, max_epochs, max_time,
                                                    seed)
        fields = load_test_fields(dm)
        units = str(dm.variable_attrs.get("units", ""))
        model = torch_model(task, fields)
        row = score(model, fields)
        row.update(variant=name, parameters=sum(p.numel() for p in task.parameters()),
                   epochs=epochs, seconds_per_epoch=per_epoch)
        rows.append(row)
        spectra[name] = radial_spectrum(model(fields.coarse))
        log.info("%s: %d epochs, %.2f s/epoch, RMSE %.4f %s", name, epochs, per_epoch,
                 row["rmse"], units)
    assert fields is not None
    for method in (UpsamplingMethod.BICUBIC, UpsamplingMethod.BILINEAR,
                   UpsamplingMethod.CONSERVATIVE):
        def baseline(coarse: FloatArray, m: UpsamplingMethod = method) -> FloatArray:
            assert fields is not None
            out: FloatArray = upsample(coarse, fields.factor, m, periodic=fields.periodic,
                                       fine_valid=fields.valid).astype(np.float64)
            return out

        rows.append({**score(baseline, fields), "variant": f"*{method.value} (baseline)*",
                     "parameters": 0})
        if method is UpsamplingMethod.BICUBIC:
            spectra["bicubic"] = radial_spectrum(baseline(fields.coarse))
    truth = fields.truth
    rows.append({**score(lambda c: truth, fields, equivariance=False),
                 "variant": "*truth (reference)*"})
    spectra["truth"] = radial_spectrum(truth)
    return Comparison(rows, spectra, fields.factor, units, _machine(load_start))


def _load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover - not on every platform
        return math.nan


def _machine(load_start: float) -> str:
    """CPU count, torch threads and the 1-minute load average at start and end."""
    import torch

    return (f"{os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, "
            f"load average {load_start:.1f} at the start and {_load_average():.1f} at the end "
            f"(other processes slow the s / epoch column down)")


def train_variant(configs: Sequence[str], variant: str, max_epochs: int, max_time: float,
                  seed: int) -> tuple[Any, Any, float, int]:
    """Fit one variant through the LightningCLI parser (config composition, links, checks).

    Returns:
        ``(task, datamodule, median seconds per training epoch, epochs completed)``.
    """
    from downscale.cli import DownscaleCLI

    seconds = max(1, round(max_time))
    args = [arg for path in configs for arg in ("--config", path)] + [
        "--config", variant,
        "--seed_everything", str(seed),
        "--trainer.max_epochs", str(max_epochs),
        "--trainer.max_time", f"00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:"
                              f"{seconds % 60:02d}",
        # Same budget for all, nothing but the fit: no logs, checkpoints or validation.
        "--trainer.logger", "false",
        "--trainer.callbacks", "[]",
        "--trainer.enable_checkpointing", "false",
        "--trainer.limit_val_batches", "0",
        "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ]
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        # The variant's arguments are built here, not taken from sys.argv (which holds the
        # compare command); LightningCLI would warn about having both.
        warnings.filterwarnings("ignore", message=".*args parameter is intended.*")
        timer = EpochTimer()
        cli = DownscaleCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True,
                           subclass_mode_data=True, run=False, save_config_callback=None,
                           trainer_defaults={"callbacks": [timer]},
                           args=[*args, "--trainer.default_root_dir", tmp])
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    task = cli.model.cpu().eval()
    return task, cli.datamodule, timer.median, len(timer.durations)


class EpochTimer(L.Callback):
    """Records the wall time of each training epoch, in seconds."""

    def __init__(self) -> None:
        self.durations: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.durations.append(time.perf_counter() - self._start)

    @property
    def median(self) -> float:
        """Median epoch time in seconds (NaN before the first epoch)."""
        return float(np.median(self.durations)) if self.durations else math.nan


def load_test_fields(dm: Any) -> EvaluationFields:
    """The whole fields of the datamodule's test split, as numpy arrays."""
    coarse, truth = [], []
    first: dict[str, Any] = {}
    for sample in dm.tiles("test"):
        first = first or sample
        coarse.append(sample["coarse"][0].double().numpy())
        truth.append(sample["fine"][0].double().numpy())
    return EvaluationFields(coarse=np.stack(coarse), truth=np.stack(truth),
                      area=first["fine_area"][0].double().numpy(),
                      valid=first["fine_valid"][0].numpy(), periodic=bool(first["periodic"]),
                      factor=int(dm.factor))
