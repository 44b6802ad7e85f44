"""DownscalingDataModule: splits, statistics, patches, tiles, workers, coarse files."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from downscale.aggregate import coarsen_field, crop_to_factor
from downscale.data import DownscalingDataModule
from downscale.data.datamodule import split_times
from downscale.data.samples import PATCHES_PER_STEP, RandomPatchDataset
from downscale.errors import InputError
from downscale.io import open_field, write_netcdf
from downscale.manifest import resolve
from downscale.testing import assert_mass_conserved

E1 = "manifest://e1_north_america"


def test_time_split_is_contiguous_and_disjoint() -> None:
    train, val, test = split_times(240, 0.15, 0.15)
    assert (len(train), len(val), len(test)) == (168, 36, 36)
    assert not set(train) & set(val) and not set(val) & set(test)
    assert max(train) < min(val) and max(val) < min(test)


def test_statistics_come_from_the_training_split_only() -> None:
    dm = DownscalingDataModule(E1, "air_temperature", 4)
    dm.setup()
    assert dm.stats is not None
    train = dm.source.read(dm.splits["train"], slice(None), slice(None)).astype("f8")
    assert dm.stats.mean == pytest.approx(train.mean(), rel=1e-9)
    assert dm.stats.std == pytest.approx(train.std(), rel=1e-6)
    everything = dm.source.read(dm.splits["all"], slice(None), slice(None)).astype("f8")
    assert abs(dm.stats.mean - everything.mean()) > 1e-3  # the warming scenario drifts


def test_patches_are_conservative_pairs_and_reproducible() -> None:
    dm = DownscalingDataModule(E1, "air_temperature", 4, patch_size=16, batch_size=4,
                               samples_per_epoch=8)
    dm.setup()
    first = next(iter(dm.train_dataloader()))
    again = next(iter(dm.train_dataloader()))
    assert torch.equal(first["fine"], again["fine"])
    assert first["coarse"].shape == (4, 1, 4, 4) and first["fine"].shape == (4, 1, 16, 16)
    for sample in range(4):
        area = first["fine_area"][sample, 0].double().numpy()
        assert_mass_conserved(first["fine"][sample].double().numpy(),
                              first["coarse"][sample].double().numpy(), area, 4, rtol=1e-6)


def test_workers_open_their_own_files_and_give_the_same_batches() -> None:
    kwargs = {"patch_size": 16, "batch_size": 4, "samples_per_epoch": 8}
    single = DownscalingDataModule(E1, "air_temperature", 4, **kwargs)
    multi = DownscalingDataModule(E1, "air_temperature", 4, num_workers=2, **kwargs)
    single.setup()
    multi.setup()
    a = [b["fine"] for b in single.train_dataloader()]
    b = [b["fine"] for b in multi.train_dataloader()]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_small_grid_clips_the_patch_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    dm = DownscalingDataModule(E1, "air_temperature", 4, patch_size=256)
    with caplog.at_level(logging.INFO, logger="downscale"):
        dm.setup()
    assert dm.patch_shape == (36, 48)
    assert "clipped" in caplog.text


def test_masked_field_tiles_keep_the_land_mask() -> None:
    dm = DownscalingDataModule("manifest://hadisst_sst", "sst", 4)
    dm.setup()
    tile = dm.tiles("val")[0]
    assert bool(tile["periodic"])  # a whole global field wraps in longitude
    land = ~tile["fine_valid"][0]
    assert 0.3 < float(land.float().mean()) < 0.4
    assert torch.isnan(tile["fine"][0][land]).all()


def test_user_coarse_file_must_nest(tmp_path: Path) -> None:
    fine = crop_to_factor(open_field(resolve("e1_north_america"), "air_temperature"), (4, 4))
    coarse = coarsen_field(fine, "air_temperature", (4, 4)).load()
    write_netcdf(coarse, tmp_path / "coarse.nc")
    dm = DownscalingDataModule(E1, "air_temperature", 4, coarse_path=str(tmp_path / "coarse.nc"),
                               patch_size=16, batch_size=2, samples_per_epoch=2)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert torch.isfinite(batch["coarse"]).all()
    wrong = DownscalingDataModule(E1, "air_temperature", 2,
                                  coarse_path=str(tmp_path / "coarse.nc"))
    with pytest.raises(InputError, match="does not nest"):
        wrong.setup()


def test_state_dict_round_trip_keeps_statistics() -> None:
    dm = DownscalingDataModule(E1, "air_temperature", 4)
    dm.setup()
    state = dm.state_dict()
    assert state["variable"] == "air_temperature" and state["units"] == "K"
    restored = DownscalingDataModule(E1, "air_temperature", 4)
    restored.load_state_dict(state)
    assert restored.stats == dm.stats
    assert np.isfinite(state["stats"]["std"])


def test_step_cache_reads_the_same_values_as_the_files() -> None:
    cached = DownscalingDataModule(E1, "air_temperature", 4, patch_size=16)
    uncached = DownscalingDataModule(E1, "air_temperature", 4, patch_size=16, cache_mb=0)
    for dm in (cached, uncached):
        dm.setup()
    got = [b for _, b in zip(range(3), cached.train_dataloader(), strict=False)]
    want = [b for _, b in zip(range(3), uncached.train_dataloader(), strict=False)]
    for a, b in zip(got, want, strict=True):
        for key in a:
            torch.testing.assert_close(a[key], b[key], equal_nan=True)
    assert uncached.source.cache_hits == uncached.source.cache_misses == 0
    # 48 random patches from 168 training steps: some steps drawn twice come from memory.
    assert cached.source.cache_misses == len(cached.source._steps) > 0
    assert cached.source.cache_hits + cached.source.cache_misses == 48


def test_patches_follow_a_window_of_steps_when_the_cache_cannot_hold_the_split() -> None:
    """168 training steps, a cache of 5: patches come from a moving window of 5 steps, each
    step equally often over the epoch's order, and the cache serves 15 of every 16 reads."""
    dm = DownscalingDataModule(E1, "air_temperature", 4, patch_size=16, samples_per_epoch=400)
    dm.setup()
    _, h, w = dm.source.shape
    dm.source.cache_mb = 5.5 * 4 * h * w / 2**20
    dataset = dm.train_dataloader().dataset
    assert isinstance(dataset, RandomPatchDataset) and dataset.window == 5
    times = dm.splits["train"]
    rng = np.random.default_rng(0)
    block = 5 * PATCHES_PER_STEP
    drawn = [dataset.time_of(i, rng) for i in range(len(times) * block)]
    assert set(drawn) == set(times)  # and, over the whole order, equally often:
    assert set(np.unique(drawn, return_counts=True)[1]) == {block}
    assert len(set(drawn[:block])) == 5 and len(set(drawn[:16])) == 5  # a batch mixes 5
    # The same index gives the same step whatever was asked before (workers, ranks).
    assert [dataset.time_of(i, rng) for i in range(999, -1, -1)] == drawn[999::-1]
    batches = list(dm.train_dataloader())
    assert sum(len(b["time"]) for b in batches) == 400
    reads = dm.source.cache_hits + dm.source.cache_misses
    assert reads == 400 and dm.source.cache_hits / reads >= 1 - 1 / PATCHES_PER_STEP
    for batch in batches[:3]:  # the patches are the file's values at their steps
        for k in range(2):
            t, y0, x0 = (int(batch[key][k]) for key in ("time", "y0", "x0"))
            want = dm.source._read_block(t, slice(y0, y0 + 16), slice(x0, x0 + 16))
            valid = batch["fine_valid"][k, 0].numpy()
            np.testing.assert_array_equal(batch["fine"][k, 0].numpy()[valid], want[valid])
    # A cache that holds the whole split keeps uniform draws.
    dm.source.cache_mb = 200 * 4 * h * w / 2**20
    assert dm.train_dataloader().dataset.window == len(times)  # type: ignore[attr-defined]


def test_step_cache_is_bounded_and_hands_out_copies() -> None:
    dm = DownscalingDataModule(E1, "air_temperature", 4)
    _, h, w = dm.source.shape
    dm.source.cache_mb = 2.5 * 4 * h * w / 2**20  # room for two whole steps
    first = dm.source.read(0, slice(0, 8), slice(0, 8))
    first[:] = 0.0  # a caller writing into its block must not change the cache
    np.testing.assert_array_equal(dm.source.read(0, slice(0, 8), slice(0, 8)),
                                  dm.source._read_block(0, slice(0, 8), slice(0, 8)))
    for t in (1, 2, 3):
        dm.source.read(t, slice(None), slice(None))
    assert list(dm.source._steps) == [2, 3]  # least recently used dropped first
    # Several steps at once bypass the cache; a pickled source (a worker) starts empty.
    assert dm.source.read([4, 5], slice(0, 8), slice(0, 8)).shape == (2, 8, 8)
    assert 4 not in dm.source._steps
    assert not pickle.loads(pickle.dumps(dm.source))._steps
