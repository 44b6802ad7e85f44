"""Error types for problems the user can fix.

Every entry point catches :class:`DownscaleError` and prints its message as one line
(no traceback) with a non-zero exit status. Messages follow one pattern:
``<file>: <variable>: <problem>. <what to do>``.
"""

from __future__ import annotations

from os import PathLike


class DownscaleError(Exception):
    """A problem with the user's input, configuration or environment."""

    exit_code = 2


class InputError(DownscaleError):
    """A data file or variable that cannot be used as it is."""

    def __init__(
        self,
        problem: str,
        *,
        path: str | PathLike[str] | None = None,
        variable: str | None = None,
        hint: str | None = None,
    ) -> None:
        parts = [str(p) for p in (path, variable) if p is not None]
        parts.append(problem.rstrip("."))
        message = ": ".join(parts) + "."
        if hint:
            message += " " + hint.rstrip(".") + "."
        super().__init__(message)
        self.path = path
        self.variable = variable


class ManifestError(DownscaleError):
    """A dataset in data_manifest.yaml is unknown, missing or fails its checksum."""


class CheckpointError(DownscaleError):
    """A checkpoint that does not fit the data it is asked to process."""


class DiskFullError(InputError):
    """The output's file system (or the user's quota there) has no room for the output.

    A run stopped by it keeps what is complete (and a Zarr store's chunks written), so
    that the same command, rerun once there is room, resumes.
    """


class WorkerLostError(DownscaleError):
    """A Dask worker died (killed, out of memory) while it ran a task of an output.

    Like :class:`DiskFullError`, the outputs complete (and a Zarr store's chunks written)
    are kept: rerunning the same command resumes.
    """
