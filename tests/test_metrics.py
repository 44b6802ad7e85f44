from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

from downscale.aggregate import area_weighted_block_mean, coarsen_field
from downscale.baselines import bicubic, bilinear, piecewise_constant
from downscale.grid import cell_areas_latlon
from downscale.metrics import (
    ConservationError,
    ConservationSums,
    bias,
    checkerboard_index,
    conservation_error,
    conservation_error_xr,
    conservation_sums,
    lat_weighted_rmse,
    mae,
    rmse,
    spectral_artifact_index,
)
from downscale.testing import synthetic_field

FACTOR = 3
NY, NX = 90, 180  # global 2-degree fine grid, 30 x 60 coarse cells


def latlon_bounds(ny: int = NY, nx: int = NX) -> tuple[np.ndarray, np.ndarray]:
    lat_edges = np.linspace(-90.0, 90.0, ny + 1)
    lon_edges = np.linspace(-180.0, 180.0, nx + 1)
    return (np.stack([lat_edges[:-1], lat_edges[1:]], axis=1),
            np.stack([lon_edges[:-1], lon_edges[1:]], axis=1))


@pytest.fixture
def area() -> np.ndarray:
    return cell_areas_latlon(*latlon_bounds())


@pytest.fixture
def truth() -> np.ndarray:
    """Three time steps of a temperature-like field with a 'continent' and scattered gaps."""
    field = synthetic_field((3, NY, NX), spectral_slope=-3.0, seed=3, mean=285.0, std=8.0)
    field[:, 20:41, 30:71] = np.nan  # whole coarse cells and partial ones
    rng = np.random.default_rng(0)
    field[rng.random(field.shape) < 0.05] = np.nan
    return field


def coarsen(fine: np.ndarray, area: np.ndarray) -> np.ndarray:
    mean, _ = area_weighted_block_mean(fine, area, (FACTOR, FACTOR))
    return mean


# --- conservation ---------------------------------------------------------------------


def test_piecewise_constant_conserves_to_rounding(truth: np.ndarray, area: np.ndarray) -> None:
    coarse = coarsen(truth, area)
    fine = piecewise_constant(coarse, FACTOR, fine_valid=np.isfinite(truth))
    err = conservation_error(fine, coarse, area, FACTOR)
    assert err.n_cells == np.isfinite(coarse).sum()
    assert err.n_uncovered == 0
    assert err.max_rel < 1e-12
    assert err.global_rel < 1e-12
    assert err.max_abs < 1e-12 * 285


def test_nan_coarse_cells_and_uncovered_cells_are_excluded(truth: np.ndarray,
                                                           area: np.ndarray) -> None:
    coarse = coarsen(truth, area)
    fine = piecewise_constant(coarse, FACTOR, fine_valid=np.isfinite(truth))
    fine[0, :FACTOR, :FACTOR] = np.nan  # model lost coarse cell (0, 0) at t=0 entirely
    fine[1, 3 * FACTOR:4 * FACTOR, :FACTOR] += 100.0  # but coarse (3, 0) at t=1 is NaN:
    coarse[1, 3, 0] = np.nan  # not compared
    err = conservation_error(fine, coarse, area, FACTOR)
    assert err.n_uncovered == 1
    assert err.n_cells == np.isfinite(coarse).sum() - 1
    assert err.max_rel < 1e-12


def test_bilinear_of_rough_field_is_not_conserved(area: np.ndarray) -> None:
    rough = synthetic_field((NY, NX), spectral_slope=-1.0, seed=5, mean=285.0, std=8.0)
    coarse = coarsen(rough, area)
    err = conservation_error(bilinear(coarse, FACTOR, periodic=True), coarse, area, FACTOR)
    assert err.max_abs > 1.0  # K
    assert err.max_rel > 3e-3
    assert err.global_rel < err.max_rel


