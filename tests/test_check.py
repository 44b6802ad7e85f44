"""``downscale check``: audits conservation of any nested coarse/fine pair."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from downscale.aggregate import block_repeat, coarsen_field, crop_to_factor
from downscale.baselines import bilinear
from downscale.check import main
from downscale.io import open_field, write_netcdf
from downscale.manifest import resolve


@pytest.fixture(scope="module")
def sst_pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """HadISST (land missing) at 1 degree as 'fine', its conservative 4-degree aggregate as
    'coarse', and two candidate fine fields: piecewise constant and bilinear."""
    out = tmp_path_factory.mktemp("check")
    fine = crop_to_factor(open_field(resolve("hadisst_sst"), "sst"), (4, 4)).load()
    coarse = coarsen_field(fine, "sst", (4, 4)).load()
    paths = {"coarse": out / "coarse.nc", "truth": out / "truth.nc"}
    write_netcdf(coarse, paths["coarse"])
    write_netcdf(fine, paths["truth"])
    mask = np.isfinite(fine["sst"].values)
    for name, values in (("blocks", block_repeat(coarse["sst"].values, (4, 4))),
                         ("bilinear", bilinear(coarse["sst"].values, 4, periodic=True))):
        candidate = fine.copy()
        candidate["sst"] = (fine["sst"].dims, np.where(mask, values, np.nan).astype("f4"),
                            fine["sst"].attrs)
        paths[name] = out / f"{name}.nc"
        write_netcdf(candidate, paths[name])
    return paths


def test_conservative_fields_pass(sst_pair: dict[str, Path],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("truth", "blocks"):
        main(["--coarse", str(sst_pair["coarse"]), "--fine", str(sst_pair[name])])
        out = capsys.readouterr().out
        assert "sst [degC] factor 4: PASS" in out
        assert "missing fine cells 33.9%" in out


def test_bilinear_is_caught_as_not_conservative(sst_pair: dict[str, Path],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--coarse", str(sst_pair["coarse"]), "--fine", str(sst_pair["bilinear"]),
              "--json"])
    assert exit_info.value.code == 1
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is False
    figures = report["variables"][0]["conservation"]
    # Bilinear spreads mass across coarse cells and loses the part that lands on land.
    assert figures["max_rel"] > 1e-3
    assert figures["max_abs"] > 0.1  # degC


def test_tolerance_decides_the_exit_status(sst_pair: dict[str, Path]) -> None:
    main(["--coarse", str(sst_pair["coarse"]), "--fine", str(sst_pair["bilinear"]),
          "--tolerance", "1"])


def test_non_nesting_grids_are_refused(sst_pair: dict[str, Path], tmp_path: Path) -> None:
    coarse = xr.open_dataset(sst_pair["coarse"]).load()
    shifted = coarse.assign_coords(lon=coarse.lon + 1.0).drop_vars("lon_bnds")
    write_netcdf(shifted, tmp_path / "shifted.nc")
    result = subprocess.run([sys.executable, "-m", "downscale", "check", "--coarse",
                             str(tmp_path / "shifted.nc"), "--fine", str(sst_pair["truth"])],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "does not nest" in line and "sst" in line and str(sst_pair["truth"]) in line


def test_hints_name_checks_own_flags_and_never_offer_bounds(tmp_path: Path) -> None:
    path = tmp_path / "with_bounds.nc"
    ds = xr.Dataset({"tas": (("time", "lat", "lon"), np.zeros((2, 4, 4), "f4"), {"units": "K"}),
                     "time_bnds": (("time", "bnds"), np.array([[0.0, 1.0], [1.0, 2.0]]))},
                    coords={"time": ("time", [0.5, 1.5], {"units": "days since 2000-01-01",
                                                          "bounds": "time_bnds"}),
                            "lat": np.arange(4.0), "lon": np.arange(4.0)})
    ds.to_netcdf(path)
    result = subprocess.run([sys.executable, "-m", "downscale", "check", "--coarse", str(path),
                             "--fine", str(path), "--variable", "pr"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert "--variable" in line and "--data." not in line
    assert "tas" in line and "time_bnds" not in line
