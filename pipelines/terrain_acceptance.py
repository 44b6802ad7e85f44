r"""Acceptance of the slope-penalized terrain generator on terrain it has never seen.

Trains the same generator twice on the western columns of the Jacksboro DEM (seeded, same
data and steps), once without and once with the slope penalty, and scores both on the
held-out eastern columns against the real DEM: the share of cells steeper than the limit
(real, unpenalized, penalized, and the untrained generator, i.e. the smooth conserving
interpolation, for reference), RMSE in metres, the Wasserstein distance between slope
distributions and the checkerboard index. The limit ``theta_max`` is a high percentile of
the *training* columns' real slopes, so the real held-out terrain's own share over it is
the reference. With ``--eval-dem`` the same two generators are also applied to a second,
different DEM (scored against that DEM's own percentile as well).

Passes when the penalized generator keeps at least 99.9% of the held-out cells under the
limit and its RMSE is within 10% of the unpenalized one's.

Example::

    python pipelines/terrain_acceptance.py --steps 600 --output terrain_acceptance.json
    python pipelines/terrain_acceptance.py --eval-dem manifest://topobathy
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from downscale.data import TerrainDataModule
from downscale.metrics import slope_angle_percentile
from downscale.tasks import TerrainTask
from downscale.tasks.terrain import compare_slope_penalty, generate_terrain


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dem", default="manifest://jacksboro_fault_dem", help="training DEM")
    parser.add_argument("--eval-dem", default=None, help="a second DEM to apply both to")
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--percentile", type=float, default=99.0,
                        help="theta_max = this percentile of the training slopes")
    parser.add_argument("--slope-weight", type=float, default=1000.0)
    parser.add_argument("--steps", type=int, default=600, help="optimiser steps per run")
    parser.add_argument("--hidden", type=int, default=16, help="generator width")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None, help="write the figures as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    """Run the acceptance measurement and print (and optionally save) its figures."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    dm = TerrainDataModule(args.dem, factor=args.factor, patch_size=64, batch_size=16,
                           samples_per_epoch=320, seed=args.seed)
    dm.setup()
    theta = slope_angle_percentile(dm.real_slope("train"), args.percentile)
    runs = compare_slope_penalty(dm, theta_max_deg=theta, slope_weight=args.slope_weight,
                                 max_steps=args.steps, seed=args.seed,
                                 hidden_channels=args.hidden, lr=args.lr)
    heldout = runs.scores(dm, "heldout")
    # Reference: the untrained generator, i.e. the smooth conserving interpolation.
    interpolation = TerrainTask(factor=args.factor, hidden_channels=args.hidden)
    heldout["interpolation"] = generate_terrain(interpolation, dm, "heldout").scores(theta)
    report: dict[str, object] = {
        "theta_max_deg": theta, "percentile": args.percentile, "steps": args.steps,
        "slope_weight": args.slope_weight, "heldout": heldout,
        "passes": {"under_limit_999": heldout["penalized"]["violation_fraction"] <= 1e-3,
                   "rmse_within_10pct": heldout["penalized"]["rmse_m"]
                   <= 1.1 * heldout["unpenalized"]["rmse_m"]}}
    if args.eval_dem:
        other = TerrainDataModule(args.eval_dem, factor=args.factor)
        other.setup()
        own = slope_angle_percentile(other.real_slope("all"), args.percentile)
        at_own = runs.scores(other, "all", own)
        at_own["interpolation"] = generate_terrain(interpolation, other, "all").scores(own)
        report["eval_dem"] = {"dem": args.eval_dem, "own_theta_max_deg": own,
                              "at_training_theta": runs.scores(other, "all"),
                              "at_own_theta": at_own}
    report["seconds"] = time.perf_counter() - started
    text = json.dumps(report, indent=2)
    print(text)
    if args.output is not None:
        args.output.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
