"""Batch inference benchmarks: ``downscale run`` against its I/O floor, CDO, and input size.

Three sections, measured in one run on one generated input (:func:`run`):

1. **I/O floor**: ``downscale run`` with the default model against the same run with the
   identity model (:mod:`benchmarks.identity`: nearest upsampling, same chunks, encoding
   and code path), and against the stages alone: reading the chunks, the model on arrays
   in memory, writing precomputed chunks. In this process (``--workers 0``) and on a
   LocalCluster of 2 single-threaded workers, started here as ``downscale run`` starts it.
   The same run to a Zarr store (``--output x.zarr``: the workers write their chunks)
   against NetCDF (this process writes them).
2. **CDO**: ``cdo remapbil`` / ``remapbic`` / ``remapcon`` to the same fine grid, as
   subprocesses next to ``downscale run`` subprocesses (all include start-up).
3. **Scaling**: ``downscale run`` (joining 2 warm workers) on 1x, 4x and 16x the time
   steps of the same grid: time per step and peak memory of this process and the workers.

Sizes (coarse grid ``ny x nx``, factor 4, float32; ``steps`` is the 1x input; the output is
16 x the input)::

    size    coarse     fine        steps  time chunk  1x input  16x input  16x output
    tiny    12 x 24    48 x 96     2      1           2 KB      37 KB      0.6 MB
    small   24 x 48    96 x 192    4      1           18 KB     0.3 MB     4.7 MB
    medium  90 x 180   360 x 720   8      2           0.52 MB   8.3 MB     133 MB
    large   360 x 720  1440 x 2880 192    4           199 MB    3.2 GB     51 GB

``tiny`` is the smoke test's size (it checks that every section runs and reports, not the
figures), ``small`` a quick look (well under a minute), ``medium`` the figures in
RESULTS.md (a few minutes on 2 cores), ``large`` several GB of input at 16x (hours on a
CPU; not run in CI). Generated files are deleted as soon as they have been measured.

Example::

    python -m benchmarks.batch --size medium --output batch.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

import downscale.batch.cli
import downscale.checkpoint
from benchmarks import checkout_env
from benchmarks.identity import IDENTITY_HOOKS
from benchmarks.inputs import VARIABLE, write_field
from benchmarks.timing import interleaved, median, median_seconds, wall_seconds
from downscale.grid import fine_bounds, fine_cell_areas
from downscale.inference import downscale_field
from downscale.testing import ProcessUsage, measure_process, peak_rss

FACTOR = 4
#: LocalCluster workers of the distributed runs (one thread each, as ``downscale run``).
WORKERS = 2
#: Input multiples of the scaling section.
MULTIPLES = (1, 4, 16)
CDO_OPERATORS = ("remapbil", "remapbic", "remapcon")
MIB = 1 << 20


@dataclass(frozen=True)
class Size:
    """One benchmark size (see the table in the module docstring).

    Attributes:
        ny: Coarse latitude cells.
        nx: Coarse longitude cells.
        steps: Time steps of the 1x input.
        time_chunk: ``--time-chunk`` of every run (steps per task).
        repeats: Timed rounds of section 1 (after one warm-up round; the median is
            reported): the machine is shared and its timings are noisy.
        cdo_workers: ``--workers`` of the ``downscale run`` processes next to CDO.
    """

    ny: int
    nx: int
    steps: int
    time_chunk: int
    repeats: int = 1
    cdo_workers: tuple[int, ...] = (0, WORKERS)


SIZES = {"tiny": Size(12, 24, 2, 1, cdo_workers=(0,)),
         "small": Size(24, 48, 4, 1, cdo_workers=(0,)), "medium": Size(90, 180, 8, 2, 3),
         "large": Size(360, 720, 192, 4)}


# -- helpers ----------------------------------------------------------------------------------
def _usage(usage: ProcessUsage, what: str) -> ProcessUsage:
    if usage.returncode != 0:
        raise RuntimeError(f"{what} failed ({usage.returncode}): {usage.stderr[-2000:]}")
    return usage


def fit_checkpoint(data: Path, root: Path) -> Path:
    """Train the default model one step on ``data`` with ``downscale fit``; the checkpoint.

    Timings do not depend on the weights, only on the architecture (the package defaults:
    32 hidden channels, 2 coarse and 1 fine block, factor 4).
    """
    from unittest import mock

    from downscale.main import main as cli_main

    with mock.patch.object(sys, "argv", sys.argv[:1]):  # the benchmark's own are not fit's
        cli_main(["fit", "--model", "downscale.tasks.DownscalingTask",
                  "--data", "downscale.data.DownscalingDataModule", "--data.path", str(data),
                  "--data.variable", VARIABLE, "--data.factor", str(FACTOR),
                  "--data.batch_size", "2", "--data.samples_per_epoch", "2",
                  "--trainer.accelerator", "cpu", "--trainer.devices", "1",
                  "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1",
                  "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary",
                  "false", "--trainer.logger", "false", "--trainer.default_root_dir", str(root)])
    return sorted(root.glob("**/*.ckpt"))[-1]


def run_argv(checkpoint: Path, data: Path, output: Path, time_chunk: int,
             *extra: str) -> list[str]:
    """Arguments of ``downscale run`` as every section runs it (whole fields, no bar).

    The model is trained on ``data`` as the fine field and run on it as a coarse one:
    ``--any-spacing`` lets it (speed does not depend on what the model learned).
    """
    return ["--checkpoint", str(checkpoint), "--input", str(data), "--output", str(output),
            "--time-chunk", str(time_chunk), "--no-progress", "--force", "--any-spacing",
            *extra]


@dataclass(frozen=True)
class Input:
    """The generated coarse input, read into memory once for the in-memory stages.

    Attributes:
        path: The NetCDF file.
        values: ``(T, ny, nx)`` float32 air temperature (K).
        y_bnds: ``(ny, 2)`` latitude bounds (degrees).
        x_bnds: ``(nx, 2)`` longitude bounds (degrees).
    """

    path: Path
    values: NDArray[np.float32]
    y_bnds: NDArray[np.float64]
    x_bnds: NDArray[np.float64]

    @property
    def fine_cells(self) -> int:
        """Output cells of the whole input (time steps x fine cells)."""
        return int(self.values.size) * FACTOR * FACTOR


def read_input(path: Path) -> Input:
    """Read the generated input whole (small enough at 1x for every size)."""
    import netCDF4

    with netCDF4.Dataset(path) as nc:
        return Input(path, np.asarray(nc[VARIABLE][:], np.float32),
                     np.asarray(nc["lat_bnds"][:], np.float64),
                     np.asarray(nc["lon_bnds"][:], np.float64))


def _chunks(steps: int, size: int) -> list[tuple[int, int]]:
    return [(a, min(a + size, steps)) for a in range(0, steps, size)]


def _fine_steps(path: Path, steps: int = 8
                ) -> Iterator[tuple[slice, NDArray[np.float32]]]:
    """An output's ``(time slice, fine values)``, a few steps at a time (outputs of the large
    size do not fit in memory)."""
    import netCDF4

    with netCDF4.Dataset(path) as nc:
        values = nc[VARIABLE]
        for a, b in _chunks(len(values), steps):
            yield slice(a, b), np.asarray(values[a:b], np.float32)


def max_conservation_error(path: Path, data: Input) -> float:
    """Largest relative conservation error per coarse cell of a ``downscale run`` output."""
    from downscale.metrics import conservation_error

    area = fine_cell_areas(data.y_bnds, data.x_bnds, FACTOR)
    return max(float(conservation_error(fine, data.values[t], area, FACTOR).max_rel)
               for t, fine in _fine_steps(path))


def is_block_repeat(path: Path, data: Input) -> bool:
    """Whether an output holds exactly the input's values repeated ``FACTOR x FACTOR``."""
    return all(np.array_equal(fine, data.values[t].repeat(FACTOR, axis=1).repeat(FACTOR, axis=2))
               for t, fine in _fine_steps(path))


