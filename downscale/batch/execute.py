"""Running the chunks of ``downscale run``: in this process, or on Dask.

Work goes to Dask through its public API only: ``client.submit`` with a bounded window of
tasks in flight (two per worker thread) and :func:`distributed.as_completed`; results are
taken in whatever order they finish. Memory is bounded by the window (workers) and by
one chunk (this process).

* One NetCDF output (``--output``, or any NetCDF output in this process): the tasks compute
  chunks, this process writes each one into the file as it arrives (HDF5: one writer).
* NetCDF outputs of ``--output-dir`` on Dask: each output is one task; the worker computes
  its chunks one after the other and writes its own file.
* Zarr outputs: the metadata are written here, then every chunk is a task that computes it
  and writes its own region into the store, and marks it done; this process only renames
  the store when all its chunks are done. A rerun after a kill does the missing chunks.

What tests and benchmarks change is injected as :class:`Hooks` (the model loader, pauses
at named points), never read from the environment.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from downscale.batch.inputs import bounds_key, covariate_on
from downscale.batch.plan import Job, OutputPlan, field_source, output_writer
from downscale.batch.record import RunRecord, record_entry
from downscale.checkpoint import load_model
from downscale.errors import DiskFullError, WorkerLostError
from downscale.grid import horizontal_dims
from downscale.grid_geometry import geometry_of
from downscale.writers import OutputWriter, ZarrWriter, is_zarr

log = logging.getLogger(__name__)

FineChunk = np.ndarray[Any, np.dtype[np.float32]]
#: The named points a :class:`Hooks.pause` is called at.
POINTS = ("read", "computed", "written", "renamed")
#: Failures after which a run keeps its Zarr stores (and chunks written) for the next run:
#: an interrupt, a full disk, a lost worker. Any other failure removes them.
RESUMABLE = (SystemExit, KeyboardInterrupt, DiskFullError, WorkerLostError)


def _no_pause(point: str) -> None:
    """The default pause: none."""


@dataclass(frozen=True)
class Hooks:
    """What tests and benchmarks inject into a run (picklable: sent to the workers).

    Attributes:
        load_model: Builds the model: ``load_model(checkpoint, sha256, device, task)``
            (default :func:`downscale.checkpoint.load_model`, cached per process).
        pause: Called at each named point of :data:`POINTS`: ``read`` (a chunk read),
            ``computed`` (a chunk downscaled), ``written`` (a chunk written into its
            output), ``renamed`` (an output renamed, before the record holds it).
    """

    load_model: Callable[[str, str, str, str], Any] = load_model
    pause: Callable[[str], None] = field(default=_no_pause)


def compute_chunk(job: Job, inputs: tuple[str, ...], start: int, stop: int,
                  hooks: Hooks) -> FineChunk:
    """Downscale time steps ``start:stop`` of the inputs (runs on a worker, or here).

    Returns:
        ``(stop - start, H, W)`` float32 fine values, NaN where the input is missing.

    Raises:
        InputError: The chunk holds undeclared fill values or infinities.
    """
    from downscale.inference import downscale_field
    from downscale.io import check_values

    source = field_source(inputs, job.variable)
    ds = source.dataset
    ydim, xdim = horizontal_dims(ds)
    values = source.read(slice(start, stop), slice(None), slice(None))
    check_values(source.data, values, path=", ".join(inputs), offset={"time": start})
    hooks.pause("read")
    if job.units is not None:  # the model works in its own units; the output in the input's
        values = job.units.to_model(values)
    model = hooks.load_model(job.checkpoint, job.checkpoint_sha256, job.device, job.task)
    covariate = None
    if job.covariate is not None:
        covariate = covariate_on(job.covariate, job.covariate_variable, job.factor,
                                 *bounds_key(ds)).values[None]
    fine = downscale_field(model, values, ds[f"{ydim}_bnds"].values, ds[f"{xdim}_bnds"].values,
                           job.factor, tile_size=job.tile_size, halo=job.halo,
                           geometry=geometry_of(ds), covariate=covariate)
    if job.units is not None:
        fine = job.units.from_model(fine)
    hooks.pause("computed")
    return fine


def write_zarr_chunk(job: Job, plan: OutputPlan, writer: ZarrWriter, start: int, stop: int,
                     hooks: Hooks) -> int:
    """Compute one chunk and write it into its Zarr store (on a worker); returns its steps."""
    values = compute_chunk(job, plan.inputs, start, stop, hooks)
    writer.write(start - plan.start, stop - plan.start, values)
    hooks.pause("written")
    writer.mark_done(start, stop)
    return stop - start


def _record(job: Job, plan: OutputPlan) -> dict[str, Any]:
    return record_entry(plan.path, plan.key, plan.inputs, (plan.start, plan.stop),
                        job.checkpoint_sha256, job.attrs["downscale_config"])


def write_netcdf_output(job: Job, plan: OutputPlan, hooks: Hooks) -> dict[str, Any]:
    """One NetCDF output computed and written by the calling process (a worker's task).

    Returns:
        The output's record entry.
    """
    return _write_here(job, plan, hooks, Runner(None), lambda steps: None)


def _write_here(job: Job, plan: OutputPlan, hooks: Hooks, runner: Runner,
                progress: Callable[[int], None]) -> dict[str, Any]:
    """Write one NetCDF output from here, its chunks computed by ``runner``."""
    writer = output_writer(job, plan)
    writer.create()
    try:
        calls = [(job, plan.inputs, a, b, hooks) for a, b in plan.chunks(job.time_chunk)]
        for (_, _, a, b, _), values in runner.map(compute_chunk, calls,
                                                  lambda args: plan.path):
            writer.write(a - plan.start, b - plan.start, values)
            hooks.pause("written")
            progress(b - a)
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    hooks.pause("renamed")
    return _record(job, plan)


class Runner:
    """Calls a function on argument tuples here, or on Dask with a bounded window.

    Args:
        client: A :class:`distributed.Client`, or None to run in this process.
    """

    def __init__(self, client: Any | None) -> None:
        self.client = client
        self.most_in_flight = 0  # the largest number of tasks submitted and not yet taken

    def window(self) -> int:
        """Tasks in flight: two per worker thread (one computing, one waiting)."""
        return 2 * max(sum(self.client.nthreads().values()), 1) if self.client else 1

    def map(self, fn: Callable[..., Any], calls: Iterable[tuple[Any, ...]],
            writes: Callable[[tuple[Any, ...]], Path]
            ) -> Iterator[tuple[tuple[Any, ...], Any]]:
        """``(args, fn(*args))`` for each call, in the order they finish.

        Args:
            fn: The function (picklable: sent to the workers).
            calls: Its argument tuples.
            writes: The output a call works for (named when its worker dies).

        Raises:
            WorkerLostError: Workers died running a call as many times as Dask retries
                one (``distributed.scheduler.allowed-failures``; Dask's ``KilledWorker``).
        """
        client = self.client
        if client is None:
            for args in calls:
                yield args, fn(*args)
            return
        from distributed import KilledWorker, as_completed

        todo = iter(calls)
        pending: dict[Any, tuple[Any, ...]] = {}
        done = as_completed()  # type: ignore[no-untyped-call]

        def top_up() -> None:
            limit = self.window()  # asked each time: workers may join (or leave) late
            while len(pending) < limit:
                args = next(todo, None)
                if args is None:
                    return
                future = client.submit(fn, *args, pure=False)
                pending[future] = args
                done.add(future)  # type: ignore[no-untyped-call]
            self.most_in_flight = max(self.most_in_flight, len(pending))

        try:
            top_up()
            for future in done:
                args = pending.pop(future)
                try:
                    result = future.result()
                except KilledWorker as exc:
                    raise _worker_lost(writes(args), exc) from None
                del future  # its memory on the worker is released once taken
                top_up()
                yield args, result
        finally:
            client.cancel(list(pending))


def _worker_lost(output: Path, exc: BaseException) -> WorkerLostError:
    """The one line for a task whose workers died (``exc``: Dask's ``KilledWorker``)."""
    return WorkerLostError(
        f"{output}: a Dask worker died while computing this output (killed, or out of "
        f"memory: {type(exc).__name__}). Run the same command again: it keeps the complete "
        "outputs and resumes; if workers keep dying, give each more memory "
        "(--memory-limit) or run fewer (--workers).")


def run_outputs(job: Job, plans: Sequence[OutputPlan], record: RunRecord, runner: Runner,
                hooks: Hooks, progress: Callable[[int], None]) -> None:
    """Write every planned output and record each as it completes.

    Zarr stores that a killed run left are resumed (their chunks marked done are kept).
    A run stopped by one of :data:`RESUMABLE` (SIGTERM, Ctrl-C, a full disk, a lost
    worker) keeps them for the next run; any other failure removes them. NetCDF
    temporaries are removed either way (a killed worker's: by ``downscale run`` after).
    """
    zarr_plans = [p for p in plans if is_zarr(p.path)]
    netcdf_plans = [p for p in plans if not is_zarr(p.path)]
    if zarr_plans:
        _run_zarr(job, zarr_plans, record, runner, hooks, progress)
    if runner.client is not None and len(netcdf_plans) > 1:
        calls = [(job, plan, hooks) for plan in netcdf_plans]
        for (_, plan, _), entry in runner.map(write_netcdf_output, calls, _path_of_plan):
            record.record(plan.path.name, entry)
            progress(plan.stop - plan.start)
            log.info("Wrote %s", plan.path)
        return
    for plan in netcdf_plans:
        record.record(plan.path.name, _write_here(job, plan, hooks, runner, progress))
        log.info("Wrote %s", plan.path)


def _run_zarr(job: Job, plans: Sequence[OutputPlan], record: RunRecord, runner: Runner,
              hooks: Hooks, progress: Callable[[int], None]) -> None:
    writers: dict[OutputPlan, ZarrWriter] = {}
    left: dict[OutputPlan, int] = {}
    calls = []
    try:
        for plan in plans:
            writer = output_writer(job, plan)
            assert isinstance(writer, ZarrWriter)
            writer.create()
            writers[plan] = writer
            done = writer.done()
            missing = [c for c in plan.chunks(job.time_chunk) if c not in done]
            progress(plan.stop - plan.start - sum(b - a for a, b in missing))
            left[plan] = len(missing)
            calls += [(job, plan, writer, a, b, hooks) for a, b in missing]
        for plan in [p for p in plans if not left[p]]:
            _finish(job, plan, writers.pop(plan), record, hooks)
        for (_, plan, _, _, _, _), steps in runner.map(write_zarr_chunk, calls,
                                                       _path_of_plan):
            progress(steps)
            left[plan] -= 1
            if not left[plan]:
                _finish(job, plan, writers.pop(plan), record, hooks)
    except RESUMABLE:
        for writer in writers.values():
            log.info("Stopped: %s kept for the next run to resume", writer.tmp)
        raise
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise


def _path_of_plan(args: tuple[Any, ...]) -> Path:
    """The output of a task whose second argument is its :class:`OutputPlan`."""
    return Path(args[1].path)


def _finish(job: Job, plan: OutputPlan, writer: OutputWriter, record: RunRecord,
            hooks: Hooks) -> None:
    writer.finish()
    hooks.pause("renamed")
    record.record(plan.path.name, _record(job, plan))
    log.info("Wrote %s", plan.path)
