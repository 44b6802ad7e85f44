"""Start-up of ``downscale run``: a small file in a fresh process against the import floor.

What a new user waits for on a small job is mostly start-up: Python, the imports, the
checkpoint. The floor is ``python -c "import torch, xarray, dask.array"``, the libraries a
run cannot do without; ``downscale run`` (``--workers 0``, a 40-step 18 x 24 coarse file,
the package's default model) is measured next to it in the same run, the two taking turns,
each a fresh process: wall time and peak RSS (the process and any children), and their
ratios. Target: at most 1.5x the floor (issue 13).

Example::

    python -m benchmarks.startup --size small
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import checkout_env
from benchmarks.batch import fit_checkpoint, run_argv
from benchmarks.inputs import write_field
from benchmarks.timing import median
from downscale.testing import ProcessUsage, measure_process

#: The small file of issue 13's new-user test: 40 steps of an 18 x 24 coarse grid.
STEPS, NY, NX = 40, 18, 24
#: Timed rounds per size (after one warm-up round of each but at :data:`NO_WARM_UP` sizes).
REPEATS = {"tiny": 1, "small": 1, "medium": 3, "large": 5}
#: ``tiny`` is the smoke test's size: it checks that the section runs and reports, so its
#: one round is timed cold (page cache and all), not after a warm-up round.
NO_WARM_UP = frozenset({"tiny"})
FLOOR = "import torch, xarray, dask.array"
TARGET = 1.5
MIB = 1 << 20


def _measured(argv: list[str]) -> ProcessUsage:
    usage = measure_process(argv, checkout_env())
    if usage.returncode != 0:
        raise RuntimeError(f"{argv[1:4]} failed ({usage.returncode}): {usage.stderr[-2000:]}")
    return usage


def run(size: str, workdir: Path) -> dict[str, Any]:
    """Measure the floor and ``downscale run`` in turns; medians and ratios."""
    data = write_field(workdir / "small.nc", STEPS, NY, NX)
    checkpoint = fit_checkpoint(data, workdir / "fit")
    commands = {"floor": [sys.executable, "-c", FLOOR],
                "run": [sys.executable, "-m", "downscale", "run",
                        *run_argv(checkpoint, data, workdir / "out.nc", STEPS, "--workers",
                                  "0")]}
    rounds: dict[str, list[ProcessUsage]] = {name: [] for name in commands}
    warm_up = 0 if size in NO_WARM_UP else 1  # a first round warms the page cache, untimed
    for i in range(warm_up + REPEATS[size]):
        for name, argv in commands.items():
            usage = _measured(argv)
            if i >= warm_up:
                rounds[name].append(usage)
    rows = {name: {"seconds": median([u.seconds for u in got]),
                   "peak_rss_mib": median([u.peak_total / MIB for u in got])}
            for name, got in rounds.items()}
    return {"file": {"steps": STEPS, "coarse": [NY, NX]}, "repeats": REPEATS[size],
            "floor": rows["floor"], "run": rows["run"],
            "time_ratio": rows["run"]["seconds"] / rows["floor"]["seconds"],
            "rss_ratio": rows["run"]["peak_rss_mib"] / rows["floor"]["peak_rss_mib"]}


def markdown(result: dict[str, Any]) -> str:
    """The start-up table of a :func:`run` result."""
    floor, run_ = result["floor"], result["run"]
    ny, nx = result["file"]["coarse"]
    return "\n".join([
        f"`downscale run --workers 0` on a {result['file']['steps']}-step {ny} x {nx} coarse "
        f"file (default model), each a fresh process, against `python -c \"{FLOOR}\"`; "
        f"median of {result['repeats']} round(s) taken in turns. Peak RSS: the process and "
        "its children.", "",
        "| command | wall (s) | peak RSS (MiB) |", "|---|---|---|",
        f"| import floor | {floor['seconds']:.3g} | {floor['peak_rss_mib']:.0f} |",
        f"| downscale run | {run_['seconds']:.3g} | {run_['peak_rss_mib']:.0f} |",
        f"| ratio | {result['time_ratio']:.2f} | {result['rss_ratio']:.2f} |", "",
        f"Target: wall time at most {TARGET}x the import floor.", ""])


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m benchmarks.startup``: measure at ``--size``, print markdown."""
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m benchmarks.startup")
    parser.add_argument("--size", choices=tuple(REPEATS), default="small")
    parser.add_argument("--output", help="JSON file for the figures (default: none)")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="downscale-start-"))
        result = run(args.size, Path(workdir))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
