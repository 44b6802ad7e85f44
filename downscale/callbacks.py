"""Lightning callbacks: write predictions to CF-compliant NetCDF."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import dask.array as dsa
import lightning as L
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter

from downscale.cf import downscaled_dataset
from downscale.conventions import conventions_of, user_layout
from downscale.io import write_netcdf
from downscale.writers import NetCDFWriter

log = logging.getLogger(__name__)


class NetCDFPredictionWriter(BasePredictionWriter):
    """Stream predictions into one NetCDF file, written atomically.

    Predictions of whole time chunks (``{"prediction": (T, H, W), "row": r}``, from
    :func:`downscale.data.chunks.downscale_chunk`) are written to the file as they come
    (:class:`~downscale.writers.NetCDFWriter`): memory is bounded by a chunk. Tiles
    (``prediction``, ``time``, ``y0``, ``x0``; the terrain generator's one field) are
    assembled in memory and written at the end.

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
        self._writer: NetCDFWriter | None = None
        self._time_row: dict[int, int] = {}
        self._steps = 0

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm: Any = getattr(trainer, "datamodule")  # noqa: B009 (untyped attribute)
        self._template = dm.fine_grid(dm.predict_split)
        times = dm.splits[dm.predict_split]
        self._time_row = {t: i for i, t in enumerate(times)}
        self._buffer, self._writer, self._steps = None, None, 0

    def _dataset(self, trainer: L.Trainer, values: Any) -> Any:
        dm: Any = getattr(trainer, "datamodule")  # noqa: B009 (untyped attribute)
        ckpt = trainer.ckpt_path or "(weights in memory, no checkpoint)"
        return downscaled_dataset(values, self._template, dm.variable, dm.variable_attrs,
                                  factor=dm.factor, checkpoint=str(ckpt))

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           prediction: Any, batch_indices: Any, batch: Any, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        if "row" in prediction:
            self._write_chunk(trainer, prediction)
            return
        if self._buffer is None:  # tiles: assembled here (bounded by the output)
            _, h, w = trainer.datamodule.source.shape  # type: ignore[attr-defined]
            self._buffer = np.full((len(self._time_row), h, w), np.nan, dtype=np.float32)
        pred = prediction["prediction"].detach().float().cpu().numpy()[:, 0]
        for tile, t, y0, x0 in zip(pred, prediction["time"].tolist(), prediction["y0"].tolist(),
                                   prediction["x0"].tolist(), strict=True):
            th, tw = tile.shape
            self._buffer[self._time_row[t], y0 : y0 + th, x0 : x0 + tw] = tile

    def _write_chunk(self, trainer: L.Trainer, prediction: dict[str, Any]) -> None:
        values = np.asarray(prediction["prediction"], dtype=np.float32)
        if self._writer is None:
            shape = (len(self._time_row), *values.shape[1:])
            lazy = dsa.zeros(shape, chunks=(values.shape[0], -1, -1), dtype=np.float32)
            ds = self._dataset(trainer, lazy)
            record = conventions_of(self._template)
            layout = None if record is None else user_layout(self._template, record)
            self._writer = NetCDFWriter(ds, str(next(iter(ds.data_vars))), Path(self.output),
                                        time_chunk=values.shape[0], layout=layout)
            self._writer.create()
        row = int(prediction["row"])
        self._writer.write(row, row + values.shape[0], values)
        self._steps += values.shape[0]

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm: Any = getattr(trainer, "datamodule")  # noqa: B009 (untyped attribute)
        if self._writer is not None:
            path = self._writer.finish()
            self._writer = None
        else:
            assert self._buffer is not None
            path = write_netcdf(self._dataset(trainer, self._buffer), Path(self.output))
            self._steps, self._buffer = self._buffer.shape[0], None
        log.info("Wrote %s (%s, %d time steps)", path, dm.variable, self._steps)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        if self._writer is not None:  # nothing half-written under the final name
            self._writer.abort()
            self._writer = None
