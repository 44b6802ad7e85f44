"""The resume record, lock and temporaries of one output directory.

``downscale_run_record.json`` next to the outputs records, for each complete output, its
sha256 (a Zarr store: of its files' names and contents), size, and the key of what made it
(:meth:`~downscale.batch.plan.OutputPlan.key`). A rerun skips the outputs whose content
and record agree. Directories written before the record was renamed hold
``downscale_manifest.json`` (same format): it is read when there is no record, and
replaced by the record when the directory is next locked. A lock file
(``.downscale_run.lock``) keeps two runs from writing into one directory at once.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import glob
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import IO, Any

from downscale.checkpoint import file_sha256
from downscale.errors import InputError
from downscale.io import output_errors

log = logging.getLogger(__name__)

#: The resume record of an output directory.
RECORD_NAME = "downscale_run_record.json"
RECORD_FORMAT = "downscale-run-record/1"
#: The record's name and format before it was renamed (still read, then replaced).
LEGACY_NAME = "downscale_manifest.json"
LOCK_NAME = ".downscale_run.lock"


def output_sha256(path: Path) -> str:
    """Hex sha256 of a NetCDF file, or of a Zarr store's relative file names and contents."""
    if not path.is_dir():
        return file_sha256(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()


def output_bytes(path: Path) -> int:
    """Size of an output in bytes (a Zarr store: all its files)."""
    if not path.is_dir():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def record_entry(path: Path, key: str, inputs: Sequence[str], steps: tuple[int, int],
                 checkpoint_sha256: str, config: str) -> dict[str, Any]:
    """The record of one complete output (``config``: the checkpoint's JSON configuration)."""
    return {"sha256": output_sha256(path), "bytes": output_bytes(path), "key": key,
            "inputs": list(inputs), "time_steps": list(steps),
            "checkpoint_sha256": checkpoint_sha256,
            "config_sha256": hashlib.sha256(config.encode()).hexdigest(),
            "written": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


class RunRecord:
    """The record, lock and temporaries of one output directory (a context manager).

    Entering takes an exclusive lock (``flock`` on ``.downscale_run.lock``), so that two
    runs never write into one directory at once; leaving releases it (so does the kernel
    when the process dies).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / RECORD_NAME
        self.records: dict[str, dict[str, Any]] = {}
        self._lock: IO[str] | None = None

    def __enter__(self) -> RunRecord:
        self._lock = open(self.directory / LOCK_NAME, "a")  # held until __exit__
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise InputError("another downscale run is writing to this directory",
                             path=self.directory,
                             hint="wait for it to finish or choose another output "
                                  "directory") from None
        legacy = self.directory / LEGACY_NAME
        if self.path.exists() or not legacy.exists():
            self.records = self._read(self.path)
        else:  # migrate: the same entries under the new name
            self.records = self._read(legacy)
            self._write()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @staticmethod
    def _read(path: Path) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:  # corrupt: redo everything rather than trust it
            log.warning("Ignoring unreadable record %s (%s): every output is redone.",
                        path, exc)
            return {}
        outputs = data.get("outputs") if isinstance(data, dict) else None
        return dict(outputs) if isinstance(outputs, dict) else {}

    def record(self, name: str, entry: dict[str, Any]) -> None:
        """Add one complete output to the record (written atomically)."""
        self.records[name] = entry
        self._write()

    def _write(self) -> None:
        text = json.dumps({"format": RECORD_FORMAT, "outputs": self.records}, indent=1,
                          sort_keys=True)
        tmp = self.directory / f".{RECORD_NAME}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
        try:
            with output_errors(self.path, tmp):
                tmp.write_text(text + "\n")
                os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        (self.directory / LEGACY_NAME).unlink(missing_ok=True)  # migrated

    def is_complete(self, path: Path, key: str) -> bool:
        """Whether ``path`` is recorded with this key, and its size and sha256 agree."""
        entry = self.records.get(path.name)
        if entry is None or entry.get("key") != key or not path.exists():
            return False
        if output_bytes(path) != entry.get("bytes"):
            return False
        return output_sha256(path) == entry.get("sha256")

    def remove_temporaries(self, names: Sequence[str], keep: Collection[str] = ()) -> int:
        """Delete temporaries killed runs left behind (names as in ``temporary_path``).

        Args:
            names: The outputs' names.
            keep: Temporary names to keep: resumable Zarr stores of this very job.
        """
        from downscale.io import remove_output

        removed = 0
        for name in [*names, RECORD_NAME, LEGACY_NAME]:
            for stale in self.directory.glob(f".{glob.escape(name)}.*.tmp"):
                if stale.name in keep:
                    continue
                remove_output(stale)
                log.info("Removed the stale temporary %s", stale)
                removed += 1
        return removed
