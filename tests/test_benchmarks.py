"""Smoke test of ``python -m benchmarks`` at the smallest size (not a timed test)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_command_writes_finite_ratios(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "benchmarks", "--size", "small", "--output",
                    str(out)], check=True, cwd=ROOT, env=env, capture_output=True, timeout=120)
    report = json.loads(out.read_text())
    assert {"machine", "layer", "gpu"} <= set(report)
    assert report["gpu"].startswith("not measured")
    for row in report["layer"]:
        assert math.isfinite(row["ratio_forward"]) and row["ratio_forward"] > 0
        assert math.isfinite(row["ratio_forward_backward"]) and row["ratio_forward_backward"] > 0
