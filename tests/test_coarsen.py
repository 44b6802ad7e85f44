"""``downscale coarsen``: the package's area-weighted coarsening as a command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import assert_cf_compliant

from downscale.aggregate import area_weighted_block_mean, crop_to_factor
from downscale.grid import cell_areas
from downscale.io import open_field
from downscale.main import main
from downscale.manifest import resolve

ROOT = Path(__file__).resolve().parents[1]


def test_coarsen_then_check_passes_on_embedded_data(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fine = str(resolve("e1_north_america"))
    coarse = tmp_path / "coarse.nc"
    main(["coarsen", "--input", fine, "--factor", "4", "--output", str(coarse)])
    with xr.open_dataset(coarse) as ds:
        da = ds["air_temperature"]
        assert da.shape == (240, 9, 12)  # 37 x 49 cropped to 36 x 48, then / 4
        assert da.attrs["units"] == "K" and "area: mean" in da.attrs["cell_methods"]
        assert ds["lat"].attrs["bounds"] == "lat_bnds" and "lat_bnds" in ds
        assert ds.attrs["Conventions"].startswith("CF-") and "coarsen" in ds.attrs["history"]
        written = da.values
    # The same numbers as the package's own NaN-aware, area-weighted block mean.
    field = crop_to_factor(open_field(fine, "air_temperature"), (4, 4))
    expected, _ = area_weighted_block_mean(field["air_temperature"].values,
                                           cell_areas(field).values, (4, 4))
    np.testing.assert_allclose(written, expected, rtol=1e-6)
    capsys.readouterr()
    main(["check", "--coarse", str(coarse), "--fine", fine])  # exits 1 on failure
    assert "PASS" in capsys.readouterr().out
    assert_cf_compliant(coarse, tmp_path)


def test_unweighted_block_mean_is_not_what_check_accepts(tmp_path: Path) -> None:
    fine = str(resolve("e1_north_america"))
    field = crop_to_factor(open_field(fine, "air_temperature"), (4, 4))
    naive = tmp_path / "naive.nc"
    main(["coarsen", "--input", fine, "--factor", "4", "--output", str(naive)])
    with xr.open_dataset(naive) as ds:
        ds = ds.load()
    ds["air_temperature"].values = field["air_temperature"].coarsen(lat=4, lon=4).mean().values
    ds.to_netcdf(tmp_path / "naive2.nc")
    with pytest.raises(SystemExit) as exit_info:
        main(["check", "--coarse", str(tmp_path / "naive2.nc"), "--fine", fine])
    assert exit_info.value.code == 1


def test_coarsen_errors_are_one_line_and_write_nothing(tmp_path: Path) -> None:
    fine = str(resolve("e1_north_america"))
    out = tmp_path / "c.nc"
    for args, expected in ((["--input", str(tmp_path / "nope.nc")], "file not found"),
                           (["--input", fine, "--variable", "tas"], "--variable"),
                           (["--input", fine, "--factor", "1"], ">= 2")):
        argv = ["coarsen", "--factor", "4", "--output", str(out), *args]
        result = subprocess.run([sys.executable, "-m", "downscale", *argv],
                                capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and expected in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert not out.exists() and not list(tmp_path.glob(".c.nc*"))
