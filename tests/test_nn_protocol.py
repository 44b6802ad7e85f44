"""The Downscaler protocol: every decoder option and the terrain generator state their
receptive field, and tiles extended by it give the whole-field result."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from downscale.inference import downscale_field, receptive_field
from downscale.nn import (
    ClimateDownscaler,
    CoarseGridDecoder,
    Downscaler,
    NotTileableError,
    PixelShuffleDecoder,
    ResizeConvDecoder,
    TerrainDownscaler,
    TransposedConvDecoder,
    UNetDecoder,
)
from downscale.nn.protocol import tile_alignment
from downscale.tasks import DownscalingTask, TerrainTask
from downscale.testing import synthetic_field

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere (heads start at zero), training statistics set, eval mode."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.3 * torch.randn_like(param))
        model.norm_mean.fill_(280.0)
        model.norm_std.fill_(10.0)
    return model.eval()


def _climate(decoder: Callable[[], nn.Module] | None) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        torch.manual_seed(0)
        made = None if decoder is None else decoder()
        factor = 2 if made is None else int(made.factor)
        return ClimateDownscaler(factor, hidden_channels=4, coarse_blocks=1, decoder=made)
    return build


H = {"hidden_channels": 4}
MODELS: dict[str, Callable[[], nn.Module]] = {
    "conserving": _climate(None),
    "coarse_grid": _climate(lambda: CoarseGridDecoder(factor=2, coarse_blocks=1, **H)),
    "coarse_grid_odd": _climate(lambda: CoarseGridDecoder(
        factor=3, coarse_blocks=1, fine_blocks=2, fine_channels=3, **H)),
    "transposed_staged": _climate(lambda: TransposedConvDecoder(factor=4, coarse_blocks=1, **H)),
    "transposed_single": _climate(lambda: TransposedConvDecoder(
        factor=3, coarse_blocks=1, stage_stride=None, **H)),
    "transposed_unbalanced_dilated": _climate(lambda: TransposedConvDecoder(
        factor=2, coarse_blocks=1, phase_balanced=False, symmetric=False, dilation=3, **H)),
    "unet": _climate(lambda: UNetDecoder(factor=2, depth=1, **H)),
    "unet_deep": _climate(lambda: UNetDecoder(factor=2, depth=2, dilation=1, **H)),
    "pixel_shuffle": _climate(lambda: PixelShuffleDecoder(factor=2, coarse_blocks=1, **H)),
    "pixel_shuffle_plain": _climate(lambda: PixelShuffleDecoder(
        factor=3, coarse_blocks=1, icnr=False, anti_alias=False, **H)),
    "resize_nearest": _climate(lambda: ResizeConvDecoder(factor=2, coarse_blocks=1, **H)),
    "resize_bilinear": _climate(lambda: ResizeConvDecoder(
        factor=2, coarse_blocks=1, mode="bilinear", dilation=1, **H)),
    "terrain": lambda: TerrainDownscaler(2, hidden_channels=4, coarse_blocks=1, fine_blocks=1,
                                         relief_radius=2),
}


def _bounds(lo: float, hi: float, n: int) -> np.ndarray:
    edges = np.linspace(lo, hi, n + 1)
    return np.stack([edges[:-1], edges[1:]], axis=1)


def _grids(reach: int, alignment: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A periodic global grid (width a multiple of the alignment) and a regional one, both
    wider than two halos and a tile, so that tiles really are cut."""
    h, w = 2 * reach + 9, -(-(2 * reach + 10) // alignment) * alignment
    return {"global": (_bounds(-90.0, 90.0, h), _bounds(-180.0, 180.0, w)),
            "regional": (_bounds(20.0, 20.0 + 0.5 * h, h), _bounds(-10.0, -10.0 + 0.5 * (w + 1),
                                                                   w + 1))}


def _field(h: int, w: int) -> np.ndarray:
    values = synthetic_field((2, h, w), seed=1, mean=280.0, std=10.0).astype(np.float32)
    values[0, 2:4, 3:6] = np.nan  # missing cells (land) across tile borders
    values[-1, -1, :2] = np.nan
    return values


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_option_is_a_downscaler_and_tiles_equal_the_whole_field(name: str) -> None:
    # float64 inside, float32 out: tiled and whole agree to the output's rounding, so
    # any reach the stated receptive field misses would show.
    model = _randomised(MODELS[name]()).double()
    assert isinstance(model, Downscaler)
    reach, factor = receptive_field(model), int(model.factor)
    for grid, (lat, lon) in _grids(reach, tile_alignment(model)).items():
        coarse = _field(lat.shape[0], lon.shape[0])
        whole = downscale_field(model, coarse, lat, lon, factor)
        assert whole.shape == (2, lat.shape[0] * factor, lon.shape[0] * factor)
        for tile in (max(3, reach // 3), max(7, reach // 2)):  # coarse cells; few tiles
            tiled = downscale_field(model, coarse, lat, lon, factor, tile_size=tile * factor)
            np.testing.assert_array_equal(np.isnan(tiled), np.isnan(whole))
            np.testing.assert_allclose(tiled, whole, rtol=2.5e-7, atol=1e-5,
                                       err_msg=f"{name}, {grid} grid, tile {tile}")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_stated_receptive_field_bounds_the_reach(name: str) -> None:
    """Moving one coarse value changes fine cells at most R coarse cells away."""
    model = _randomised(MODELS[name]()).double()
    reach, factor = receptive_field(model), int(model.factor)
    n = 2 * reach + 2 * tile_alignment(model) + 5
    x = np.random.default_rng(0).normal(280.0, 5.0, (1, n, n))
    lat, lon = _bounds(30.0, 30.0 + n / 4, n), _bounds(0.0, n / 4, n)
    base = downscale_field(model, x, lat, lon, factor)
    moved = x.copy()
    moved[0, n // 2, n // 2] += 5.0
    rows, cols = np.nonzero(downscale_field(model, moved, lat, lon, factor)[0] != base[0])
    offsets = np.concatenate([rows // factor, cols // factor]) - n // 2
    assert 0 < np.abs(offsets).max() <= reach


def test_global_attention_cannot_be_tiled() -> None:
    """Attention smoothing mixes every cell with the whole field: whole fields only."""
    model = _randomised(_climate(lambda: TransposedConvDecoder(
        factor=2, coarse_blocks=1, attention=True, **H))())
    assert isinstance(model, Downscaler)
    with pytest.raises(NotTileableError, match="attention"):
        model.receptive_field()
    lat, lon = _grids(2, 1)["regional"]
    coarse = _field(lat.shape[0], lon.shape[0])
    with pytest.raises(ValueError, match="attention"):
        downscale_field(model, coarse, lat, lon, 2, tile_size=8)
    assert np.isfinite(downscale_field(model, coarse, lat, lon, 2)[1]).any()


def test_unet_tiles_that_cannot_align_on_the_circle_take_all_of_it() -> None:
    """A periodic width that is not a multiple of 2**depth: column tiles are the circle."""
    model = _randomised(MODELS["unet"]())
    lat, lon = _bounds(-90.0, 90.0, 2 * receptive_field(model) + 9), _bounds(-180, 180, 13)
    coarse = _field(lat.shape[0], 13)
    whole = downscale_field(model, coarse, lat, lon, 2)
    tiled = downscale_field(model, coarse, lat, lon, 2, tile_size=6)
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=5e-4)


def test_legacy_terrain_relief_and_noise_are_refused_for_tiles() -> None:
    with pytest.raises(NotTileableError, match="own mean"):
        TerrainDownscaler(2, hidden_channels=4, relief_radius=None).receptive_field()
    with pytest.raises(NotTileableError, match="noise"):
        TerrainDownscaler(2, hidden_channels=4, noise_channels=1).receptive_field()


def _batch(factor: int, h: int, w: int) -> dict[str, torch.Tensor]:
    coarse = torch.from_numpy(_field(h, w)[:, None].astype(np.float32))
    area = torch.rand(1, 1, h * factor, w * factor) + 0.5
    valid = torch.isfinite(coarse).repeat_interleave(factor, -2).repeat_interleave(factor, -1)
    return {"coarse": coarse, "fine_area": area, "fine_valid": valid,
            "periodic": torch.tensor([False, False])}


def test_plain_climate_model_equals_the_task() -> None:
    torch.manual_seed(0)
    task = _randomised(DownscalingTask(factor=2, hidden_channels=4, coarse_blocks=1))
    plain = ClimateDownscaler(2, hidden_channels=4, coarse_blocks=1).eval()
    plain.load_state_dict(task.state_dict())
    batch = _batch(2, 9, 11)
    with torch.no_grad():
        expected = task._predict_batch(batch)
        got = plain(batch["coarse"], batch["fine_area"], batch["fine_valid"], False)
    torch.testing.assert_close(got, expected, equal_nan=True, rtol=0, atol=0)


def test_plain_terrain_model_equals_the_task() -> None:
    torch.manual_seed(0)
    task = _randomised(TerrainTask(factor=2, hidden_channels=4, coarse_blocks=1,
                                   noise_channels=2, noise_seed=5))
    plain = TerrainDownscaler(2, hidden_channels=4, coarse_blocks=1, noise_channels=2,
                              noise_seed=5).eval()
    plain.load_state_dict(task.state_dict())
    batch = _batch(2, 9, 11)
    everywhere = torch.ones_like(batch["fine_valid"])
    with torch.no_grad():
        expected = task.generate(batch, seed=5)
        got = plain(batch["coarse"], batch["fine_area"], everywhere)
    torch.testing.assert_close(got, expected, equal_nan=True, rtol=0, atol=0)
