"""What ``downscale run`` will write: the job's settings, one plan per output, templates.

Nothing here writes an output: planning validates the targets (output directory writable,
no input overwritten, distinct names) and hashes what determines each output's content
(the key the resume record compares).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from downscale import __version__
from downscale.checkpoint import CheckpointInfo
from downscale.errors import InputError
from downscale.grid import horizontal_dims

if TYPE_CHECKING:
    from downscale.units import UnitConversion
    from downscale.writers import NetCDFWriter, ZarrWriter

#: ``--time-chunk auto`` puts about this many bytes of fine output in a chunk.
AUTO_CHUNK_BYTES = 16 << 20
#: Output formats, by the suffix of their names.
FORMATS = {"netcdf": ".nc", "zarr": ".zarr"}


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
        units: How the inputs' values reach the model's units and the prediction comes
            back in theirs (:mod:`downscale.units`); None: the same units.
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
    units: UnitConversion | None = None


@dataclass(frozen=True)
class OutputPlan:
    """One output (a NetCDF file or a Zarr store): which inputs and time steps it holds.

    Attributes:
        path: The final path (``*.zarr``: a Zarr store).
        inputs: Input files, joined in time.
        start: First time step (index into the joined inputs).
        stop: One past the last time step.
        key: Hash of everything that determines the output's content.
    """

    path: Path
    inputs: tuple[str, ...]
    start: int
    stop: int
    key: str

    def chunks(self, size: int) -> list[tuple[int, int]]:
        """``(start, stop)`` time steps of each chunk."""
        return [(a, min(a + size, self.stop)) for a in range(self.start, self.stop, size)]

    def tag(self, time_chunk: int) -> str:
        """Stable tag of a resumable temporary: the key and the chunking."""
        return hashlib.sha256(f"{self.key}/{time_chunk}".encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=8)
def field_source(inputs: tuple[str, ...], variable: str) -> Any:
    """The inputs as a :class:`~downscale.data.source.FieldSource`, opened once per process."""
    from downscale.data.source import shared_source

    return shared_source(inputs, variable)


def fine_template(coarse: xr.Dataset, factor: int, start: int, stop: int) -> xr.Dataset:
    """The fine grid of time steps ``start:stop`` of a normalised coarse field.

    Each coarse cell is split evenly into ``factor x factor`` cells; the time coordinate
    (with its encoding: units, calendar) and the dataset's attributes are kept.
    """
    from downscale.conventions import conventions_of, with_conventions
    from downscale.grid import nested_fine_coords

    coords: dict[str, Any] = {"time": coarse["time"].isel(time=slice(start, stop)),
                              **nested_fine_coords(coarse, factor)}
    fine = xr.Dataset(coords=coords, attrs=dict(coarse.attrs))
    return with_conventions(fine, conventions_of(coarse))  # the output keeps the input's


def output_writer(job: Job, plan: OutputPlan) -> NetCDFWriter | ZarrWriter:
    """The writer of ``plan``'s output (Zarr for a ``.zarr`` path, else NetCDF), not created.

    Its template is the complete output Dataset, values a lazy array never computed:
    coordinates, CF attributes (:func:`downscale.cf.downscaled_dataset`) and encoding are
    final and follow the input's conventions (:func:`downscale.conventions.restore`); the
    writer puts the normalised values it is given into the same layout.
    """
    import dask.array as dsa

    from downscale.cf import downscaled_dataset
    from downscale.conventions import conventions_of, user_layout
    from downscale.writers import make_writer

    source = field_source(plan.inputs, job.variable)
    grid = fine_template(source.dataset, job.factor, plan.start, plan.stop)
    ydim, xdim = horizontal_dims(grid)
    shape = (plan.stop - plan.start, grid.sizes[ydim], grid.sizes[xdim])
    values = dsa.zeros(shape, chunks=(job.time_chunk, -1, -1), dtype=np.float32)
    template = downscaled_dataset(values, grid, job.variable, dict(source.data.attrs),
                                  factor=job.factor, checkpoint=job.checkpoint,
                                  history=job.history, extra_attrs=job.attrs)
    record = conventions_of(grid)
    layout = None if record is None else user_layout(grid, record)
    return make_writer(template, job.variable, plan.path, job.time_chunk,
                       plan.tag(job.time_chunk), layout)


def auto_time_chunk(field: xr.Dataset, factor: int) -> int:
    """Time steps of about :data:`AUTO_CHUNK_BYTES` of float32 fine output."""
    ydim, xdim = horizontal_dims(field)
    step_bytes = field.sizes[ydim] * field.sizes[xdim] * factor * factor * 4
    return max(1, AUTO_CHUNK_BYTES // step_bytes)


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


def plan_outputs(ckpt: CheckpointInfo, variable: str, inputs: Sequence[str],
                 fields: Sequence[xr.Dataset], *, output: str | None, output_dir: str | None,
                 time_block: int | None, fmt: str, covariate: str | None
                 ) -> tuple[Path, list[OutputPlan]]:
    """The output directory and one plan per output (validated, nothing written).

    Args:
        ckpt: The checkpoint.
        variable: The variable downscaled.
        inputs: The input paths (as given).
        fields: The inputs opened (:func:`~downscale.batch.inputs.open_inputs`).
        output: ``--output``: one output, the inputs joined in time (``*.zarr``: Zarr).
        output_dir: ``--output-dir``: one output per input, or per ``time_block`` steps.
        time_block: Time steps per output with ``output_dir``.
        fmt: A key of :data:`FORMATS`: the format of ``output_dir``'s entries.
        covariate: The covariate file (part of each output's key).
    """
    from downscale.io import open_field

    resolved_inputs = [str(Path(p).resolve()) for p in inputs]  # workers: another cwd
    resolved = set(map(Path, resolved_inputs))

    def plan(path: Path, files: Sequence[str], start: int, stop: int) -> OutputPlan:
        if path.resolve() in resolved:
            raise InputError("the output would overwrite an input file", path=path,
                             variable=variable, hint="choose another output path")
        return OutputPlan(path, tuple(files), start, stop,
                          _output_key(ckpt, variable, files, start, stop, covariate))

    def joined_steps() -> int:
        """Time steps of the inputs joined in time (open_field checks that they join)."""
        many = len(resolved_inputs) > 1
        return int((open_field(resolved_inputs, variable) if many else fields[0]).sizes["time"])

    if output is not None:
        target = Path(output).resolve()
        if target.is_dir() and target.suffix != FORMATS["zarr"]:
            raise InputError("the output path is a directory", path=target,
                             hint="give a file name ending in .nc (or .zarr), or use "
                                  "--output-dir")
        _prepare_directory(target.parent, create=False)
        return target.parent, [plan(target, resolved_inputs, 0, joined_steps())]
    directory, suffix = Path(str(output_dir)).resolve(), FORMATS[fmt]
    if time_block is not None:
        n = joined_steps()
        plans = [plan(directory / f"{variable}_{a:06d}-{min(a + time_block, n) - 1:06d}{suffix}",
                      resolved_inputs, a, min(a + time_block, n))
                 for a in range(0, n, time_block)]
    else:
        plans = [plan(directory / f"{Path(p).stem}_downscaled{suffix}", [p], 0,
                      int(f.sizes["time"])) for p, f in zip(resolved_inputs, fields, strict=True)]
        names = [p.path.name for p in plans]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise InputError(f"several inputs would write {duplicated[0]}", path=directory,
                             variable=variable, hint="give inputs with distinct file names, "
                             "or join them in time with --time-block")
    _prepare_directory(directory, create=True)
    return directory, plans
