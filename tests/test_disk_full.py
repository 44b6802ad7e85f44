"""``downscale run`` on a full disk (issue 18, item 4).

The slow tests go through the command line only, on a small tmpfs as the disk: mounting
one needs root (and a kernel that lets this process mount); elsewhere they skip saying
why, except in CI (``CI=true``), where that is a failure. The fast ones check the
pre-flight's rule (:mod:`downscale.batch.space`) and the mapping of write errors
(:func:`downscale.io.output_errors`) without a real full disk.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from conftest import ROOT, VARIABLE, NcFactory

from downscale.batch import Job, OutputPlan
from downscale.batch import space as space_module
from downscale.batch.space import (
    COMPRESSION_MARGIN,
    HEADER_BYTES,
    check_free_space,
    compressed_fraction,
    estimate_space,
)
from downscale.errors import DiskFullError
from downscale.io import open_field, output_errors
from downscale.io import write as write_module

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}


class Disk:
    """A tmpfs mounted at ``path``; :meth:`resize` changes its size in place."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mount(self, size: str) -> None:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                                 str(self.path)], capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            _unavailable(f"cannot mount a tmpfs here: {result.stderr.strip()}")

    def resize(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True,
                       timeout=30)

    def umount(self) -> None:
        subprocess.run(["umount", str(self.path)], check=False, timeout=30)


