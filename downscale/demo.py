"""``downscale demo``: train on embedded real data, downscale a held-back period, report.

Runs configs/experiments/e1_north_america.yaml (the E1 North America air temperature of
iris-sample-data, ``e1_north_america`` in data_manifest.yaml: 240 yearly fields on a
1.25 x 1.875 degree grid, coarsened by 4), with its logs and checkpoints in the output
folder. Writes there ``coarse.nc`` (the held-back years' coarse input, as ``downscale
coarsen`` makes it), ``downscaled.nc`` and ``demo_map.png``, and prints the model's RMSE
against bicubic interpolation and its conservation error. The same run from the YAML::

    downscale fit --config configs/experiments/e1_north_america.yaml
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from downscale.errors import InputError
from downscale.helptext import plain
from downscale.io import make_output_folder, open_field

if TYPE_CHECKING:
    from downscale.data import DownscalingDataModule

DATASET, VARIABLE, FACTOR = "e1_north_america", "air_temperature", 4
#: The experiment the demo runs, relative to the repository (or the installed package).
EXPERIMENT = Path("configs") / "experiments" / "e1_north_america.yaml"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="downscale demo", description=plain(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="demo_output", help="output folder "
                        "(default: ./demo_output)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="most training epochs (default: the YAML's max_epochs; "
                        "early stopping may end training sooner)")
    parser.add_argument("--max-time", type=float, default=240.0,
                        help="safety cap on training time in seconds (default: 240); the "
                        "figures are reproducible only when the epochs finish first")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--verbose", action="store_true",
                        help="show Lightning's messages and warnings")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Run the demo (see module docstring)."""
    args = _parser().parse_args(argv)
    out = make_output_folder(args.output)
    started = time.perf_counter()
    report = run_demo(out, args.epochs, args.max_time, args.seed, verbose=args.verbose)
    report["seconds"] = time.perf_counter() - started
    print(format_report(report, out))


def experiment_config() -> Path:
    """The demo's YAML: in the source tree, or packaged with an installed wheel."""
    package = Path(__file__).resolve().parent
    for root in (package.parent, package):
        if (root / EXPERIMENT).is_file():
            return root / EXPERIMENT
    raise InputError("the demo's configuration is not installed", path=EXPERIMENT,
                     hint="run the demo from a clone of the repository")


def run_demo(out: Path, epochs: int | None, max_seconds: float, seed: int, *,
             verbose: bool = False) -> dict[str, float]:
    """Train from the experiment's YAML, predict the test split, evaluate.

    Returns:
        The figures of the report (RMSEs in K, relative conservation errors, epochs).
    """
    from downscale.cli import quiet_lightning, run_cli_classes

    quiet_lightning(verbose)
    seconds = int(max_seconds)
    overrides = [
        "--trainer.default_root_dir", str(out), "--seed_everything", str(seed),
        "--data.seed", str(seed), "--data.predict_split", "test",
        # The time cap keeps the demo short on a slow or busy machine; the epochs make the
        # figures reproducible whatever the machine's load.
        "--trainer.max_time", f"00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:"
        f"{seconds % 60:02d}",
        "--trainer.log_every_n_steps", "5", "--trainer.enable_model_summary", "false",
        "--trainer.num_sanity_val_steps", "0",
        "--prediction_writer.output", str(out / "downscaled.nc"),
    ]
    if epochs is not None:
        overrides += ["--trainer.max_epochs", str(epochs)]
    cli = run_cli_classes(["--config", str(experiment_config()), *overrides])
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    cli.trainer.predict(cli.model, datamodule=cli.datamodule, ckpt_path="best")
    report = evaluate(out / "downscaled.nc", cli.datamodule, out)
    report["epochs"] = float(cli.trainer.current_epoch)
    return report


def evaluate(output_nc: Path, dm: DownscalingDataModule, out: Path) -> dict[str, float]:
    """Compare the prediction with the truth and bicubic; write coarse.nc and the map."""
    from downscale.baselines import UpsamplingMethod, upsample
    from downscale.coarsen import coarsened_cf
    from downscale.grid import cell_areas
    from downscale.io import write_netcdf
    from downscale.metrics import conservation_error, rmse
    from downscale.plotting import field_title, plot_panels

    truth_ds = dm.source.dataset.isel(time=dm.splits["test"])
    truth = truth_ds[VARIABLE].load()
    coarse_nc = write_netcdf(coarsened_cf(truth_ds, VARIABLE, FACTOR).load(),
                             out / "coarse.nc")
    # Files are in their input's conventions (names, longitude range); compare in ours.
    coarse = open_field(coarse_nc, VARIABLE)[VARIABLE].load()
    pred = open_field(output_nc, VARIABLE)[VARIABLE].load()
    area = cell_areas(truth_ds).values
    bicubic = upsample(coarse.values, FACTOR, UpsamplingMethod.BICUBIC)
    err = conservation_error(pred.values, coarse.values, area, FACTOR)
    err_bicubic = conservation_error(bicubic, coarse.values, area, FACTOR)
    first = {"time": 0}
    plot_panels([(f"coarse input (x{FACTOR})", coarse.isel(first)),
                 ("downscaled (model)", pred.isel(first)),
                 ("bicubic", truth.isel(first).copy(data=bicubic[0])),
                 ("truth", truth.isel(first))], out / "demo_map.png",
                title=f"E1 North America: {field_title(truth.isel(first))}, held back from "
                      "training",
                truth=truth.isel(first), model=pred.isel(first))
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
        f"  wrote {out / 'coarse.nc'} (input), {out / 'downscaled.nc'} and "
        f"{out / 'demo_map.png'}",
    ])


