"""Smoke test of ``python -m benchmarks`` at the smallest size (not a timed test).

The commands run in this process (their ``main``, as ``python -m`` calls it) on one torch
thread: a fresh interpreter per test would cost more than the sections themselves.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the benchmarks package lives next to the package
    sys.path.insert(0, str(ROOT))

from benchmarks.__main__ import main as benchmarks_main  # noqa: E402


@pytest.mark.usefixtures("one_torch_thread")
def test_benchmark_command_writes_markdown_and_json(tmp_path: Path) -> None:
    out = tmp_path / "results"
    assert benchmarks_main(["--size", "small", "--only", "layer", "--output", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert {"machine", "sections", "gpu", "size", "command"} <= set(report)
    assert report["machine"]["torch"] == torch.__version__
    rows = report["sections"]["layer"]["rows"]
    assert [row["coarse_grid"] for row in rows] == ["16x16", "32x32"]
    for row in rows:
        for key in ("ratio_forward", "ratio_forward_backward", "ratio_before_forward",
                    "ratio_before_forward_backward"):
            assert math.isfinite(row[key]) and row[key] > 0
    if not torch.cuda.is_available():
        assert report["gpu"] == {"measured": False,
                                 "reason": "not measured: no GPU on this machine"}
    text = out.with_suffix(".md").read_text()
    assert "## Conserving layer" in text and "| 32x32 |" in text
    assert "Target (forward+backward within 1.15x" in text
    assert "Not measured: no GPU on this machine." in text


def test_unknown_section_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        benchmarks_main(["--only", "layer,nope", "--output", str(tmp_path / "r")])
    assert info.value.code == 2
    assert "unknown section(s) ['nope']" in capsys.readouterr().err
    assert not (tmp_path / "r.md").exists()


def test_before_row_computes_what_the_layer_computes() -> None:
    """The table's *before* layer is a slower way to the same result, not another layer."""
    from benchmarks.layer import _before
    from downscale.nn.conserving import MassConservingConvTranspose2d

    layer = MassConservingConvTranspose2d(3, 4, 8).double()
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    area = torch.rand(1, 1, 24, 20, dtype=torch.float64) + 0.5
    torch.testing.assert_close(_before(layer, x, area), layer(x, area), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.usefixtures("one_torch_thread")  # the command sets torch's threads (restored)
def test_profile_command_reports_the_copy_share(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.profile_layer import main as profile_main

    profile_main(["--size", "16"])
    shares = [line for line in capsys.readouterr().out.splitlines()
              if "of forward+backward" in line]
    assert [s.split(":")[0] for s in shares] == ["before", "after"]


def test_model_section_times_both_decoders(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model section on a tiny grid: every row timed, both costs counted, a speedup."""
    sys.path.insert(0, str(ROOT))
    from benchmarks import model

    monkeypatch.setitem(model.SIZES, "small", (6, 8, 2))
    monkeypatch.setitem(model.REPEATS, "small", 1)
    result = model.run("small")
    assert len(result["rows"]) == 5
    assert all(row["fine_cells_per_s"] > 0 for row in result["rows"])
    macs = result["multiply_adds_per_fine_cell"]
    assert macs["coarse_grid"] < macs["conserving"] / 4
    assert math.isfinite(result["speedup"]) and "| model | s | fine cells/s |" in (
        model.markdown(result))
