"""``downscale run`` on a full disk (issue 18, item 4), through the command line only.

A small tmpfs is the disk: mounting one needs root (and a kernel that lets this process
mount); elsewhere the tests skip saying why. They are written against the command, not its
internals, so that they hold whatever shape the batch runner takes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import ROOT, VARIABLE

#: Slow (about 100 s) and, until the batch runner does item 4, expected to fail: run with -m slow.
pytestmark = pytest.mark.slow

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
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")

    def resize(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True,
                       timeout=30)

    def umount(self) -> None:
        subprocess.run(["umount", str(self.path)], check=False, timeout=30)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("a full disk is simulated with a tmpfs, which needs root and mount")
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


def test_preflight_refuses_an_output_larger_than_the_free_space(
        disk: Disk, checkpoint: Path, coarse_nc: Path) -> None:
    disk.mount("16k")  # the output is ~100 KB (12 steps of 36 x 48 float32 and more)
    line = _one_error_line(_run("--checkpoint", checkpoint, "--input", coarse_nc,
                                "--output-dir", disk.path))
    assert str(disk.path) in line and "space" in line, line
    assert not [n for n in os.listdir(disk.path) if n.endswith((".nc", ".tmp"))]


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
