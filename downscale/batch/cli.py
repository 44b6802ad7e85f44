r"""``downscale run``: downscale coarse NetCDF files with a trained checkpoint, at scale.

Examples::

    # one output file, on a local Dask cluster (one single-threaded worker per core)
    downscale run --checkpoint model.ckpt --input tas_2deg.nc --output tas_fine.nc
    # a Zarr store instead: each worker writes the chunks it computes
    downscale run --checkpoint model.ckpt --input tas_2deg.nc --output tas_fine.zarr
    # one output per input, 8 workers, tiles of 512 x 512 fine cells
    downscale run --checkpoint model.ckpt --input tas_19*.nc --output-dir out/ \
        --workers 8 --tile-size 512
    # a long record as Zarr stores of 120 time steps, on an existing Dask scheduler
    downscale run --checkpoint model.ckpt --input tas.nc --output-dir out/ \
        --time-block 120 --format zarr --scheduler tcp://10.0.0.1:8786
    # in this process, no Dask cluster (small jobs, debugging)
    downscale run --checkpoint model.ckpt --input tas_2deg.nc --output tas_fine.nc --workers 0
    # a CMIP file (ta in degC, 1 degree) for a model of air_temperature in K at 5 degrees
    downscale run --checkpoint model.ckpt --input ta_1deg.nc --output ta_fine.nc \
        --regrid conservative
    # terrain: a TerrainTask checkpoint turns a coarse DEM into a fine one (surface_altitude)
    downscale run --checkpoint terrain.ckpt --input dem_coarse.nc --output dem_fine.nc

How it works (docs/method.md, "Scale"):

* The inputs are COARSE fields on a regular grid, opened lazily
  (:func:`downscale.io.open_field`). Each coarse cell becomes ``factor x factor`` fine
  cells (its bounds split evenly; spherical areas on a lat-lon grid).
* The work is cut into chunks of ``--time-chunk`` time steps. A task reads its own chunk
  from the input files, runs the model on it tile by tile with halos
  (:func:`downscale.inference.downscale_field`) and hands back (or writes) the fine chunk,
  so memory is bounded by a chunk (and a tile), never by the input. Each worker process
  loads the model once. Tasks go to Dask in a bounded window (:mod:`downscale.batch.execute`).
* Output format, by name: an output ending in ``.zarr`` is a Zarr store, anything else
  NetCDF; ``--format zarr`` names ``--output-dir``'s entries ``*.zarr``. NetCDF: this
  process writes ``--output``'s chunks as they come; with ``--output-dir`` each file is one
  task written by its worker (the directory must be visible to them). Zarr: every chunk is
  written by the worker that computed it (region writes, consolidated metadata).
* The variable is the one with the checkpoint's CF ``standard_name`` (``ta`` for a model
  of ``air_temperature``), else the checkpoint's name; the output keeps the input's name.
  Units are converted into the model's with cf-units and the output back into the
  input's (degC in, degC out). An input at another coarse spacing than the model's is
  refused, or remapped onto it first with ``--regrid conservative`` (conservation then
  holds against the remapped field). See docs/method.md, "Other sources".
* A terrain generator's checkpoint runs the same way on coarse DEMs (any elevation
  variable in metres; whole fields only, since the generator takes each field's relief
  about its own mean).
* Every output is written under a temporary name, verified and renamed
  (:mod:`downscale.writers`): a final name only ever holds a complete output.
* Before anything is written, the outputs' size is set against the free space of the
  output directory (:mod:`downscale.batch.space`): refused when even compressed they
  cannot fit, a warning when uncompressed they may not. A disk that fills anyway, or a
  Dask worker that dies, stops the run in one line; the same command then resumes.
* Resumable: ``downscale_run_record.json`` next to the outputs records each output's
  sha256 and a hash of what made it (checkpoint sha256, its configuration, the variable,
  the inputs' paths, sizes and modification times, the time steps and the package
  version). A rerun skips the outputs whose content and record agree, redoes the others,
  removes the temporaries a killed run left behind, and finishes a killed run's Zarr
  stores chunk by chunk. A lock file (``.downscale_run.lock``) keeps two runs from writing
  into one directory at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from downscale import __version__
from downscale.batch.execute import Hooks, Runner, run_outputs
from downscale.batch.inputs import (
    check_covariate,
    default_variable,
    input_units,
    open_inputs,
    run_attrs,
)
from downscale.batch.plan import (
    AUTO_CHUNK_BYTES,
    FORMATS,
    Job,
    OutputPlan,
    auto_time_chunk,
    plan_outputs,
)
from downscale.batch.record import RunRecord
from downscale.batch.space import check_free_space
from downscale.checkpoint import CheckpointInfo, check_trained_for, read_checkpoint
from downscale.errors import CheckpointError, InputError
from downscale.helptext import plain
from downscale.matching import standard_names_in
from downscale.spacing import check_spacing
from downscale.validate import check_coverage
from downscale.writers import resumable_names

log = logging.getLogger(__name__)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    """The options of ``downscale run``."""
    p = argparse.ArgumentParser(prog="downscale run", description=plain(__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint (.ckpt) of 'downscale fit'")
    p.add_argument("--input", required=True, nargs="+", help="coarse NetCDF file(s)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--output", help="one output (the inputs joined in time): a NetCDF "
                        "file, or a Zarr store when the name ends in .zarr")
    target.add_argument("--output-dir", help="a directory for one output per input, or per "
                        "--time-block time steps")
    p.add_argument("--format", choices=tuple(FORMATS), help="with --output-dir: format of "
                   "the outputs (default netcdf; zarr names them *.zarr)")
    p.add_argument("--time-block", type=_positive, help="with --output-dir: time steps per "
                   "output (the inputs joined in time)")
    p.add_argument("--variable", help="the input variable (default: the one with the "
                   "checkpoint's standard_name, else the checkpoint's variable name)")
    spacing = p.add_mutually_exclusive_group()
    spacing.add_argument("--regrid", choices=("conservative",), help="inputs at another "
                         "coarse spacing than the model's: remap them conservatively onto "
                         "a grid of the model's spacing first (default: refuse them)")
    spacing.add_argument("--any-spacing", action="store_true", help="apply the model at the "
                         "input's own spacing even where it differs from the one it was "
                         "trained at (the output records it)")
    p.add_argument("--covariate", help="static covariate on the fine grid (e.g. generated "
                   "terrain), for a checkpoint trained with one")
    p.add_argument("--covariate-variable", help="the covariate's variable (default: the "
                   "file's elevation variable)")
    p.add_argument("--tile-size", type=_positive, help="tile edge in fine cells, rounded "
                   "down to whole coarse cells (default: whole fields)")
    p.add_argument("--halo", type=int, help="tile halo in coarse cells (default: the model's "
                   "receptive field, computed from its convolutions)")
    p.add_argument("--time-chunk", type=_positive, help="time steps per task "
                   f"(default: about {AUTO_CHUNK_BYTES >> 20} MiB of output)")
    p.add_argument("--workers", type=int, default=min(len(os.sched_getaffinity(0)), 8),
                   help="LocalCluster workers, one thread each; 0 runs in this process "
                   "(default: one per core, at most 8)")
    p.add_argument("--memory-limit", default="auto", help="memory limit of each "
                   "LocalCluster worker, e.g. 2GB (default: auto)")
    p.add_argument("--scheduler", help="address of a running Dask scheduler "
                   "(e.g. tcp://host:8786); --workers is then ignored")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="torch device of the model (auto: cuda where available)")
    p.add_argument("--force", action="store_true", help="redo outputs that are complete")
    p.add_argument("--plot", metavar="PNG", help="also save a map of the first output's "
                   "first time step, with its coarse input")
    p.add_argument("--strict", action="store_true", help="refuse an input, or a time "
                   "step, with no valid value (default: warn; missing in, missing out)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


@contextlib.contextmanager
def dask_client(scheduler: str | None, workers: int, memory_limit: str
                ) -> Iterator[Any | None]:
    """A Dask client: on ``scheduler``, on a new LocalCluster, or None (``workers == 0``).

    Raises:
        InputError: The scheduler cannot be reached.
    """
    if scheduler is None and workers == 0:
        yield None
        return
    import importlib.util

    from distributed import Client, LocalCluster

    with contextlib.ExitStack() as stack:
        if scheduler is not None:
            try:
                client = stack.enter_context(
                    Client(scheduler, timeout="30s"))  # type: ignore[no-untyped-call]
            except (OSError, TimeoutError) as exc:
                raise InputError(f"cannot connect to the Dask scheduler ({exc})",
                                 path=scheduler, hint="check the address (tcp://host:8786) "
                                 "and that the scheduler is running") from exc
        else:
            cluster = stack.enter_context(LocalCluster(  # type: ignore[no-untyped-call]
                n_workers=workers, threads_per_worker=1, processes=True,
                memory_limit=memory_limit, dashboard_address=":0",
                silence_logs=logging.ERROR))
            client = stack.enter_context(Client(cluster))  # type: ignore[no-untyped-call]
        if importlib.util.find_spec("bokeh") is not None:
            log.info("Dask dashboard: %s", client.dashboard_link)
        else:
            log.info("Dask scheduler %s (pip install bokeh for the dashboard)",
                     client.scheduler.address)
        yield client


def _halo(model: Any, args: argparse.Namespace, ckpt: CheckpointInfo) -> int | None:
    """The tiles' halo: ``--halo``, else the model's receptive field (None: no tiles)."""
    from downscale.inference import model_halo

    if args.halo is not None:
        if args.halo < 0:
            raise InputError(f"--halo must be >= 0 coarse cells, got {args.halo}",
                             hint="leave it out to use the model's receptive field")
        return int(args.halo)
    if args.tile_size is None:
        return None
    try:
        return model_halo(model)
    except ValueError as exc:
        raise CheckpointError(f"{ckpt.path}: cannot tile: {exc}. Pass --halo N (coarse "
                              "cells), or leave out --tile-size.") from exc


@contextlib.contextmanager
def _terminate_cleanly() -> Iterator[None]:
    """Turn SIGTERM (a scheduler's kill) into ``SystemExit(143)`` while a run goes on.

    The exit unwinds like any exception: the NetCDF temporary being written is removed
    and the lock released, so a terminated run leaves nothing half-written (SIGKILL cannot
    be caught; the next run removes what it leaves). Zarr stores are kept to be resumed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _output_folder(args: argparse.Namespace) -> Path:
    """The folder the outputs go to (``--output``'s, or ``--output-dir``)."""
    return Path(args.output).resolve().parent if args.output else Path(args.output_dir).resolve()


def _check_options(args: argparse.Namespace) -> None:
    if args.time_block is not None and args.output_dir is None:
        raise InputError("--time-block needs --output-dir", hint="add --output-dir DIR")
    if args.format is not None and args.output_dir is None:
        raise InputError("--format applies to --output-dir", hint="with --output, the name "
                         "decides: .zarr for a Zarr store, else NetCDF")
    if args.workers < 0:
        raise InputError(f"--workers must be >= 0, got {args.workers}",
                         hint="use 0 to run in this process")


def main(argv: Sequence[str] | None = None, hooks: Hooks | None = None) -> None:
    """Run ``downscale run`` (see the module docstring); SIGTERM ends it cleanly.

    Args:
        argv: The options of ``downscale run`` (default: ``sys.argv[1:]``).
        hooks: Injected model loader and pauses (tests, benchmarks); default: none.

    Raises:
        CheckpointError: The checkpoint is missing, unreadable, or made for another variable
            or other units.
        InputError: An input is missing, unreadable, lacks the variable or lies on another
            grid; the output directory cannot be written; another run holds it.
    """
    hooks = hooks or Hooks()
    args = parser().parse_args(argv)
    _check_options(args)
    ckpt = read_checkpoint(args.checkpoint)
    variable = args.variable or default_variable(ckpt, str(args.input[0]))
    if args.variable:  # the default holds the checkpoint's quantity, or is its name
        check_trained_for(ckpt.contents, ckpt.path, variable=variable, terrain=ckpt.is_terrain,
                          standard_name=standard_names_in(str(args.input[0])).get(variable))
    inputs = [str(p) for p in args.input]
    fields = open_inputs(inputs, variable, ckpt)
    units = input_units(inputs, fields, variable, ckpt)
    regridded = None
    if args.regrid:
        from downscale.regrid import regrid_for_model

        inputs, regridded = regrid_for_model(ckpt.contents["downscale_data"], ckpt.path,
                                             inputs, fields, variable, _output_folder(args))
        fields = open_inputs(inputs, variable, ckpt) if regridded else fields
    spacing_note = check_spacing(ckpt.contents["downscale_data"], fields[0], where=ckpt.path,
                                 path=inputs[0], terrain=ckpt.is_terrain,
                                 refuse=not args.any_spacing)
    for path, field in zip(inputs, fields, strict=True):
        check_coverage(field[variable], path=path, strict=args.strict)
    covariate = check_covariate(args.covariate, args.covariate_variable, ckpt, fields[0])
    directory, plans = plan_outputs(
        ckpt, variable, inputs, fields, output=args.output, output_dir=args.output_dir,
        time_block=args.time_block, fmt=args.format or "netcdf", covariate=covariate)
    model = hooks.load_model(ckpt.path, ckpt.sha256, "cpu", ckpt.task)  # fail here, once
    job = Job(checkpoint=ckpt.path, checkpoint_sha256=ckpt.sha256, variable=variable,
              factor=ckpt.factor, tile_size=args.tile_size, halo=_halo(model, args, ckpt),
              time_chunk=args.time_chunk or auto_time_chunk(fields[0], ckpt.factor),
              device=args.device,
              history=(f"downscale {__version__} run --checkpoint {ckpt.path} --variable "
                       f"{variable} --input {' '.join(map(str, args.input))}"
                       + (f" --regrid {args.regrid}" if args.regrid else "")),
              task=ckpt.task, covariate=covariate, covariate_variable=args.covariate_variable,
              units=None if units is None or units.is_identity else units,
              attrs={"downscale_checkpoint_sha256": ckpt.sha256,
                     "downscale_config": json.dumps(ckpt.config, sort_keys=True),
                     "downscale_version": __version__,
                     "downscale_command": "run",
                     **run_attrs(units, spacing_note, regridded)})
    with _terminate_cleanly(), RunRecord(directory) as record:
        resumable = set().union(*(resumable_names(p.path, p.tag(job.time_chunk))
                                  for p in plans))
        names = [p.path.name for p in plans]
        record.remove_temporaries(names, keep=resumable)
        todo = [p for p in plans if args.force or not record.is_complete(p.path, p.key)]
        for plan in plans:
            if plan not in todo:
                log.info("Skipping %s: complete and verified", plan.path)
        if not todo:
            log.info("Nothing to do: all %d output(s) are complete.", len(plans))
        else:
            check_free_space(directory, job, todo, fields)
            try:
                _run_todo(args, job, todo, record, hooks, variable, inputs, ckpt.factor)
            finally:  # what killed workers left (the cluster is closed by now)
                record.remove_temporaries(names, keep=resumable)
            log.info("Done: %d written, %d skipped.", len(todo), len(plans) - len(todo))
    if args.plot:
        from downscale.plotting import plot_output

        plot_output(plans[0].path, args.plot, variable=variable, coarse=plans[0].inputs[0])
        log.info("Wrote %s", args.plot)


def _run_todo(args: argparse.Namespace, job: Job, todo: Sequence[OutputPlan], record: RunRecord,
              hooks: Hooks, variable: str, inputs: Sequence[str], factor: int) -> None:
    """Compute and write the outputs still to do, with a progress bar (on Dask or here)."""
    from tqdm.auto import tqdm

    log.info("Downscaling %s (%s) by %d into %d output(s); %d time step(s) per chunk.",
             variable, ", ".join(inputs), factor, len(todo),
             min(job.time_chunk, max(p.stop - p.start for p in todo)))
    total = sum(p.stop - p.start for p in todo)
    with (tqdm(total=total, unit="step", disable=True if args.no_progress else None,
               file=sys.stderr) as progress,
          dask_client(args.scheduler, args.workers, args.memory_limit) as client):
        run_outputs(job, todo, record, Runner(client), hooks, progress.update)
