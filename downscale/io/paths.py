"""How the I/O modules name files: the path type they accept, library errors without the path.

netCDF-C, HDF5 and the operating system put the full path in their exception text; an
:class:`~downscale.errors.InputError` names the file once, at the start of its one line.
"""

from __future__ import annotations

import os
from pathlib import Path

PathLike = str | os.PathLike[str]


def _reason(exc: BaseException, path: Path) -> str:
    """The text of a library exception on one line, without the (long) path."""
    text = " ".join(str(exc).split())
    for name in sorted({str(path.resolve()), str(path)}, key=len, reverse=True):
        text = text.replace(f": '{name}'", "").replace(f"'{name}'", "the file")
        text = text.replace(name, "the file")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
