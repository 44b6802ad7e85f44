"""The Lightning DataModule for climate-field downscaling."""

from __future__ import annotations

import logging
from typing import Any, Literal

import lightning as L
import numpy as np
import xarray as xr
from torch.utils.data import DataLoader

from downscale.data.chunks import Chunk, TimeChunkDataset
from downscale.data.covariate import StaticCovariate, load_covariate
from downscale.data.samples import RandomPatchDataset, Sample, TileDataset
from downscale.data.source import STEP_CACHE_MB, FieldSource, NormStats
from downscale.errors import InputError
from downscale.grid import nesting_factor
from downscale.spacing import GridSpacing, coarse_spacing

log = logging.getLogger(__name__)


def split_times(n: int, val_fraction: float, test_fraction: float
                ) -> tuple[list[int], list[int], list[int]]:
    """Contiguous, non-overlapping train / validation / test time indices (in that order).

    With fewer than three time steps there is nothing to split: all three share them
    (logged as a warning), so single-map datasets such as HadISST still train.
    """
    if n < 3:
        log.warning("Only %d time step(s): training, validation and test share them.", n)
        everything = list(range(n))
        return everything, everything, everything
    n_test = max(1, round(test_fraction * n)) if test_fraction > 0 else 0
    n_val = max(1, round(val_fraction * n))
    n_train = n - n_val - n_test
    if n_train < 1:
        raise ValueError(f"val_fraction + test_fraction leave no training steps of {n}")
    return (list(range(n_train)), list(range(n_train, n_train + n_val)),
            list(range(n_train + n_val, n)))