# -- section 1: the I/O floor -----------------------------------------------------------------
def stage_seconds(checkpoint: Path, data: Input, size: Size, workdir: Path
                  ) -> dict[str, float]:
    """Seconds of reading and of writing alone, chunk by chunk as ``downscale run`` cuts them.

    Each is the median of ``size.repeats`` calls after a warm-up (read: of 3). ``read``: the
    chunks through :class:`~downscale.data.source.FieldSource` (the page cache is warm, as
    it is for the runs); ``write``: precomputed fine chunks through the run's
    :class:`~downscale.writers.NetCDFWriter` (same encoding, atomic write and verification).
    Compute alone is timed with the runs (:func:`io_floor_run`).
    """
    from downscale.batch.plan import Job, OutputPlan, output_writer
    from downscale.data.source import FieldSource

    info = downscale.checkpoint.read_checkpoint(checkpoint)
    chunks = _chunks(len(data.values), size.time_chunk)

    def read() -> None:
        source = FieldSource([str(data.path)], VARIABLE, 1, crop=False)
        for a, b in chunks:
            source.read(slice(a, b), slice(None), slice(None))

    # One chunk's nearest upsampling, handed out for every chunk: memory stays one chunk.
    block = data.values[:size.time_chunk].repeat(FACTOR, axis=1).repeat(FACTOR, axis=2)
    job = Job(
        checkpoint=info.path, checkpoint_sha256=info.sha256, variable=VARIABLE, factor=FACTOR,
        tile_size=None, halo=None, time_chunk=size.time_chunk, device="cpu",
        history="benchmark",
        attrs={"downscale_config": json.dumps(info.config, sort_keys=True)})
    plan = OutputPlan(workdir / "write_alone.nc", (str(data.path),), 0, len(data.values),
                      "benchmark")

    def write() -> None:
        writer = output_writer(job, plan)
        writer.create()
        for a, b in chunks:
            writer.write(a, b, block[: b - a])
        writer.finish()

    seconds = {"read": median_seconds(read, 3), "write": median_seconds(write, size.repeats)}
    plan.path.unlink(missing_ok=True)
    return seconds


