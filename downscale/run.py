r"""``downscale run``: downscale coarse NetCDF files with a trained checkpoint, at scale.

Examples::

    # one output file, on a local Dask cluster (one single-threaded worker per core)
    downscale run --checkpoint model.ckpt --input tas_2deg.nc --output tas_fine.nc
    # one output per input, 8 workers, tiles of 512 x 512 fine cells
    downscale run --checkpoint model.ckpt --input tas_19*.nc --output-dir out/ \
        --workers 8 --tile-size 512
    # a long record as files of 120 time steps, on an existing Dask scheduler
    downscale run --checkpoint model.ckpt --input tas.nc --output-dir out/ \
        --time-block 120 --scheduler tcp://10.0.0.1:8786
    # in this process, no Dask cluster (small jobs, debugging)
    downscale run --checkpoint model.ckpt --input tas_2deg.nc --output tas_fine.nc --workers 0
    # terrain: a TerrainTask checkpoint turns a coarse DEM into a fine one (surface_altitude)
    downscale run --checkpoint terrain.ckpt --input dem_coarse.nc --output dem_fine.nc

How it works (docs/method.md#scale):

* The inputs are COARSE fields on a regular grid, opened lazily
  (:func:`downscale.io.open_field`). Each coarse cell becomes ``factor x factor`` fine
  cells (its bounds split evenly; spherical areas on a lat-lon grid).
* The work is cut into chunks of ``--time-chunk`` time steps. A task reads its own chunk
  from the input files, runs the model on it tile by tile with halos
  (:func:`downscale.inference.downscale_field`) and hands back the fine chunk, so memory is
  bounded by a chunk (and a tile), never by the input. Each worker process loads the model
  once (a cache keyed by checkpoint path and sha256).
* ``--output``: the workers compute chunks and this process writes them to the one file as
  they come (a bounded number in flight). ``--output-dir``: each output file is one task and
  the workers write their files in parallel (the directory must be visible to them).
* A terrain generator's checkpoint runs the same way on coarse DEMs (any elevation
  variable in metres; whole fields only, since the generator takes each field's relief
  about its own mean).
* Every file is written to a temporary name, verified and renamed
  (:func:`downscale.io.write_netcdf`): a final name only ever holds a complete file.
* Resumable: ``downscale_manifest.json`` next to the outputs records each output's sha256
  and a hash of what made it (checkpoint sha256, its configuration, the variable, the
  inputs' paths, sizes and modification times, the time steps and the package version).
  A rerun skips the outputs whose file and record agree, redoes the others and removes the
  temporaries a killed run left behind. A lock file (``.downscale_run.lock``) keeps two
  runs from writing into one directory at once.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import fcntl
import functools
import glob
import hashlib
import importlib.util
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import dask
import dask.array as dsa
import numpy as np
import xarray as xr
from numpy.typing import NDArray

from downscale import __version__
from downscale.checkpoint import (
    CheckpointInfo,
    file_sha256,
    load_model,
    read_checkpoint,
)
from downscale.errors import CheckpointError, InputError
from downscale.grid import horizontal_dims

if TYPE_CHECKING:
    from downscale.data.covariate import StaticCovariate

log = logging.getLogger(__name__)

#: The manifest of an output directory (see the module docstring).
MANIFEST_NAME = "downscale_manifest.json"
MANIFEST_FORMAT = "downscale-run-manifest/1"
LOCK_NAME = ".downscale_run.lock"
#: Test hook: seconds each chunk task sleeps after computing, to interrupt a run mid-way.
CHUNK_DELAY_ENV = "DOWNSCALE_RUN_CHUNK_DELAY"
#: Test hook: ``POINT:SECONDS`` pauses at a named point (``read``: after a chunk is read,
#: ``renamed``: after an output is renamed, before the manifest records it), so that fault
#: tests can kill a run there. Not for users.
PAUSE_ENV = "DOWNSCALE_RUN_TEST_PAUSE"
#: ``--time-chunk auto`` puts about this many bytes of fine output in a chunk.
AUTO_CHUNK_BYTES = 16 << 20
#: NetCDF chunks hold at most this many bytes (one time step when a chunk would be larger).
NETCDF_CHUNK_BYTES = 4 << 20

FineChunk = np.ndarray[Any, np.dtype[np.float32]]
Fetch = Callable[[int, int], FineChunk]


# -- what a task needs ----------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """Settings shared by every task of a run (pickled to the workers).

    Attributes:
        checkpoint: Absolute checkpoint path.
        checkpoint_sha256: Its sha256.
        variable: The variable to downscale.
        factor: Upsampling factor.
        tile_size: Tile edge in fine cells, or None for whole fields.
        halo: Halo of the tiles in coarse cells (the model's receptive field).
        time_chunk: Time steps per chunk.
        device: Torch device of the model (``auto``: cuda where the task runs has one).
        history: The command, for the ``history`` attribute.
        attrs: Provenance attributes of every output.
        task: The checkpoint's task (:attr:`CheckpointInfo.task`).
        covariate: The static fine-grid covariate file, for a model trained with one.
        covariate_variable: Its variable.
    """

    checkpoint: str
    checkpoint_sha256: str
    variable: str
    factor: int
    tile_size: int | None
    halo: int | None
    time_chunk: int
    device: str
    history: str
    attrs: dict[str, str]
    task: str = "DownscalingTask"
    covariate: str | None = None
    covariate_variable: str | None = None


@dataclass(frozen=True)
class OutputPlan:
    """One output file: which inputs and time steps it holds.

    Attributes:
        path: The final path.
        inputs: Input files, joined in time.
        start: First time step (index into the joined inputs).
        stop: One past the last time step.
        key: Hash of everything that determines the file's content.
    """

    path: Path
    inputs: tuple[str, ...]
    start: int
    stop: int
    key: str

    def chunks(self, size: int) -> list[tuple[int, int]]:
        """``(start, stop)`` time steps of each chunk."""
        return [(a, min(a + size, self.stop)) for a in range(self.start, self.stop, size)]


@functools.lru_cache(maxsize=8)
def _source(inputs: tuple[str, ...], variable: str) -> Any:
    """The inputs as a :class:`~downscale.data.source.FieldSource` (own handles per process)."""
    from downscale.data.source import FieldSource

    return FieldSource(list(inputs), variable, 1, crop=False)


@functools.lru_cache(maxsize=2)
def _covariate(path: str, variable: str | None, factor: int, y_bnds: bytes, x_bnds: bytes
               ) -> StaticCovariate:
    """The static covariate on the fine grid of coarse bounds (bytes: a cache key).

    Read once per process; :func:`downscale.data.covariate.load_covariate` checks its grid.
    """
    from downscale.data.covariate import load_covariate
    from downscale.inference import fine_bounds

    def fine(raw: bytes) -> NDArray[np.float64]:
        return fine_bounds(np.frombuffer(raw, dtype=np.float64).reshape(-1, 2), factor)

    return load_covariate(path, variable, fine(y_bnds), fine(x_bnds))


def _test_pause(point: str) -> None:
    """Sleep at ``point`` when :data:`PAUSE_ENV` names it (fault-injection tests only)."""
    name, _, seconds = os.environ.get(PAUSE_ENV, "").partition(":")
    if name == point and seconds:
        time.sleep(float(seconds))


def compute_chunk(job: Job, inputs: tuple[str, ...], start: int, stop: int) -> FineChunk:
    """Downscale time steps ``start:stop`` of the inputs (runs on a worker, or here).

    Returns:
        ``(stop - start, H, W)`` float32 fine values, NaN where the input is missing.

    Raises:
        InputError: The chunk holds undeclared fill values or infinities.
    """
    from downscale.inference import downscale_field
    from downscale.io import check_values

    source = _source(inputs, job.variable)
    ds = source.dataset
    ydim, xdim = horizontal_dims(ds)
    values = source.read(slice(start, stop), slice(None), slice(None))
    check_values(source.data, values, path=", ".join(inputs))
    _test_pause("read")
    model = load_model(job.checkpoint, job.checkpoint_sha256, job.device, job.task)
    y_bnds, x_bnds = ds[f"{ydim}_bnds"].values, ds[f"{xdim}_bnds"].values
    covariate = None
    if job.covariate is not None:
        covariate = _covariate(job.covariate, job.covariate_variable, job.factor,
                               np.asarray(y_bnds, np.float64).tobytes(),
                               np.asarray(x_bnds, np.float64).tobytes()).values[None]
    fine = downscale_field(model, values, y_bnds, x_bnds, job.factor, tile_size=job.tile_size,
                           halo=job.halo, latlon=ydim == "lat", covariate=covariate)
    delay = float(os.environ.get(CHUNK_DELAY_ENV) or 0)
    if delay > 0:
        time.sleep(delay)
    return fine


def fine_template(coarse: xr.Dataset, factor: int, start: int, stop: int) -> xr.Dataset:
    """The fine grid of time steps ``start:stop`` of a normalised coarse field.

    Each coarse cell is split evenly into ``factor x factor`` cells; the time coordinate
    (with its encoding: units, calendar) and the dataset's attributes are kept.
    """
    from downscale.inference import fine_bounds

    ydim, xdim = horizontal_dims(coarse)
    coords: dict[str, Any] = {"time": coarse["time"].isel(time=slice(start, stop))}
    for dim in (ydim, xdim):
        bnds = fine_bounds(coarse[f"{dim}_bnds"].values, factor)
        coords[dim] = (dim, bnds.mean(axis=1), dict(coarse[dim].attrs))
        coords[f"{dim}_bnds"] = ((dim, "bnds"), bnds)
    return xr.Dataset(coords=coords, attrs=dict(coarse.attrs))


def _netcdf_chunks(shape: tuple[int, ...], time_chunk: int) -> tuple[int, ...]:
    """NetCDF chunk shape: whole Dask chunks in time when small, else one step of <=1024^2."""
    *lead, h, w = shape
    spatial = (min(h, 1024), min(w, 1024))
    if not lead:
        return spatial
    steps = min(time_chunk, lead[0])
    if steps * spatial[0] * spatial[1] * 4 > NETCDF_CHUNK_BYTES:
        steps = 1
    return (steps, *spatial)


def write_output(job: Job, plan: OutputPlan, fetch: Fetch) -> dict[str, Any]:
    """Write one output file from the chunks ``fetch(start, stop)`` returns.

    The data stay a lazy Dask array that :func:`downscale.io.write_netcdf` writes chunk by
    chunk (synchronously, in this process), to a temporary name that is renamed when the
    file is complete and verified.

    Returns:
        The file's manifest record.
    """
    from downscale.cf import downscaled_dataset
    from downscale.io import write_netcdf

    source = _source(plan.inputs, job.variable)
    template = fine_template(source.dataset, job.factor, plan.start, plan.stop)
    ydim, xdim = horizontal_dims(template)
    shape = (plan.stop - plan.start, template.sizes[ydim], template.sizes[xdim])
    bounds = plan.chunks(job.time_chunk)
    name = f"downscale-run-{uuid.uuid4().hex}"
    graph = {(name, i, 0, 0): (fetch, a, b) for i, (a, b) in enumerate(bounds)}
    sizes = tuple(b - a for a, b in bounds)
    values = dsa.Array(  # type: ignore[no-untyped-call]
        graph, name, chunks=(sizes, (shape[1],), (shape[2],)), dtype=np.float32,
        meta=np.empty((0, 0, 0), dtype=np.float32))
    expect = getattr(fetch, "expect", None)
    if expect is not None:  # a prefetching fetch (_ChunkFeeder) follows the writer's order
        expect(_request_order(values))
    ds = downscaled_dataset(values, template, job.variable, dict(source.data.attrs),
                            factor=job.factor, checkpoint=job.checkpoint, history=job.history,
                            extra_attrs=job.attrs)
    data = ds[job.variable]
    data.encoding["chunksizes"] = _netcdf_chunks(data.shape, job.time_chunk)
    with dask.config.set(scheduler="synchronous"):
        write_netcdf(ds, plan.path)
    _test_pause("renamed")
    stat = plan.path.stat()
    return {"sha256": file_sha256(plan.path), "bytes": stat.st_size, "key": plan.key,
            "inputs": list(plan.inputs), "time_steps": [plan.start, plan.stop],
            "checkpoint_sha256": job.checkpoint_sha256,
            "config_sha256": hashlib.sha256(job.attrs["downscale_config"].encode()).hexdigest(),
            "written": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


def write_output_task(job: Job, plan: OutputPlan) -> dict[str, Any]:
    """One output file written entirely by the calling process (a Dask worker's task)."""
    return write_output(job, plan, functools.partial(compute_chunk, job, plan.inputs))


# -- the output directory: manifest, lock, temporaries ------------------------------------
class OutputDirectory:
    """The manifest, lock and temporaries of one output directory (a context manager).

    Entering takes an exclusive lock (``flock`` on ``.downscale_run.lock``), so that two
    runs never write into one directory at once; leaving releases it (so does the kernel
    when the process dies).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.manifest_path = directory / MANIFEST_NAME
        self.records: dict[str, dict[str, Any]] = {}
        self._lock: IO[str] | None = None

    def __enter__(self) -> OutputDirectory:
        self._lock = open(self.directory / LOCK_NAME, "a")  # held until __exit__
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise InputError("another downscale run is writing to this directory",
                             path=self.directory,
                             hint="wait for it to finish or choose another output "
                                  "directory") from None
        self.records = self._read_manifest()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _read_manifest(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:  # corrupt: redo everything rather than trust it
            log.warning("Ignoring unreadable manifest %s (%s): every output is redone.",
                        self.manifest_path, exc)
            return {}
        outputs = data.get("outputs") if isinstance(data, dict) else None
        return dict(outputs) if isinstance(outputs, dict) else {}

    def record(self, name: str, entry: dict[str, Any]) -> None:
        """Add one complete output to the manifest (written atomically)."""
        self.records[name] = entry
        text = json.dumps({"format": MANIFEST_FORMAT, "outputs": self.records}, indent=1,
                          sort_keys=True)
        tmp = self.directory / f".{MANIFEST_NAME}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
        try:
            tmp.write_text(text + "\n")
            os.replace(tmp, self.manifest_path)
        finally:
            tmp.unlink(missing_ok=True)

    def is_complete(self, plan: OutputPlan) -> bool:
        """Whether the final file is recorded by this job (same key) with its size and sha256."""
        entry = self.records.get(plan.path.name)
        if entry is None or entry.get("key") != plan.key or not plan.path.is_file():
            return False
        if plan.path.stat().st_size != entry.get("bytes"):
            return False
        return file_sha256(plan.path) == entry.get("sha256")

    def remove_temporaries(self, names: Sequence[str]) -> int:
        """Delete temporaries that killed runs left behind (names as in ``write_netcdf``)."""
        removed = 0
        for name in [*names, MANIFEST_NAME]:
            for stale in self.directory.glob(f".{glob.escape(name)}.*.tmp"):
                stale.unlink(missing_ok=True)
                log.info("Removed the stale temporary %s", stale)
                removed += 1
        return removed


# -- validation at the door -----------------------------------------------------------------
def _check_variable_present(path: str, variable: str, trained: str) -> None:
    """Raise a clear error when an input lacks the variable (unreadable files: open_field)."""
    import netCDF4

    try:
        with netCDF4.Dataset(path) as nc:
            bounds = {str(getattr(v, "bounds", "")) for v in nc.variables.values()}
            names = [str(n) for n, v in nc.variables.items() if v.ndim >= 2 and n not in bounds]
            present = variable in nc.variables
    except Exception:
        return  # missing, corrupt, not NetCDF: open_field says what is wrong
    if present:
        return
    import difflib

    close = difflib.get_close_matches(variable, names, n=1)
    guess = f" (did you mean '{close[0]}'?)" if close else ""
    if variable == trained:
        hint = (f"the checkpoint was trained on '{trained}': give files that contain it (if "
                f"yours is the same quantity under another name, rename it, e.g. ncrename -v "
                f"{(close or names or ['NAME'])[0]},{trained})")
    else:
        hint = f"give files that contain '{variable}'"
    raise InputError(f"variable not found{guess}; gridded variables: "
                     f"{', '.join(sorted(names)) or 'none'}", path=path, variable=variable,
                     hint=hint)


def _open_inputs(paths: Sequence[str], variable: str, ckpt: CheckpointInfo) -> list[xr.Dataset]:
    """Open every input lazily; check the variable, one grid, and the checkpoint's units."""
    from downscale.io import open_field

    for path in paths:
        _check_variable_present(path, variable, ckpt.variable)
    fields = [open_field(path, variable) for path in paths]
    first = fields[0]
    for path, field in zip(paths, fields, strict=True):
        units = field[variable].attrs.get("units")
        if ckpt.units is not None and units is None:
            raise InputError(f"has no units attribute; the checkpoint expects '{ckpt.units}'",
                             path=path, variable=variable,
                             hint=f"set it (e.g. ncatted -a units,{variable},o,c,{ckpt.units})")
        if ckpt.units is not None and str(units).strip() != str(ckpt.units).strip():
            raise CheckpointError(f"{ckpt.path}: trained on '{ckpt.variable}' in {ckpt.units}, "
                                  f"but {path} is in {units}. Convert the input to "
                                  f"{ckpt.units}.")
        if horizontal_dims(field) != horizontal_dims(first):
            raise InputError(f"grid dimensions {horizontal_dims(field)} differ from "
                             f"{horizontal_dims(first)} of {paths[0]}", path=path,
                             variable=variable, hint="regrid the files to one grid")
        for dim in horizontal_dims(field):
            a, b = field[f"{dim}_bnds"].values, first[f"{dim}_bnds"].values
            if a.shape != b.shape or not np.allclose(a, b, rtol=0, atol=1e-6):
                raise InputError(f"grid ({dim}) differs from that of {paths[0]}", path=path,
                                 variable=variable,
                                 hint="regrid the files to one grid, or run them separately")
    return fields


def _prepare_directory(directory: Path, *, create: bool) -> None:
    """Make sure the output directory exists (or create it) and can be written to."""
    if create:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create the output directory ({exc.strerror or exc})",
                             path=directory, hint="choose a writable output directory") from exc
    if not directory.is_dir():
        raise InputError("the output directory does not exist", path=directory,
                         hint="create it first or choose another output path")
    try:  # os.access is not enough (root, ACLs, read-only mounts)
        handle, probe = tempfile.mkstemp(prefix=".downscale-probe-", dir=directory)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"the output directory is not writable ({exc.strerror or exc})",
                         path=directory, hint="choose a writable output directory") from exc