class DownscalingDataModule(L.LightningDataModule):
    """Coarse/fine pairs from one variable of NetCDF files, split by time.

    The coarse field is the area-weighted conservative aggregate of the fine one, or is read
    from ``coarse_path`` (its grid must nest in the fine grid by ``factor``). Normalisation
    statistics come from the training split only (one lazy Dask pass) and travel in the
    checkpoint.

    Args:
        path: Fine-resolution NetCDF file or files (continuing in time).
        variable: Variable name in the files.
        factor: Integer upsampling factor (fine cells per coarse cell along each axis).
        coarse_path: Optional coarse NetCDF file(s) on a grid nesting in the fine one.
        patch_size: Training patch edge in fine cells (rounded down to a multiple of
            ``factor``; clipped to the grid, with a log message).
        tile_size: Validation/test/predict tile edge in fine cells; None for whole fields.
        batch_size: Samples per batch.
        samples_per_epoch: Random training patches per epoch.
        val_fraction: Share of time steps for validation (after the training steps).
        test_fraction: Share of time steps for test (the last ones).
        predict_split: Which time steps ``predict`` downscales.
        num_workers: DataLoader worker processes (each opens its own file handles).
        crop: Crop a grid that does not divide by ``factor`` (logged); else refuse it.
        seed: Seed of the random patches.
        covariate_path: Optional NetCDF file of one static field on the fine grid (e.g.
            surface altitude from the terrain generator), fed to the model as an extra
            channel (:mod:`downscale.data.covariate`); the model needs
            ``covariate_channels: 1``.
        covariate_variable: The covariate's variable; default: the file's elevation
            variable (``standard_name: surface_altitude``, or its only gridded one).
        cache_mb: Memory (MiB) for whole time steps that each process (and DataLoader
            worker) keeps after reading them, so later patches of a step skip the read;
            0 reads every sample from the files. When the training steps do not all fit,
            training patches come from a moving window of the steps that do
            (:class:`~downscale.data.samples.RandomPatchDataset`).

    """

    def __init__(self, path: str | list[str], variable: str, factor: int = 4,
                 coarse_path: str | list[str] | None = None, patch_size: int = 32,
                 tile_size: int | None = None, batch_size: int = 16,
                 samples_per_epoch: int = 512, val_fraction: float = 0.15,
                 test_fraction: float = 0.15,
                 predict_split: Literal["train", "val", "test", "all"] = "test",
                 num_workers: int = 0, crop: bool = True, seed: int = 0,
                 covariate_path: str | None = None, covariate_variable: str | None = None,
                 cache_mb: float = STEP_CACHE_MB) -> None:
        super().__init__()
        if factor < 2:
            raise InputError(f"factor must be an integer >= 2, got {factor}",
                             variable=variable, hint="set --data.factor")
        self.save_hyperparameters()
        self.factor, self.variable, self.patch_size, self.tile_size = (factor, variable,
                                                                       patch_size, tile_size)
        self.batch_size, self.samples_per_epoch, self.seed = batch_size, samples_per_epoch, seed
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.predict_split, self.num_workers = predict_split, num_workers
        self.source = FieldSource(path, variable, factor, crop, cache_mb)
        self.coarse_source = (FieldSource(coarse_path, variable, 1, crop=False,
                                          cache_mb=cache_mb) if coarse_path else None)
        self.covariate_path, self.covariate_variable = covariate_path, covariate_variable
        self.covariate: StaticCovariate | None = None
        self.stats: NormStats | None = None
        self._valid: np.ndarray[Any, np.dtype[np.bool_]] | None = None
        self.splits: dict[str, list[int]] = {}

    # -- setup ---------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Open the files, check them, split by time and compute the statistics."""
        if self._valid is not None:
            return
        n_time, h, w = self.source.shape
        train, val, test = split_times(n_time, self.val_fraction, self.test_fraction)
        self.splits = {"train": train, "val": val, "test": test, "all": list(range(n_time))}
        if self.coarse_source is not None:
            self._check_coarse_nests()
        stats, valid = self.source.scan(train, check=self.splits["all"])
        if self.stats is None:  # restored from a checkpoint otherwise
            self.stats = stats
        self._valid = valid
        if self.covariate_path is not None:
            ydim, xdim = self.source.dims
            ds = self.source.dataset
            self.covariate = load_covariate(self.covariate_path, self.covariate_variable,
                                            ds[f"{ydim}_bnds"].values, ds[f"{xdim}_bnds"].values)
            log.info("Static covariate %s (%s) from %s: mean %.4g, std %.4g",
                     self.covariate.variable, self.covariate.units, self.covariate.path,
                     self.covariate.mean, self.covariate.std)
        ph, pw = self.patch_shape
        if (ph, pw) != (self.patch_size // self.factor * self.factor,) * 2:
            log.info("Patch size %d clipped to the %dx%d grid: patches are %dx%d.",
                     self.patch_size, h, w, ph, pw)
        log.info("%s: %d time steps (train %d, val %d, test %d), fine grid %dx%d, factor %d, "
                 "mean %.4g, std %.4g", self.variable, n_time, len(train), len(val), len(test),
                 h, w, self.factor, self.stats.mean, self.stats.std)

    @property
    def patch_shape(self) -> tuple[int, int]:
        """Training patch ``(ph, pw)``: multiples of the factor, clipped to the grid."""
        _, h, w = self.source.shape
        edge = max(self.patch_size // self.factor * self.factor, self.factor)
        return min(edge, h), min(edge, w)

    def _check_coarse_nests(self) -> None:
        assert self.coarse_source is not None
        fine, coarse = self.source.dataset, self.coarse_source.dataset
        fdims, cdims = self.source.dims, self.coarse_source.dims
        where = ", ".join(self.coarse_source.paths)
        for fd, cd in zip(fdims, cdims, strict=True):
            got = nesting_factor(coarse[f"{cd}_bnds"].values, fine[f"{fd}_bnds"].values)
            if got != self.factor:
                raise InputError(f"the coarse grid does not nest in the fine grid along '{cd}' "
                                 f"with factor {self.factor}", path=where, variable=self.variable,
                                 hint="give a coarse file whose cells are exact unions of "
                                      "fine cells, or leave coarse_path unset")
        cu, fu = coarse[self.variable].attrs.get("units"), fine[self.variable].attrs.get("units")
        if cu != fu:
            raise InputError(f"units '{cu}' differ from the fine file's '{fu}'", path=where,
                             variable=self.variable, hint="convert one of the files")
        if coarse.sizes["time"] != fine.sizes["time"]:
            raise InputError(f"{coarse.sizes['time']} time steps, the fine file has "
                             f"{fine.sizes['time']}", path=where, variable=self.variable,
                             hint="give files covering the same time steps")

    # -- loaders -------------------------------------------------------------------------
    @property
    def valid(self) -> np.ndarray[Any, np.dtype[np.bool_]]:
        """Static mask of fine cells that carry data, ``(H, W)``."""
        if self._valid is None:
            self.setup()
        assert self._valid is not None
        return self._valid

    def _loader(self, dataset: Any, shuffle: bool = False) -> DataLoader[Sample]:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def tiles(self, split: str) -> TileDataset:
        """Deterministic tiles of one split (``train``/``val``/``test``/``all``)."""
        size = self.tile_size
        tile = None if size is None else (size // self.factor * self.factor,) * 2
        return TileDataset(self.source, self.splits[split], tile, self.valid,
                           self.coarse_source, self._covariate_values)

    @property
    def _covariate_values(self) -> np.ndarray[Any, np.dtype[np.float32]] | None:
        return None if self.covariate is None else self.covariate.values

    def train_dataloader(self) -> DataLoader[Sample]:
        dataset = RandomPatchDataset(self.source, self.splits["train"], self.patch_shape,
                                     self.valid, self.samples_per_epoch, self.seed,
                                     self.coarse_source, self._covariate_values)
        if self.trainer is not None:
            dataset.epoch = self.trainer.current_epoch
        return self._loader(dataset)

    def val_dataloader(self) -> DataLoader[Sample]:
        return self._loader(self.tiles("val"))

    def test_dataloader(self) -> DataLoader[Sample]:
        return self._loader(self.tiles("test"))

    def predict_dataloader(self) -> DataLoader[Chunk]:
        """Whole coarse fields, ``batch_size`` time steps at a time (the one tiler)."""
        chunks = TimeChunkDataset(self.source, self.splits[self.predict_split],
                                  self.batch_size, self.valid, self.tile_size,
                                  self.coarse_source, self._covariate_values)
        return DataLoader(chunks, batch_size=None, num_workers=self.num_workers)

    # -- metadata for writers and checkpoints --------------------------------------------
    def fine_grid(self, split: str) -> xr.Dataset:
        """An empty template of the fine grid for one split: coords, bounds, attrs."""
        ds = self.source.dataset.isel(time=self.splits[split])
        return ds.drop_vars(self.variable).assign_attrs(ds.attrs)

    @property
    def variable_attrs(self) -> dict[str, Any]:
        """The variable's attributes in the source file (units, standard_name, ...)."""
        return dict(self.source.data.attrs)

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints: statistics and what the model was trained on."""
        state = {"stats": None if self.stats is None else self.stats.as_dict(),
                 "variable": self.variable, "factor": self.factor,
                 "units": self.variable_attrs.get("units"),
                 "standard_name": self.variable_attrs.get("standard_name"),
                 "coarse_spacing": self._coarse_spacing().as_dict()}
        if self.covariate is not None:
            state["covariate"] = self.covariate.describe()
        return state

    def _coarse_spacing(self) -> GridSpacing:
        """The coarse grid's spacing: the coarse file's, or the fine grid's times the factor."""
        if self.coarse_source is not None:
            return coarse_spacing(self.coarse_source.dataset)
        return coarse_spacing(self.source.dataset, self.factor)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("stats"):
            self.stats = NormStats(**state_dict["stats"])
