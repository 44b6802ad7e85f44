"""The command line end to end: LightningCLI fit/predict on real data, flags-only runs,
user errors as one line."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from downscale.aggregate import area_weighted_block_mean
from downscale.data import DownscalingDataModule
from downscale.grid import cell_areas
from downscale.io import open_field
from downscale.main import main
from downscale.metrics import conservation_error

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "conf" / "e1_tiny.yaml")


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def _write_tas(path: Path, nt: int = 12, ny: int = 17, nx: int = 26) -> Path:
    """A small, smooth, never-seen regional temperature file (K), lon in 0..360."""
    lat = np.linspace(30.0, 30.0 + 1.0 * (ny - 1), ny)
    lon = np.linspace(10.0, 10.0 + (nx - 1), nx)
    rng = np.random.default_rng(1)
    yy, xx = np.meshgrid(lat, lon, indexing="ij")
    base = 280 + 10 * np.cos(np.deg2rad(yy)) + 2 * np.sin(np.deg2rad(3 * xx))
    data = base[None] + rng.normal(0, 0.5, (nt, ny, nx))
    ds = xr.Dataset({"tas": (("time", "lat", "lon"), data.astype("f4"),
                             {"units": "K", "standard_name": "air_temperature"})},
                    coords={"time": np.arange(nt), "lat": lat, "lon": lon})
    ds.time.attrs.update(units="days since 2000-01-01", calendar="noleap")
    ds.to_netcdf(path)
    return path


def test_help_lists_all_commands(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--help"])
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "demo"):
        assert command in out


def test_print_config_shows_linked_sections(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", TINY, "--print_config"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "downscale.tasks.DownscalingTask" in out
    assert "manifest://e1_north_america" in out


def test_fit_fast_dev_run_on_real_data() -> None:
    main(["fit", "--config", TINY, "--trainer.fast_dev_run", "1"])


def test_fit_then_predict_writes_conserving_cf_netcdf(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    main(["fit", "--config", TINY, "--trainer.max_epochs", "1",
          "--trainer.limit_val_batches", "1", "--trainer.default_root_dir", str(tmp_path)])
    checkpoints = sorted(tmp_path.glob("outputs/**/*.ckpt"))
    assert checkpoints, "fit saved no checkpoint"
    config = sorted(tmp_path.glob("outputs/**/config.yaml"))
    assert config, "the run's config was not saved with its logs"
    out = tmp_path / "e1_down.nc"
    import lightning as L

    asked: list[object] = []
    predict = L.Trainer.predict

    @functools.wraps(predict)  # LightningCLI reads the method's signature for its options
    def spy(self: L.Trainer, *args: object, **kwargs: object) -> object:
        asked.append(kwargs.get("return_predictions"))
        return predict(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(L.Trainer, "predict", spy)
    main(["predict", "--config", TINY, "--ckpt_path", str(checkpoints[-1]),
          "--prediction_writer.output", str(out)])
    assert asked == [False]  # streamed to the file, not also kept in memory (the output)
    with xr.open_dataset(out) as ds:
        da = ds["air_temperature"]
        assert da.dims == ("time", "latitude", "longitude")  # E1's names (issue 13)
        assert da.attrs["units"] == "K"
        assert da.attrs["standard_name"] == "air_temperature"
        assert "area: mean" in da.attrs["cell_methods"]
        assert ds.attrs["Conventions"].startswith("CF-")
        assert str(checkpoints[-1]) in ds.attrs["history"]
        assert ds["latitude"].attrs["bounds"] == "latitude_bnds" and "latitude_bnds" in ds
        assert float(ds["longitude"].min()) >= 225.0  # E1's 0..360 range, not -135..-45
        assert ds["time"].attrs["bounds"] == "time_bnds" and "time_bnds" in ds
        assert ds["time"].encoding["calendar"] == "360_day"
        assert np.isfinite(da.values).all()
    # The prediction conserves each coarse cell of the held-back truth exactly (compared in
    # the package's own form: open_field reads the output like any input).
    normal = open_field(out, "air_temperature")
    area = cell_areas(normal).values
    dm = DownscalingDataModule("manifest://e1_north_america", "air_temperature", 4)
    dm.setup()
    truth = dm.source.read(dm.splits["test"], slice(None), slice(None))
    truth_coarse, _ = area_weighted_block_mean(truth, area, (4, 4))
    err = conservation_error(normal["air_temperature"].values.astype("f8"), truth_coarse,
                             area, 4)
    assert err.max_rel < 1e-5


def test_fit_on_a_users_netcdf_with_flags_only(tmp_path: Path) -> None:
    path = _write_tas(tmp_path / "my.nc")
    main(["fit", "--data.path", str(path), "--data.variable", "tas", "--data.factor", "4",
          "--data.batch_size", "2", "--data.samples_per_epoch", "4",
          "--model.hidden_channels", "8", "--trainer.fast_dev_run", "1"])


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "downscale", *args], capture_output=True,
                          text=True, timeout=300)


def test_missing_variable_is_one_clear_line(tmp_path: Path) -> None:
    path = _write_tas(tmp_path / "my.nc")
    result = _run_cli("fit", "--data.path", str(path), "--data.variable", "pr",
                      "--trainer.fast_dev_run", "1")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert str(path) in last and "pr" in last and "tas" in last


def test_checkpoint_for_another_factor_is_refused(tmp_path: Path, checkpoint: Path) -> None:
    # The session's tiny model (factor 4): this test needs a trained model, not a fit.
    result = _run_cli("predict", "--config", TINY, "--data.factor", "2", "--ckpt_path",
                      str(checkpoint), "--prediction_writer.output", str(tmp_path / "x.nc"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "factor 4" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x.nc").exists()
