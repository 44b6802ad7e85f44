"""Output writers: one interface for NetCDF and Zarr, written a time slab at a time.

A writer is created from a *template*: the complete output Dataset (coordinates,
attributes, encoding) whose data variable is a lazy Dask array that is never computed.
Then:

* :meth:`OutputWriter.create` writes the metadata under a temporary name
  (:func:`downscale.io.temporary_path`);
* :meth:`OutputWriter.write` writes time steps ``[t0:t1]`` of the variable, in any order;
* :meth:`OutputWriter.finish` verifies the output and renames it to its final name
  (:func:`downscale.io.commit_output`), so a final name only ever holds a complete output;
* :meth:`OutputWriter.abort` removes the temporary.

NetCDF (:class:`NetCDFWriter`): one writer process holds the file open (HDF5 files take one
writer). Zarr (:class:`ZarrWriter`): the metadata are written once (consolidated) and each
slab is an independent region write, so any process that can see the store writes its own
chunks; a chunk done is marked in the store (:meth:`ZarrWriter.mark_done`), so a run
killed half-way resumes with the chunks that are missing. The format follows the output's
name: a path ending in ``.zarr`` is a Zarr store, anything else a NetCDF file.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import xarray as xr

from downscale.conventions import UserLayout
from downscale.io import (
    check_output_target,
    commit_output,
    output_errors,
    remove_output,
    temporary_path,
)

log = logging.getLogger(__name__)

#: Zarr stores are written in Zarr format 2: its consolidated metadata (``.zmetadata``) are
#: read by every Zarr reader; format 3 has no consolidated metadata in its specification.
ZARR_FORMAT: Literal[2] = 2
_MARKED = ".chunks"
#: NetCDF chunks hold at most this many bytes (one time step when a chunk would be larger).
NETCDF_CHUNK_BYTES = 4 << 20
#: Encoding keys only the NetCDF backend understands.
_NETCDF_ONLY = ("zlib", "complevel", "shuffle", "chunksizes", "contiguous", "fletcher32",
                "least_significant_digit", "endian", "source", "original_shape")


def is_zarr(path: str | Path) -> bool:
    """Whether an output path names a Zarr store (it ends in ``.zarr``)."""
    return Path(path).suffix == ".zarr"


def netcdf_chunks(shape: tuple[int, ...], time_chunk: int) -> tuple[int, ...]:
    """NetCDF chunk shape: whole Dask chunks in time when small, else one step of <=1024^2."""
    *lead, h, w = shape
    spatial = (min(h, 1024), min(w, 1024))
    if not lead:
        return spatial
    steps = min(time_chunk, lead[0])
    if steps * spatial[0] * spatial[1] * 4 > NETCDF_CHUNK_BYTES:
        steps = 1
    return (steps, *spatial)



class OutputWriter(Protocol):
    """What every writer does (see the module docstring)."""

    final: Path
    tmp: Path

    def create(self) -> None:
        """Write the template's metadata under the temporary name."""

    def write(self, t0: int, t1: int, values: np.ndarray[Any, Any]) -> None:
        """Write ``(t1 - t0, H, W)`` values (NaN = missing) at time steps ``t0:t1``."""

    def finish(self) -> Path:
        """Verify, rename to the final name; returns it."""

    def abort(self) -> None:
        """Remove the temporary."""


