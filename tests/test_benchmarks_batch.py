"""Smoke test of ``python -m benchmarks.batch`` at the smoke size ``tiny`` (not a timed test)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import netCDF4
import numpy as np
import pytest

from downscale.grid import fine_cell_areas
from downscale.testing import assert_mass_conserved

ROOT = Path(__file__).resolve().parents[1]
FACTOR = 4


def _read(path: Path, *names: str) -> list[np.ndarray]:
    with netCDF4.Dataset(path) as nc:
        return [np.asarray(nc[name][:]) for name in names]


def _positive(*values: float) -> bool:
    return all(math.isfinite(v) and v > 0 for v in values)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, Path]:
    """The tiny benchmark's figures, its markdown and its kept work directory."""
    work = tmp_path_factory.mktemp("bench-batch")
    out = work / "batch.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "benchmarks.batch", "--size", "tiny",
                           "--output", str(out), "--workdir", str(work)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout, work


def test_io_floor_figures_and_outputs(small: tuple[dict, str, Path]) -> None:
    result, text, work = small
    assert {"grid", "io_floor", "cdo", "scaling"} <= set(result)
    floor = result["io_floor"]
    assert _positive(*floor["stages_s"].values(), floor["compute_cells_per_s"])
    assert [r["workers"] for r in floor["runs"]] == [0, 2]
    coarse, y_bnds, x_bnds = _read(work / "input_1x.nc", "tas", "lat_bnds", "lon_bnds")
    area = fine_cell_areas(y_bnds, x_bnds, FACTOR)
    for row in floor["runs"]:
        assert _positive(row["run_s"], row["identity_s"], row["run_cells_per_s"],
                         row["identity_cells_per_s"], row["ratio_to_slower"])
        assert row["identity_is_block_repeat"] and row["conservation_max_rel"] < 1e-5
        # The same run to a Zarr store: the same values.
        assert _positive(row["zarr_s"], row["zarr_over_netcdf"]) and row["zarr_equals_netcdf"]
        # The identity run's output is exactly the input repeated into 4 x 4 blocks ...
        (identity,) = _read(work / f"identity_w{row['workers']}.nc", "tas")
        np.testing.assert_array_equal(identity, coarse.repeat(FACTOR, 1).repeat(FACTOR, 2))
        # ... and the model's conserves every coarse cell's mass.
        (fine,) = _read(work / f"run_w{row['workers']}.nc", "tas")
        assert fine.shape == identity.shape and np.isfinite(fine).all()
        assert_mass_conserved(fine, coarse, area, FACTOR, rtol=1e-5)
    assert "### Batch inference" in text and "| workers |" in text
    assert "| Zarr run (s) |" in text


def test_cdo_section_measured_or_says_why(small: tuple[dict, str, Path]) -> None:
    result, text, _ = small
    cdo = result["cdo"]
    tools = [r["tool"] for r in cdo["rows"]]
    assert tools[0] == "downscale run --workers 0"
    if cdo["status"] == "measured":
        assert tools[1:] == ["cdo remapbil", "cdo remapbic", "cdo remapcon"]
    else:
        assert cdo["status"] == "not measured: cdo not installed" and cdo["status"] in text
    for row in cdo["rows"]:
        assert _positive(row["seconds"], row["cells_per_s"], row["peak_total_mib"])


def test_scaling_rows(small: tuple[dict, str, Path]) -> None:
    result, text, _ = small
    scaling = result["scaling"]
    rows = scaling["rows"]
    assert [r["multiple"] for r in rows] == [1, 4, 16]
    assert [r["steps"] for r in rows] == [result["grid"]["steps"] * m for m in (1, 4, 16)]
    for row in rows:
        assert _positive(row["seconds"], row["seconds_per_step"], row["peak_total_mib"],
                         row["peak_main_mib"], row["peak_worker_mib"])
    assert _positive(scaling["per_step_ratio"], scaling["peak_total_ratio"])
    assert "### Scaling" in text


def test_startup_section(tmp_path: Path) -> None:
    out = tmp_path / "startup.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "benchmarks.startup", "--size", "tiny",
                           "--output", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    for name in ("floor", "run"):
        assert _positive(result[name]["seconds"], result[name]["peak_rss_mib"])
    assert _positive(result["time_ratio"], result["rss_ratio"])
    assert "| import floor |" in done.stdout and "| downscale run |" in done.stdout
