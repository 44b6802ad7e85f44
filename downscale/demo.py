"""``downscale demo``: train on embedded real data, downscale a held-back period, report.

Uses the E1 North America air temperature of iris-sample-data (``e1_north_america`` in
data_manifest.yaml): 240 yearly fields on a 1.25 x 1.875 degree grid, coarsened by 4.
Writes ``downscaled.nc``, ``demo_map.png``, checkpoints and logs into the output folder and
prints the model's RMSE against bicubic interpolation and its conservation error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import xarray as xr

from downscale.helptext import plain
from downscale.io import make_output_folder

if TYPE_CHECKING:
    from downscale.data import DownscalingDataModule

DATASET, VARIABLE, FACTOR = "e1_north_america", "air_temperature", 4


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="downscale demo", description=plain(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="demo_output", help="output folder "
                        "(default: ./demo_output)")
    parser.add_argument("--epochs", type=int, default=40,
                        help="training epochs of 256 patches (default: 40, about a minute "
                        "on two CPU cores)")
    parser.add_argument("--max-time", type=float, default=240.0,
                        help="safety cap on training time in seconds (default: 240); the "
                        "figures are reproducible only when the epochs finish first")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Run the demo (see module docstring)."""
    args = _parser().parse_args(argv)
    out = make_output_folder(args.output)
    started = time.perf_counter()
    report = run_demo(out, args.epochs, args.max_time, args.seed)
    report["seconds"] = time.perf_counter() - started
    print(format_report(report, out))


def run_demo(out: Path, epochs: int, max_seconds: float, seed: int) -> dict[str, float]:
    """Train, predict the test split and evaluate; returns the figures of the report."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from downscale.callbacks import NetCDFPredictionWriter
    from downscale.data import DownscalingDataModule
    from downscale.tasks import DownscalingTask

    L.seed_everything(seed, verbose=False)
    datamodule = DownscalingDataModule(f"manifest://{DATASET}", VARIABLE, factor=FACTOR,
                                       patch_size=32, batch_size=16, samples_per_epoch=256,
                                       predict_split="test", seed=seed)
    task = DownscalingTask(factor=FACTOR)
    output_nc = out / "downscaled.nc"
    trainer = L.Trainer(
        # A fixed number of epochs makes the figures reproducible whatever the machine's
        # load; the time cap keeps the demo short on a slow or busy machine.
        max_epochs=epochs, max_time=dt.timedelta(seconds=max_seconds),
        default_root_dir=out, logger=CSVLogger(out, name="logs"),
        callbacks=[ModelCheckpoint(dirpath=out / "checkpoints", monitor="val_loss",
                                   save_last=True),
                   NetCDFPredictionWriter(str(output_nc))],
        log_every_n_steps=5, enable_model_summary=False, num_sanity_val_steps=0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(task, datamodule=datamodule)
        trainer.predict(task, datamodule=datamodule, ckpt_path="best")
    report = evaluate(output_nc, datamodule, out / "demo_map.png")
    report["epochs"] = float(trainer.current_epoch)
    return report


def evaluate(output_nc: Path, dm: DownscalingDataModule, png: Path) -> dict[str, float]:
    """Compare the written prediction with the truth and with bicubic; plot one map."""
    from downscale.aggregate import coarsen_field
    from downscale.baselines import UpsamplingMethod, upsample
    from downscale.grid import cell_areas
    from downscale.metrics import conservation_error, rmse
    from downscale.plotting import plot_panels

    truth_ds = dm.source.dataset.isel(time=dm.splits["test"])
    truth = truth_ds[VARIABLE].load()
    coarse = coarsen_field(truth_ds, VARIABLE, (FACTOR, FACTOR))[VARIABLE].load()
    with xr.open_dataset(output_nc) as written:
        pred = written[VARIABLE].load()
    area = cell_areas(truth_ds).values
    bicubic = upsample(coarse.values, FACTOR, UpsamplingMethod.BICUBIC)
    err = conservation_error(pred.values, coarse.values, area, FACTOR)
    err_bicubic = conservation_error(bicubic, coarse.values, area, FACTOR)
    first = {"time": 0}
    plot_panels([(f"coarse (x{FACTOR})", coarse.isel(first)),
                 ("downscaled (model)", pred.isel(first)),
                 ("bicubic", truth.isel(first).copy(data=bicubic[0])),
                 ("truth", truth.isel(first))], png,
                title=f"E1 air temperature, {truth.time.values[0]}",
                units=str(truth.attrs.get("units", "")))
    return {
        "rmse_model": rmse(pred.values, truth.values),
        "rmse_bicubic": rmse(bicubic, truth.values),
        "conservation_max_rel": err.max_rel,
        "conservation_global_rel": err.global_rel,
        "conservation_max_rel_bicubic": err_bicubic.max_rel,
        "n_test": float(truth.sizes["time"]),
    }


def format_report(report: dict[str, float], out: Path) -> str:
    """The demo's closing summary."""
    gain = 100 * (1 - report["rmse_model"] / report["rmse_bicubic"])
    return "\n".join([
        "",
        f"downscale demo: E1 air temperature, factor {FACTOR}, "
        f"{int(report['n_test'])} held-back years, {int(report['epochs'])} epochs, "
        f"{report['seconds']:.0f} s",
        f"  RMSE model    {report['rmse_model']:.3f} K",
        f"  RMSE bicubic  {report['rmse_bicubic']:.3f} K   (model {gain:+.1f}% better)",
        "  conservation error, max per coarse cell (relative): "
        f"model {report['conservation_max_rel']:.1e}, "
        f"bicubic {report['conservation_max_rel_bicubic']:.1e}",
        f"  conservation error, global (relative): {report['conservation_global_rel']:.1e}",
        f"  wrote {out / 'downscaled.nc'} and {out / 'demo_map.png'}",
    ])


