"""Fault injection for ``downscale run``: SIGKILL and SIGTERM at named points, then a rerun,
for NetCDF and Zarr outputs; two runs on one output directory. (kill -9 while computing is
in test_run.py.) The runs are real processes started through ``tests.helpers.run_with_faults``,
which passes the pauses to :func:`downscale.batch.cli.main` as injected hooks."""

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

from downscale.batch import RECORD_NAME

#: Subprocesses run this checkout's package with one torch thread.
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _args(checkpoint: Path, coarse: Path, outdir: Path, fmt: str = "netcdf",
          *pauses: str, holds: tuple[str, ...] = ()) -> list[str]:
    """``downscale run`` (through the fault-injecting entry when pauses or holds are given)."""
    faults = [*(f"--pause={p}" for p in pauses), *(f"--hold={h}" for h in holds)]
    entry = ["tests.helpers.run_with_faults", *faults, "--"] if faults else ["downscale", "run"]
    return [sys.executable, "-m", *entry, "--checkpoint", str(checkpoint), "--input",
            str(coarse), "--output-dir", str(outdir), "--time-block", "6", "--format", fmt,
            "--workers", "0", "--time-chunk", "1", "--no-progress"]


def _finals(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory)
                  if n.endswith((".nc", ".zarr")) and n[0] != ".")


def _open(path: Path) -> xr.Dataset:
    return xr.open_zarr(path) if path.suffix == ".zarr" else xr.open_dataset(path)


def _values(directory: Path) -> np.ndarray[Any, Any]:
    parts = []
    for name in _finals(directory):
        with _open(directory / name) as ds:
            parts.append(ds[VARIABLE].values)
    return np.concatenate(parts)


def _temporaries(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".tmp"))


def _wait_for(proc: subprocess.Popen[str], ready: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and not ready():
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it was interrupted"


def _kill_when(proc: subprocess.Popen[str], ready: Any, timeout: float = 120,
               settle: float = 0.0) -> None:
    """SIGKILL ``proc`` once ``ready()`` holds (and ``settle`` seconds more); never leak it."""
    try:
        _wait_for(proc, ready, timeout)
        time.sleep(settle)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def expected(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path,
             coarse_nc: Path) -> np.ndarray[Any, Any]:
    """The values of an uninterrupted run."""
    outdir = tmp_path_factory.mktemp("uninterrupted")
    subprocess.run(_args(checkpoint, coarse_nc, outdir), env=ENV, check=True, timeout=300,
                   capture_output=True, cwd=ROOT)
    return _values(outdir)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["netcdf", "zarr"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
@pytest.mark.parametrize("point", ["read", "writing", "renamed"])
def test_interrupted_run_then_rerun_gives_the_uninterrupted_files(
        point: str, sig: signal.Signals, fmt: str, checkpoint: Path, coarse_nc: Path,
        tmp_path: Path, expected: np.ndarray[Any, Any]) -> None:
    outdir = tmp_path / "out"
    pause = "computed:0.5" if point == "writing" else f"{point}:30"
    proc = subprocess.Popen(_args(checkpoint, coarse_nc, outdir, fmt, pause), env=ENV,
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    first = outdir / f"{VARIABLE}_000000-000005{'.zarr' if fmt == 'zarr' else '.nc'}"
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
    if sig == signal.SIGTERM:  # a clean exit: status 143
        assert proc.returncode == 143, stderr[-2000:]
        if fmt == "netcdf":  # its temporary removed
            assert not _temporaries(outdir), _temporaries(outdir)
        else:  # a Zarr store and its chunk markers kept for the rerun to resume
            assert all(".zarr." in n for n in _temporaries(outdir)), _temporaries(outdir)
    else:
        assert proc.returncode == -signal.SIGKILL
    for name in _finals(outdir):  # a final name holds a complete output or nothing
        with _open(outdir / name) as ds:
            assert ds[VARIABLE].shape[0] == 6
            assert not np.isnan(ds[VARIABLE].values).all(axis=(1, 2)).any()
    rerun = subprocess.run(_args(checkpoint, coarse_nc, outdir, fmt), env=ENV, timeout=300,
                           capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert not _temporaries(outdir)
    assert (outdir / RECORD_NAME).is_file()
    np.testing.assert_array_equal(_values(outdir), expected)


@pytest.mark.slow
def test_killed_zarr_run_resumes_with_the_missing_chunks_only(
        checkpoint: Path, coarse_nc: Path, tmp_path: Path,
        expected: np.ndarray[Any, Any]) -> None:
    from downscale.batch.cli import main as run_main
    from downscale.batch.execute import Hooks

    outdir = tmp_path / "out"
    args = _args(checkpoint, coarse_nc, outdir, "zarr", "computed:0.3")
    proc = subprocess.Popen(args, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def markers() -> list[str]:
        dirs = [outdir / n for n in _temporaries(outdir) if n.endswith(".chunks.tmp")]
        return [m.name for d in dirs if d.is_dir() for m in d.iterdir()]

    _kill_when(proc, lambda: outdir.is_dir() and len(markers()) >= 3)
    done = len(markers())
    assert 3 <= done < 12
    computed: list[str] = []
    run_main(args[args.index("--") + 1:], hooks=Hooks(pause=computed.append))
    assert computed.count("computed") == 12 - done  # one time step per chunk
    assert not _temporaries(outdir)
    np.testing.assert_array_equal(_values(outdir), expected)


def test_two_runs_on_one_directory(checkpoint: Path, coarse_nc: Path, tmp_path: Path,
                                   expected: np.ndarray[Any, Any]) -> None:
    outdir, release = tmp_path / "shared", tmp_path / "release"
    first = subprocess.Popen(_args(checkpoint, coarse_nc, outdir, "netcdf",
                                   holds=(f"renamed:{release}",)),
                             env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:  # the first run holds the lock, held after writing its first file until released
        _wait_for(first, (outdir / f"{VARIABLE}_000000-000005.nc").exists)
        second = subprocess.run(_args(checkpoint, coarse_nc, outdir), env=ENV, timeout=300,
                                capture_output=True, text=True)
        assert first.poll() is None, "the first run ended too early to test the lock"
        assert second.returncode == 2
        assert second.stderr.strip().count("\n") == 0, second.stderr
        assert "another downscale run is writing to this directory" in second.stderr
        assert str(outdir) in second.stderr
        release.touch()
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
    _kill_when(proc, last.exists, timeout=240, settle=1.0)
    saved = torch.load(last, map_location="cpu", weights_only=False)
    epoch, step = saved["epoch"], saved["global_step"]
    assert step > 0
    subprocess.run([*common, "--trainer.max_epochs", str(epoch + 2), "--ckpt_path", "last"],
                   cwd=tmp_path, env=ENV, check=True, timeout=300, capture_output=True)
    resumed = torch.load(last, map_location="cpu", weights_only=False)
    steps_per_epoch = step // (epoch + 1)
    assert resumed["epoch"] == epoch + 1
    assert resumed["global_step"] == step + steps_per_epoch
