"""A lazily opened field that each process (and DataLoader worker) opens for itself."""

from __future__ import annotations

import functools
import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import dask
import dask.array as dsa
import numpy as np
import xarray as xr
from numpy.typing import NDArray

from downscale.aggregate import crop_to_factor
from downscale.errors import InputError
from downscale.grid import cell_areas, horizontal_dims, is_periodic_longitude
from downscale.io import open_field
from downscale.validate import check_values, report_coverage, suspicious

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NormStats:
    """Normalisation statistics of the training split (physical units of the variable)."""

    mean: float
    std: float

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std}


MANIFEST_SCHEME = "manifest://"
#: Default per-process budget (MiB) of whole time steps that :meth:`FieldSource.read` keeps.
STEP_CACHE_MB = 128.0


def resolve_path(path: str) -> str:
    """Resolve ``manifest://<dataset id>`` to the verified file; other paths pass through."""
    if path.startswith(MANIFEST_SCHEME):
        from downscale.manifest import resolve

        return str(resolve(path.removeprefix(MANIFEST_SCHEME)))
    return path


class FieldSource:
    """One variable of one or many NetCDF files, cropped to divide by the factor.

    The file handles are opened on first use in each process, so a pickled source (as
    sent to DataLoader workers or Dask workers) opens its own handles.

    Args:
        paths: NetCDF file(s) continuing each other in time; ``manifest://<id>`` names a
            dataset of ``data_manifest.yaml``.
        variable: Data variable name.
        factor: Upsampling factor; the grid is cropped to a multiple of it.
        crop: Allow cropping (logged); otherwise a non-divisible grid is an error.
        cache_mb: Memory (MiB, per process) for whole time steps kept by :meth:`read`,
            least recently used dropped first; 0 turns the cache off.

    """

    def __init__(self, paths: str | Sequence[str], variable: str, factor: int,
                 crop: bool = True, cache_mb: float = STEP_CACHE_MB) -> None:
        raw = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
        self.paths = [resolve_path(str(p)) for p in raw]
        self.variable, self.factor, self.crop = variable, factor, crop
        self.cache_mb = cache_mb
        self._pid: int | None = None
        self._ds: xr.Dataset | None = None
        self._steps: OrderedDict[int, NDArray[np.float32]] = OrderedDict()
        #: Reads of one time step served from the cache, and those that filled it.
        self.cache_hits = self.cache_misses = 0

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # Each process (DataLoader worker) fills its own cache rather than unpickling one.
        state.update(_pid=None, _ds=None, _steps=OrderedDict())
        return state

    @property
    def dataset(self) -> xr.Dataset:
        """The normalised, cropped, Dask-backed field (opened once per process)."""
        if self._ds is None or self._pid != os.getpid():
            ds = open_field(self.paths, self.variable)
            self._ds = crop_to_factor(ds, (self.factor, self.factor), variable=self.variable,
                                      allow_crop=self.crop)
            self._pid = os.getpid()
        return self._ds

    @property
    def data(self) -> xr.DataArray:
        """The variable, dims ``(time, y, x)``."""
        return self.dataset[self.variable]

    @cached_property
    def dims(self) -> tuple[str, str]:
        return horizontal_dims(self.dataset)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(time, H, W)`` of the (cropped) fine grid."""
        t, h, w = self.data.shape
        return int(t), int(h), int(w)

    @cached_property
    def fine_area(self) -> NDArray[np.float64]:
        """Cell areas of the fine grid in m^2, shape ``(H, W)``."""
        return np.asarray(cell_areas(self.dataset).values)

    @cached_property
    def periodic(self) -> bool:
        """Whether the x axis is a full periodic longitude circle (after cropping)."""
        return self.dims[0] == "lat" and is_periodic_longitude(self.dataset["lon_bnds"].values)

    def read(self, t: int | slice | Sequence[int], ys: slice, xs: slice) -> NDArray[np.float32]:
        """Read a block of the variable as float32, shape ``(..., len(ys), len(xs))``.

        A single time step ``t`` is cut from the whole step, kept in a per-process cache of
        ``cache_mb``: a training epoch draws many patches from each step, and the xarray
        selection and Dask compute of one read cost some 20 times the NetCDF read itself
        (``python -m benchmarks.training``), about the same for a window as for the step.
        The result is a copy, never a view of the cache.
        """
        if isinstance(t, int | np.integer) and self.cache_steps:
            return self._cached_step(int(t))[ys, xs].copy()
        return self._read_block(t, ys, xs)

    @property
    def cache_steps(self) -> int:
        """Whole time steps the step cache holds at once (0: off, or a step is too big)."""
        _, h, w = self.shape
        return int(self.cache_mb * 2**20 // (4 * h * w))

    def _cached_step(self, t: int) -> NDArray[np.float32]:
        """The whole time step ``t``, ``(H, W)`` float32, through the LRU cache."""
        step = self._steps.get(t)
        if step is not None:
            self._steps.move_to_end(t)
            self.cache_hits += 1
            return step
        self.cache_misses += 1
        step = self._read_block(t, slice(None), slice(None))
        self._steps[t] = step
        while len(self._steps) * step.nbytes > self.cache_mb * 2**20:
            self._steps.popitem(last=False)
        return step

    def _read_block(self, t: int | slice | Sequence[int], ys: slice, xs: slice
                    ) -> NDArray[np.float32]:
        ydim, xdim = self.dims
        block = self.data.isel({"time": t, ydim: ys, xdim: xs})
        with dask.config.set(scheduler="synchronous"):
            return np.asarray(block.values, dtype=np.float32)

    def scan(self, times: Sequence[int], check: Sequence[int] | None = None
             ) -> tuple[NormStats, NDArray[np.bool_]]:
        """One lazy pass over the given time steps: statistics, checks and the static mask.

        Args:
            times: The time steps of the statistics and the mask (the training split).
            check: The time steps whose values are checked (default ``times``); give all of
                them, so that no split downscales impossible values.

        Returns:
            The mean and standard deviation over valid cells, and the mask of fine cells
            that are valid at least once, shape ``(H, W)``.

        Raises:
            InputError: No valid values, undeclared fill values, infinities or values
                impossible for the quantity (:func:`downscale.validate.check_values`).

        """
        check = list(times if check is None else check)
        arr = self.data.isel(time=list(times)).data.astype(np.float64)
        finite = dsa.isfinite(arr)
        values = dsa.where(finite, arr, 0.0)
        checked = self.data.isel(time=check).data.astype(np.float64)
        ok = dsa.isfinite(checked)
        count, total, total_sq, ever_valid, lowest, highest, n_inf, per_step = dask.compute(  # type: ignore[attr-defined,no-untyped-call]
            finite.sum(), values.sum(), (values**2).sum(), finite.any(axis=0),
            dsa.where(ok, checked, np.inf).min(), dsa.where(ok, checked, -np.inf).max(),
            dsa.isinf(checked).sum(), ok.sum(axis=(1, 2)))
        where = f"{', '.join(self.paths)}"
        if count == 0:
            raise InputError("no valid values in the selected time steps", path=where,
                             variable=self.variable, hint="check the time selection and "
                             "the _FillValue attribute")
        if suspicious(self.data, float(lowest), float(highest), int(n_inf)):
            for t in check:  # read again, step by step, to name what is wrong and where
                check_values(self.data, self._read_block(slice(t, t + 1), slice(None),
                                                         slice(None)),
                             path=where, offset={"time": t})
        report_coverage(self.data.isel(time=check), per_step, path=where)
        mean = total / count
        std = float(np.sqrt(max(total_sq / count - mean**2, 0.0)))
        return NormStats(float(mean), std if std > 0 else 1.0), np.asarray(ever_valid)


def shared_source(paths: Sequence[str], variable: str) -> FieldSource:
    """The uncropped :class:`FieldSource` of ``paths`` shared by every caller in a process.

    ``downscale run`` needs the same input in its checks, its output plan and each chunk it
    computes; opening and normalising a file costs about 0.1 s, a large share of a small
    run, so each process opens it once. The key holds each file's size and modification
    time, so a file rewritten in place (tests, a rerun in one session) is opened afresh.
    """
    resolved = tuple(resolve_path(str(p)) for p in paths)
    return _shared_source(resolved, variable, tuple(_identity(p) for p in resolved))


def _identity(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:  # missing: opening it says so in one line
        return None
    return stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=8)
def _shared_source(paths: tuple[str, ...], variable: str,
                   identity: tuple[tuple[int, int] | None, ...]) -> FieldSource:
    del identity  # only part of the cache key
    return FieldSource(list(paths), variable, 1, crop=False)
