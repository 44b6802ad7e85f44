"""Lightning callbacks: write predictions to CF-compliant NetCDF."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter

from downscale.cf import downscaled_dataset
from downscale.io import write_netcdf

log = logging.getLogger(__name__)


class NetCDFPredictionWriter(BasePredictionWriter):
    """Assemble predicted tiles into the fine grid and write one NetCDF file atomically.

    The DataModule must provide ``fine_grid(split)``, ``variable``, ``variable_attrs``,
    ``factor``, ``splits``, ``source`` and ``predict_split``, as
    :class:`~downscale.data.DownscalingDataModule` does.

    Args:
        output: Path of the NetCDF file to write.

    """

    def __init__(self, output: str = "downscaled.nc") -> None:
        super().__init__(write_interval="batch")
        self.output = output
        self._buffer: np.ndarray[Any, np.dtype[np.float32]] | None = None
        self._time_row: dict[int, int] = {}

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm: Any = getattr(trainer, "datamodule")  # noqa: B009 (untyped attribute)
        template = dm.fine_grid(dm.predict_split)
        times = dm.splits[dm.predict_split]
        self._time_row = {t: i for i, t in enumerate(times)}
        _, h, w = dm.source.shape
        # Bounded by the output size; the batch `run` command streams instead (issue 5).
        self._buffer = np.full((len(times), h, w), np.nan, dtype=np.float32)
        self._template = template

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           prediction: Any, batch_indices: Any, batch: Any, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        assert self._buffer is not None
        pred = prediction["prediction"].detach().float().cpu().numpy()[:, 0]
        for tile, t, y0, x0 in zip(pred, prediction["time"].tolist(), prediction["y0"].tolist(),
                                   prediction["x0"].tolist(), strict=True):
            th, tw = tile.shape
            self._buffer[self._time_row[t], y0 : y0 + th, x0 : x0 + tw] = tile

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm: Any = getattr(trainer, "datamodule")  # noqa: B009 (untyped attribute)
        assert self._buffer is not None
        ckpt = trainer.ckpt_path or "(weights in memory, no checkpoint)"
        ds = downscaled_dataset(self._buffer, self._template, dm.variable, dm.variable_attrs,
                                factor=dm.factor, checkpoint=str(ckpt))
        path = write_netcdf(ds, Path(self.output))
        log.info("Wrote %s (%s, %d time steps)", path, dm.variable, self._buffer.shape[0])
        self._buffer = None
