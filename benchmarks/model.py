"""The model alone: fine cells per second of the coarse-grid decoder against the default.

Both climate models (:class:`~downscale.nn.ClimateDownscaler`, factor 4, 32 channels, two
coarse blocks and one fine block; random weights, heads included) downscale the same
in-memory fields through the one tiler (:func:`downscale.inference.downscale_field`: no
autograd, several time steps per forward pass), timed in turns so that both see the same
load. Rows:

- ``conserving``: the fine-grid :class:`~downscale.nn.ConservingDecoder` (the default), as
  the tiler runs it;
- ``coarse_grid``: :class:`~downscale.nn.CoarseGridDecoder` (``default_decoder:
  coarse_grid``), likewise, with
  one and with two torch threads, and with one time step per pass;
- ``conserving, autograd``: the old decoder called directly with autograd on, one step a
  call (what a plain ``model(x)`` outside the tiler costs).

Multiply-adds per fine cell are counted by :class:`torch.utils.flop_counter.FlopCounterMode`
(convolutions and matrix products; the element-wise work is not counted, and on a CPU it is
much of the time). Target (issue 15): the coarse-grid model at least 3x the fine-grid
one's fine cells per second.

Example::

    python -m benchmarks.model --size small
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.timing import interleaved_seconds, median
from downscale.inference import DEFAULT_BATCH_CELLS, downscale_field
from downscale.nn import ClimateDownscaler
from downscale.testing import synthetic_field

FACTOR = 4
#: Coarse grid and time steps by size (fine grid ``FACTOR`` times finer).
SIZES = {"small": (45, 90, 8), "medium": (90, 180, 8), "large": (180, 360, 8)}
REPEATS = {"small": 5, "medium": 3, "large": 2}
TARGET = 3.0


def climate_model(default_decoder: str, seed: int = 0) -> ClimateDownscaler:
    """A factor-4 model with the given default decoder, random weights, eval mode."""
    torch.manual_seed(seed)
    model = ClimateDownscaler(FACTOR, default_decoder=default_decoder)  # type: ignore[arg-type]
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
        model.norm_mean.fill_(280.0)
        model.norm_std.fill_(10.0)
    return model.eval()


def multiply_adds_per_fine_cell(model: torch.nn.Module, h: int, w: int) -> float:
    """Multiply-adds of one forward pass of ``model`` on one ``h x w`` field, per fine cell."""
    from torch.utils.flop_counter import FlopCounterMode

    coarse = 280.0 + 10.0 * torch.randn(1, 1, h, w)
    fine = (1, 1, h * FACTOR, w * FACTOR)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(coarse, torch.ones(fine), torch.ones(fine, dtype=torch.bool))
    return float(counter.get_total_flops()) / 2 / (h * w * FACTOR**2)


def _bounds(lo: float, hi: float, n: int) -> np.ndarray:
    edges = np.linspace(lo, hi, n + 1)
    return np.stack([edges[:-1], edges[1:]], axis=1)


def _threads(n: int, step: Callable[[], object]) -> Callable[[], object]:
    """``step`` run with ``n`` torch threads (the setting restored after)."""
    def run() -> object:
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return step()
        finally:
            torch.set_num_threads(before)
    return run


def run(size: str, workdir: Path | None = None) -> dict[str, Any]:
    """Fine cells per second of each row (module docstring) and the ratio to the old model."""
    h, w, steps = SIZES[size]
    coarse = synthetic_field((steps, h, w), seed=0, mean=280.0, std=10.0).astype(np.float32)
    lat, lon = _bounds(20.0, 20.0 + 0.5 * h, h), _bounds(-30.0, -30.0 + 0.5 * w, w)
    models = {kind: climate_model(kind) for kind in ("conserving", "coarse_grid")}
    fine = (steps, 1, h * FACTOR, w * FACTOR)
    one_step = h * w * FACTOR**2  # fine cells of one time step

    def tiled(kind: str, batch_cells: int = DEFAULT_BATCH_CELLS) -> Callable[[], object]:
        return lambda: downscale_field(models[kind], coarse, lat, lon, FACTOR,
                                       batch_cells=batch_cells)

    def autograd_old() -> None:
        x = torch.from_numpy(coarse)[:, None]
        area, valid = torch.ones(fine[1:])[None], torch.ones(fine, dtype=torch.bool)
        for t in range(steps):
            models["conserving"](x[t : t + 1], area, valid[t : t + 1])

    threads = torch.get_num_threads()
    rows: dict[str, Callable[[], object]] = {
        f"conserving ({threads} threads)": tiled("conserving"),
        f"coarse_grid ({threads} threads)": tiled("coarse_grid"),
        "coarse_grid (1 thread)": _threads(1, tiled("coarse_grid")),
        f"coarse_grid, one step per pass ({threads} threads)": tiled("coarse_grid", one_step),
        f"conserving, autograd, one step per call ({threads} threads)": autograd_old,
    }
    seconds = interleaved_seconds(rows, REPEATS[size])
    cells = steps * one_step
    table = [{"row": name, "seconds": median(times), "fine_cells_per_s": cells / median(times)}
             for name, times in seconds.items()]
    old = seconds[f"conserving ({threads} threads)"]
    new = seconds[f"coarse_grid ({threads} threads)"]
    return {"coarse": [h, w], "steps": steps, "factor": FACTOR, "threads": threads,
            "batch_cells": DEFAULT_BATCH_CELLS, "rows": table,
            "multiply_adds_per_fine_cell": {kind: multiply_adds_per_fine_cell(m, h, w)
                                            for kind, m in models.items()},
            "speedup": median([a / b for a, b in zip(old, new, strict=True)])}


def markdown(result: dict[str, Any]) -> str:
    """The rows as a markdown table, with the cost per fine cell."""
    h, w = result["coarse"]
    macs = result["multiply_adds_per_fine_cell"]
    lines = [f"Coarse {h} x {w} -> fine {h * result['factor']} x {w * result['factor']} "
             f"(factor {result['factor']}), {result['steps']} steps, in memory through "
             f"`downscale_field` (inference mode, at most {result['batch_cells']:,} fine "
             "cells per pass). Multiply-adds per fine cell (convolutions only): "
             f"conserving {macs['conserving']:,.0f}, coarse_grid {macs['coarse_grid']:,.0f}. "
             f"coarse_grid / conserving, median of per-round ratios: "
             f"{result['speedup']:.2f} (target {TARGET:g}).", "",
             "| model | s | fine cells/s |", "|---|---|---|"]
    lines += [f"| {r['row']} | {r['seconds']:.3g} | {r['fine_cells_per_s']:.3e} |"
              for r in result["rows"]]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m benchmarks.model``: measure at ``--size``, print markdown (and JSON)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=tuple(SIZES), default="small")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    result = run(args.size)
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
