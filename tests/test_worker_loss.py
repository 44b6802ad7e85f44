"""A Dask worker killed (SIGKILL) in the middle of ``downscale run --workers 2`` (issue 18,
item 5), through the command line only: the run either completes with the files of an
uninterrupted run, or fails in one line and a rerun completes them.

The worker is found as a child process of the run (LocalCluster's workers are processes it
spawns) and killed once the first output exists, so no test hook of the runner is needed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import xarray as xr
from conftest import ROOT, VARIABLE

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
#: Steps of the long input: enough chunks that the run is still going when a worker dies.
STEPS = 48


@pytest.fixture(scope="module")
def long_input(tmp_path_factory: pytest.TempPathFactory, coarse_nc: Path) -> Path:
    """The 12-step coarse input repeated to :data:`STEPS` steps (times continued)."""
    with xr.open_dataset(coarse_nc, decode_times=False) as ds:
        ds = ds.load()
    n = ds.sizes["time"]
    parts = [ds.assign_coords(time=ds["time"] + k * n * float(ds["time"][1] - ds["time"][0]))
             for k in range(STEPS // n)]
    long = xr.concat(parts, "time", data_vars="minimal", coords="minimal",
                     compat="override", join="override", combine_attrs="override")
    if "time_bnds" in long:
        long = long.drop_vars("time_bnds")
        long["time"].attrs.pop("bounds", None)
    path = tmp_path_factory.mktemp("long") / "long.nc"
    long.to_netcdf(path)
    return path


def _args(checkpoint: Path, coarse: Path, target: list[str], workers: int = 2) -> list[str]:
    return [sys.executable, "-m", "downscale", "run", "--checkpoint", str(checkpoint),
            "--input", str(coarse), *target, "--workers", str(workers), "--time-chunk", "1",
            "--no-progress"]


def _values(paths: list[Path]) -> np.ndarray[Any, Any]:
    parts = []
    for path in sorted(paths):
        with xr.open_dataset(path) as ds:
            parts.append(np.asarray(ds[VARIABLE].values))
    return np.concatenate(parts)


def _outputs(target: Path) -> list[Path]:
    if target.suffix == ".nc":
        return [target] if target.exists() else []
    return sorted(p for p in target.glob("*.nc") if not p.name.startswith("."))


@pytest.fixture(scope="module")
def expected(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path,
             long_input: Path) -> np.ndarray[Any, Any]:
    out = tmp_path_factory.mktemp("uninterrupted") / "fine.nc"
    subprocess.run(_args(checkpoint, long_input, ["--output", str(out)], workers=0), env=ENV,
                   check=True, timeout=600, capture_output=True)
    return _values([out])


def _kill_a_worker(proc: subprocess.Popen[str], started: Any, timeout: float = 300) -> int:
    """SIGKILL one worker process of the run once ``started()``; its PID."""
    deadline = time.monotonic() + timeout
    parent = psutil.Process(proc.pid)
    while time.monotonic() < deadline and proc.poll() is None:
        workers = []
        for child in parent.children(recursive=True):
            try:
                if child.status() != psutil.STATUS_ZOMBIE and (
                        "resource_tracker" not in " ".join(child.cmdline())):
                    workers.append(child)
            except psutil.Error:  # ended meanwhile
                continue
        if len(workers) >= 2 and started():
            os.kill(workers[0].pid, signal.SIGKILL)
            return workers[0].pid
        time.sleep(0.02)
    raise AssertionError("the run ended (or never started its workers) before a worker "
                         "could be killed")


@pytest.mark.parametrize("mode", ["output", "output-dir"])
def test_a_killed_worker_is_survived_or_reported_and_a_rerun_completes(
        mode: str, checkpoint: Path, long_input: Path, tmp_path: Path,
        expected: np.ndarray[Any, Any]) -> None:
    target_path = tmp_path / ("fine.nc" if mode == "output" else "blocks")
    target = [f"--{mode}", str(target_path)] + (["--time-block", "8"] if mode != "output"
                                                 else [])
    proc = subprocess.Popen(_args(checkpoint, long_input, target), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _kill_a_worker(proc, lambda: any(p.name.endswith(".tmp") for p in tmp_path.rglob("*")))
        stderr = proc.communicate(timeout=600)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print(f"{mode}: the run {'completed' if proc.returncode == 0 else 'failed'} after the "
          "worker was killed")  # which of the two outcomes (pytest -rP shows it)
    if proc.returncode != 0:  # refused in one line; the rerun completes the outputs
        assert "Traceback" not in stderr, stderr[-3000:]
        lines = [ln for ln in stderr.splitlines() if ln.startswith("downscale: error:")]
        assert len(lines) == 1, stderr[-3000:]
        rerun = subprocess.run(_args(checkpoint, long_input, target), env=ENV,
                               capture_output=True, text=True, timeout=600)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
    np.testing.assert_array_equal(_values(_outputs(target_path)), expected)
    assert not [p for p in tmp_path.rglob("*.tmp")]
