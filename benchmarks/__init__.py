"""Side-by-side performance measurements (issue 7); run with ``python -m benchmarks``."""

from __future__ import annotations

import os
from pathlib import Path

#: The checkout holding this package (and the ``downscale`` package it measures).
ROOT = Path(__file__).resolve().parents[1]


def checkout_env() -> dict[str, str]:
    """The environment for subprocesses, in which this checkout's packages win over
    installed ones (``downscale`` and ``benchmarks`` both come from :data:`ROOT`)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}
