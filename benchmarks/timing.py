"""Timing helpers shared by the benchmark sections."""

from __future__ import annotations

import functools
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


def wall_seconds(step: Callable[[], object]) -> float:
    """Wall time of one call of ``step`` (s), for work too long to repeat."""
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def interleaved(steps: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each step over ``repeats`` rounds, the steps taking turns.

    Each step times itself and returns its seconds (so that it can leave out its own
    set-up). On a shared machine the load drifts over seconds; timing the contenders in
    turn exposes them to the same drift, so per-round ratios are steadier than ratios of
    separately taken medians. Each step is called once first, as a warm-up.
    """
    for step in steps.values():
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(step())
    return times


def interleaved_seconds(steps: dict[str, Callable[[], object]], repeats: int
                        ) -> dict[str, list[float]]:
    """:func:`interleaved` for steps timed whole."""
    return interleaved({name: functools.partial(wall_seconds, step)
                        for name, step in steps.items()}, repeats)


def median(values: list[float]) -> float:
    """The median (the upper middle value of an even count)."""
    return sorted(values)[len(values) // 2]


def median_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of ``numerator[i] / denominator[i]``."""
    return median([a / b for a, b in zip(numerator, denominator, strict=True)])
