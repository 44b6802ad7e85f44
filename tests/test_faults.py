"""Fault injection for ``downscale run``: SIGKILL and SIGTERM at named points, then a rerun;
two runs on one output directory. (kill -9 while computing is in test_run.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from conftest import ROOT, VARIABLE

from downscale.run import CHUNK_DELAY_ENV, MANIFEST_NAME, PAUSE_ENV

#: Subprocesses run this checkout's package with one torch thread.
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _args(checkpoint: Path, coarse: Path, outdir: Path) -> list[str]:
    return [sys.executable, "-m", "downscale", "run", "--checkpoint", str(checkpoint),
            "--input", str(coarse), "--output-dir", str(outdir), "--time-block", "6",
            "--workers", "0", "--time-chunk", "1", "--no-progress"]


def _values(directory: Path) -> np.ndarray[Any, Any]:
    names = sorted(n for n in os.listdir(directory) if n.endswith(".nc") and n[0] != ".")
    parts = []
    for name in names:
        with xr.open_dataset(directory / name) as ds:
            parts.append(ds[VARIABLE].values)
    return np.concatenate(parts)


def _temporaries(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".tmp"))


def _wait_for(proc: subprocess.Popen[str], ready: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and not ready():
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it was interrupted"


@pytest.fixture(scope="module")
def expected(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path,
             coarse_nc: Path) -> np.ndarray[Any, Any]:
    """The values of an uninterrupted run."""
    outdir = tmp_path_factory.mktemp("uninterrupted")
    subprocess.run(_args(checkpoint, coarse_nc, outdir), env=ENV, check=True, timeout=300,
                   capture_output=True)
    return _values(outdir)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
@pytest.mark.parametrize("point", ["read", "writing", "renamed"])
def test_interrupted_run_then_rerun_gives_the_uninterrupted_files(
        point: str, sig: signal.Signals, checkpoint: Path, coarse_nc: Path, tmp_path: Path,
        expected: np.ndarray[Any, Any]) -> None:
    outdir = tmp_path / "out"
    hook = {CHUNK_DELAY_ENV: "0.5"} if point == "writing" else {PAUSE_ENV: f"{point}:30"}
    proc = subprocess.Popen(_args(checkpoint, coarse_nc, outdir), env={**ENV, **hook},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = outdir / f"{VARIABLE}_000000-000005.nc"
    try:
        if point == "renamed":  # the first file renamed, the manifest not yet written
            _wait_for(proc, first.exists)
        else:  # the first file's temporary is being written
            _wait_for(proc, lambda: outdir.is_dir() and bool(_temporaries(outdir)))
        time.sleep(0.3)
        proc.send_signal(sig)
        stderr = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if sig == signal.SIGTERM:  # a clean exit: status 143, its temporary removed
        assert proc.returncode == 143, stderr[-2000:]
        assert not _temporaries(outdir), _temporaries(outdir)
    else:
        assert proc.returncode == -signal.SIGKILL
    for name in os.listdir(outdir):  # a final name holds a complete file or nothing
        if name.endswith(".nc") and name[0] != ".":
            with xr.open_dataset(outdir / name) as ds:
                assert ds[VARIABLE].shape[0] == 6
    rerun = subprocess.run(_args(checkpoint, coarse_nc, outdir), env=ENV, timeout=300,
                           capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert not _temporaries(outdir)
    assert (outdir / MANIFEST_NAME).is_file()
    np.testing.assert_array_equal(_values(outdir), expected)


def test_two_runs_on_one_directory(checkpoint: Path, coarse_nc: Path, tmp_path: Path,
                                   expected: np.ndarray[Any, Any]) -> None:
    outdir = tmp_path / "shared"
    first = subprocess.Popen(_args(checkpoint, coarse_nc, outdir),
                             env={**ENV, PAUSE_ENV: "renamed:12"}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:  # the first run holds the lock, paused after writing its first file
        _wait_for(first, (outdir / f"{VARIABLE}_000000-000005.nc").exists)
        second = subprocess.run(_args(checkpoint, coarse_nc, outdir), env=ENV, timeout=300,
                                capture_output=True, text=True)
        assert first.poll() is None, "the first run ended too early to test the lock"
        assert second.returncode == 2
        assert second.stderr.strip().count("\n") == 0, second.stderr
        assert "another downscale run is writing to this directory" in second.stderr
        assert str(outdir) in second.stderr
        assert first.wait(timeout=300) == 0, first.communicate()[1][-2000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    np.testing.assert_array_equal(_values(outdir), expected)
    again = subprocess.run(_args(checkpoint, coarse_nc, outdir), env=ENV, timeout=300,
                           capture_output=True, text=True)
    assert again.returncode == 0
    assert again.stderr.count("complete and verified") == 2, again.stderr
    assert "Nothing to do" in again.stderr


@pytest.mark.slow
def test_training_killed_then_resumed_continues_from_the_saved_epoch_and_step(
        tmp_path: Path) -> None:
    import torch

    ddp = str(ROOT / "tests" / "conf" / "e1_ddp.yaml")
    common = [sys.executable, "-m", "downscale", "fit", "--config", ddp, "--trainer.devices",
              "1", "--trainer.strategy", "auto", "--trainer.limit_val_batches", "1"]
    last = tmp_path / "outputs" / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen([*common, "--trainer.max_epochs", "1000"], cwd=tmp_path, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(proc, last.exists, timeout=240)
        time.sleep(1.0)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    saved = torch.load(last, map_location="cpu", weights_only=False)
    epoch, step = saved["epoch"], saved["global_step"]
    assert step > 0
    subprocess.run([*common, "--trainer.max_epochs", str(epoch + 2), "--ckpt_path", "last"],
                   cwd=tmp_path, env=ENV, check=True, timeout=300, capture_output=True)
    resumed = torch.load(last, map_location="cpu", weights_only=False)
    steps_per_epoch = step // (epoch + 1)
    assert resumed["epoch"] == epoch + 1
    assert resumed["global_step"] == step + steps_per_epoch
