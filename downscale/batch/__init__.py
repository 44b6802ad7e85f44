"""``downscale run``: batch inference on Dask, resumable, to NetCDF or Zarr.

The layout, one job per module:

* :mod:`~downscale.batch.cli`: the options and ``main`` (thin: check, plan, run);
* :mod:`~downscale.batch.inputs`: checks at the door (variable, units, grids, covariate);
* :mod:`~downscale.batch.plan`: the job's settings (:class:`Job`), one
  :class:`OutputPlan` per output, the output templates;
* :mod:`~downscale.batch.record`: the resume record, the lock, the temporaries;
* :mod:`~downscale.batch.space`: the pre-flight of the outputs' size against free space;
* :mod:`~downscale.batch.execute`: running the chunks here or on Dask (bounded window,
  ``as_completed``), with injected :class:`Hooks`;
* :mod:`downscale.writers`: the NetCDF and Zarr writers.

No module here imports Lightning: models come from :mod:`downscale.checkpoint`.
"""

from downscale.batch.execute import Hooks, Runner, compute_chunk
from downscale.batch.plan import Job, OutputPlan
from downscale.batch.record import RECORD_NAME, RunRecord

__all__ = [
           "RECORD_NAME",
           "Hooks",
           "Job",
           "OutputPlan",
           "RunRecord",
           "Runner",
           "compute_chunk",
]