@pytest.mark.parametrize("cell", [(0, 0), (15, 30), (29, 59), (7, 12)])
def test_planted_mass_error_is_found_anywhere(area: np.ndarray, cell: tuple[int, int]) -> None:
    coarse = np.full((NY // FACTOR, NX // FACTOR), 10.0)
    fine = piecewise_constant(coarse, FACTOR)
    i, j = cell
    fine[i * FACTOR:(i + 1) * FACTOR, j * FACTOR:(j + 1) * FACTOR] *= 1.01
    err = conservation_error(fine, coarse, area, FACTOR)
    block_area = area[i * FACTOR:(i + 1) * FACTOR, j * FACTOR:(j + 1) * FACTOR].sum()
    share = block_area / area.sum()
    assert err.max_abs == pytest.approx(0.1, rel=1e-9)  # the same at the pole and equator
    assert err.max_rel == pytest.approx(0.01, rel=1e-9)
    assert err.mean_abs == pytest.approx(0.1 * share, rel=1e-9)
    assert err.global_abs == pytest.approx(0.1 * share, rel=1e-9)
    assert err.global_rel == pytest.approx(0.01 * share, rel=1e-9)


def test_partial_sums_over_chunks_equal_whole(truth: np.ndarray, area: np.ndarray) -> None:
    coarse = coarsen(truth, area)
    fine = bicubic(coarse, FACTOR, periodic=True)
    whole = conservation_error(fine, coarse, area, FACTOR)
    parts = [conservation_sums(fine[t:t + 1], coarse[t:t + 1], area, FACTOR) for t in range(3)]
    chunked = sum(parts, ConservationSums.empty()).finalize()
    for name, value in whole.as_dict().items():
        assert chunked.as_dict()[name] == pytest.approx(value, rel=1e-12)
    assert 0 < whole.max_rel < 1


def test_float32_output_conserves_to_single_precision(truth: np.ndarray,
                                                      area: np.ndarray) -> None:
    coarse = coarsen(truth, area)
    fine = piecewise_constant(coarse.astype(np.float32), FACTOR)
    assert conservation_error(fine, coarse, area, FACTOR).max_rel < 1e-6


def test_empty_comparison_is_nan() -> None:
    err = conservation_error(np.full((4, 4), np.nan), np.ones((2, 2)), np.ones((4, 4)), 2)
    assert err.n_cells == 0 and err.n_uncovered == 4
    assert math.isnan(err.max_rel)
    assert isinstance(err, ConservationError)


@pytest.mark.parametrize(("fine_shape", "coarse_shape", "area_shape"), [
    ((6, 6), (2, 3), (6, 6)),
    ((6, 6), (2, 2), (6, 5)),
    ((2, 6, 6), (3, 2, 2), (6, 6)),
])
def test_shapes_that_do_not_nest_raise(fine_shape: tuple[int, ...],
                                       coarse_shape: tuple[int, ...],
                                       area_shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        conservation_error(np.ones(fine_shape), np.ones(coarse_shape), np.ones(area_shape), 3)


def _normalised(values: np.ndarray, lat_b: np.ndarray, lon_b: np.ndarray) -> xr.Dataset:
    return xr.Dataset(
        {"tas": (("time", "lat", "lon"), values)},
        coords={"time": np.arange(values.shape[0]), "lat": lat_b.mean(axis=1),
                "lon": lon_b.mean(axis=1), "lat_bnds": (("lat", "bnds"), lat_b),
                "lon_bnds": (("lon", "bnds"), lon_b)})


def test_xarray_wrapper_uses_bounds_and_chunks(truth: np.ndarray, area: np.ndarray) -> None:
    fine_ds = _normalised(truth, *latlon_bounds())
    coarse_ds = coarsen_field(fine_ds, "tas", (FACTOR, FACTOR))
    pred = fine_ds.copy(data={"tas": piecewise_constant(coarse_ds["tas"].values, FACTOR)})
    pred["tas"] = pred["tas"].where(np.isfinite(truth))
    err = conservation_error_xr(pred, coarse_ds)  # factor inferred from the bounds
    assert err.max_rel < 1e-12 and err.n_cells == np.isfinite(coarse_ds["tas"]).sum()

    rough = fine_ds.copy(data={"tas": bicubic(coarse_ds["tas"].values, FACTOR)})
    expected = conservation_error(rough["tas"].values, coarse_ds["tas"].values, area, FACTOR)
    lazy = conservation_error_xr(rough.chunk({"time": 1}),
                                 coarse_ds.transpose("lon", "lat", "time", ...), FACTOR)
    assert lazy.max_abs == pytest.approx(expected.max_abs, rel=1e-12)
    assert lazy.global_rel == pytest.approx(expected.global_rel, rel=1e-9)
    arrays = conservation_error_xr(rough["tas"], coarse_ds["tas"], fine_area=area)
    assert arrays.max_abs == pytest.approx(expected.max_abs, rel=1e-12)
    with pytest.raises(ValueError, match="factor"):
        conservation_error_xr(rough, coarse_ds, 2)
    with pytest.raises(ValueError, match="fine_area"):
        conservation_error_xr(rough["tas"], coarse_ds["tas"])


# --- checkerboard ---------------------------------------------------------------------


def smooth_field(shape: tuple[int, ...] = (2, 128, 128), seed: int = 1) -> np.ndarray:
    return synthetic_field(shape, spectral_slope=-4.0, seed=seed)


def checkerboard(shape: tuple[int, ...], stride: int, amplitude: float = 0.5,
                 seed: int = 2) -> np.ndarray:
    """A zero-mean pattern that repeats every ``stride`` cells (a transposed-conv artifact)."""
    phases = np.random.default_rng(seed).normal(size=(stride, stride))
    phases = amplitude * (phases - phases.mean()) / phases.std()
    reps = (shape[-2] // stride, shape[-1] // stride)
    return np.broadcast_to(np.tile(phases, reps), shape)


def bicubic_of_smooth(stride: int) -> np.ndarray:
    truth = smooth_field()
    coarse, _ = area_weighted_block_mean(truth, np.ones(truth.shape[-2:]), (stride, stride))
    return bicubic(coarse, stride)


@pytest.mark.parametrize("stride", [2, 4])
def test_checkerboard_index_separates_artifacts(stride: int) -> None:
    constant = checkerboard_index(np.full((64, 64), 287.3), stride)
    smooth = checkerboard_index(bicubic_of_smooth(stride), stride)
    field = smooth_field()
    planted = checkerboard_index(field + checkerboard(field.shape, stride), stride)
    print(f"checkerboard_index stride {stride}: constant {constant:.3g}, "
          f"bicubic {smooth:.3g}, planted {planted:.3g}")
    assert constant == 0.0
    assert smooth < 0.02
    assert planted > 0.5


def test_checkerboard_index_ignores_missing_cells() -> None:
    field = bicubic_of_smooth(2)
    field[:, 30:70, 40:90] = np.nan
    field[:, ::7, ::5] = np.nan
    assert checkerboard_index(field, 2) < 0.02
    assert checkerboard_index(field + checkerboard(field.shape, 2), 2) > 0.5
    assert math.isnan(checkerboard_index(np.full((8, 8), np.nan), 2))


@pytest.mark.parametrize("stride", [2, 4])
def test_spectral_artifact_index_separates_artifacts(stride: int) -> None:
    noise = np.random.default_rng(0).normal(size=(4, 128, 128))
    values = {
        "constant": spectral_artifact_index(np.full((64, 64), -1.5), stride),
        "noise": spectral_artifact_index(noise, stride),
        "bicubic": spectral_artifact_index(bicubic_of_smooth(stride), stride),
        "planted": spectral_artifact_index(
            smooth_field() + checkerboard((2, 128, 128), stride, amplitude=0.1), stride),
    }
    print(f"spectral_artifact_index stride {stride} (dB):",
          {k: round(v, 2) for k, v in values.items()})
    assert values["constant"] == 0.0
    assert abs(values["noise"]) < 1.5
    assert values["bicubic"] < 0.0
    assert values["planted"] > 20.0


def test_spectral_artifact_index_with_missing_cells() -> None:
    field = bicubic_of_smooth(2)
    field[:, 30:70, 40:90] = np.nan
    assert spectral_artifact_index(field, 2) < 0.0
    assert spectral_artifact_index(field + checkerboard(field.shape, 2), 2) > 20.0


# --- skill ----------------------------------------------------------------------------


def test_skill_scores_by_hand() -> None:
    pred = np.array([[1.0, 2.0], [3.0, np.nan]])
    truth = np.array([[1.0, 4.0], [0.0, 5.0]])  # differences 0, -2, 3 (last cell missing)
    assert rmse(pred, truth) == pytest.approx(math.sqrt(13 / 3))
    assert mae(pred, truth) == pytest.approx(5 / 3)
    assert bias(pred, truth) == pytest.approx(1 / 3)
    assert math.isnan(rmse(np.full(3, np.nan), np.ones(3)))


def test_lat_weighted_rmse() -> None:
    rng = np.random.default_rng(4)
    pred, truth = rng.normal(size=(2, 3, 5, 6))
    pred[0, 0, 0] = np.nan
    assert lat_weighted_rmse(pred, truth, np.full(5, 37.0)) == pytest.approx(rmse(pred, truth))
    errors = np.array([[1.0, 1.0], [2.0, 2.0]])
    # weights cos 0 = 1 and cos 60 = 0.5: sqrt((1 * 1 + 0.5 * 4) / 1.5) = sqrt(2)
    assert lat_weighted_rmse(errors, np.zeros((2, 2)), [0.0, 60.0]) == pytest.approx(
        math.sqrt(2.0))


def test_metrics_and_baselines_do_not_import_torch() -> None:
    code = ("import sys, downscale.metrics, downscale.baselines; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