class NetCDFWriter:
    """A CF NetCDF-4 file written slab by slab by this process.

    Args:
        template: The output Dataset; its data variable a lazy Dask array (not computed).
        variable: The data variable.
        final: The final path.
        time_chunk: Time steps per write, for the NetCDF chunk shape (:func:`netcdf_chunks`;
            zlib level 4 as the template's encoding says).
        layout: The input's layout, to write normalised values in the user's conventions
            (:func:`downscale.conventions.user_layout`); None writes them as given.
    """

    def __init__(self, template: xr.Dataset, variable: str, final: Path,
                 time_chunk: int = 1, layout: UserLayout | None = None) -> None:
        self.layout = layout
        template = template.copy()
        data = template[variable]
        data.encoding["chunksizes"] = netcdf_chunks(data.shape, time_chunk)
        self.template, self.variable, self.final = template, variable, final
        self.tmp = temporary_path(final)
        self._nc: Any = None

    def create(self) -> None:
        """Create the file (coordinates, attributes, the variable unfilled) and open it."""
        import dask
        import netCDF4

        check_output_target(self.final, self.template)
        try:  # errors are told (a full disk measured) before the temporary is removed
            # The synchronous scheduler: asked for one, xarray would make a Client on a Dask
            # worker, which, left to the garbage collector, fails after the worker's loop
            # closed (a traceback on stderr when a run stops); nothing is computed anyway.
            with (output_errors(self.final, self.tmp, self.template),
                  dask.config.set(scheduler="synchronous")):
                # compute=False writes everything but the Dask-backed variable's values.
                delayed = self.template.to_netcdf(self.tmp, engine="netcdf4",
                                                  format="NETCDF4", compute=False)
                del delayed  # never computed: the values come through write()
                self._nc = netCDF4.Dataset(self.tmp, "a")
        except BaseException:
            self.abort()
            raise

    def write(self, t0: int, t1: int, values: np.ndarray[Any, Any]) -> None:
        """Write time steps ``t0:t1`` (NaN becomes the variable's ``_FillValue``)."""
        var = self._nc[self.variable]
        dims = tuple(map(str, var.dimensions))
        where = tuple(_time_region(dims, self.layout, t0, t1).values())
        with output_errors(self.final, self.tmp, self.template):
            var[where] = np.ma.masked_invalid(_shaped(values, dims, self.layout))

    def finish(self) -> Path:
        """Close, verify and rename the file."""
        try:
            with output_errors(self.final, self.tmp, self.template):
                self._close()
                commit_output(self.tmp, self.final, self.template)
        except BaseException:
            self.abort()
            raise
        return self.final

    def abort(self) -> None:
        """Close and delete the temporary file (also one that cannot be flushed)."""
        try:
            self._close()
        except (RuntimeError, OSError) as exc:  # a full disk fails the flush of close()
            log.debug("Closing %s before removing it: %s", self.tmp, exc)
        _drop_xarray_handles(self.tmp)
        remove_output(self.tmp)

    def _close(self) -> None:
        nc, self._nc = self._nc, None  # closed once, even when closing fails
        if nc is not None:
            nc.close()


class ZarrWriter:
    """A Zarr store written by region, chunk by chunk, by any process; resumable.

    The temporary store's name carries ``tag`` (a hash of what makes the output and of its
    chunking), so that a rerun of the same job finds it and writes only the chunks that are
    not marked done. A writer is small and picklable: it is sent to the Dask workers that
    write the chunks.

    Args:
        template: The output Dataset (lazy data variable); None on the workers.
        variable: The data variable.
        final: The final path (``*.zarr``).
        time_chunk: Time steps of each Zarr chunk: every slab written is whole chunks
            (the last may be short), so that parallel region writes never share a chunk.
        tag: Stable part of the temporary name.
        layout: As for :class:`NetCDFWriter`.
    """

    def __init__(self, template: xr.Dataset | None, variable: str, final: Path,
                 time_chunk: int, tag: str, layout: UserLayout | None = None) -> None:
        self.layout = layout
        self.template, self.variable, self.final = template, variable, final
        self.time_chunk = time_chunk
        self.tmp = temporary_path(final, tag)
        #: One empty file per chunk written, beside the store (Zarr readers warn about
        #: unknown files inside it); removed with the store.
        self.markers = temporary_path(final, f"{tag}{_MARKED}")
        self.dims = tuple(map(str, template[variable].dims)) if template is not None else ()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "template": None}  # the workers only write regions

    def create(self) -> None:
        """Write the metadata (consolidated), or keep a temporary store a killed run left."""
        assert self.template is not None
        check_output_target(self.final, self.template)
        if self.markers.is_dir():  # made last: the store and its coordinates are complete
            log.info("Resuming %s: %d chunk(s) already written", self.final,
                     len(self.done()))
            return
        self.abort()
        ds = self.template.copy()
        for name in ds.variables:
            encoding = {k: v for k, v in ds[name].encoding.items() if k not in _NETCDF_ONLY}
            ds[name].encoding = encoding
        ds[self.variable].encoding["chunks"] = tuple(
            self.time_chunk if d == "time" else min(ds.sizes[d], 1024) for d in self.dims)
        try:
            with output_errors(self.final, self.tmp, ds):
                ds.to_zarr(self.tmp, mode="w", compute=False, consolidated=True,
                           zarr_format=ZARR_FORMAT)
                self.markers.mkdir()
        except BaseException:
            self.abort()
            raise

    def write(self, t0: int, t1: int, values: np.ndarray[Any, Any]) -> None:
        """Write time steps ``t0:t1`` into the temporary store (a region write)."""
        region = _time_region(self.dims, self.layout, t0, t1)
        part = xr.Dataset({self.variable: (self.dims, _shaped(values, self.dims, self.layout))})
        with output_errors(self.final, self.tmp, part):
            part.to_zarr(self.tmp, region=region, consolidated=False, zarr_format=ZARR_FORMAT)

    def mark_done(self, t0: int, t1: int) -> None:
        """Record that time steps ``t0:t1`` are written (after the region write)."""
        with output_errors(self.final, self.markers):
            (self.markers / f"{t0}-{t1}").touch()

    def done(self) -> set[tuple[int, int]]:
        """The ``(t0, t1)`` slabs marked written in the temporary store."""
        if not self.markers.is_dir():
            return set()
        pairs = (name.split("-") for name in (p.name for p in self.markers.iterdir()))
        return {(int(a), int(b)) for a, b in pairs}

    def finish(self) -> Path:
        """Consolidate, verify and rename the store; drop the markers."""
        import zarr

        assert self.template is not None
        with output_errors(self.final, self.tmp, self.template):
            zarr.consolidate_metadata(str(self.tmp), zarr_format=ZARR_FORMAT)
            commit_output(self.tmp, self.final, self.template)
            remove_output(self.markers)
        return self.final

    def abort(self) -> None:
        """Delete the temporary store and its markers (an interrupted run keeps them)."""
        remove_output(self.tmp)
        remove_output(self.markers)


