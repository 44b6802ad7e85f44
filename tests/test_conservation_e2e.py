"""The trained model on real masked data passes the conservation audit (issue 3)."""

from __future__ import annotations

from pathlib import Path

import pytest
import xarray as xr

from downscale.aggregate import coarsen_field, crop_to_factor
from downscale.check import main as check
from downscale.io import open_field, write_netcdf
from downscale.main import main
from downscale.manifest import resolve

ROOT = Path(__file__).resolve().parents[1]


def test_model_on_hadisst_passes_downscale_check(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    config = str(ROOT / "tests" / "conf" / "hadisst_tiny.yaml")
    main(["fit", "--config", config])
    ckpt = sorted(tmp_path.glob("outputs/**/*.ckpt"))[-1]
    fine = tmp_path / "sst_fine.nc"
    main(["predict", "--config", config, "--ckpt_path", str(ckpt),
          "--prediction_writer.output", str(fine)])
    truth = crop_to_factor(open_field(resolve("hadisst_sst"), "sst"), (4, 4))
    write_netcdf(coarsen_field(truth, "sst", (4, 4)).load(), tmp_path / "sst_coarse.nc")
    capsys.readouterr()
    check(["--coarse", str(tmp_path / "sst_coarse.nc"), "--fine", str(fine),
           "--tolerance", "1e-5"])
    report = capsys.readouterr().out
    assert "sst [degC] factor 4: PASS" in report
    with xr.open_dataset(fine) as ds:
        # Land stays missing: the model puts no mass where the fine grid has no data.
        assert int(ds["sst"].isnull().sum()) == int(truth["sst"].isnull().sum())
