"""Public helpers for testing downscaling output (in the spirit of ``xarray.testing``).

Users call these in their own tests and notebooks; the package's tests use them too.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray


def synthetic_field(shape: tuple[int, ...], *, spectral_slope: float = -3.0, seed: int = 0,
                    mean: float = 0.0, std: float = 1.0) -> NDArray[np.float64]:
    """A Gaussian random field with an isotropic power spectrum ``P(k) ~ k^spectral_slope``.

    A slope near -3 resembles the large-scale spectra of temperature and geopotential
    (Nastrom & Gage 1985, J. Atmos. Sci. 42, 950-960); smaller slopes are rougher.

    Args:
        shape: ``(..., H, W)``; leading dims give independent fields.
        spectral_slope: Exponent of the power spectrum.
        seed: Random seed.
        mean: Mean of the result.
        std: Standard deviation of the result.

    Returns:
        float64 array of ``shape``, periodic in both horizontal axes.

    """
    rng = np.random.default_rng(seed)
    *lead, h, w = shape
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.rfftfreq(w)[None, :]
    k = np.hypot(ky, kx)
    k[0, 0] = np.inf  # no power in the mean
    amplitude = k ** (spectral_slope / 2.0)
    noise = rng.normal(size=(*lead, h, w // 2 + 1)) + 1j * rng.normal(size=(*lead, h, w // 2 + 1))
    field = np.fft.irfft2(noise * amplitude, s=(h, w))
    field -= field.mean(axis=(-2, -1), keepdims=True)
    field /= field.std(axis=(-2, -1), keepdims=True)
    return mean + std * field


def assert_mass_conserved(fine: NDArray[np.floating], coarse: NDArray[np.floating],
                          fine_area: NDArray[np.floating], factor: int, *,
                          rtol: float = 1e-5) -> None:
    """Assert that every coarse cell's valid fine cells carry its mass (area-weighted).

    Args:
        fine: ``(..., H, W)``, NaN = missing.
        coarse: ``(..., H/factor, W/factor)``.
        fine_area: ``(H, W)`` cell areas.
        factor: Upsampling factor.
        rtol: Allowed error per coarse cell, relative to the mean absolute coarse value.

    Raises:
        AssertionError: With the worst cell's error when conservation fails.

    """
    from downscale.metrics import conservation_error

    err = conservation_error(fine, coarse, fine_area, factor)
    if not err.max_rel <= rtol:
        raise AssertionError(f"mass not conserved: max relative error per coarse cell "
                             f"{err.max_rel:.3e} > {rtol:.1e} (global {err.global_rel:.3e})")


@dataclass(frozen=True)
class ProcessUsage:
    """Wall time and peak resident memory of a finished process and its descendants.

    Attributes:
        seconds: Wall time from start to exit (s).
        peak_main: Peak RSS of the process itself (bytes).
        peak_children: Peak RSS of each descendant, largest last (bytes).
        peak_total: Peak of the summed RSS of all of them at one sampling instant (bytes).
        returncode: Exit status.
        stderr: What the process wrote to stderr.
    """

    seconds: float
    peak_main: int
    peak_children: list[int]
    peak_total: int
    returncode: int
    stderr: str


@contextlib.contextmanager
def peak_rss(processes: Callable[[], Sequence[Any]], interval: float = 0.05
             ) -> Iterator[dict[int, int]]:
    """Peak resident memory (bytes) of processes while the block runs.

    A thread samples ``processes()`` (``psutil.Process`` objects; asked again each time,
    so that children started later are counted) every ``interval`` s. Sampling misses
    peaks shorter than ``interval``; that is fine for the chunk-sized plateaus it is used
    to compare.

    Yields:
        A dict filled while the block runs: pid -> peak RSS, and key ``0`` -> the peak of
        their summed RSS at one sampling instant.
    """
    import psutil

    peaks: dict[int, int] = {0: 0}
    stop = threading.Event()

    def sample() -> None:
        while True:
            now = 0
            for process in processes():
                try:
                    rss = process.memory_info().rss
                except psutil.Error:  # it ended between listing and reading
                    continue
                peaks[process.pid] = max(peaks.get(process.pid, 0), rss)
                now += rss
            peaks[0] = max(peaks[0], now)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peaks
    finally:
        stop.set()
        thread.join()


def measure_process(argv: Sequence[str], env: Mapping[str, str] | None = None,
                    interval: float = 0.05) -> ProcessUsage:
    """Run ``argv``; its wall time and the peak RSS of it and of every descendant.

    Memory is sampled every ``interval`` s (:func:`peak_rss`).
    """
    import subprocess

    import psutil

    start = time.monotonic()
    proc = subprocess.Popen(list(argv), env=None if env is None else dict(env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    main = psutil.Process(proc.pid)

    def family() -> list[Any]:
        try:
            return [main, *main.children(recursive=True)]
        except psutil.Error:  # it has ended
            return []

    with peak_rss(family, interval) as peaks:
        stderr = proc.communicate()[1]
    seconds = time.monotonic() - start
    total = peaks.pop(0)
    own = peaks.pop(proc.pid, 0)
    return ProcessUsage(seconds=seconds, peak_main=own, peak_children=sorted(peaks.values()),
                        peak_total=max(total, own), returncode=proc.returncode, stderr=stderr)