def _input_identity(paths: Sequence[str]) -> list[list[Any]]:
    """What identifies an input for resuming: path, size and modification time.

    Not its content: hashing large inputs would cost a full read.
    """
    out = []
    for path in paths:
        stat = os.stat(path)
        out.append([str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns])
    return out


def _output_key(ckpt: CheckpointInfo, variable: str, inputs: Sequence[str], start: int,
                stop: int, covariate: str | None = None) -> str:
    text = json.dumps({"checkpoint_sha256": ckpt.sha256, "config": ckpt.config,
                       "variable": variable, "version": __version__,
                       "inputs": _input_identity(inputs), "time_steps": [start, stop],
                       "covariate": _input_identity([covariate]) if covariate else None},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def plan_outputs(args: argparse.Namespace, ckpt: CheckpointInfo, variable: str,
                 fields: Sequence[xr.Dataset]) -> tuple[Path, list[OutputPlan]]:
    """The output directory and one plan per output file (validated, nothing written)."""
    from downscale.io import open_field

    inputs = [str(Path(p).resolve()) for p in args.input]  # workers may have another cwd
    resolved = set(map(Path, inputs))

    def plan(path: Path, files: Sequence[str], start: int, stop: int) -> OutputPlan:
        if path.resolve() in resolved:
            raise InputError("the output would overwrite an input file", path=path,
                             variable=variable, hint="choose another output path")
        return OutputPlan(path, tuple(files), start, stop,
                          _output_key(ckpt, variable, files, start, stop, args.covariate))

    def joined_steps() -> int:
        """Time steps of the inputs joined in time (open_field checks that they join)."""
        joined = open_field(inputs, variable) if len(inputs) > 1 else fields[0]
        return int(joined.sizes["time"])

    if args.output is not None:
        target = Path(args.output).resolve()
        if target.is_dir():
            raise InputError("the output path is a directory", path=target,
                             hint="give a file name ending in .nc, or use --output-dir")
        _prepare_directory(target.parent, create=False)
        return target.parent, [plan(target, inputs, 0, joined_steps())]
    directory = Path(args.output_dir).resolve()
    if args.time_block is not None:
        n = joined_steps()
        plans = [plan(directory / f"{variable}_{a:06d}-{min(a + args.time_block, n) - 1:06d}.nc",
                      inputs, a, min(a + args.time_block, n))
                 for a in range(0, n, args.time_block)]
    else:
        plans = [plan(directory / f"{Path(p).stem}_downscaled.nc", [p], 0,
                      int(f.sizes["time"])) for p, f in zip(inputs, fields, strict=True)]
        names = [p.path.name for p in plans]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise InputError(f"several inputs would write {duplicated[0]}", path=directory,
                             variable=variable, hint="give inputs with distinct file names, "
                             "or join them in time with --time-block")
    _prepare_directory(directory, create=True)
    return directory, plans


def _auto_time_chunk(field: xr.Dataset, factor: int) -> int:
    ydim, xdim = horizontal_dims(field)
    step_bytes = field.sizes[ydim] * field.sizes[xdim] * factor * factor * 4
    return max(1, AUTO_CHUNK_BYTES // step_bytes)


# -- running ---------------------------------------------------------------------------------
class _ChunkFeeder:
    """Chunks computed on a Dask cluster, at most ``window`` in flight or waiting.

    The writer asks for chunks in the order Dask's scheduler gives their tasks, which is
    not their time order (ties are broken on the task keys: 9, 8, 7, 63, 62, ... for 64
    chunks). :func:`write_output` tells the feeder that order (:meth:`expect`), and the
    feeder keeps the next chunks of it submitted; a chunk asked for out of turn is computed
    on demand and the feeder goes on from there. Memory on the workers is bounded by
    ``window`` (two per worker thread) chunks, and in this process by one.
    """

    def __init__(self, client: Any, job: Job, plan: OutputPlan, progress: Any) -> None:
        self.client, self.job, self.plan = client, job, plan
        self.chunks = plan.chunks(job.time_chunk)
        self.index = {start: i for i, (start, _) in enumerate(self.chunks)}
        self.window, self.progress = 2, progress
        self.futures: dict[int, Any] = {}
        self.done: set[int] = set()
        self.misses = 0  # chunks asked for that were not submitted ahead
        self.expect(list(range(len(self.chunks))))

    def expect(self, order: Sequence[int]) -> None:
        """The order (chunk indices) in which the writer will ask for the chunks."""
        self.order = list(order)
        self.position = {i: n for n, i in enumerate(self.order)}
        self.next = 0

    def _submit(self, i: int) -> None:
        if i not in self.futures and i not in self.done:
            a, b = self.chunks[i]
            self.futures[i] = self.client.submit(compute_chunk, self.job, self.plan.inputs, a,
                                                 b, pure=False)

    def _top_up(self) -> None:
        while len(self.futures) < self.window and self.next < len(self.order):
            self._submit(self.order[self.next])
            self.next += 1

    def __call__(self, start: int, stop: int) -> FineChunk:
        i = self.index[start]
        # Two chunks per worker thread: one computing, one waiting (workers may come late).
        self.window = 2 * max(sum(self.client.nthreads().values()), 1)
        self.misses += i not in self.futures
        self._submit(i)
        self.next = max(self.next, self.position.get(i, -1) + 1)
        self._top_up()
        result: FineChunk = self.futures.pop(i).result()
        self.done.add(i)
        self._top_up()
        self.progress.update(stop - start)
        return result

    def cancel(self) -> None:
        self.client.cancel(list(self.futures.values()))


def _request_order(values: Any) -> list[int]:
    """Chunk indices (along time) of ``values`` in the order Dask will run their tasks."""
    from dask.order import order

    graph = dict(values.__dask_graph__())
    priority = order(graph)
    keys = [key for plane in values.__dask_keys__() for row in plane for key in row]
    return [key[1] for key in sorted(keys, key=priority.__getitem__)]


def _run_in_process(job: Job, plans: Sequence[OutputPlan], outdir: OutputDirectory,
                    progress: Any) -> None:
    for plan in plans:
        def fetch(a: int, b: int, plan: OutputPlan = plan) -> FineChunk:
            chunk = compute_chunk(job, plan.inputs, a, b)
            progress.update(b - a)
            return chunk

        outdir.record(plan.path.name, write_output(job, plan, fetch))
        log.info("Wrote %s", plan.path)


def _run_distributed(client: Any, job: Job, plans: Sequence[OutputPlan], single_file: bool,
                     outdir: OutputDirectory, progress: Any) -> None:
    from distributed import as_completed

    if single_file:
        for plan in plans:
            feeder = _ChunkFeeder(client, job, plan, progress)
            try:
                outdir.record(plan.path.name, write_output(job, plan, feeder))
            finally:
                feeder.cancel()
            log.info("Wrote %s", plan.path)
        return
    futures = {client.submit(write_output_task, job, plan, pure=False): plan for plan in plans}
    try:
        for future in as_completed(futures):  # type: ignore[no-untyped-call]
            plan = futures[future]
            outdir.record(plan.path.name, future.result())
            progress.update(plan.stop - plan.start)
            log.info("Wrote %s", plan.path)
    finally:
        client.cancel(list(futures))


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="downscale run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint (.ckpt) of "
                        "'downscale fit'")
    parser.add_argument("--input", required=True, nargs="+", help="coarse NetCDF file(s)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--output", help="one output file (the inputs joined in time)")
    target.add_argument("--output-dir", help="a directory for one output file per input, "
                        "or per --time-block time steps")
    parser.add_argument("--time-block", type=_positive, help="with --output-dir: time steps "
                        "per output file (the inputs joined in time)")
    parser.add_argument("--variable", help="the input variable (default: the checkpoint's)")
    parser.add_argument("--covariate", help="static covariate on the fine grid (e.g. "
                        "generated terrain), for a checkpoint trained with one")
    parser.add_argument("--covariate-variable", help="the covariate's variable (default: "
                        "the file's elevation variable)")
    parser.add_argument("--tile-size", type=_positive, help="tile edge in fine cells, "
                        "rounded down to whole coarse cells (default: whole fields)")
    parser.add_argument("--halo", type=int, help="tile halo in coarse cells (default: the "
                        "model's receptive field, computed from its convolutions)")
    parser.add_argument("--time-chunk", type=_positive, help="time steps per task "
                        f"(default: about {AUTO_CHUNK_BYTES >> 20} MiB of output)")
    parser.add_argument("--workers", type=int, default=min(len(os.sched_getaffinity(0)), 8),
                        help="LocalCluster workers, one thread each; 0 runs in this process "
                        "(default: one per core, at most 8)")
    parser.add_argument("--memory-limit", default="auto", help="memory limit of each "
                        "LocalCluster worker, e.g. 2GB (default: auto)")
    parser.add_argument("--scheduler", help="address of a running Dask scheduler "
                        "(e.g. tcp://host:8786); --workers is then ignored")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="torch device of the model (auto: cuda where available)")
    parser.add_argument("--force", action="store_true", help="redo outputs that are "
                        "complete")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


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