def _drop_xarray_handles(path: Path) -> None:
    """Close the handles xarray's file cache holds on ``path``, ignoring their errors.

    A ``to_netcdf(compute=False)`` that fails (a full disk) leaves its file open, held by
    the exception's traceback; closed when that is collected, at exit, it would print an
    "Exception ignored ... HDF error" traceback under the one-line message.
    """
    from xarray.backends.file_manager import FILE_CACHE

    for key in [k for k in list(FILE_CACHE) if str(path) in map(str, k[1])]:
        handle = FILE_CACHE.pop(key, None)
        if handle is not None:
            with contextlib.suppress(Exception):
                handle.close()


def make_writer(template: xr.Dataset, variable: str, final: Path, time_chunk: int,
                tag: str, layout: UserLayout | None = None) -> NetCDFWriter | ZarrWriter:
    """The writer for ``final``: Zarr for a ``.zarr`` path, else NetCDF."""
    if is_zarr(final):
        return ZarrWriter(template, variable, final, time_chunk, tag, layout)
    return NetCDFWriter(template, variable, final, time_chunk, layout)


def _shaped(values: np.ndarray[Any, Any], dims: tuple[str, ...], layout: UserLayout | None
            ) -> np.ndarray[Any, Any]:
    """``(T, H, W)`` normalised values as the output variable's array, in the user's layout.

    Without time the values become ``(H, W)``. With ``layout`` (the input's conventions,
    :func:`downscale.conventions.user_layout`) the axes, latitude order and longitude range
    follow the user's file; without, the normalised order is the output's.
    """
    if _time_dim(dims, layout) is None:
        values = values.reshape(values.shape[-2:])
    return values if layout is None else np.asarray(layout.apply(values))


def _time_dim(dims: tuple[str, ...], layout: UserLayout | None) -> str | None:
    """The output's name of the time dimension, if the variable has one."""
    name = "time" if layout is None else layout.names.get("time", "time")
    return name if name in dims else None


def _time_region(dims: tuple[str, ...], layout: UserLayout | None, t0: int, t1: int
                 ) -> dict[str, slice]:
    """Where time steps ``t0:t1`` go, by the output's dimension names."""
    time = _time_dim(dims, layout)
    return {d: slice(t0, t1) if d == time else slice(None) for d in dims}


def resumable_names(final: Path, tag: str) -> set[str]:
    """Names of the temporaries a :class:`ZarrWriter` resumes (kept when cleaning up)."""
    return {temporary_path(final, tag).name, temporary_path(final, tag + _MARKED).name}
