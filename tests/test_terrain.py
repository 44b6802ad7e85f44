"""Terrain generation: the generator, the DEM DataModule, the slope penalty in training,
and the command line (fit, predict to CF NetCDF, generation from a coarse DEM)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import assert_cf_compliant

from downscale.aggregate import area_weighted_block_mean
from downscale.data import TerrainDataModule
from downscale.dem import coarsen_dem, open_dem
from downscale.grid import cell_areas, nesting_factor
from downscale.io import write_netcdf
from downscale.main import main
from downscale.metrics import (
    checkerboard_index,
    slope_angle_percentile,
    slope_violation_fraction,
    slope_wasserstein_distance,
)
from downscale.nn import TerrainGenerator
from downscale.tasks import TerrainTask
from downscale.tasks.terrain import compare_slope_penalty, terrain_metrics

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "conf" / "terrain_tiny.yaml")
JACKSBORO = "manifest://jacksboro_fault_dem"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


# -- generator --------------------------------------------------------------------------------


def _random_generator(**kwargs: object) -> TerrainGenerator:
    torch.manual_seed(0)
    net = TerrainGenerator(factor=4, hidden_channels=8, coarse_blocks=1, fine_blocks=1,
                           **kwargs)  # type: ignore[arg-type]
    torch.nn.init.normal_(net.head.weight, std=0.3)  # as if trained: non-zero detail
    return net.double()


def test_generator_keeps_every_coarse_cell_mean_on_a_latlon_grid() -> None:
    fine, coarse = coarsen_dem(open_dem(JACKSBORO).isel(lat=slice(0, 32), lon=slice(0, 48)), 4)
    area = torch.from_numpy(cell_areas(fine).values)
    area = (area / area.mean())[None, None]
    x = torch.from_numpy(coarse["elevation"].values.astype("f8"))[None]
    relief = (x - x.mean()) / 100.0
    y = _random_generator()(x, relief, area, torch.tensor(100.0))
    assert y.shape == (1, 1, 32, 48)
    means, _ = area_weighted_block_mean(y.detach().numpy(), area.numpy()[0, 0], (4, 4))
    np.testing.assert_allclose(means, x.numpy(), rtol=1e-12)
    assert not torch.allclose(y, _random_generator(conserve=False)(x, relief, area,
                                                                   torch.tensor(100.0)))


def test_untrained_generator_is_a_smooth_conserving_interpolation() -> None:
    net = TerrainGenerator(factor=4, hidden_channels=8).double()
    x = torch.rand(2, 1, 5, 6, dtype=torch.float64) * 500
    area = torch.ones(1, 1, 20, 24, dtype=torch.float64)
    y = net(x, x / 500, area, torch.tensor(1.0))
    # The head starts at zero: the feature path adds nothing yet.
    torch.testing.assert_close(y, net(x, torch.zeros_like(x), area, torch.tensor(1.0)))
    torch.testing.assert_close(torch.nn.functional.avg_pool2d(y, 4), x)
    # The pycnophylactic refinement leaves almost nothing to the blockwise correction, so
    # no steps at block edges: far smoother than correcting the bilinear base directly.
    # Measured as the mean step across block edges relative to the mean step inside blocks.
    blocky = net.constraint(net.base(x, area), x, area.expand_as(y))
    ratio = {name: ((f[..., 4::4] - f[..., 3:-1:4]).abs().mean()
                    / (f[..., 1::4] - f[..., 0::4]).abs().mean()).item()
             for name, f in (("refined", y), ("blocky", blocky))}
    assert ratio["refined"] < 1.5 < 3.0 < ratio["blocky"]


def test_flat_coarse_terrain_stays_flat_no_checkerboard() -> None:
    net = _random_generator(noise_channels=0)
    x = torch.full((1, 1, 8, 8), 420.0, dtype=torch.float64)
    y = net(x, torch.zeros_like(x), torch.ones(1, 1, 32, 32, dtype=torch.float64),
            torch.tensor(100.0))
    torch.testing.assert_close(y, torch.full_like(y, 420.0))
    assert checkerboard_index(y[0, 0].detach().numpy(), 4) < 1e-4  # rounding noise only


def test_noise_input_changes_the_detail_but_not_the_coarse_means() -> None:
    net = _random_generator(noise_channels=2)
    x = torch.rand(1, 1, 6, 6, dtype=torch.float64) * 300
    area = torch.ones(1, 1, 24, 24, dtype=torch.float64)
    noise = torch.randn(1, 2, 24, 24, dtype=torch.float64)
    a = net(x, x / 300, area, torch.tensor(50.0), noise)
    b = net(x, x / 300, area, torch.tensor(50.0), -noise)
    assert not torch.allclose(a, b)
    torch.testing.assert_close(torch.nn.functional.avg_pool2d(a, 4),
                               torch.nn.functional.avg_pool2d(b, 4))


def test_task_exposes_and_checks_its_slope_settings() -> None:
    task = TerrainTask(factor=4, theta_max_deg=28.0, slope_weight=50.0)
    assert (task.theta_max_deg, task.slope_weight) == (28.0, 50.0)
    assert task.hparams["theta_max_deg"] == 28.0 and task.hparams["slope_weight"] == 50.0
    with pytest.raises(ValueError, match="theta_max_deg"):
        TerrainTask(theta_max_deg=90.0)
    with pytest.raises(ValueError, match="slope_weight"):
        TerrainTask(slope_weight=-1.0)


# -- metrics ------------------------------------------------------------------------------------


def test_slope_violation_fraction_counts_finite_cells_over_the_limit() -> None:
    slopes = np.array([[0.1, 0.5, np.nan], [1.0, 0.57, 0.58]])  # tan(30 deg) = 0.5774
    assert slope_violation_fraction(slopes, 30.0) == pytest.approx(2 / 5)
    assert np.isnan(slope_violation_fraction(np.full(3, np.nan), 30.0))
    with pytest.raises(ValueError, match="theta_max_deg"):
        slope_violation_fraction(slopes, 90.0)


def test_slope_wasserstein_distance_of_shifted_and_weighted_samples() -> None:
    rng = np.random.default_rng(0)
    real = rng.gamma(2.0, 0.1, (40, 50))
    assert slope_wasserstein_distance(real, real) == 0.0
    assert slope_wasserstein_distance(real + 0.05, real) == pytest.approx(0.05)
    both = np.array([0.0, 1.0])
    # Weights move the mass: all of it at 1.0 against an even split is 0.5 away.
    assert slope_wasserstein_distance(both, both, weights=[0.0, 1.0]) == pytest.approx(0.5)
    assert slope_angle_percentile(np.array([0.0, 1.0, np.nan]), 100.0) == pytest.approx(45.0)


def test_terrain_metrics_of_a_perfect_generator() -> None:
    dm = TerrainDataModule(JACKSBORO, factor=4)
    dm.setup()
    batch = {k: v[None] for k, v in dm.tiles("val")[0].items()}
    scores = terrain_metrics(batch["fine"], batch, 4, 25.0)
    assert scores["rmse"] == 0.0 and scores["slope_wasserstein"] == 0.0
    assert scores["slope_violation_fraction"] == scores["real_slope_violation_fraction"] > 0
    assert scores["conservation_max_abs"] < 1e-3  # float32 samples, metres


# -- DataModule --------------------------------------------------------------------------------


def test_columns_split_west_to_east_on_coarse_cells() -> None:
    dm = TerrainDataModule(JACKSBORO, factor=4, patch_size=32, batch_size=4,
                           samples_per_epoch=8)
    dm.setup()
    cols = dm.columns
    assert cols["train"] == (0, 280) and cols["val"] == (280, 340) and cols["test"] == (340, 400)
    assert cols["heldout"] == (280, 400)
    lon = {k: dm.regions[k].dataset["lon"].values for k in ("train", "val", "test")}
    assert lon["train"].max() < lon["val"].min() and lon["val"].max() < lon["test"].min()
    batch = next(iter(dm.train_dataloader()))
    assert batch["fine"].shape == (4, 1, 32, 32) and batch["coarse"].shape == (4, 1, 8, 8)
    assert batch["dy"].shape == batch["dx"].shape == (4, 1, 32, 1)
    assert 92 < float(batch["dy"].min()) and 74 < float(batch["dx"].min()) < 75
    assert int(batch["x0"].max()) + 32 <= 280  # patches stay west of the held-out columns
    # The statistics come from the training columns only.
    train = dm.regions["train"].read(0, slice(None), slice(None)).astype("f8")
    assert dm.stats is not None and dm.stats.mean == pytest.approx(train.mean(), rel=1e-6)


def test_writer_interface_of_the_datamodule() -> None:
    dm = TerrainDataModule(JACKSBORO, factor=4, predict_split="heldout")
    dm.setup()
    assert dm.variable == "elevation" and dm.factor == 4
    assert dm.variable_attrs["standard_name"] == "surface_altitude"
    assert dm.variable_attrs["units"] == "m"
    assert dm.source.shape == (1, 344, 120)
    assert dm.splits[dm.predict_split] == [0]
    grid = dm.fine_grid("heldout")
    assert grid.attrs["downscale_added_time"] == 1 and grid.sizes["lon"] == 120
    sample = dm.tiles("heldout")[0]
    assert sample["fine"].shape == (1, 344, 120) and sample["coarse"].shape == (1, 86, 30)


def test_train_on_one_dem_and_evaluate_on_another() -> None:
    dm = TerrainDataModule(JACKSBORO, factor=4, eval_dem="manifest://topobathy")
    dm.setup()
    assert dm.regions["train"].shape == (1, 344, 400)
    assert dm.regions["val"].shape == dm.regions["test"].shape == (1, 88, 120)
    assert dm.variable == "topo"  # predict_split defaults to test: the other DEM


# -- training with and without the penalty -----------------------------------------------------


def test_slope_penalty_reduces_the_violation_fraction() -> None:
    """Seeded twin runs on the western columns, scored on the held-out eastern ones."""
    dm = TerrainDataModule(JACKSBORO, factor=4, patch_size=32, batch_size=8,
                           samples_per_epoch=80)
    dm.setup()
    theta = slope_angle_percentile(dm.real_slope("train"), 95.0)  # real terrain: 5% over
    runs = compare_slope_penalty(dm, theta_max_deg=theta, slope_weight=1000.0, max_steps=200,
                                 seed=0, hidden_channels=8, coarse_blocks=1, fine_blocks=1,
                                 lr=5e-3)
    scores = runs.scores(dm, "heldout")
    without, with_penalty = scores["unpenalized"], scores["penalized"]
    assert 0 < with_penalty["violation_fraction"] < 0.6 * without["violation_fraction"]
    assert with_penalty["rmse_m"] < 1.1 * without["rmse_m"]
    assert runs.penalized.slope_weight == 1000.0 and runs.unpenalized.slope_weight == 0.0


# -- command line -------------------------------------------------------------------------------


def test_cli_fit_fast_dev_run() -> None:
    main(["fit", "--config", TINY, "--trainer.fast_dev_run", "1"])


def _fit(tmp_path: Path) -> Path:
    main(["fit", "--config", TINY, "--trainer.max_epochs", "1",
          "--trainer.default_root_dir", str(tmp_path)])
    checkpoints = sorted(tmp_path.glob("outputs/**/*.ckpt"))
    assert checkpoints, "fit saved no checkpoint"
    return checkpoints[-1]


@pytest.fixture(scope="module")
def terrain_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny terrain fit (:func:`_fit`) shared by the tests that need a trained
    generator, not a fit of their own (the fit itself is tested below)."""
    root = tmp_path_factory.mktemp("terrain-fit")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # the config's logger writes to ./outputs
        return _fit(root)


