"""Tiled inference with halos: the receptive field, tiled == whole field, exact conservation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from downscale.aggregate import block_sum
from downscale.grid import cell_areas_latlon, fine_bounds, fine_cell_areas, nesting_factor
from downscale.inference import downscale_field, plan_tiles, receptive_field
from downscale.metrics import conservation_error
from downscale.tasks import DownscalingTask
from downscale.testing import synthetic_field

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(factor: int, coarse_blocks: int = 1, fine_blocks: int = 1, seed: int = 0,
           dtype: torch.dtype = torch.float32, covariate_channels: int = 0
           ) -> DownscalingTask:
    """A small task with random weights everywhere (the head starts at zero otherwise)."""
    torch.manual_seed(seed)
    model = DownscalingTask(factor=factor, hidden_channels=4, coarse_blocks=coarse_blocks,
                            fine_blocks=fine_blocks,
                            covariate_channels=covariate_channels).to(dtype).eval()
    with torch.no_grad():
        for param in model.decoder.parameters():
            param.add_(0.5 * torch.randn_like(param))
        model.norm_mean.fill_(280.0)
        model.norm_std.fill_(10.0)
    return model


def _bounds(lo: float, hi: float, n: int) -> np.ndarray:
    edges = np.linspace(lo, hi, n + 1)
    return np.stack([edges[:-1], edges[1:]], axis=1)


def _field(t: int, h: int, w: int, seed: int = 1) -> np.ndarray:
    values = synthetic_field((t, h, w), seed=seed, mean=280.0, std=10.0).astype(np.float32)
    values[0, 2:4, 3:6] = np.nan  # missing cells (land) at a tile border for some tiles
    values[-1, -1, :2] = np.nan
    return values


GLOBAL = {"lat": _bounds(-90.0, 90.0, 13), "lon": _bounds(-180.0, 180.0, 22), "factor": 3}
REGIONAL = {"lat": _bounds(20.0, 47.5, 11), "lon": _bounds(-10.0, 32.5, 17), "factor": 2}


@pytest.mark.parametrize(("factor", "coarse_blocks", "fine_blocks"),
                         [(2, 1, 1), (3, 1, 3), (4, 2, 1), (4, 1, 1)])
def test_receptive_field_is_the_exact_reach(factor: int, coarse_blocks: int,
                                            fine_blocks: int) -> None:
    model = _model(factor, coarse_blocks, fine_blocks, dtype=torch.float64)
    reach = receptive_field(model.decoder)
    n = 2 * reach + 7
    rng = np.random.default_rng(0)
    x = rng.normal(280.0, 5.0, (1, n, n))
    lat, lon = _bounds(30.0, 30.0 + n, n), _bounds(0.0, n, n)
    base = downscale_field(model, x, lat, lon, factor)
    moved = x.copy()
    moved[0, n // 2, n // 2] += 5.0
    rows, cols = np.nonzero(downscale_field(model, moved, lat, lon, factor)[0] != base[0])
    offsets = np.concatenate([rows // factor, cols // factor]) - n // 2
    assert np.abs(offsets).max() == reach


def _tiled_matches_whole(grid: dict[str, object], tile_sizes: list[int]) -> None:
    factor = int(grid["factor"])  # type: ignore[call-overload]
    lat, lon = np.asarray(grid["lat"]), np.asarray(grid["lon"])
    # In float64, so that tiles and the whole field differ only by the float32 rounding of
    # the result (convolutions of other sizes sum in another order: a few float32 ulps of
    # the ~500 K intermediate values in float32, more than the atol this test once used).
    model = _model(factor, dtype=torch.float64)
    coarse = _field(3, lat.shape[0], lon.shape[0])
    whole = downscale_field(model, coarse, lat, lon, factor)
    assert whole.shape == (3, lat.shape[0] * factor, lon.shape[0] * factor)
    for tile in tile_sizes:
        tiled = downscale_field(model, coarse, lat, lon, factor, tile_size=tile)
        np.testing.assert_array_equal(np.isnan(tiled), np.isnan(whole))
        np.testing.assert_allclose(tiled, whole, rtol=2 * np.finfo(np.float32).eps, atol=0,
                                   err_msg=f"tile {tile}")


def test_tiled_equals_whole_field_on_a_periodic_global_grid() -> None:
    # 13 x 22 coarse cells at factor 3: tiles of 1, 2, 4 and 7 coarse cells (none divides
    # both sizes; 8 fine cells round down to 2 coarse ones), tiles whose halo reaches round
    # the globe, and one tile as wide as it.
    _tiled_matches_whole(GLOBAL, [3, 8, 12, 21, 36, 66])


def test_tiled_equals_whole_field_on_a_regional_grid() -> None:
    _tiled_matches_whole(REGIONAL, [2, 6, 10, 14, 34])


def test_tiles_must_see_real_neighbours() -> None:
    """A halo below the receptive field, or no wrap-around on the globe, changes the result."""
    factor = 3
    lat, lon = np.asarray(GLOBAL["lat"]), np.asarray(GLOBAL["lon"])
    model = _model(factor)
    coarse = _field(1, lat.shape[0], lon.shape[0])
    whole = downscale_field(model, coarse, lat, lon, factor)
    short = downscale_field(model, coarse, lat, lon, factor, tile_size=12,
                            halo=receptive_field(model.decoder) - 1)
    assert np.nanmax(np.abs(short - whole)) > 1e-2
    not_periodic = downscale_field(model, coarse, lat, lon, factor, periodic=False)
    assert np.nanmax(np.abs(not_periodic - whole)[..., :factor]) > 1e-2


@pytest.mark.parametrize("grid", [GLOBAL, REGIONAL], ids=["global", "regional"])
def test_tiled_output_is_exactly_conservative(grid: dict[str, object]) -> None:
    factor = int(grid["factor"])  # type: ignore[call-overload]
    lat, lon = np.asarray(grid["lat"]), np.asarray(grid["lon"])
    coarse = _field(3, lat.shape[0], lon.shape[0]).astype(np.float64)
    fine = downscale_field(_model(factor), coarse, lat, lon, factor, tile_size=2 * factor)
    area = fine_cell_areas(lat, lon, factor)
    err = conservation_error(fine.astype(np.float64), coarse, area, factor)
    assert err.max_rel < 1e-5 and err.global_rel < 1e-6
    assert err.n_uncovered == 0
    assert err.n_cells == np.isfinite(coarse).sum()


@pytest.mark.parametrize(("shape", "tile", "halo", "periodic"),
                         [((13, 22), 4, 5, False), ((13, 22), 4, 5, True),
                          ((7, 9), 3, 0, True), ((5, 6), 2, 4, True), ((9, 4), None, 0, True),
                          ((9, 4), 10, 3, False)])
def test_tile_plan_covers_the_grid_once(shape: tuple[int, int], tile: int | None, halo: int,
                                        periodic: bool) -> None:
    covered = np.zeros(shape, dtype=int)
    for t in plan_tiles(shape, tile, halo, periodic):
        covered[t.out_rows, t.out_cols] += 1
        np.testing.assert_array_equal(t.rows[t.keep_rows], np.arange(shape[0])[t.out_rows])
        np.testing.assert_array_equal(t.cols[t.keep_cols], np.arange(shape[1])[t.out_cols])
        interior_halo = t.keep_cols.start if not t.periodic else 0
        if periodic and not t.periodic:
            assert interior_halo == halo and len(t.cols) - t.keep_cols.stop == halo
        if t.periodic:
            assert len(t.cols) == shape[1]
    np.testing.assert_array_equal(covered, 1)


def test_fine_grid_nests_and_keeps_the_coarse_areas() -> None:
    lat, lon = np.asarray(GLOBAL["lat"]), np.asarray(GLOBAL["lon"])
    for factor in (2, 3, 5):
        assert nesting_factor(lat, fine_bounds(lat, factor)) == factor
        assert nesting_factor(lon, fine_bounds(lon, factor)) == factor
        summed = block_sum(fine_cell_areas(lat, lon, factor), (factor, factor))
        np.testing.assert_allclose(summed, cell_areas_latlon(lat, lon), rtol=1e-12)


class _Plain(nn.Module):
    """A model without a known receptive field: piecewise-constant upsampling."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: Tensor, area: Tensor, valid: Tensor, periodic: bool) -> Tensor:
        up = x.repeat_interleave(2, -2).repeat_interleave(2, -1)
        return up * self.scale


