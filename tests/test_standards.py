"""Every NetCDF the package writes (here: run, predict; terrain predict and the demo in
their own tests) passes the IOOS compliance-checker CF-1.11 suite with no errors and no
warnings but those its input has too, and reopens in xarray and in netCDF-C's ``ncdump``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, VARIABLE, assert_cf_compliant, make_latlon_nc

from downscale.main import main as cli_main


def test_run_output_is_cf_compliant(checkpoint: Path, coarse_nc: Path, tmp_path: Path) -> None:
    out = tmp_path / "run.nc"
    cli_main(["run", "--checkpoint", str(checkpoint), "--input", str(coarse_nc), "--output",
              str(out), "--workers", "0", "--no-progress"])
    assert_cf_compliant(out, tmp_path, source=coarse_nc)  # E1's "Model scenario" attribute


def test_predict_output_is_cf_compliant(checkpoint: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    fine = make_latlon_nc(tmp_path / "fine.nc", nlat=16, nlon=16, variable=VARIABLE,
                          calendar="360_day", lat=np.arange(16) * 0.5 + 40.25,
                          lon=np.arange(16) * 0.5 + 10.25)
    out = tmp_path / "predicted.nc"
    cli_main(["predict", "--config", TINY, "--data.path", str(fine), "--ckpt_path",
              str(checkpoint), "--prediction_writer.output", str(out),
              "--trainer.default_root_dir", str(tmp_path)])
    assert_cf_compliant(out, tmp_path)


def test_a_file_without_time_is_cf_compliant(checkpoint: Path, tmp_path: Path) -> None:
    single = make_latlon_nc(tmp_path / "single.nc", nt=0, nlat=8, nlon=8, variable=VARIABLE)
    out = tmp_path / "single_fine.nc"
    cli_main(["run", "--checkpoint", str(checkpoint), "--input", str(single), "--output",
              str(out), "--workers", "0", "--no-progress", "--any-spacing"])
    assert_cf_compliant(out, tmp_path)
