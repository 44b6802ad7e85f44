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
import csv
import logging
import math
import os
import shlex
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from numpy.typing import NDArray

from downscale.errors import InputError
from downscale.helptext import plain
from downscale.io import make_output_folder

log = logging.getLogger(__name__)
FloatArray = NDArray[np.float64]

#: Table columns: (key, header, format).
COLUMNS: list[tuple[str, str, str]] = [
    ("variant", "variant", "{}"),
    ("parameters", "parameters", "{:,.0f}"),
    ("epochs", "epochs", "{:.0f}"),
    ("seconds_per_epoch", "s / epoch", "{:.2f}"),
    ("rmse", "RMSE [{units}]", "{:.4f}"),
    ("conservation_max_rel", "conservation error (max rel.)", "{:.1e}"),
    ("checkerboard_index", "checkerboard index", "{:.4f}"),
    ("spectral_artifact_db", "spectral artifact [dB]", "{:.2f}"),
    ("replica_leakage", "replica leakage", "{:.4f}"),
    ("equivariance_int", "equivariance error, 1 cell", "{:.1e}"),
    ("equivariance_subpixel", "equivariance error, 1/2 cell", "{:.4f}"),
]
WHOLE_CELL, SUB_PIXEL = (0.0, 1.0), (0.0, 0.5)  # coarse cells along x (longitude)


@dataclass
class EvaluationFields:
    """Whole test fields: coarse ``(N, h, w)``, truth ``(N, H, W)``, areas and mask ``(H, W)``."""

    coarse: FloatArray
    truth: FloatArray
    area: FloatArray
    valid: NDArray[np.bool_]
    periodic: bool
    factor: int


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


@dataclass
class Comparison:
    """What :func:`run_comparison` found.

    Attributes:
        rows: One dict per variant, baseline and the truth, keyed like :data:`COLUMNS`.
        spectra: Radially averaged power spectra ``{name: (frequency, power)}`` in cycles
            per fine cell and field units squared (mean over the test fields).
        factor: The upsampling factor.
        units: Units of the field.
        machine: One line on the CPU, threads and load, for reading the timings.
    """

    rows: list[dict[str, Any]]
    spectra: dict[str, tuple[FloatArray, FloatArray]]
    factor: int
    units: str
    machine: str = ""


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


def torch_model(task: Any, fields: EvaluationFields) -> Callable[[FloatArray], FloatArray]:
    """``coarse (N, h, w) -> fine (N, H, W)`` with the trained task, on the test fields' grid."""
    import torch

    area = torch.from_numpy(fields.area).float()[None, None]
    valid = torch.from_numpy(fields.valid)[None, None]

    def model(coarse: FloatArray) -> FloatArray:
        x = torch.from_numpy(np.ascontiguousarray(coarse, dtype=np.float32))[:, None]
        with torch.no_grad():
            y = task(x, area, valid, fields.periodic)
        out: FloatArray = y[:, 0].double().numpy()
        return out

    return model


def decoder_function(decoder: Any, *, periodic: bool = False, mean: float = 0.0,
                     std: float = 1.0, fine_area: FloatArray | None = None
                     ) -> Callable[[FloatArray], FloatArray]:
    """``coarse (N, h, w) -> fine (N, H, W)`` in numpy for a bare decoder (no task).

    Args:
        decoder: A decoder of :mod:`downscale.nn` (``factor`` attribute, the
            :class:`~downscale.nn.ConservingDecoder` forward signature), e.g. untrained.
        periodic: Whether the last axis wraps around.
        mean: Normalisation mean (``x_norm = (x - mean) / std``), field units.
        std: Normalisation scale and scale of the learnt detail, field units.
        fine_area: Fine cell areas ``(H, W)``; equal areas if None.

    Returns:
        A function for :func:`~downscale.metrics.equivariance_error` and friends (float64
        in and out; the decoder runs in its own dtype, without gradients).
    """
    import torch

    dtype = next(decoder.parameters()).dtype

    def model(coarse: FloatArray) -> FloatArray:
        x = torch.from_numpy(np.ascontiguousarray(coarse)).to(dtype)[:, None]
        f = int(decoder.factor)
        shape = (1, 1, x.shape[-2] * f, x.shape[-1] * f)
        area = (torch.ones(shape, dtype=dtype) if fine_area is None
                else torch.from_numpy(fine_area).to(dtype).reshape(shape))
        with torch.no_grad():
            y = decoder(x, torch.nan_to_num((x - mean) / std), area,
                        torch.ones(shape, dtype=torch.bool),
                        torch.full((1, 1, 1, 1), std, dtype=dtype), periodic)
        out: FloatArray = y[:, 0].double().numpy()
        return out

    return model


