"""Peak memory of ``downscale predict``: bounded by the chunk, not by the output.

``predict`` streams each time chunk, computed by the one tiler, to the NetCDF writer
(issue 13). This section runs it in fresh processes on two inputs of one grid that differ
only in their number of time steps (10x and 40x a base) and compares peak RSS (the process
and its children). A buffered output adds to the peak what it adds to the output (as
float32); a streamed one adds nothing. Measured as the slope: the growth of the peak from
the short to the long input over the growth of the output. Both inputs, and both outputs,
are longer than netCDF-C's chunk cache (64 MiB each by default, a fixed bound that
shorter files would not reach and so would count as growth). Target: at most 0.25;
Lightning's own buffering of every prediction (``--return_predictions true``, the default
before this section) gives about 1.

Example::

    python -m benchmarks.predict --size small
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
from benchmarks.batch import FACTOR, fit_checkpoint
from benchmarks.inputs import VARIABLE, write_field
from downscale.testing import measure_process

#: Fine grid (the DataModule coarsens it, predict downscales back) and the base number of
#: time steps, by size; the inputs have 10x and 40x the base. Multiples of the factor.
#: One time step per chunk keeps the activations (which come and go with each chunk, and
#: make the peak noisy by some 100 MiB at four steps a chunk) small against the output.
SIZES = {"small": (360, 720, 8), "medium": (360, 720, 16), "large": (720, 1440, 4)}
MULTIPLES = (10, 40)
TARGET = 0.25
MIB = 1 << 20


def predict_argv(checkpoint: Path, data: Path, output: Path) -> list[str]:
    """``downscale predict`` of every time step of ``data``, one step per chunk."""
    return [sys.executable, "-m", "downscale", "predict", "--model",
            "downscale.tasks.DownscalingTask", "--data", "downscale.data.DownscalingDataModule",
            "--data.path", str(data), "--data.variable", VARIABLE, "--data.factor", str(FACTOR),
            "--data.predict_split", "all", "--data.batch_size", "1", "--ckpt_path",
            str(checkpoint), "--prediction_writer.output", str(output),
            "--trainer.accelerator", "cpu", "--trainer.devices", "1",
            "--trainer.enable_progress_bar", "false"]


def run(size: str, workdir: Path) -> dict[str, Any]:
    """Peak RSS and wall time of ``predict`` on the short and the long input; the slope."""
    ny, nx, base = SIZES[size]
    inputs = {f"{m}x": write_field(workdir / f"{m}x.nc", m * base, ny, nx) for m in MULTIPLES}
    checkpoint = fit_checkpoint(inputs[f"{MULTIPLES[0]}x"], workdir / "fit")
    rows = {}
    for (name, data), multiple in zip(inputs.items(), MULTIPLES, strict=True):
        output = workdir / f"{name}_out.nc"
        usage = measure_process(predict_argv(checkpoint, data, output), checkout_env())
        if usage.returncode != 0:
            raise RuntimeError(f"predict {name} failed ({usage.returncode}): "
                               f"{usage.stderr[-2000:]}")
        rows[name] = {"steps": multiple * base, "seconds": usage.seconds,
                      "peak_rss_mib": usage.peak_total / MIB,
                      "output_mib": multiple * base * ny * nx * 4 / MIB}
        output.unlink()
    short, long = (rows[f"{m}x"] for m in MULTIPLES)
    growth = long["peak_rss_mib"] - short["peak_rss_mib"]
    more_output = long["output_mib"] - short["output_mib"]
    return {"fine": [ny, nx], "factor": FACTOR, "runs": rows, "growth_mib": growth,
            "output_growth_mib": more_output, "slope": growth / more_output}


def markdown(result: dict[str, Any]) -> str:
    """The predict-memory table of a :func:`run` result."""
    ny, nx = result["fine"]
    lines = [f"`downscale predict` (all time steps, one per chunk) onto a {ny} x {nx} fine "
             f"grid at factor {result['factor']}, each input in a fresh process. Peak RSS: "
             "the process and its children; output: its float32 size.", "",
             "| input | time steps | wall (s) | peak RSS (MiB) | output (MiB) |",
             "|---|---|---|---|---|"]
    lines += [f"| {name} | {row['steps']} | {row['seconds']:.3g} | "
              f"{row['peak_rss_mib']:.0f} | {row['output_mib']:.0f} |"
              for name, row in result["runs"].items()]
    lines += ["", f"The peak grows by {result['growth_mib']:.0f} MiB while the output grows by "
              f"{result['output_growth_mib']:.0f} MiB: slope {result['slope']:.2f}. Target: "
              f"at most {TARGET}.", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m benchmarks.predict``: measure at ``--size``, print markdown."""
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m benchmarks.predict")
    parser.add_argument("--size", choices=tuple(SIZES), default="small")
    parser.add_argument("--output", help="JSON file for the figures (default: none)")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="downscale-pred-"))
        result = run(args.size, Path(workdir))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
