"""Will the outputs fit? ``downscale run``'s pre-flight of output size against free space.

Before any output is created, the outputs still to write are sized two ways and set
against the free space of the output directory (``shutil.disk_usage``: what this user may
allocate there; a quota is invisible to it, and caught by the write itself,
:func:`downscale.io.output_errors`):

* **uncompressed** (an upper bound): float32 values of every time step still to write,
  plus the coordinates, their bounds and :data:`HEADER_BYTES` of metadata per output.
  The values are stored compressed (zlib with shuffle in NetCDF, Blosc in Zarr), so most
  outputs are smaller, but none is larger: an incompressible field costs its raw bytes.
* **compressed** (a lower estimate): the values alone, times the fraction that a sample of
  the input compresses to (:data:`SAMPLE_STEPS` time steps, shuffle + zlib level 4 as the
  NetCDF output), times :data:`COMPRESSION_MARGIN`. Missing cells (land in an SST field)
  and exact repeats (dry cells of a precipitation field) compress to almost nothing, and
  they are missing or repeated in the output where they are in the input, so the input's
  fraction carries them over. A fine field is smoother than its coarse input and
  compresses as well or better (the tiny E1 model: 0.56 of raw against its input's 0.63);
  the margin of 2 makes a wrong refusal of an output that would fit unlikely.

The rule: **refuse** (one line naming both figures) when even the compressed estimate
does not fit; **warn** when only the uncompressed one does not (the run goes on; if the
disk fills after all, the run stops in one line and a rerun resumes).
"""

from __future__ import annotations

import logging
import os
import shutil
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from downscale.batch.plan import Job, OutputPlan
from downscale.errors import DiskFullError
from downscale.grid import horizontal_dims
from downscale.writers import ZarrWriter, is_zarr

log = logging.getLogger(__name__)

#: Time steps of the input (first, middle, last) whose compression stands for the output's.
SAMPLE_STEPS = 3
#: The compressed estimate takes this share of the sample's compressed size (see above).
COMPRESSION_MARGIN = 0.5
#: Metadata of one output besides its coordinates: HDF5 superblock and object headers,
#: CF attributes, the checkpoint's configuration (a NetCDF output of the tiny test model
#: carries about 28 KiB of them).
HEADER_BYTES = 32 << 10
#: zlib level of the NetCDF outputs (:func:`downscale.cf.downscaled_dataset`).
ZLIB_LEVEL = 4


@dataclass(frozen=True)
class SpaceEstimate:
    """The bytes the outputs still to write will take (see the module docstring).

    Attributes:
        uncompressed: Upper bound: raw float32 values, coordinates, metadata.
        compressed: Lower estimate: values compressed as the input's sample, with margin.
    """

    uncompressed: int
    compressed: int


def compressed_fraction(values: np.ndarray[Any, Any], level: int = ZLIB_LEVEL) -> float:
    """The share of its float32 bytes that ``values`` takes, shuffled and zlib-compressed.

    Byte shuffle (HDF5's filter: the n-th bytes of all values together) then zlib, as a
    NetCDF-4 output is stored; NaN becomes one repeated pattern, as the fill value does in
    the file (which value does not matter to zlib).

    Returns:
        Compressed over raw size, in ``(0, 1]`` (1 for an empty or incompressible array).
    """
    raw = np.asarray(values, dtype=np.float32)
    raw = np.where(np.isnan(raw), np.float32(0), raw)
    if raw.size == 0:
        return 1.0
    shuffled = raw.reshape(-1).view(np.uint8).reshape(-1, 4).T.tobytes()
    return min(1.0, len(zlib.compress(shuffled, level)) / raw.nbytes)


def _sample(fields: Sequence[xr.Dataset], variable: str) -> np.ndarray[Any, Any]:
    """Up to :data:`SAMPLE_STEPS` time steps spread over the inputs, shape ``(n, H, W)``."""
    steps = [(f, t) for f in fields for t in range(f.sizes["time"])]
    picks = sorted({round(i * (len(steps) - 1) / max(SAMPLE_STEPS - 1, 1))
                    for i in range(SAMPLE_STEPS)}) if steps else []
    return np.stack([np.asarray(steps[i][0][variable].isel(time=steps[i][1]).values)
                     for i in picks]) if picks else np.empty((0, 0, 0))


def _steps_left(job: Job, plan: OutputPlan) -> list[tuple[int, int]]:
    """The chunks of ``plan`` still to write (a Zarr store of a stopped run keeps some)."""
    chunks = plan.chunks(job.time_chunk)
    if not is_zarr(plan.path):
        return chunks
    done = ZarrWriter(None, job.variable, plan.path, job.time_chunk,
                      plan.tag(job.time_chunk)).done()
    return [c for c in chunks if c not in done]


def estimate_space(job: Job, plans: Sequence[OutputPlan], fields: Sequence[xr.Dataset],
                   block: int = 1) -> SpaceEstimate:
    """Size the outputs of ``plans`` still to write, both ways.

    Args:
        job: The run's settings (factor, variable, time chunk).
        plans: The outputs to write.
        fields: The opened inputs (normalised, one grid), for the grid and the sample.
        block: The file system's allocation unit in bytes: every Zarr chunk file takes at
            least one.

    Returns:
        The estimate (bytes).
    """
    ydim, xdim = horizontal_dims(fields[0])
    height, width = fields[0].sizes[ydim] * job.factor, fields[0].sizes[xdim] * job.factor
    step_bytes = height * width * np.dtype(np.float32).itemsize
    fraction = compressed_fraction(_sample(fields, job.variable)) * COMPRESSION_MARGIN
    uncompressed = compressed = 0
    for plan in plans:
        left = _steps_left(job, plan)
        values = step_bytes * sum(b - a for a, b in left)
        files = len(left) if is_zarr(plan.path) else 1
        coordinates = 3 * 8 * (height + width + plan.stop - plan.start)  # centres, bounds
        floor = files * block  # a file takes whole blocks
        uncompressed += max(values + coordinates + HEADER_BYTES, floor)
        compressed += max(round(values * fraction), floor)
    return SpaceEstimate(uncompressed=uncompressed, compressed=compressed)


def check_free_space(directory: Path, job: Job, plans: Sequence[OutputPlan],
                     fields: Sequence[xr.Dataset]) -> SpaceEstimate:
    """Refuse a run whose outputs cannot fit in ``directory``; warn when they may not.

    Raises:
        DiskFullError: Even the compressed estimate is more than the free space.
    """
    from dask.utils import format_bytes

    usage = os.statvfs(directory)
    free = shutil.disk_usage(directory).free
    estimate = estimate_space(job, plans, fields, block=usage.f_frsize or 1)
    need, most = format_bytes(estimate.compressed), format_bytes(estimate.uncompressed)
    if estimate.compressed > free:
        raise DiskFullError(
            f"not enough free space: the outputs still to write need about {need} even "
            f"compressed ({most} uncompressed), but only {format_bytes(free)} are free",
            path=directory, hint="free space there, or write elsewhere (--output or "
            "--output-dir)")
    if estimate.uncompressed > free:
        log.warning("%s: the outputs still to write take about %s compressed and up to %s "
                    "uncompressed; %s are free: the disk may fill (a rerun then resumes).",
                    directory, need, most, format_bytes(free))
    return estimate