def _warm_workers(client: Any, checkpoint: Path) -> None:
    info = downscale.checkpoint.read_checkpoint(checkpoint)
    client.run(_load_quietly, info.path, info.sha256, info.task)


def _load_quietly(path: str, sha256: str, task: str) -> None:
    """Load (and cache) the model in a worker, returning nothing to the client."""
    downscale.checkpoint.load_model(path, sha256, "cpu", task)


def _downscale_in_memory(info: downscale.checkpoint.CheckpointInfo, values: NDArray[np.float32],
                         y_bnds: NDArray[np.float64], x_bnds: NDArray[np.float64]) -> None:
    """One chunk through the (cached) model, nothing read or written (a worker's task)."""
    model = downscale.checkpoint.load_model(info.path, info.sha256, "cpu", info.task)
    downscale_field(model, values, y_bnds, x_bnds, FACTOR)


def compute_alone(checkpoint: Path, data: Input, size: Size, client: Any | None
                  ) -> Callable[[], None]:
    """The model alone on the chunks in memory, in this process or on ``client``'s workers.

    The compute floor of a run in the same processes: 2 single-threaded workers are not
    one process with 2 torch threads (they scale better on small fields).
    """
    info = downscale.checkpoint.read_checkpoint(checkpoint)
    chunks = _chunks(len(data.values), size.time_chunk)
    if client is None:
        model = downscale.checkpoint.load_model(info.path, info.sha256, "cpu", info.task)

        def in_process() -> None:
            for a, b in chunks:
                downscale_field(model, data.values[a:b], data.y_bnds, data.x_bnds, FACTOR)

        return in_process

    def on_workers() -> None:
        client.gather([client.submit(_downscale_in_memory, info, data.values[a:b],
                                     data.y_bnds, data.x_bnds, pure=False) for a, b in chunks])

    return on_workers