def score(model: Callable[[FloatArray], FloatArray], fields: EvaluationFields, *,
          equivariance: bool = True) -> dict[str, Any]:
    """The table's skill and artifact figures of one model on the test fields."""
    from downscale.metrics import (
        checkerboard_index,
        conservation_error,
        equivariance_error,
        rmse,
        spectral_artifact_index,
        spectral_replica_leakage,
    )

    f, pred = fields.factor, model(fields.coarse)
    row: dict[str, Any] = {
        "rmse": rmse(pred, fields.truth),
        "conservation_max_rel": conservation_error(pred, fields.coarse, fields.area,
                                                   f).max_rel,
        "checkerboard_index": float(np.nanmean([checkerboard_index(p, f) for p in pred])),
        "spectral_artifact_db": spectral_artifact_index(pred, f),
        "replica_leakage": spectral_replica_leakage(pred, f),
    }
    if equivariance:
        wraps = (False, fields.periodic)
        row["equivariance_int"] = equivariance_error(model, fields.coarse, f, WHOLE_CELL,
                                                     periodic=wraps)
        row["equivariance_subpixel"] = equivariance_error(model, fields.coarse, f, SUB_PIXEL,
                                                          periodic=wraps)
    return row


def radial_spectrum(fine: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Hann-tapered, radially averaged power spectrum, mean over the fields."""
    from downscale.baselines import fill_missing_nearest
    from downscale.spectra import power_spectrum_radial

    return power_spectrum_radial(fill_missing_nearest(fine), hann=True)


def write_outputs(result: Comparison, out: Path, command: str) -> str:
    """Write ``table.csv``, ``table.md`` and ``spectra.png``; return the Markdown table."""
    rows = result.rows
    headers = [header.format(units=result.units) for _, header, _ in COLUMNS]
    with open(out / "table.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow([key for key, _, _ in COLUMNS])
        for row in rows:
            writer.writerow([_csv_value(row.get(key)) for key, _, _ in COLUMNS])
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [_cell(row.get(key), fmt) for key, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (out / "table.md").write_text(f"Made by:\n\n    {command}\n\nMachine: {result.machine}\n\n"
                                  f"{table}\n")
    plot_spectra(result.spectra, result.factor, out / "spectra.png")
    return table


def plot_spectra(spectra: dict[str, tuple[FloatArray, FloatArray]], factor: int,
                 path: Path) -> None:
    """Log-log power spectra and their ratio to the truth's, alias frequencies marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ratio_ax) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    truth = spectra.get("truth")
    for name, (freq, power) in spectra.items():
        style = {"color": "black", "lw": 2.2} if name == "truth" else (
            {"color": "grey", "ls": "--"} if name == "bicubic" else {})
        ax.loglog(freq, power, label=name, **style)
        if truth is not None and len(truth[1]) == len(power):
            ratio_ax.semilogx(freq, power / truth[1], label=name, **style)
    from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

    for a in (ax, ratio_ax):
        a.xaxis.set_major_locator(FixedLocator([0.03, 0.1, 0.3, 0.5]))
        a.xaxis.set_major_formatter(ScalarFormatter())
        a.xaxis.set_minor_formatter(NullFormatter())
        for j in range(1, factor):
            a.axvline(j / factor, color="red", lw=0.6, ls=":")
        a.axvline(0.5 / factor, color="blue", lw=0.6, ls=":")
        a.set_xlabel("frequency [cycles per fine cell]")
    ax.set_ylabel("power per mode [field units²]")
    ax.set_title("radially averaged power spectra (test split)")
    ratio_ax.set_ylabel("power / truth's power")
    ratio_ax.set_title("ratio to truth (blue: coarse Nyquist; red: alias frequencies)")
    ratio_ax.axhline(1.0, color="black", lw=0.8)
    ax.legend(fontsize=7, ncol=2)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return fmt.format(value) if not isinstance(value, str) else value


def _csv_value(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return ""
    return value
