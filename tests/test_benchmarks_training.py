"""Smoke test of the training benchmark at its smoke size ``tiny`` (not a timed test)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def test_training_benchmark_measures_loader_model_and_ddp(tmp_path: Path) -> None:
    out, work = tmp_path / "training.json", tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "benchmarks.training", "--size", "tiny",
                           "--json", str(out), "--workdir", str(work)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    load = result["loading"]
    # The loader's batches have the shapes the default model trains on: 16 patches of
    # 32 x 32 fine cells and their 8 x 8 coarse aggregates (factor 4).
    assert load["shapes"]["fine"] == [16, 1, 32, 32]
    assert load["shapes"]["coarse"] == [16, 1, 8, 8]
    assert load["shapes"]["fine_area"] == load["shapes"]["fine_valid"] == [16, 1, 32, 32]
    assert load["raw_read"]["same_values_as_loader"]
    assert 0 <= load["loader"]["cache_hit_rate"] <= 1
    for rate in (load["loader"]["samples_per_s"], load["loader_uncached"]["samples_per_s"],
                 load["raw_read"]["netcdf4_samples_per_s"],
                 load["raw_read"]["xarray_dask_samples_per_s"],
                 *(m["samples_per_s"] for m in load["model_by_threads"]),
                 *load["ratios"].values(), load["estimate_floor_read"]["samples_per_s"]):
        assert _positive(rate)
    assert 0 < load["source_read_share"] <= 1.5  # two medians: may exceed 1 by noise
    ddp = result["ddp"]
    assert (ddp["one"]["processes"], ddp["two"]["processes"]) == (1, 2)
    assert ddp["two"]["global_batch"] == 2 * ddp["one"]["global_batch"]
    assert _positive(ddp["one"]["samples_per_s"]) and _positive(ddp["two"]["samples_per_s"])
    assert _positive(ddp["speedup"])
    assert result["gpu"]["measured"] is False
    # Nothing generated is left behind in the work folder.
    assert not list(work.iterdir())
    assert "DDP" in done.stdout and "samples/s" in done.stdout
