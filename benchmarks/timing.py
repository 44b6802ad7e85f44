"""Timing helpers shared by the benchmark sections."""

from __future__ import annotations

import time
from collections.abc import Callable


def median_seconds(step: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``step`` in seconds (one untimed warm-up call first)."""
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]