def _unavailable(reason: str) -> None:
    """Skip, saying why; in CI (``CI=true``) fail: the tests must run there."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"a full disk (a tmpfs) is required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    if os.geteuid() != 0 or not shutil.which("mount"):
        _unavailable("a full disk is simulated with a tmpfs, which needs root and mount")
    path = tmp_path / "disk"
    path.mkdir()
    yield Disk(path)
    Disk(path).umount()


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "downscale", "run", *map(str, args),
                           "--workers", "0", "--no-progress", "--time-chunk", "1"],
                          env=ENV, capture_output=True, text=True, timeout=300)


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode not in (0, None), result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("downscale: error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def _leftovers(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".tmp"))


@pytest.mark.slow
def test_preflight_refuses_an_output_larger_than_the_free_space(
        disk: Disk, checkpoint: Path, coarse_nc: Path) -> None:
    disk.mount("16k")  # the output is ~100 KB (12 steps of 36 x 48 float32 and more)
    line = _one_error_line(_run("--checkpoint", checkpoint, "--input", coarse_nc,
                                "--output-dir", disk.path))
    assert str(disk.path) in line and "space" in line, line
    assert not [n for n in os.listdir(disk.path) if n.endswith((".nc", ".tmp"))]


@pytest.mark.slow
def test_a_disk_that_fills_during_the_write_fails_in_one_line_and_a_rerun_resumes(
        disk: Disk, checkpoint: Path, coarse_nc: Path, tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    assert _run("--checkpoint", checkpoint, "--input", coarse_nc, "--output-dir", reference,
                "--time-block", "4").returncode == 0
    sizes = sorted(p.stat().st_size for p in reference.glob("*.nc"))
    # Room for the first of three blocks and a half: the second one fills the disk.
    disk.mount(f"{sizes[0] + sizes[1] // 2}")
    line = _one_error_line(_run("--checkpoint", checkpoint, "--input", coarse_nc,
                                "--output-dir", disk.path, "--time-block", "4"))
    assert str(disk.path) in line and "space" in line, line
    assert _leftovers(disk.path) == []
    disk.resize("4m")
    rerun = _run("--checkpoint", checkpoint, "--input", coarse_nc, "--output-dir", disk.path,
                 "--time-block", "4")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "complete and verified" in rerun.stderr  # the first block was kept, not redone
    for path in sorted(reference.glob("*.nc")):
        with xr.open_dataset(path) as want, xr.open_dataset(disk.path / path.name) as got:
            np.testing.assert_array_equal(got[VARIABLE].values, want[VARIABLE].values)
    assert _leftovers(disk.path) == []


# -- the pre-flight's rule and the write errors, without a full disk (fast) --------------


def test_compressed_fraction_follows_what_compresses() -> None:
    rng = np.random.default_rng(0)
    noise = rng.random((4, 32, 32)).astype(np.float32)
    assert compressed_fraction(noise) > 0.7  # random mantissas do not compress
    assert compressed_fraction(np.full((4, 32, 32), 280.0)) < 0.05
    holes = noise.copy()
    holes[:, :, 8:] = np.nan  # three quarters missing (land): they compress away
    assert compressed_fraction(holes) < 0.5 * compressed_fraction(noise)
    assert compressed_fraction(np.empty((0, 3, 3))) == 1.0


def _job(factor: int = 4, time_chunk: int = 1) -> Job:
    return Job(checkpoint="x.ckpt", checkpoint_sha256="0", variable="tas", factor=factor,
               tile_size=None, halo=None, time_chunk=time_chunk, device="cpu", history="",
               attrs={})


def test_estimate_bounds_the_output_both_ways(latlon_nc: NcFactory, tmp_path: Path) -> None:
    field = open_field(latlon_nc(nt=5), "tas")  # 6 x 8 coarse cells: 24 x 32 fine
    plans = [OutputPlan(tmp_path / "a.nc", ("in.nc",), 0, 3, "k"),
             OutputPlan(tmp_path / "b.nc", ("in.nc",), 3, 5, "k")]
    estimate = estimate_space(_job(), plans, [field])
    values = 5 * 24 * 32 * 4
    coordinates = 3 * 8 * ((24 + 32) * 2 + 5)
    assert estimate.uncompressed == values + coordinates + 2 * HEADER_BYTES
    assert 0 < estimate.compressed <= values * COMPRESSION_MARGIN
    # A Zarr store: every chunk is a file of at least one block.
    zarr = [OutputPlan(tmp_path / "a.zarr", ("in.nc",), 0, 5, "k")]
    assert estimate_space(_job(), zarr, [field], block=1 << 20).compressed == 5 << 20


def test_preflight_refuses_only_what_cannot_fit_compressed(
        latlon_nc: NcFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    field = open_field(latlon_nc(nt=5), "tas")
    plans = [OutputPlan(tmp_path / "a.nc", ("in.nc",), 0, 5, "k")]
    estimate = estimate_space(_job(), plans, [field])

    def free(n: int) -> None:
        usage = shutil.disk_usage(tmp_path)._replace(free=n)
        monkeypatch.setattr(space_module.shutil, "disk_usage", lambda path: usage)

    free(estimate.compressed - 1)
    with pytest.raises(DiskFullError) as error:
        check_free_space(tmp_path, _job(), plans, [field])
    message = str(error.value)
    assert "\n" not in message and str(tmp_path) in message and "free space" in message
    assert "even compressed" in message and "uncompressed" in message  # both figures
    free(estimate.uncompressed - 1)  # fits compressed, maybe not raw: a warning only
    with caplog.at_level(logging.WARNING, logger="downscale"):
        check_free_space(tmp_path, _job(), plans, [field])
    assert "the disk may fill" in caplog.text
    caplog.clear()
    free(estimate.uncompressed)
    check_free_space(tmp_path, _job(), plans, [field])
    assert not caplog.text


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_or_quota_is_one_line(code: int, tmp_path: Path) -> None:
    final = tmp_path / "out.nc"
    with pytest.raises(DiskFullError) as error, output_errors(final, tmp_path / ".x.tmp"):
        raise OSError(code, os.strerror(code))
    message = str(error.value)
    assert "\n" not in message and message.startswith(str(final))
    assert "disk full" in message and os.strerror(code) in message


def test_netcdf_hdf_error_is_put_down_to_space_only_where_the_disk_is_full(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """netCDF4 loses the errno: the free space of the target decides, measured."""
    final = tmp_path / "out.nc"
    with pytest.raises(RuntimeError, match="HDF error"), output_errors(final, final):
        raise RuntimeError("NetCDF: HDF error")  # plenty of room here: not a full disk
    assert [p.name for p in tmp_path.iterdir()] == []  # the probe write is gone
    usage = shutil.disk_usage(tmp_path)._replace(free=1000)
    monkeypatch.setattr(write_module.shutil, "disk_usage", lambda path: usage)
    with pytest.raises(DiskFullError, match=r"disk full while writing \(0.98 kiB left\)"), \
            output_errors(final, final):
        raise RuntimeError("NetCDF: HDF error")


def test_a_quota_behind_an_hdf_error_is_found_by_a_probe_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fdopen = os.fdopen

    class OverQuota:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.file = real_fdopen(*args, **kwargs)

        def __enter__(self) -> OverQuota:
            return self

        def __exit__(self, *exc: object) -> None:
            self.file.close()

        def write(self, data: bytes) -> int:
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(write_module.os, "fdopen", OverQuota)
    with pytest.raises(DiskFullError, match=os.strerror(errno.EDQUOT)), \
            output_errors(tmp_path / "out.nc", tmp_path / "out.nc"):
        raise RuntimeError("NetCDF: HDF error")
    assert [p.name for p in tmp_path.iterdir()] == []