def test_unknown_decoders_need_an_explicit_halo() -> None:
    lat, lon = np.asarray(REGIONAL["lat"]), np.asarray(REGIONAL["lon"])
    coarse = _field(1, lat.shape[0], lon.shape[0])
    with pytest.raises(ValueError, match="receptive field of _Plain"):
        downscale_field(_Plain(), coarse, lat, lon, 2, tile_size=4)
    out = downscale_field(_Plain(), coarse, lat, lon, 2, tile_size=4, halo=0)
    np.testing.assert_array_equal(out[:, ::2, ::2], coarse)


def test_static_covariate_reach_and_tiles() -> None:
    """A fine covariate changes fine cells no further than the receptive field, and tiles
    that cut the covariate like the coarse field give the whole-field result."""
    factor = 2
    model = _model(factor, 1, 2, dtype=torch.float64, covariate_channels=1)
    with torch.no_grad():
        model.covariate_mean.fill_(500.0)
        model.covariate_std.fill_(300.0)
    reach = receptive_field(model.decoder)
    n = 2 * reach + 7
    rng = np.random.default_rng(3)
    x = rng.normal(280.0, 5.0, (2, n, n))
    altitude = rng.normal(500.0, 300.0, (1, n * factor, n * factor))
    lat, lon = _bounds(30.0, 30.0 + n, n), _bounds(0.0, n, n)
    base = downscale_field(model, x, lat, lon, factor, covariate=altitude)
    moved = altitude.copy()
    moved[0, n // 2 * factor, n // 2 * factor] += 900.0
    changed = downscale_field(model, x, lat, lon, factor, covariate=moved)[0] != base[0]
    rows, cols = np.nonzero(changed)
    offsets = np.concatenate([rows // factor, cols // factor]) - n // 2
    assert 0 < np.abs(offsets).max() <= reach
    for tile in (2, 6, 10):
        tiled = downscale_field(model, x, lat, lon, factor, tile_size=tile, covariate=altitude)
        np.testing.assert_allclose(tiled, base, rtol=0, atol=1e-9, err_msg=f"tile {tile}")
    err = conservation_error(base, x, fine_cell_areas(lat, lon, factor), factor)
    assert err.max_rel < 1e-6  # float32 output


def test_batched_steps_and_inference_mode_equal_one_autograd_step_at_a_time() -> None:
    """Several time steps per pass, without autograd, give what one step per call with
    autograd on gives (float32 rounding of the result), whatever the batch bound. In
    float64, as for tiles: convolutions of other batch sizes may sum in another order."""
    factor = int(REGIONAL["factor"])  # type: ignore[call-overload]
    lat, lon = np.asarray(REGIONAL["lat"]), np.asarray(REGIONAL["lon"])
    model = _model(factor, dtype=torch.float64)
    coarse = _field(5, lat.shape[0], lon.shape[0])
    one_step = lat.shape[0] * lon.shape[0] * factor**2
    batched = downscale_field(model, coarse, lat, lon, factor, batch_cells=3 * one_step)
    single = downscale_field(model, coarse, lat, lon, factor, batch_cells=one_step)
    np.testing.assert_allclose(batched, single, rtol=2 * np.finfo(np.float32).eps, atol=0)
    area = torch.from_numpy(fine_cell_areas(lat, lon, factor))
    area = area / area.mean()
    for t in range(coarse.shape[0]):
        x = torch.from_numpy(coarse[t : t + 1, None]).double()
        valid = torch.isfinite(x).repeat_interleave(factor, -2).repeat_interleave(factor, -1)
        with torch.enable_grad():
            y = model(x, area[None, None], valid)
        assert y.requires_grad
        np.testing.assert_allclose(batched[t], y[0, 0].detach().float().numpy(),
                                   rtol=2 * np.finfo(np.float32).eps, atol=0)
