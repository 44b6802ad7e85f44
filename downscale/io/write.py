"""Writing outputs atomically: temporary name, verify, fsync, rename; output folders; CF history.

A final name only ever holds a complete output; a refused write or a full disk becomes one
:class:`~downscale.errors.InputError` line.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import xarray as xr

from downscale.errors import DiskFullError, InputError
from downscale.io.paths import PathLike, _reason

_REMOVE_ATTEMPTS = 5  # removals of a Zarr store still being written, before giving up
#: A write that failed without an errno is put down to a full disk when less than this is
#: free: more than one HDF5 write asks for at once (a chunk of at most 4 MiB of values,
#: ``writers.NETCDF_CHUNK_BYTES``, and its metadata), so a failed write leaves less.
FULL_BELOW = 8 << 20


def write_netcdf(ds: xr.Dataset, path: PathLike, *, verify: bool = True) -> Path:
    """Write a Dataset to NetCDF atomically: temporary name, verify, rename.

    A crash at any point leaves either the previous file or nothing at ``path``, never a
    partial one. The temporary file lives in the same directory so the rename is atomic,
    and it is removed when anything fails.

    Args:
        ds: The dataset; encodings in ``ds[v].encoding`` are respected.
        path: The final path.
        verify: Reopen the temporary file and check its variables before renaming.

    Returns:
        The final path.

    Raises:
        InputError: If the output directory is missing or not writable, or the disk is
            full.
    """
    final = Path(path)
    check_output_target(final, ds)
    tmp = temporary_path(final)
    with _removed_on_error(tmp), output_errors(final, tmp, ds):
        ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4")
        commit_output(tmp, final, ds if verify else None)
    return final


def _names(ds: xr.Dataset) -> str | None:
    """The data variables, for a message (not the coordinate bounds among them)."""
    bounds = {str(v.attrs.get("bounds")) for v in ds.variables.values()}
    return ", ".join(sorted(str(v) for v in ds.data_vars if str(v) not in bounds)) or None


def check_output_target(final: Path, ds: xr.Dataset) -> None:
    """Check that ``final`` can be written: its directory exists and is writable.

    Raises:
        InputError: The directory is missing or not writable, or ``final`` is a directory.
    """
    directory, names = final.parent, _names(ds)
    if not directory.is_dir():
        raise InputError(f"output directory {directory} does not exist", path=final,
                         variable=names, hint="create it first or choose another output path")
    if not os.access(directory, os.W_OK):
        raise InputError(f"output directory {directory} is not writable", path=final,
                         variable=names, hint="choose a writable output path")
    if final.is_dir() and final.suffix != ".zarr":
        raise InputError("the output path is a directory", path=final, variable=names,
                         hint="give a file name ending in .nc")


def temporary_path(final: Path, tag: str | None = None) -> Path:
    """The temporary name of ``final`` while it is written: same directory, hidden.

    ``.<name>.<tag>.tmp``; the tag defaults to this process and a random suffix (a
    resumable output passes a stable one). Stale ones match ``.<name>.*.tmp``.
    """
    tag = tag or f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return final.parent / f".{final.name}.{tag}.tmp"


@contextlib.contextmanager
def output_errors(final: Path, tmp: Path, ds: xr.Dataset | None = None) -> Iterator[None]:
    """Turn a full disk or a refused write into an :class:`InputError` (one line).

    Enter it inside the code that removes the temporary on failure, so that the free
    space is measured as the failed write left it, not after the temporary is gone.

    Raises:
        DiskFullError: The file system, or the user's quota, has no room: ``ENOSPC`` or
            ``EDQUOT``, or a netCDF-C error that lost its errno (``RuntimeError("NetCDF:
            HDF error")``) while :func:`out_of_space` finds the directory full.
        InputError: The write was refused (permissions, a read-only file system).
    """
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_full(final, ds, os.strerror(exc.errno)) from exc
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise InputError(f"cannot write the file ({_reason(exc, tmp)})", path=final,
                             variable=None if ds is None else _names(ds),
                             hint="check the permissions of the output directory") from exc
        raise
    except RuntimeError as exc:  # netCDF4: "NetCDF: HDF error", the errno lost on the way
        reason = out_of_space(final.parent) if str(exc).startswith("NetCDF:") else None
        if reason is None:
            raise
        raise _disk_full(final, ds, reason) from exc


def _disk_full(final: Path, ds: xr.Dataset | None, reason: str) -> DiskFullError:
    return DiskFullError(f"disk full while writing ({reason})", path=final,
                         variable=None if ds is None else _names(ds),
                         hint=f"free space in {final.parent} or write elsewhere, then run the "
                         "same command again: it keeps what is complete and resumes")


def out_of_space(directory: Path) -> str | None:
    """Why a write into ``directory`` that failed without an errno ran out of room, or None.

    netCDF-C reports a failed HDF5 write as "HDF error" and drops the errno. Less than
    :data:`FULL_BELOW` free names the cause; else a probe write of that size finds a quota
    (invisible to ``statvfs``) or a disk that filled meanwhile by its errno. Anything else
    is not put down to space (None): the original error stands.
    """
    from dask.utils import format_bytes

    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return None
    if free < FULL_BELOW:
        return f"{format_bytes(free)} left"
    probe: str | None = None
    try:
        handle, probe = tempfile.mkstemp(prefix=".downscale-space-", dir=directory)
        with os.fdopen(handle, "wb") as file:
            block = bytes(1 << 20)
            for _ in range(FULL_BELOW >> 20):
                file.write(block)
            file.flush()
            os.fsync(file.fileno())
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return os.strerror(exc.errno)
    finally:
        if probe is not None:
            os.unlink(probe)
    return None


def commit_output(tmp: Path, final: Path, verify: xr.Dataset | None = None) -> None:
    """Make a complete temporary output durable and give it its final name, atomically.

    Args:
        tmp: The temporary NetCDF file, or Zarr store (a directory).
        final: The final path. An existing Zarr store there is replaced.
        verify: Reopen ``tmp`` and check that it holds these variables and shapes first.
    """
    for file in (tmp.rglob("*") if tmp.is_dir() else [tmp]):
        if file.is_file():
            with open(file, "rb+") as handle:
                os.fsync(handle.fileno())
    if verify is not None:
        _verify_written(verify, tmp)
    if tmp.is_dir() and final.is_dir():  # a directory cannot be replaced in one rename
        old = temporary_path(final, "replaced")
        os.replace(final, old)
        shutil.rmtree(old)
    os.replace(tmp, final)
    with contextlib.suppress(OSError):  # make the rename itself durable where possible
        fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _verify_written(ds: xr.Dataset, tmp: Path) -> None:
    engine = "zarr" if tmp.is_dir() else "netcdf4"
    with xr.open_dataset(tmp, engine=engine, decode_times=False) as check:
        missing = set(map(str, ds.data_vars)) - set(map(str, check.data_vars))
        wrong = [str(v) for v in ds.data_vars if str(v) in check.data_vars
                 and check[v].shape != ds[v].shape]
    if missing or wrong:
        raise OSError(f"verification of {tmp} failed: missing {sorted(missing)}, "
                      f"wrong shape {wrong}")


@contextlib.contextmanager
def _removed_on_error(path: Path) -> Iterator[None]:
    try:
        yield
    except BaseException:
        remove_output(path)
        raise


def remove_output(path: Path) -> None:
    """Delete a (temporary) output: a NetCDF file or a Zarr store; nothing if absent.

    A store being removed after an interrupt may still be written to by Zarr's I/O
    thread for a moment (the signal stops the main thread only), so a removal that
    leaves entries behind is retried before the last attempt's error is raised.
    """
    if not path.is_dir() or path.is_symlink():
        path.unlink(missing_ok=True)
        return
    for _ in range(_REMOVE_ATTEMPTS - 1):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return
        time.sleep(0.1)
    shutil.rmtree(path)


def make_output_folder(path: PathLike) -> Path:
    """Create the output folder ``path`` (and parents) for a command's ``--output``.

    Raises:
        InputError: It cannot be created (not writable, a file in the way, ...).
    """
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder ({exc.strerror})", path=out,
                         hint="choose a writable folder with --output") from exc
    return out


def history_line(action: str) -> str:
    """A CF ``history`` entry: ISO timestamp and what was done."""
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{stamp}: {action}"
