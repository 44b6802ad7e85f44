"""Whole coarse fields in time chunks, for ``downscale predict`` on the one tiler.

``predict`` downscales whole coarse fields with
:func:`downscale.inference.downscale_field` (tiles with halos when ``tile_size`` is set:
the same values as ``downscale run``), a chunk of ``batch_size`` time steps at a time, and
the prediction writer streams each chunk to the file
(:class:`~downscale.callbacks.NetCDFPredictionWriter`): memory is bounded by the chunk,
not by the output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch.utils.data import Dataset

from downscale.aggregate import area_weighted_block_mean
from downscale.data.source import FieldSource
from downscale.grid import coarse_bounds

Chunk = dict[str, Any]


class TimeChunkDataset(Dataset[Chunk]):
    """Consecutive time steps of whole coarse fields, ``chunk`` per item.

    Each item holds ``coarse`` (``(T, h, w)`` float32, NaN = missing: the user's coarse
    file, or the conservative aggregate of the fine field's valid cells), the coarse
    ``y_bnds``/``x_bnds`` (``(h, 2)``, ``(w, 2)``), ``latlon``, ``tile_size`` (fine cells,
    0 for whole fields), ``row`` (the chunk's first row in the output), ``fine_valid``
    (``(H, W)``: the fine cells that carry data, e.g. no land in an SST grid) and, for a
    model trained with one, ``covariate`` (``(1, H, W)``).

    Args:
        source: The fine field (its grid is the output's).
        times: Time indices of the output, in order.
        chunk: Time steps per item.
        valid: Static mask of the fine grid, ``(H, W)``.
        tile_size: Tile edge in fine cells, or None for whole fields.
        coarse_source: The user's coarse field on the nested grid, if any.
        covariate: Static ``(H, W)`` fine-grid covariate, if any.
    """

    def __init__(self, source: FieldSource, times: Sequence[int], chunk: int,
                 valid: NDArray[np.bool_], tile_size: int | None = None,
                 coarse_source: FieldSource | None = None,
                 covariate: NDArray[np.float32] | None = None) -> None:
        self.source, self.times, self.chunk = source, list(times), max(int(chunk), 1)
        self.valid, self.tile_size = valid, tile_size
        self.coarse_source, self.covariate = coarse_source, covariate

    def __len__(self) -> int:
        return -(-len(self.times) // self.chunk)

    def __getitem__(self, index: int) -> Chunk:
        row = index * self.chunk
        times = self.times[row:row + self.chunk]
        f, everything = self.source.factor, slice(None)
        coarse: NDArray[np.floating]
        if self.coarse_source is not None:
            coarse = self.coarse_source.read(times, everything, everything)
        else:
            fine = np.where(self.valid, self.source.read(times, everything, everything), np.nan)
            coarse = area_weighted_block_mean(fine, self.source.fine_area, (f, f))[0]
        ydim, xdim = self.source.dims
        ds = self.source.dataset
        item: Chunk = {"coarse": np.asarray(coarse, dtype=np.float32),
                       "y_bnds": coarse_bounds(ds[f"{ydim}_bnds"].values, f),
                       "x_bnds": coarse_bounds(ds[f"{xdim}_bnds"].values, f),
                       "latlon": ydim == "lat", "tile_size": self.tile_size or 0, "row": row,
                       "fine_valid": self.valid}
        if self.covariate is not None:
            item["covariate"] = self.covariate[None]
        return item


def downscale_chunk(model: torch.nn.Module, chunk: Chunk, factor: int) -> dict[str, Any]:
    """Downscale one :class:`TimeChunkDataset` item (as the DataLoader hands it over).

    Returns:
        ``{"prediction": (T, H, W) float32 array, "row": first output row}``.
    """
    from downscale.inference import downscale_field

    def array(value: Any) -> NDArray[Any]:
        return value.cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)

    covariate = chunk.get("covariate")
    fine = downscale_field(model, array(chunk["coarse"]), array(chunk["y_bnds"]),
                           array(chunk["x_bnds"]), factor,
                           tile_size=int(chunk["tile_size"]) or None,
                           latlon=bool(chunk["latlon"]),
                           covariate=None if covariate is None else array(covariate),
                           fine_valid=array(chunk["fine_valid"]).astype(bool))
    return {"prediction": fine, "row": int(chunk["row"])}