def io_floor_run(checkpoint: Path, data: Input, size: Size, workdir: Path,
                 io_stages: dict[str, float], client: Any | None) -> dict[str, Any]:
    """Time ``downscale run`` with the default and the identity model, and compute alone.

    Args:
        io_stages: Seconds of read and write alone (:func:`stage_seconds`).
        client: A client of the workers that the runs join (``--scheduler``), or None to
            run in this process (``--workers 0``).

    Returns:
        Seconds and output cells/s of both runs and of compute alone, the ratio of the run
        to the slower of (I/O floor, compute alone), how much the stages overlap, the run's
        largest conservation error and whether the identity run's output is the
        block-repeated input.
    """
    workers = 0 if client is None else len(client.nthreads())
    extra = ["--workers", "0"] if client is None else ["--scheduler", client.scheduler.address]
    model_out, identity_out = workdir / f"run_w{workers}.nc", workdir / f"identity_w{workers}.nc"
    zarr_out = workdir / f"run_w{workers}.zarr"
    compute = compute_alone(checkpoint, data, size, client)

    def timed_run(output: Path, hooks: Any = None) -> Callable[[], float]:
        argv = run_argv(checkpoint, data.path, output, size.time_chunk, *extra)
        return lambda: wall_seconds(lambda: downscale.batch.cli.main(argv, hooks=hooks))

    # The steps take turns, so that load from the machine's other users falls on all alike.
    times = interleaved({"compute": functools.partial(wall_seconds, compute),
                         "run": timed_run(model_out), "zarr": timed_run(zarr_out),
                         "identity": timed_run(identity_out, IDENTITY_HOOKS)}, size.repeats)
    seconds = {name: median(t) for name, t in times.items()}
    row = _floor_row(workers, seconds["run"], seconds["identity"],
                     {**io_stages, "compute": seconds["compute"]}, data)
    row["conservation_max_rel"] = max_conservation_error(model_out, data)
    row["identity_is_block_repeat"] = is_block_repeat(identity_out, data)
    row.update(zarr_s=seconds["zarr"], zarr_over_netcdf=seconds["zarr"] / seconds["run"],
               zarr_equals_netcdf=_same_values(zarr_out, model_out))
    return row


def _same_values(store: Path, netcdf: Path) -> bool:
    """Whether a Zarr store and a NetCDF file hold the same values of the variable."""
    import xarray as xr

    with xr.open_zarr(store) as a, xr.open_dataset(netcdf) as b:
        return bool(np.array_equal(a[VARIABLE].values, b[VARIABLE].values, equal_nan=True))


#: Below this share of the slowest stage, the other stages are too short for their overlap
#: to be told from noise (and it hardly matters).
OVERLAP_RESOLUTION = 0.1


def _floor_row(workers: int, model_s: float, identity_s: float, stages: dict[str, float],
               data: Input) -> dict[str, Any]:
    stage_sum, stage_max = sum(stages.values()), max(stages.values())
    hidden = stage_sum - stage_max
    # 1: the run takes as long as its slowest stage (full overlap); 0: as long as their sum.
    overlap = ((stage_sum - model_s) / hidden if hidden >= OVERLAP_RESOLUTION * stage_max
               else None)
    return {"workers": workers, "run_s": model_s, "identity_s": identity_s,
            "compute_s": stages["compute"], "run_cells_per_s": data.fine_cells / model_s,
            "identity_cells_per_s": data.fine_cells / identity_s,
            "compute_cells_per_s": data.fine_cells / stages["compute"],
            "ratio_to_slower": model_s / max(identity_s, stages["compute"]),
            "stage_sum_s": stage_sum, "stage_max_s": stage_max,
            "io_share": (stage_sum - stages["compute"]) / stages["compute"], "overlap": overlap}


