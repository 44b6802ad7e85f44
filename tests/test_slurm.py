"""The SLURM recipes on a real single-node SLURM (tests/services/slurm.py), not a stand-in.

Slow: run with ``-m slow``. The cluster is the one ``SLURM_CONF`` names (``.ci/run`` starts
one) or, without it, one this module starts and stops. Where SLURM cannot be installed
the tests skip saying why -- except in CI (``CI=true``), where that is a failure.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import ROOT, TINY, VARIABLE
from services import slurm as service

pytestmark = pytest.mark.slow


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"SLURM is required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment of a client of a running single-node SLURM."""
    if os.environ.get("SLURM_CONF") and shutil.which("sbatch"):
        yield dict(os.environ)
        return
    reason = service.missing_reason()
    if reason is not None:
        _unavailable(reason)
    directory = tmp_path_factory.mktemp("slurm")
    try:
        service.start(directory)
    except service.SlurmUnavailable as exc:
        _unavailable(str(exc))
    try:
        yield service.client_env(directory)
    finally:
        service.stop(directory)


def _scontrol_job(job: str, env: dict[str, str]) -> dict[str, str]:
    text = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True,
                          text=True, timeout=30, check=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", text))


def _wait_for(job: str, env: dict[str, str], restarts: int, timeout: float = 300) -> str:
    """Wait until the job's ``restarts``-th run has ended; its final state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = _scontrol_job(job, env)
        if int(info.get("Restarts", 0)) >= restarts and info["JobState"] not in (
                "PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED"):
            return info["JobState"]
        time.sleep(1)
    raise AssertionError(f"job {job} still {info['JobState']} after {timeout} s")


def _ckpt(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = torch.load(path, weights_only=False, map_location="cpu")
    return loaded


def test_train_sbatch_fits_and_a_requeued_job_resumes(slurm: dict[str, str],
                                                      tmp_path: Path) -> None:
    # The recipe's paths are relative to the submit directory, as on a cluster's scratch.
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    (tmp_path / "outputs").mkdir()
    site = tmp_path / "site.yaml"  # CPU instead of the recipe's GPUs; read by each run
    site_text = ("trainer:\n  accelerator: cpu\n  devices: 1\n  strategy: auto\n"
                 "  limit_val_batches: 1\n  enable_progress_bar: false\n"
                 "  max_epochs: {epochs}\n")
    site.write_text(site_text.format(epochs=1))
    submit = subprocess.run(
        ["sbatch", "--parsable", "--wait", "--nodes=1", "--ntasks-per-node=1",
         "--cpus-per-task=1", "--gres=none", "--mem=1500M", "--open-mode=append",
         f"--chdir={tmp_path}", str(ROOT / "pipelines" / "train_slurm.sbatch"), TINY,
         "--config", str(site)], env=slurm, capture_output=True, text=True, timeout=300)
    job = submit.stdout.strip().split(";")[0]
    log = tmp_path / "outputs" / f"slurm-{job}.log"
    assert submit.returncode == 0, (submit.stderr, log.read_text()[-3000:] if log.exists()
                                    else "")
    # The tiny config's CSVLogger (save_dir outputs, name lightning_logs) holds the run.
    last = tmp_path / "outputs" / "lightning_logs" / "checkpoints" / "last.ckpt"
    first = _ckpt(last)
    assert first["epoch"] == 0 and first["global_step"] > 0

    # A requeue (as after a preemption or SIGUSR1 at the time limit) reruns the same script;
    # it resumes from the saved checkpoint and trains the epoch the longer limit allows.
    site.write_text(site_text.format(epochs=2))
    env = slurm
    subprocess.run(["scontrol", "requeue", job], env=env, check=True, timeout=30)
    # SLURM holds a requeued job for two minutes before it may start again.
    subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], env=env,
                   check=True, timeout=30)
    state = _wait_for(job, env, restarts=1)
    text = log.read_text()
    assert state == "COMPLETED", text[-3000:]
    second = _ckpt(last)
    assert second["epoch"] == 1 and second["global_step"] == 2 * first["global_step"], text
    assert re.search(r"Restoring states from the checkpoint path at .*last\.ckpt", text), text


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path,
                  coarse_nc: Path) -> Path:
    out = tmp_path_factory.mktemp("slurm_reference") / "fine.nc"
    from downscale.main import main as cli_main

    cli_main(["run", "--checkpoint", str(checkpoint), "--input", str(coarse_nc), "--output",
              str(out), "--workers", "0", "--no-progress", "--time-chunk", "4"])
    return out


def test_slurm_run_downscales_on_slurm_workers(slurm: dict[str, str], checkpoint: Path,
                                               coarse_nc: Path, reference_run: Path,
                                               tmp_path: Path) -> None:
    if importlib.util.find_spec("dask_jobqueue") is None:
        _unavailable("dask-jobqueue is not installed (pip install '.[slurm]')")
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(ROOT / "pipelines" / "slurm_run.py"), "--jobs", "1", "--cores",
         "1", "--memory", "1GB", "--walltime", "00:10:00", "--", "--checkpoint",
         str(checkpoint), "--input", str(coarse_nc), "--output-dir", str(out),
         "--time-block", "6", "--time-chunk", "4", "--no-progress"],
        env={**slurm, "OMP_NUM_THREADS": "1"}, cwd=tmp_path, capture_output=True, text=True,
        timeout=400)
    logs = "".join(p.read_text()[-2000:] for p in tmp_path.glob("slurm-*.out"))
    assert result.returncode == 0, result.stderr[-3000:] + logs
    names = sorted(p.name for p in out.glob("*.nc"))
    assert len(names) == 2, names
    with xr.open_dataset(reference_run) as ref:
        expected = np.asarray(ref[VARIABLE].values)
    joined = []
    for name in names:
        with xr.open_dataset(out / name) as ds:
            joined.append(np.asarray(ds[VARIABLE].values))
    np.testing.assert_allclose(np.concatenate(joined), expected, rtol=1e-6, atol=1e-6)
    # The workers ran as SLURM jobs: each job's log shows a Dask worker.
    assert "dask" in logs.lower() or "worker" in logs.lower(), logs
