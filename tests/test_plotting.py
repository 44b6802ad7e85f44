"""Maps: coastlines from installed data (or a note), error panel, clipping shown."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from downscale import plotting
from downscale.plotting import colour_limits, field_title, plot_output, plot_panels


def _field(values: np.ndarray, lat0: float = 20.0) -> xr.DataArray:
    ny, nx = values.shape
    return xr.DataArray(values, dims=("lat", "lon"), name="tas",
                        coords={"lat": lat0 + np.arange(ny), "lon": -100.0 + np.arange(nx)},
                        attrs={"long_name": "near-surface air temperature", "units": "K"})


def test_colour_limits_say_when_they_clip() -> None:
    values = np.concatenate([np.zeros(500), np.linspace(0, 1, 500), [50.0]])
    lo, hi, extend = colour_limits(values)
    assert lo == 0 and hi < 50 and extend == "max"
    assert colour_limits(np.concatenate([values, [-50.0]]))[2] == "both"
    assert colour_limits(np.array([1.0, 2.0, 3.0]))[2] in ("neither", "both")
    assert colour_limits(np.array([-3.0, 1.0, 2.0]), symmetric=True)[:2] == pytest.approx(
        (-2.98, 2.98), rel=0.01)


def test_title_says_what_the_field_is() -> None:
    field = _field(np.zeros((3, 3))).assign_coords(time=np.datetime64("2001-07-01"))
    assert field_title(field) == "near-surface air temperature (K), 2001-07-01"


def test_map_with_error_panel_and_installed_coastlines(tmp_path: Path) -> None:
    truth = _field(np.random.default_rng(0).normal(280, 5, (20, 30)))
    model = truth + 0.5
    png = plot_panels([("model", model), ("truth", truth)], tmp_path / "m.png",
                      truth=truth, model=model)
    assert png.stat().st_size > 10_000
    assert plotting.land_mask() is not None  # HadISST ships with cartopy: always a coast


def test_figure_says_when_no_coastline_data_is_available(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib.pyplot as plt

    texts: list[str] = []
    monkeypatch.setattr(plotting, "natural_earth_available", lambda *a: False)
    monkeypatch.setattr(plotting, "land_mask", lambda: None)
    monkeypatch.setattr(plt.Figure, "savefig",
                        lambda fig, *a, **k: texts.extend(t.get_text() for t in fig.texts))
    plot_panels([("x", _field(np.ones((4, 4))))], tmp_path / "x.png")
    assert any(plotting.NO_COASTLINES in t for t in texts)


def test_plot_output_of_a_downscaled_file(tmp_path: Path) -> None:
    values = np.random.default_rng(1).normal(280, 3, (2, 8, 12)).astype("f4")
    ds = xr.Dataset({"tas": (("time", "lat", "lon"), values, {"units": "K"})},
                    coords={"time": ("time", [0.0, 1.0], {"units": "days since 2000-01-01"}),
                            "lat": 30.0 + np.arange(8), "lon": 10.0 + np.arange(12)})
    ds.to_netcdf(tmp_path / "out.nc")
    ds.assign(tas=ds.tas + 1).to_netcdf(tmp_path / "truth.nc")
    png = plot_output(tmp_path / "out.nc", tmp_path / "o.png", truth=tmp_path / "truth.nc",
                      time_index=1)
    assert png.stat().st_size > 10_000