# -- section 2: CDO -------------------------------------------------------------------------
def cdo_grid(path: Path, data: Input) -> Path:
    """Write the CDO description of the fine grid (each coarse cell split evenly)."""
    lat, lon = fine_bounds(data.y_bnds, FACTOR), fine_bounds(data.x_bnds, FACTOR)
    lines = ["gridtype = lonlat", f"xsize = {len(lon)}", f"ysize = {len(lat)}",
             f"xfirst = {lon[0].mean():.10g}", f"xinc = {lon[0, 1] - lon[0, 0]:.10g}",
             f"yfirst = {lat[0].mean():.10g}", f"yinc = {lat[0, 1] - lat[0, 0]:.10g}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def _process_row(tool: str, usage: ProcessUsage, cells: int) -> dict[str, Any]:
    return {"tool": tool, "seconds": usage.seconds, "cells_per_s": cells / usage.seconds,
            "peak_total_mib": usage.peak_total / MIB, "peak_main_mib": usage.peak_main / MIB,
            "peak_worker_mib": max(usage.peak_children, default=0) / MIB}


def run_process(checkpoint: Path, data: Path, output: Path, time_chunk: int,
                workers: int) -> ProcessUsage:
    """``downscale run`` as a subprocess (start-up, and the cluster's for workers, included)."""
    argv = [sys.executable, "-m", "downscale", "run",
            *run_argv(checkpoint, data, output, time_chunk, "--workers", str(workers))]
    return _usage(measure_process(argv, checkout_env()), "downscale run")


def cdo_section(checkpoint: Path, data: Input, size: Size, workdir: Path) -> dict[str, Any]:
    """CDO's bilinear, bicubic and conservative remapping to the fine grid, as processes.

    CDO writes NetCDF-4 with zlib level 4 (``-f nc4 -z zip_4``), the encoding of ``downscale
    run``'s output, with one OpenMP thread a core (``-P``), as torch uses in one process.
    """
    rows = []
    for workers in size.cdo_workers:
        out = workdir / f"process_w{workers}.nc"
        usage = run_process(checkpoint, data.path, out, size.time_chunk, workers)
        rows.append(_process_row(f"downscale run --workers {workers}", usage, data.fine_cells))
        out.unlink()
    cdo = shutil.which("cdo")
    if cdo is None:
        return {"status": "not measured: cdo not installed", "rows": rows}
    grid = cdo_grid(workdir / "fine_grid.txt", data)
    for op in CDO_OPERATORS:
        out = workdir / f"cdo_{op}.nc"
        usage = measure_process([cdo, "-s", "-P", str(len(os.sched_getaffinity(0))), "-f",
                                 "nc4", "-z", "zip_4", f"{op},{grid}", str(data.path),
                                 str(out)])
        rows.append(_process_row(f"cdo {op}", _usage(usage, f"cdo {op}"), data.fine_cells))
        out.unlink(missing_ok=True)
    return {"status": "measured", "version": cdo_version(cdo), "rows": rows}


def cdo_version(cdo: str) -> str:
    """The first line of ``cdo --version`` (CDO prints it on stdout or stderr)."""
    about = subprocess.run([cdo, "--version"], capture_output=True, text=True, check=False)
    return ((about.stdout + about.stderr).strip().splitlines() or ["cdo"])[0]


# -- section 3: scaling ---------------------------------------------------------------------
def scaling_section(checkpoint: Path, data: Input, size: Size, workdir: Path, client: Any
                    ) -> dict[str, Any]:
    """``downscale run`` on 1x, 4x and 16x the steps, on the running workers of ``client``.

    The runs join the warm cluster (``--scheduler``), so time per step is not blurred by
    start-up; memory is sampled in this process (which holds the benchmark as well: its
    RSS before the run is reported) and in each worker. The 1x input is ``data``; the larger
    ones repeat its generation with more steps (the same first steps) and are deleted as
    soon as they are measured.
    """
    import psutil  # type: ignore[import-untyped]

    workers = sorted(client.run(os.getpid).values())
    processes = [psutil.Process(pid) for pid in (os.getpid(), *workers)]
    rows = []
    for multiple in MULTIPLES:
        steps = size.steps * multiple
        path = data.path if multiple == 1 else write_field(
            workdir / f"input_{multiple}x.nc", steps, size.ny, size.nx)
        out = workdir / f"scale_{multiple}x.nc"
        argv = run_argv(checkpoint, path, out, size.time_chunk, "--scheduler",
                        client.scheduler.address)
        before = psutil.Process().memory_info().rss
        with peak_rss(lambda: processes) as peaks:
            seconds = wall_seconds(functools.partial(downscale.batch.cli.main, argv))
        out.unlink()
        if multiple > 1:
            path.unlink()
        rows.append({"multiple": multiple, "steps": steps, "seconds": seconds,
                     "seconds_per_step": seconds / steps, "main_before_mib": before / MIB,
                     "peak_total_mib": peaks[0] / MIB, "peak_main_mib": peaks[os.getpid()] / MIB,
                     "peak_worker_mib": max(peaks[w] for w in workers) / MIB})
    first, last = rows[0], rows[-1]
    return {"workers": len(workers), "rows": rows,
            "per_step_ratio": last["seconds_per_step"] / first["seconds_per_step"],
            "peak_total_ratio": last["peak_total_mib"] / first["peak_total_mib"],
            "peak_worker_ratio": last["peak_worker_mib"] / first["peak_worker_mib"]}


# -- the whole benchmark ------------------------------------------------------------------------
def run(size: str, workdir: Path, *, keep_outputs: bool = False) -> dict[str, Any]:
    """Run the three sections at ``size`` in ``workdir`` (a temporary directory).

    Args:
        size: A key of :data:`SIZES`.
        workdir: Where the inputs, checkpoint and outputs are written.
        keep_outputs: Keep the 1x input, the checkpoint and section 1's outputs (tests read
            them: ``run_w0.nc``, ``identity_w0.nc``, ``run_w2.nc``, ``identity_w2.nc``);
            else all is deleted.

    Returns:
        JSON-serialisable figures: ``grid``, ``io_floor``, ``cdo``, ``scaling``.
    """
    spec = SIZES[size]
    workdir.mkdir(parents=True, exist_ok=True)
    path = write_field(workdir / "input_1x.nc", spec.steps, spec.ny, spec.nx)
    data = read_input(path)
    checkpoint = fit_checkpoint(path, workdir / "fit")
    io_stages = stage_seconds(checkpoint, data, spec, workdir)
    with downscale.batch.cli.dask_client(None, WORKERS, "auto") as client:
        # Joined with --scheduler so that the model can be swapped in the workers; warm,
        # so that neither the cluster's start nor the model's first load is counted.
        _warm_workers(client, checkpoint)
        runs = [io_floor_run(checkpoint, data, spec, workdir, io_stages, c)
                for c in (None, client)]
        stages = {**io_stages, "compute": runs[0]["compute_s"]}
        floor = {"stages_s": stages, "compute_cells_per_s": data.fine_cells / stages["compute"],
                 "read_cells_per_s": data.fine_cells / stages["read"],
                 "write_cells_per_s": data.fine_cells / stages["write"], "runs": runs}
        scaling = scaling_section(checkpoint, data, spec, workdir, client)
    result = {"size": size, "grid": {"coarse": [spec.ny, spec.nx],
                                     "fine": [spec.ny * FACTOR, spec.nx * FACTOR],
                                     "factor": FACTOR, "steps": spec.steps,
                                     "time_chunk": spec.time_chunk,
                                     "input_mib": path.stat().st_size / MIB},
              "cpus": len(os.sched_getaffinity(0)), "io_floor": floor,
              "cdo": cdo_section(checkpoint, data, spec, workdir), "scaling": scaling}
    if not keep_outputs:
        for leftover in [path, *workdir.glob("run_w*.nc"), *workdir.glob("identity_w*.nc")]:
            leftover.unlink(missing_ok=True)
        for store in workdir.glob("run_w*.zarr"):
            shutil.rmtree(store)
        shutil.rmtree(workdir / "fit", ignore_errors=True)
    return result


# -- markdown -----------------------------------------------------------------------------------
def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if math.isfinite(value) and abs(value) < 1e4 else f"{value:.3e}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _overlap(row: dict[str, Any]) -> str:
    if row["overlap"] is None:
        return f"n/a (I/O {row['io_share']:.1%} of compute)"
    return f"{row['overlap']:.2f}"


def markdown(result: dict[str, Any]) -> str:
    """Markdown sections (absolute figures and ratios) of a :func:`run` result."""
    grid, floor, cdo, scaling = (result[k] for k in ("grid", "io_floor", "cdo", "scaling"))
    cy, cx = grid["coarse"]
    fy, fx = grid["fine"]
    stages = floor["stages_s"]
    parts = [
        f"### Batch inference: `downscale run` vs the I/O floor ({result['size']})",
        f"Coarse {cy} x {cx} -> fine {fy} x {fx} (factor {grid['factor']}), "
        f"{grid['steps']} steps, {grid['time_chunk']} step(s) per chunk, default model, whole "
        f"fields; {result['cpus']} CPU cores. The I/O floor is the same run with the identity "
        "model (nearest upsampling). Stages alone: read "
        f"{stages['read']:.3g} s, model compute {stages['compute']:.3g} s "
        f"({floor['compute_cells_per_s']:.3e} cells/s), write {stages['write']:.3g} s.",
        _table(["workers", "run (s)", "run cells/s", "I/O floor (s)", "floor cells/s",
                "compute alone (s)", "compute cells/s", "run / max(floor, compute)",
                "sum of stages (s)", "max stage (s)", "overlap", "conservation max rel. error"],
               [[r["workers"], r["run_s"], r["run_cells_per_s"], r["identity_s"],
                 r["identity_cells_per_s"], r["compute_s"], r["compute_cells_per_s"],
                 r["ratio_to_slower"], r["stage_sum_s"], r["stage_max_s"],
                 _overlap(r), r["conservation_max_rel"]] for r in floor["runs"]]),
        "Target: run / max(floor, compute) <= 1.3. Compute alone: the model on the chunks in "
        "memory, in this process (workers 0: torch's threads) or on the workers. Stages: "
        "read, compute and write alone. Overlap: (sum - run) / (sum - max) of the stage "
        "times, 1 when the run takes only as long as its slowest stage, 0 when the stages "
        "follow one another; not given where read + write are under "
        f"{OVERLAP_RESOLUTION:.0%} of compute (the run is compute-bound and the overlap "
        "cannot be told from noise). Workers 0 runs in one process, so its stages follow "
        "one another; with workers the chunks are computed while this process writes.",
        _table(["workers", "NetCDF run (s)", "Zarr run (s)", "Zarr / NetCDF", "same values"],
               [[r["workers"], r["run_s"], r["zarr_s"], r["zarr_over_netcdf"],
                 "yes" if r["zarr_equals_netcdf"] else "**no**"] for r in floor["runs"]]),
        "NetCDF: this process writes each chunk as it arrives (HDF5 takes one writer); Zarr "
        "(`--output x.zarr`): each chunk is written into the store by the process that "
        "computed it, and the store is consolidated and renamed at the end.",
        f"### Against CDO ({result['size']})",
    ]
    if cdo["status"] != "measured":
        parts.append(cdo["status"])
    base = cdo["rows"][0]["seconds"]
    parts += [
        f"{cdo.get('version', '')}. Every tool is a fresh process, start-up included (for "
        "`downscale run`: Python, torch, the checkpoint and, with workers, the Dask cluster); "
        "all write NetCDF-4 with zlib level 4; CDO gets one OpenMP thread a core. Peak "
        "memory: RSS summed over the process and its children at one instant.",
        _table(["tool", "wall (s)", "output cells/s", "peak total (MiB)",
                "peak of one worker (MiB)", "time / downscale run --workers 0"],
               [[r["tool"], r["seconds"], r["cells_per_s"], r["peak_total_mib"],
                 r["peak_worker_mib"], r["seconds"] / base] for r in cdo["rows"]])]
    parts += [
        f"### Scaling of `downscale run` ({result['size']}, {scaling['workers']} warm workers)",
        _table(["input", "steps", "wall (s)", "s per step", "peak total (MiB)",
                "main before (MiB)", "peak main (MiB)", "peak worker (MiB)"],
               [[f"{r['multiple']}x", r["steps"], r["seconds"], r["seconds_per_step"],
                 r["peak_total_mib"], r["main_before_mib"], r["peak_main_mib"],
                 r["peak_worker_mib"]] for r in scaling["rows"]]),
        f"16x / 1x: time per step {scaling['per_step_ratio']:.3g} (1: linear in time), peak "
        f"total memory {scaling['peak_total_ratio']:.3g}, peak worker memory "
        f"{scaling['peak_worker_ratio']:.3g} (target: <= 1.2). The runs join a warm cluster "
        "(start-up not counted); the main process is the benchmark's own, whose RSS before "
        "each run is shown."]
    return "\n\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m benchmarks.batch``: run at ``--size``, print markdown, write JSON."""
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m benchmarks.batch")
    parser.add_argument("--size", choices=tuple(SIZES), default="small")
    parser.add_argument("--output", help="JSON file for the figures (default: none)")
    parser.add_argument("--workdir", help="work in this directory and keep the 1x input, "
                        "the checkpoint and section 1's outputs (default: a temporary "
                        "directory, deleted)")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or stack.enter_context(
            tempfile.TemporaryDirectory(prefix="downscale-bench-batch-"))
        result = run(args.size, Path(workdir), keep_outputs=args.workdir is not None)
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