def _check_covariate(args: argparse.Namespace, ckpt: CheckpointInfo, field: xr.Dataset) -> None:
    """The covariate is given exactly when the checkpoint needs one, on the right grid."""
    trained = ckpt.covariate
    if trained is None and args.covariate is not None:
        raise InputError("the checkpoint was trained without a static covariate",
                         path=args.covariate, hint="leave out --covariate")
    if trained is None:
        return
    if args.covariate is None:
        raise CheckpointError(f"{ckpt.path}: trained with a static covariate "
                              f"('{trained.get('variable')}' in {trained.get('units')}). Pass "
                              "--covariate FILE with it on the fine grid of the input.")
    args.covariate = str(Path(args.covariate).resolve())  # workers may have another cwd
    ydim, xdim = horizontal_dims(field)
    got = _covariate(args.covariate, args.covariate_variable, ckpt.factor,
                     np.asarray(field[f"{ydim}_bnds"].values, np.float64).tobytes(),
                     np.asarray(field[f"{xdim}_bnds"].values, np.float64).tobytes())
    if trained.get("units") and got.units != trained["units"]:
        raise InputError(f"covariate in {got.units}, but the checkpoint was trained with it "
                         f"in {trained['units']}", path=args.covariate, variable=got.variable,
                         hint=f"convert it to {trained['units']}")