def test_fit_then_predict_writes_cf_surface_altitude(tmp_path: Path) -> None:
    ckpt = _fit(tmp_path)
    out = tmp_path / "terrain.nc"
    main(["predict", "--config", TINY, "--ckpt_path", str(ckpt),
          "--prediction_writer.output", str(out)])
    with xr.open_dataset(out) as ds:
        da = ds["elevation"]
        assert da.dims == ("lat", "lon") and da.shape == (344, 60)  # the test columns
        assert da.attrs["standard_name"] == "surface_altitude" and da.attrs["units"] == "m"
        assert ds.attrs["Conventions"].startswith("CF-")
        assert ds["lat"].attrs["bounds"] == "lat_bnds"
        assert np.isfinite(da.values).all()
        # Each coarse cell of the held-out truth keeps its mean elevation.
        dm = TerrainDataModule(JACKSBORO, factor=4)
        dm.setup()
        truth = dm.regions["test"].read(0, slice(None), slice(None)).astype("f8")
        area = cell_areas(ds).values
        expected, _ = area_weighted_block_mean(truth, area, (4, 4))
        got, _ = area_weighted_block_mean(da.values.astype("f8"), area, (4, 4))
        np.testing.assert_allclose(got, expected, atol=1e-3)  # float32 output, metres
    assert_cf_compliant(out, tmp_path)


