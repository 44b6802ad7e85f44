"""The Lightning DataModule for terrain generation: coarse/fine DEM pairs, split in space.

A DEM is one map, so it is split in space, not in time. By default the western columns
train the generator and the eastern ones (never seen in training) validate and test it:
``train | val | test`` from west to east, boundaries on coarse cells. The alternative is to
train on one whole DEM and evaluate on another (``eval_dem``). Coarse inputs are the
area-weighted aggregates of the fine DEM (:mod:`downscale.aggregate`), or, to generate
terrain for a DEM that only exists coarse, a ``coarse_dem`` file.

Samples are those of :mod:`downscale.data.samples` plus the grid spacing needed for
slopes: ``dy`` and ``dx``, ``(1, H, 1)`` in metres (``dx`` shrinks with latitude).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
import xarray as xr
from numpy.typing import NDArray
from torch.utils.data import DataLoader, Dataset

from downscale.aggregate import crop_to_factor
from downscale.data.samples import RandomPatchDataset, Sample, TileDataset
from downscale.data.source import FieldSource, NormStats
from downscale.dem import open_dem
from downscale.dem_grid import dem_slope, dem_variable, grid_spacing, subdivide_grid
from downscale.errors import InputError
from downscale.grid import horizontal_dims
from downscale.spacing import coarse_spacing

log = logging.getLogger(__name__)

TerrainSplit = Literal["train", "val", "test", "heldout", "all"]


class DEMSource(FieldSource):
    """A :class:`FieldSource` over a DEM already in memory instead of NetCDF paths.

    It is pickled with its (small) data, so DataLoader workers need not reopen anything.

    Args:
        dataset: A normalised field (from :func:`downscale.dem.open_dem`), already cropped
            to a multiple of ``factor``.
        factor: Upsampling factor.
        label: Where the data came from, for messages.

    """

    def __init__(self, dataset: xr.Dataset, factor: int, label: str = "DEM") -> None:
        super().__init__([label], dem_variable(dataset), factor, crop=False)
        self._memory = dataset

    @property
    def dataset(self) -> xr.Dataset:
        """The normalised field, dims ``(time, y, x)`` or ``(time, lat, lon)``."""
        return self._memory


class _WithSpacing(Dataset[Sample]):
    """Adds the rows' ``dy`` and ``dx`` (metres, ``(1, H, 1)``) to every sample."""

    def __init__(self, samples: RandomPatchDataset | TileDataset, source: FieldSource) -> None:
        self.samples = samples
        dy, dx = grid_spacing(source.dataset)
        self.dy, self.dx = dy.astype(np.float32), dx.astype(np.float32)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        sample = self.samples[index]
        rows = slice(int(sample["y0"]), int(sample["y0"]) + sample["fine"].shape[-2])
        sample["dy"] = torch.from_numpy(self.dy[rows])[None]
        sample["dx"] = torch.from_numpy(self.dx[rows])[None]
        return sample