def _default_variable(ckpt: CheckpointInfo, first_input: str) -> str:
    """The variable to downscale when ``--variable`` is not given.

    A downscaling checkpoint's own variable; for a terrain generator, which applies to any
    DEM, the elevation variable of the first input (``standard_name: surface_altitude``,
    or its only gridded variable).
    """
    if not ckpt.is_terrain:
        return ckpt.variable
    from downscale.dem import netcdf_elevation_name

    return netcdf_elevation_name(Path(first_input))


@contextlib.contextmanager
def _terminate_cleanly() -> Iterator[None]:
    """Turn SIGTERM (a scheduler's kill) into ``SystemExit(143)`` while a run goes on.

    The exit unwinds like any exception: the temporary being written is removed and the
    lock released, so a terminated run leaves nothing behind (SIGKILL cannot be caught;
    the next run removes what it leaves).
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


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``downscale run`` (see the module docstring); SIGTERM ends it cleanly.

    Raises:
        CheckpointError: The checkpoint is missing, unreadable, or made for another variable
            or other units.
        InputError: An input is missing, unreadable, lacks the variable or lies on another
            grid; the output directory cannot be written; another run holds it.
    """
    args = _parser().parse_args(argv)
    if args.time_block is not None and args.output_dir is None:
        raise InputError("--time-block needs --output-dir", hint="add --output-dir DIR")
    if args.workers < 0:
        raise InputError(f"--workers must be >= 0, got {args.workers}",
                         hint="use 0 to run in this process")
    ckpt = read_checkpoint(args.checkpoint)
    variable = args.variable or _default_variable(ckpt, str(args.input[0]))
    if variable != ckpt.variable and not ckpt.is_terrain:
        raise CheckpointError(f"{ckpt.path}: trained for variable '{ckpt.variable}', but "
                              f"--variable selects '{variable}'. Use a checkpoint trained for "
                              f"'{variable}'.")
    fields = _open_inputs([str(p) for p in args.input], variable, ckpt)
    _check_covariate(args, ckpt, fields[0])
    directory, plans = plan_outputs(args, ckpt, variable, fields)
    model = load_model(ckpt.path, ckpt.sha256, "cpu", ckpt.task)  # fail here, not per worker
    halo = _halo(model, args, ckpt)
    inputs = ", ".join(str(p) for p in args.input)
    job = Job(checkpoint=ckpt.path, checkpoint_sha256=ckpt.sha256, variable=variable,
              factor=ckpt.factor, tile_size=args.tile_size, halo=halo,
              time_chunk=args.time_chunk or _auto_time_chunk(fields[0], ckpt.factor),
              device=args.device,
              history=(f"downscale {__version__} run --checkpoint {ckpt.path} --variable "
                       f"{variable} --input {' '.join(map(str, args.input))}"),
              task=ckpt.task, covariate=args.covariate,
              covariate_variable=args.covariate_variable,
              attrs={"downscale_checkpoint_sha256": ckpt.sha256,
                     "downscale_config": json.dumps(ckpt.config, sort_keys=True),
                     "downscale_version": __version__,
                     "downscale_command": "run"})
    with _terminate_cleanly(), OutputDirectory(directory) as outdir:
        outdir.remove_temporaries([p.path.name for p in plans])
        todo = [p for p in plans if args.force or not outdir.is_complete(p)]
        for plan in plans:
            if plan not in todo:
                log.info("Skipping %s: complete and verified", plan.path)
        if not todo:
            log.info("Nothing to do: all %d output(s) are complete.", len(plans))
            return
        log.info("Downscaling %s (%s) by %d into %d file(s); %d time step(s) per chunk.",
                 variable, inputs, ckpt.factor, len(todo),
                 min(job.time_chunk, max(p.stop - p.start for p in todo)))
        from tqdm.auto import tqdm

        total = sum(p.stop - p.start for p in todo)
        with (tqdm(total=total, unit="step", disable=True if args.no_progress else None,
                   file=sys.stderr) as progress,
              dask_client(args.scheduler, args.workers, args.memory_limit) as client):
            if client is None:
                _run_in_process(job, todo, outdir, progress)
            else:
                _run_distributed(client, job, todo, args.output is not None, outdir, progress)
    log.info("Done: %d written, %d skipped.", len(todo), len(plans) - len(todo))