def test_predict_generates_fine_terrain_for_a_coarse_dem(tmp_path: Path,
                                                         terrain_checkpoint: Path) -> None:
    ckpt = terrain_checkpoint
    _, coarse = coarsen_dem(open_dem("manifest://topobathy"), 4)
    coarse_nc = write_netcdf(coarse.isel(time=0).compute(), tmp_path / "coarse.nc")
    out = tmp_path / "fine.nc"
    main(["predict", "--config", TINY, "--ckpt_path", str(ckpt), "--data.coarse_dem",
          str(coarse_nc), "--prediction_writer.output", str(out)])
    with xr.open_dataset(out) as ds:
        da = ds["topo"]
        assert da.dims == ("lat", "lon") and da.shape == (88, 120)
        assert da.attrs["standard_name"] == "surface_altitude" and da.attrs["units"] == "m"
        assert nesting_factor(coarse["lat_bnds"].values, ds["lat_bnds"].values) == 4
        assert np.isfinite(da.values).all()


def test_checkpoint_for_another_factor_is_refused(tmp_path: Path, terrain_checkpoint: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = terrain_checkpoint
    out = tmp_path / "x.nc"
    with pytest.raises(SystemExit) as info:
        main(["predict", "--config", TINY, "--data.factor", "2", "--ckpt_path", str(ckpt),
              "--prediction_writer.output", str(out)])
    assert info.value.code == 2
    assert "factor 4" in capsys.readouterr().err
    assert not out.exists()


def test_run_generates_the_same_terrain_as_predict(tmp_path: Path,
                                                   terrain_checkpoint: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """``downscale run`` takes a terrain checkpoint too: coarse DEM in, CF fine DEM out."""
    ckpt = terrain_checkpoint
    _, coarse = coarsen_dem(open_dem("manifest://topobathy"), 4)
    coarse_nc = write_netcdf(coarse.isel(time=0).compute(), tmp_path / "coarse.nc")
    # A DEM at another spacing than the generator learned is refused, saying both.
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        main(["run", "--checkpoint", str(ckpt), "--input", str(coarse_nc), "--output",
              str(tmp_path / "refused.nc"), "--workers", "0", "--no-progress"])
    line = capsys.readouterr().err.strip()
    assert refused.value.code == 2 and len(line.splitlines()) == 1
    assert "trained on coarse DEMs of" in line and str(coarse_nc) in line
    assert not (tmp_path / "refused.nc").exists()
    predicted, generated = tmp_path / "predicted.nc", tmp_path / "generated.nc"
    main(["predict", "--config", TINY, "--ckpt_path", str(ckpt), "--data.coarse_dem",
          str(coarse_nc), "--prediction_writer.output", str(predicted)])
    # Trained on Jacksboro's ~90 m cells, run on topobathy's ~2.4 km: --any-spacing.
    main(["run", "--checkpoint", str(ckpt), "--input", str(coarse_nc), "--output",
          str(generated), "--workers", "0", "--no-progress", "--any-spacing"])
    with xr.open_dataset(predicted) as a, xr.open_dataset(generated) as b:
        da = b["topo"]  # the input's variable, though the generator was trained on another
        assert da.dims == ("lat", "lon") and da.shape == (88, 120)
        assert da.attrs["standard_name"] == "surface_altitude" and da.attrs["units"] == "m"
        assert b.attrs["downscale_command"] == "run"
        np.testing.assert_allclose(da.values, a["topo"].values, rtol=0, atol=1e-3)
        got, _ = area_weighted_block_mean(da.values.astype("f8"), cell_areas(b).values, (4, 4))
    expected = coarse["topo"].isel(time=0).values
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-3)  # metres, float32 output
    # The relief is taken about a local mean: tiles with the stated halo give the same terrain.
    main(["run", "--checkpoint", str(ckpt), "--input", str(coarse_nc), "--output",
          str(tmp_path / "tiled.nc"), "--workers", "0", "--tile-size", "32", "--no-progress",
          "--any-spacing"])
    with xr.open_dataset(generated) as a, xr.open_dataset(tmp_path / "tiled.nc") as b:
        np.testing.assert_allclose(b["topo"].values, a["topo"].values, rtol=0, atol=1e-3)
