"""Every NetCDF the package writes passes the IOOS compliance-checker CF suite, reopens in
xarray and in netCDF-C's ``ncdump``."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import TINY, VARIABLE, make_latlon_nc

from downscale.main import main as cli_main

#: The newest CF suite of compliance-checker 6.1.
CF_SUITE = "cf:1.11"


def assert_cf_compliant(path: Path, tmp: Path) -> None:
    """No failed high-priority (error) check in the CF suite; xarray and ncdump reopen it."""
    from compliance_checker.runner import CheckSuite, ComplianceChecker

    CheckSuite.load_all_available_checkers()
    report = tmp / f"{path.stem}_cf.json"
    ComplianceChecker.run_checker(str(path), [CF_SUITE], 0, "normal",
                                  output_filename=str(report), output_format="json")
    result = json.loads(report.read_text())[CF_SUITE]
    assert not result.get("errors"), result.get("errors")
    failed = [c for c in result["high_priorities"] if c["value"][0] < c["value"][1]]
    assert not failed, [(c["name"], c["msgs"]) for c in failed]
    with xr.open_dataset(path) as ds:
        assert VARIABLE in ds.data_vars or ds.data_vars
    ncdump = shutil.which("ncdump")
    if ncdump is None:
        pytest.skip("ncdump (Debian package netcdf-bin) is not installed")
    header = subprocess.run([ncdump, "-h", str(path)], capture_output=True, text=True,
                            timeout=60, check=True).stdout
    assert "Conventions" in header


def test_run_output_is_cf_compliant(checkpoint: Path, coarse_nc: Path, tmp_path: Path) -> None:
    out = tmp_path / "run.nc"
    cli_main(["run", "--checkpoint", str(checkpoint), "--input", str(coarse_nc), "--output",
              str(out), "--workers", "0", "--no-progress"])
    assert_cf_compliant(out, tmp_path)


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
              str(out), "--workers", "0", "--no-progress"])
    assert_cf_compliant(out, tmp_path)
