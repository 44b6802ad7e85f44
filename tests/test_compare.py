"""``downscale compare`` end to end on a tiny budget: two decoder variants on real data
(E1 air temperature, factor 4), one table in Markdown and CSV, a spectra figure."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from downscale.main import main

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "conf" / "e1_tiny.yaml")

DEFAULT = """\
model:
  class_path: downscale.tasks.DownscalingTask
  init_args:
    decoder: null
"""
MITIGATED = """\
model:
  class_path: downscale.tasks.DownscalingTask
  init_args:
    sobolev_weight: 1.0
    decoder:
      class_path: downscale.nn.decoders.TransposedConvDecoder
      init_args: {factor: 4, hidden_channels: 4, coarse_blocks: 1, phase_balanced: false,
                  symmetric: false, dilation: 3, attention: true}
"""


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def test_compare_writes_one_table_for_two_variants(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    variants = []
    for name, text in (("default", DEFAULT), ("mitigated", MITIGATED)):
        variants.append(tmp_path / f"{name}.yaml")
        variants[-1].write_text(text)
    out = tmp_path / "cmp"
    main(["compare", "--config", TINY, "--variants", *map(str, variants), "--output", str(out),
          "--max-epochs", "1", "--max-time", "60"])
    printed = capsys.readouterr().out
    assert "| default |" in printed and "| mitigated |" in printed
    with open(out / "table.csv") as stream:
        rows = list(csv.DictReader(stream))
    names = [row["variant"] for row in rows]
    assert names[:2] == ["default", "mitigated"]
    assert any("bicubic" in n for n in names) and any("truth" in n for n in names)
    for row in rows[:2]:
        assert int(row["epochs"]) == 1 and float(row["seconds_per_epoch"]) > 0
        assert float(row["conservation_max_rel"]) < 1e-5  # float32, exact by construction
        for key in ("rmse", "checkerboard_index", "spectral_artifact_db", "replica_leakage",
                    "equivariance_int", "equivariance_subpixel"):
            assert row[key] != "", key
    bicubic = next(row for row in rows if "bicubic" in row["variant"])
    assert float(bicubic["conservation_max_rel"]) > 1e-4  # interpolation does not conserve
    table = (out / "table.md").read_text()
    assert "downscale compare --config" in table and "RMSE [K]" in table
    assert (out / "spectra.png").stat().st_size > 10_000


def test_compare_missing_variant_is_one_clear_line(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--config", TINY, "--variants", str(tmp_path / "nope.yaml")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.yaml" in err[0] and "no such config file" in err[0]
