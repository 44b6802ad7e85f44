"""``downscale demo`` end to end, with a short training budget."""

from __future__ import annotations

from pathlib import Path

import pytest
import xarray as xr
from conftest import assert_cf_compliant

from downscale.main import main


def test_demo_writes_netcdf_png_and_reports(tmp_path: Path, e1_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    main(["demo", "--output", str(out), "--epochs", "2"])
    report = capsys.readouterr().out
    assert "RMSE model" in report and "RMSE bicubic" in report and "2 epochs" in report
    assert (out / "demo_map.png").stat().st_size > 10_000
    with xr.open_dataset(out / "downscaled.nc") as ds:
        assert ds["air_temperature"].shape == (36, 36, 48)
        assert ds.attrs["Conventions"].startswith("CF-")
    # E1's own attribute "Model scenario" (a space in a name) is the one inherited warning.
    assert_cf_compliant(out / "downscaled.nc", tmp_path, source=e1_path)
