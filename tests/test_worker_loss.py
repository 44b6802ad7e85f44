"""A Dask worker killed (SIGKILL) in the middle of ``downscale run --workers 2`` (issue 18,
item 5): the run either completes with the values of an uninterrupted run, or fails in one
line and a rerun completes them. One test for each outcome:

* **survived**: ``--output x.nc`` with Dask's default retries (a task whose worker died is
  run again elsewhere; the nanny restarts the worker): the run completes, equal.
* **reported**: ``--output-dir`` with ``allowed-failures`` 0 (the first death fails the
  task, Dask's ``KilledWorker``): one ``downscale: error:`` line naming the output, no
  temporary left (the killed worker's own included), and the same command completes.

The runs are real processes (``tests.helpers.run_with_faults``, so that every chunk takes
a moment: ``--pause read``); the worker is found among the run's child processes
(LocalCluster spawns them) and killed while it holds a task. Small on purpose (the
12-step input, one cluster per run): both cases take about 40 s.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
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
#: Seconds each chunk sleeps after it is read: a worker holds a task long enough to be
#: killed in the middle of it.
PAUSE = "read:0.3"


def _args(checkpoint: Path, coarse: Path, target: list[str], workers: int = 2) -> list[str]:
    return [sys.executable, "-m", "tests.helpers.run_with_faults", f"--pause={PAUSE}", "--",
            "--checkpoint", str(checkpoint), "--input", str(coarse), *target,
            "--workers", str(workers), "--time-chunk", "1", "--no-progress"]


def _values(paths: list[Path]) -> np.ndarray[Any, Any]:
    parts = []
    for path in sorted(paths):
        with xr.open_dataset(path) as ds:
            parts.append(np.asarray(ds[VARIABLE].values))
    return np.concatenate(parts)


def _finals(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.nc") if not p.name.startswith("."))


@pytest.fixture(scope="module")
def expected(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path,
             coarse_nc: Path) -> np.ndarray[Any, Any]:
    """The values of an uninterrupted run (in this process, no Dask: no second start-up)."""
    import torch

    from downscale.batch.cli import main as run_main

    out = tmp_path_factory.mktemp("uninterrupted") / "fine.nc"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the runs' OMP_NUM_THREADS=1, so values agree bit for bit
    try:
        run_main(["--checkpoint", str(checkpoint), "--input", str(coarse_nc), "--output",
                  str(out), "--workers", "0", "--time-chunk", "1", "--no-progress"])
    finally:
        torch.set_num_threads(threads)
    return _values([out])


def _workers(proc: subprocess.Popen[str]) -> list[psutil.Process]:
    """The run's live Dask worker processes (not multiprocessing's resource tracker)."""
    found = []
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and (
                    "resource_tracker" not in " ".join(child.cmdline())):
                found.append(child)
        except psutil.Error:  # ended meanwhile
            continue
    return found


def _kill_a_worker(proc: subprocess.Popen[str],
                   busy: Callable[[list[psutil.Process]], psutil.Process | None],
                   timeout: float = 60) -> int:
    """SIGKILL the worker that ``busy(workers)`` picks, once it picks one; its PID."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        workers = _workers(proc)
        victim = busy(workers) if len(workers) >= 2 else None
        if victim is not None:
            os.kill(victim.pid, signal.SIGKILL)
            return victim.pid
        time.sleep(0.02)
    raise AssertionError("the run ended (or never started two workers) before a worker "
                         "could be killed")


def _start(args: list[str], **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(args, env={**ENV, **env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen[str]) -> str:
    """Wait for the run; its stderr (the process is never left running)."""
    try:
        return proc.communicate(timeout=300)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_killed_worker_is_survived_and_the_output_equals_an_uninterrupted_run(
        checkpoint: Path, coarse_nc: Path, tmp_path: Path,
        expected: np.ndarray[Any, Any]) -> None:
    out = tmp_path / "fine.nc"
    proc = _start(_args(checkpoint, coarse_nc, ["--output", str(out)]))
    started: list[float] = []

    def computing(workers: list[psutil.Process]) -> psutil.Process | None:
        """Any worker, a moment after the output's temporary exists (chunks under way)."""
        if not started and any(p.name.endswith(".tmp") for p in tmp_path.iterdir()):
            started.append(time.monotonic())
        return workers[0] if started and time.monotonic() > started[0] + 0.3 else None

    try:
        _kill_a_worker(proc, computing)
    finally:
        stderr = _finish(proc)
    assert proc.returncode == 0, stderr[-3000:]
    np.testing.assert_array_equal(_values([out]), expected)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_a_killed_worker_fails_in_one_line_and_a_rerun_completes(
        checkpoint: Path, coarse_nc: Path, tmp_path: Path,
        expected: np.ndarray[Any, Any]) -> None:
    blocks = tmp_path / "blocks"
    target = ["--output-dir", str(blocks), "--time-block", "4"]
    proc = _start(_args(checkpoint, coarse_nc, target),
                  DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="0")

    def writing(workers: list[psutil.Process]) -> psutil.Process | None:
        """The worker that has an output's temporary open (it is writing that output)."""
        for worker in workers:
            try:
                if any(f.path.startswith(str(blocks)) and f.path.endswith(".tmp")
                       for f in worker.open_files()):
                    return worker
            except psutil.Error:
                continue
        return None

    try:
        _kill_a_worker(proc, writing)
    finally:
        stderr = _finish(proc)
    assert proc.returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [ln for ln in stderr.splitlines() if ln.startswith("downscale: error:")]
    assert len(lines) == 1 and "worker died" in lines[0] and str(blocks) in lines[0], stderr
    assert not [p.name for p in blocks.iterdir() if p.name.endswith(".tmp")]
    # The rerun in this process (--workers 0): resuming is the runner's, not Dask's, and a
    # second cluster would only add its start-up to CI.
    rerun = subprocess.run(_args(checkpoint, coarse_nc, target, workers=0), env=ENV,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    np.testing.assert_array_equal(_values(_finals(blocks)), expected)
    assert not [p.name for p in blocks.iterdir() if p.name.endswith(".tmp")]
    _add_to_bad_input_table(lines[0].replace(str(tmp_path) + "/", ""))


def _add_to_bad_input_table(line: str) -> None:
    """Add the line to the bad-input table's rows (tests/bad_inputs/make_table.py)."""
    table = os.environ.get("DOWNSCALE_BAD_INPUT_TABLE")
    if table:
        rows = json.loads(Path(table).read_text()) if Path(table).exists() else []
        rows.append({"case": "Dask worker killed (SIGKILL) while writing", "entry": "run",
                     "note": "--workers 2, allowed-failures 0", "message": line})
        Path(table).write_text(json.dumps(rows, indent=1) + "\n")