class TerrainDataModule(L.LightningDataModule):
    """Coarse/fine pairs of a DEM, split in space (or across DEMs), for terrain generation.

    Exposes what :class:`~downscale.callbacks.NetCDFPredictionWriter` reads:
    ``fine_grid(split)``, ``variable``, ``variable_attrs``, ``factor``, ``splits``,
    ``source`` (the field being predicted) and ``predict_split``.

    Args:
        dem: The DEM to train on: ``.npz`` or NetCDF file, or ``manifest://<id>``.
        variable: Its elevation variable; found automatically by default.
        factor: Fine cells per coarse cell along each axis (>= 2).
        val_fraction: Share of columns (east of the training ones) for validation.
        test_fraction: Share of columns (the easternmost) for test.
        eval_dem: Another DEM to validate and test on instead; ``dem`` then trains whole.
        eval_variable: Its elevation variable.
        coarse_dem: A coarse DEM to generate fine terrain for: ``predict`` then writes its
            nested fine grid (``factor`` times finer) instead of ``predict_split``.
        patch_size: Training patch edge in fine cells (rounded down to a multiple of
            ``factor``, clipped to the training region).
        tile_size: Validation/test/predict tile edge in fine cells; None for whole regions.
        batch_size: Samples per batch.
        samples_per_epoch: Random training patches per epoch.
        predict_split: Which region ``predict`` generates: ``train``, ``val``, ``test``,
            ``heldout`` (validation and test columns together) or ``all`` (the whole
            training DEM). With ``eval_dem``, ``val``, ``test`` and ``heldout`` all mean
            the whole evaluation DEM.
        num_workers: DataLoader worker processes.
        seed: Seed of the random patches.

    """

    def __init__(self, dem: str = "manifest://jacksboro_fault_dem", variable: str | None = None,
                 factor: int = 4, val_fraction: float = 0.15, test_fraction: float = 0.15,
                 eval_dem: str | None = None, eval_variable: str | None = None,
                 coarse_dem: str | None = None, patch_size: int = 64,
                 tile_size: int | None = None, batch_size: int = 16,
                 samples_per_epoch: int = 256, predict_split: TerrainSplit = "test",
                 num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        if factor < 2:
            raise InputError(f"factor must be an integer >= 2, got {factor}", path=dem,
                             hint="set --data.factor")
        if not (0 < val_fraction and 0 < test_fraction and val_fraction + test_fraction < 1):
            raise InputError(f"val_fraction {val_fraction} and test_fraction {test_fraction} "
                             "must be positive and leave columns to train on", path=dem,
                             hint="use e.g. 0.15 and 0.15")
        self.save_hyperparameters()
        self.dem, self.variable_name, self.factor = dem, variable, factor
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.eval_dem, self.eval_variable, self.coarse_dem = eval_dem, eval_variable, coarse_dem
        self.patch_size, self.tile_size, self.batch_size = patch_size, tile_size, batch_size
        self.samples_per_epoch, self.predict_split = samples_per_epoch, predict_split
        self.num_workers, self.seed = num_workers, seed
        self.stats: NormStats | None = None
        self.splits: dict[str, list[int]] = {}
        self.regions: dict[str, DEMSource] = {}
        self.columns: dict[str, tuple[int, int]] = {}
        self._valid: dict[str, NDArray[np.bool_]] = {}
        self._coarse: DEMSource | None = None

    # -- setup ---------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Open the DEM(s), cut the regions, check them and compute the statistics."""
        if self.regions:
            return
        self.regions = self._cut_regions()
        scanned: dict[int, tuple[NormStats, NDArray[np.bool_]]] = {}
        for name, region in self.regions.items():
            if name == "coarse":  # nothing to check: a template to fill
                self._valid[name] = np.ones(region.shape[1:], dtype=bool)
                continue
            if id(region) not in scanned:  # regions may share a DEM (eval_dem)
                scanned[id(region)] = region.scan([0])
            stats, self._valid[name] = scanned[id(region)]
            if name == "train" and self.stats is None:  # else restored from a checkpoint
                self.stats = stats
        self.splits = {name: [0] for name in self.regions}  # one map: one time step
        assert self.stats is not None
        log.info("%s: factor %d, regions %s (fine cells); training elevation mean %.1f m, "
                 "std %.1f m", self.regions["train"].variable, self.factor,
                 {k: v.shape[1:] for k, v in self.regions.items()}, self.stats.mean,
                 self.stats.std)

    def _cut_regions(self) -> dict[str, DEMSource]:
        """The regions by split name: column ranges of ``dem``, or ``dem`` and ``eval_dem``."""
        ds = crop_to_factor(open_dem(self.dem, self.variable_name), (self.factor,) * 2,
                            variable=self.variable_name)
        label = ds.attrs.get("source_files", self.dem)
        regions = {"all": DEMSource(ds, self.factor, label)}
        if self.eval_dem is None:
            xdim = horizontal_dims(ds)[1]
            self.columns = self._column_split(ds.sizes[xdim])
            for name, (a, b) in self.columns.items():
                regions[name] = DEMSource(ds.isel({xdim: slice(a, b)}), self.factor,
                                          f"{label} columns {a}..{b - 1}")
        else:
            other = crop_to_factor(open_dem(self.eval_dem, self.eval_variable),
                                   (self.factor,) * 2, variable=self.eval_variable)
            held = DEMSource(other, self.factor, other.attrs.get("source_files", self.eval_dem))
            regions.update(train=regions["all"], val=held, test=held, heldout=held)
        if self.coarse_dem is not None:
            coarse = open_dem(self.coarse_dem)
            self._coarse = DEMSource(coarse, 1, coarse.attrs.get("source_files",
                                                                 self.coarse_dem))
            regions["coarse"] = DEMSource(subdivide_grid(coarse, self.factor), self.factor,
                                          f"fine grid of {self.coarse_dem}")
        return regions

    def _column_split(self, width: int) -> dict[str, tuple[int, int]]:
        """Fine column ranges of train | val | test | heldout, on coarse cell boundaries."""
        cells = width // self.factor
        n_val = max(1, round(self.val_fraction * cells))
        n_test = max(1, round(self.test_fraction * cells))
        n_train = cells - n_val - n_test
        if n_train < 1:
            raise InputError(f"{cells} coarse columns leave none to train on", path=self.dem,
                             hint="lower val_fraction/test_fraction or the factor")
        f = self.factor
        return {"train": (0, n_train * f), "val": (n_train * f, (n_train + n_val) * f),
                "test": ((n_train + n_val) * f, width), "heldout": (n_train * f, width)}

    def _region(self, split: str) -> DEMSource:
        if not self.regions:
            self.setup()
        if split not in self.regions:
            raise InputError(f"no region '{split}'", path=self.dem,
                             hint=f"use one of {', '.join(self.regions)}")
        return self.regions[split]

    @property
    def _predict_region(self) -> str:
        return "coarse" if self.coarse_dem is not None else self.predict_split

    @property
    def source(self) -> DEMSource:
        """The field ``predict`` fills: the ``predict_split`` region, or ``coarse_dem``'s grid."""
        return self._region(self._predict_region)

    @property
    def patch_shape(self) -> tuple[int, int]:
        """Training patch ``(ph, pw)``: multiples of the factor, clipped to the region."""
        _, h, w = self._region("train").shape
        edge = max(self.patch_size // self.factor * self.factor, self.factor)
        return min(edge, h), min(edge, w)

    def real_slope(self, split: str) -> NDArray[np.float64]:
        """Slope magnitude (m/m) of the real fine DEM of one region, ``(H, W)``.

        Its high percentiles are a data-driven choice of ``theta_max_deg`` (see
        :func:`downscale.metrics.slope_angle_percentile`).
        """
        return np.asarray(dem_slope(self._region(split).dataset).values[0], dtype=np.float64)

    # -- loaders -------------------------------------------------------------------------
    def _loader(self, dataset: Dataset[Sample], shuffle: bool = False) -> DataLoader[Sample]:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def tiles(self, split: str) -> Dataset[Sample]:
        """Deterministic tiles (whole regions by default) of one split, with spacing."""
        region = self._region(split)
        tile = None if self.tile_size is None else (self.tile_size // self.factor
                                                    * self.factor,) * 2
        coarse = self._coarse if split == "coarse" else None
        return _WithSpacing(TileDataset(region, [0], tile, self._valid[split], coarse), region)

    def train_dataloader(self) -> DataLoader[Sample]:
        region = self._region("train")
        dataset = RandomPatchDataset(region, [0], self.patch_shape, self._valid["train"],
                                     self.samples_per_epoch, self.seed)
        if self.trainer is not None:
            dataset.epoch = self.trainer.current_epoch
        return self._loader(_WithSpacing(dataset, region))

    def val_dataloader(self) -> DataLoader[Sample]:
        return self._loader(self.tiles("val"))

    def test_dataloader(self) -> DataLoader[Sample]:
        return self._loader(self.tiles("test"))

    def predict_dataloader(self) -> DataLoader[Sample]:
        return self._loader(self.tiles(self._predict_region))

    # -- metadata for writers and checkpoints --------------------------------------------
    @property
    def variable(self) -> str:
        """Name of the elevation variable (of the region being predicted)."""
        return self.source.variable

    @property
    def variable_attrs(self) -> dict[str, Any]:
        """The elevation's attributes (``standard_name: surface_altitude``, ``units: m``)."""
        return dict(self.source.data.attrs)

    def fine_grid(self, split: str) -> xr.Dataset:
        """An empty template of one region's fine grid: coords, bounds, attrs.

        The ``predict_split`` stands for ``coarse_dem``'s fine grid when that is set.
        """
        name = self._predict_region if split == self.predict_split else split
        ds = self._region(name).dataset
        grid = ds.drop_vars(dem_variable(ds)).assign_attrs(ds.attrs)
        # A DEM's added time axis has no coordinate, so it vanishes with the variable; the
        # writer needs it to select (and drop) the single step.
        return grid if "time" in grid.dims else grid.expand_dims(time=[0])

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints: statistics and what the model was trained on."""
        state = {"stats": None if self.stats is None else self.stats.as_dict(),
                 "variable": self.regions["train"].variable if self.regions else None,
                 "factor": self.factor, "units": "m", "standard_name": "surface_altitude"}
        if self.regions:  # the DEM's coarse spacing (:mod:`downscale.spacing`)
            state["coarse_spacing"] = coarse_spacing(self.regions["train"].dataset,
                                                     self.factor).as_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("stats"):
            self.stats = NormStats(**state_dict["stats"])
