"""A static fine-grid covariate (surface altitude) for the climate downscaler: data, model,
``fit``/``predict`` through the CLI, ``run``, and the errors when data and model disagree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from downscale.aggregate import coarsen_field, crop_to_factor
from downscale.data import DownscalingDataModule
from downscale.data.covariate import load_covariate
from downscale.errors import InputError
from downscale.grid import cell_areas
from downscale.io import open_field, write_netcdf
from downscale.main import main
from downscale.metrics import conservation_error
from downscale.nn import ConservingDecoder

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "conf" / "e1_tiny.yaml")
VARIABLE = "air_temperature"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def altitude_nc(tmp_path_factory: pytest.TempPathFactory, e1_path: Path) -> Path:
    """A smooth synthetic surface altitude (m) on E1's whole (uncropped) fine grid."""
    grid = open_field(e1_path, VARIABLE).isel(time=0, drop=True)
    lat, lon = np.deg2rad(grid["lat"].values), np.deg2rad(grid["lon"].values)
    height = 800 + 600 * np.sin(3 * lon)[None, :] * np.cos(2 * lat)[:, None]
    ds = grid.drop_vars(VARIABLE).assign(surface_altitude=(("lat", "lon"), height, {
        "standard_name": "surface_altitude", "units": "m"}))
    ds.attrs = {}
    return write_netcdf(ds, tmp_path_factory.mktemp("covariate") / "altitude.nc")


def _fit(tmp_path: Path, *extra: str) -> Path:
    main(["fit", "--config", TINY, "--trainer.max_steps", "2", "--trainer.limit_val_batches",
          "1", "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar",
          "false", *extra])
    return sorted(tmp_path.glob("outputs/**/checkpoints/*.ckpt"))[-1]


def _one_line_error(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code != 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("downscale: error: "), lines
    return lines[-1]


def test_datamodule_adds_the_covariate_block_to_every_sample(altitude_nc: Path,
                                                             e1_path: Path) -> None:
    dm = DownscalingDataModule(str(e1_path), VARIABLE, factor=4, patch_size=16,
                               covariate_path=str(altitude_nc))
    dm.setup()
    assert dm.covariate is not None and dm.covariate.variable == "surface_altitude"
    assert dm.covariate.values.shape == dm.valid.shape == (36, 48)  # cropped like the field
    sample = dm.tiles("val")[0]
    np.testing.assert_array_equal(sample["covariate"][0].numpy(), dm.covariate.values)
    patch = next(iter(dm.train_dataloader()))
    assert patch["covariate"].shape == patch["fine"].shape
    assert dm.state_dict()["covariate"]["units"] == "m"


def test_covariate_on_another_grid_is_refused(altitude_nc: Path) -> None:
    with xr.open_dataset(altitude_nc) as ds:
        lat = ds["lat_bnds"].values
        with pytest.raises(InputError, match="is not the fine grid"):
            load_covariate(str(altitude_nc), None, lat[1:] + 0.5, ds["lon_bnds"].values)


def test_decoder_uses_the_covariate_and_still_conserves_every_cell() -> None:
    torch.manual_seed(0)
    decoder = ConservingDecoder(1, 4, hidden_channels=8, covariate_channels=1).double()
    with torch.no_grad():
        decoder.head.weight.normal_(std=0.3)
    x = 280 + torch.randn(2, 1, 5, 6, dtype=torch.float64)
    area = torch.rand(1, 1, 20, 24, dtype=torch.float64) + 0.5
    valid = torch.ones(2, 1, 20, 24, dtype=torch.bool)
    std = torch.full((1, 1, 1, 1), 10.0, dtype=torch.float64)
    flat, hilly = torch.zeros(2, 1, 20, 24, dtype=torch.float64), torch.randn(2, 1, 20, 24)
    a = decoder(x, (x - 280) / 10, area, valid, std, False, flat)
    b = decoder(x, (x - 280) / 10, area, valid, std, False, hilly.double())
    assert (a - b).abs().max() > 1e-3  # the covariate shapes the detail ...
    for y in (a, b):  # ... and every coarse cell keeps its mass exactly
        err = conservation_error(y.detach().numpy(), x.numpy(), area[0, 0].numpy(), 4)
        assert err.max_rel < 1e-12
    with pytest.raises(ValueError, match="covariate"):
        decoder(x, (x - 280) / 10, area, valid, std, False, None)


def test_fit_predict_and_run_with_generated_altitude(tmp_path: Path, altitude_nc: Path,
                                                     e1_path: Path,
                                                     capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    covariate = ["--data.covariate_path", str(altitude_nc),
                 "--model.init_args.covariate_channels", "1"]
    ckpt = _fit(tmp_path, *covariate)
    saved = torch.load(ckpt, weights_only=True)
    assert saved["downscale_data"]["covariate"]["variable"] == "surface_altitude"
    assert float(saved["state_dict"]["covariate_std"][0]) > 100  # metres, not normalised
    predicted = tmp_path / "predicted.nc"
    main(["predict", "--config", TINY, *covariate, "--ckpt_path", str(ckpt),
          "--prediction_writer.output", str(predicted)])
    # downscale run on the coarse test years, with the same covariate: the same field.
    fine = crop_to_factor(open_field(e1_path, VARIABLE), (4, 4))
    with xr.open_dataset(predicted) as ds:
        times = ds["time"].values
        expected = ds[VARIABLE].values
    test_years = fine.sel(time=times)
    coarse_nc = write_netcdf(coarsen_field(test_years, VARIABLE, (4, 4)).compute(),
                             tmp_path / "coarse.nc")
    out = tmp_path / "run.nc"
    main(["run", "--checkpoint", str(ckpt), "--input", str(coarse_nc), "--output", str(out),
          "--covariate", str(altitude_nc), "--workers", "0", "--no-progress",
          "--tile-size", "16"])
    with xr.open_dataset(out) as ds:
        got = ds[VARIABLE].values
        area = cell_areas(ds).values
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-3)
    with xr.open_dataset(coarse_nc) as ds:
        err = conservation_error(got, ds[VARIABLE].values, area, 4)
    assert err.max_rel < 1e-6
    # The checkpoint needs its covariate.
    line = _one_line_error(capsys, ["run", "--checkpoint", str(ckpt), "--input",
                                    str(coarse_nc), "--output", str(tmp_path / "x.nc"),
                                    "--workers", "0"])
    assert "trained with a static covariate" in line and "--covariate" in line
    assert not (tmp_path / "x.nc").exists()


def test_data_and_model_must_agree_on_the_covariate(tmp_path: Path, altitude_nc: Path,
                                                    capsys: pytest.CaptureFixture[str]
                                                    ) -> None:
    base = ["fit", "--config", TINY, "--trainer.fast_dev_run", "1"]
    line = _one_line_error(capsys, [*base, "--data.covariate_path", str(altitude_nc)])
    assert "covariate_channels is 0" in line and "covariate_channels: 1" in line
    line = _one_line_error(capsys, [*base, "--model.init_args.covariate_channels", "1"])
    assert "does not set covariate_path" in line
