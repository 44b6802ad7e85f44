"""Tiled, overlap-aware inference: a whole coarse field in, its downscaled field out.

Pure numpy/torch (no Dask, no Lightning): :mod:`downscale.batch` maps it over Dask chunks,
``downscale predict`` over time chunks (:mod:`downscale.data.chunks`).

Tiles and halo
    The coarse field is cut into tiles of ``tile_size`` fine cells (whole coarse cells).
    Each tile is extended by a *halo* of ``R`` coarse cells on every side, where ``R`` is
    the decoder's receptive field (:func:`receptive_field`); the model runs on the extended
    tile and only the tile's own cells are kept. A fine cell then depends only on coarse
    cells that are all present in the extended tile, and the replicate/circular padding and
    the edge folding that the model applies at the extended tile's border reach at most
    ``R`` coarse cells inwards, into the discarded halo. So a tiled result equals the
    whole-field result (to float rounding: convolutions of different sizes may sum in a
    different order).

    The *true* domain edges are treated as in the whole-field run: there the halo is
    clipped, so the tile's border is the domain's border and the model pads it exactly as
    it pads the whole field. On a periodic longitude axis the halo wraps around; a tile
    whose extended width would reach all the way round takes the whole circle instead and
    runs with ``periodic=True``, as the whole field does.

    The halo is a whole number of coarse cells (a multiple of the factor in fine cells),
    so cropping it keeps whole coarse blocks. :class:`~downscale.nn.LocalConservation`
    acts on each coarse block alone, so every kept block stays exactly conservative.

Receptive field
    The model states it: ``model.receptive_field()`` in coarse cells (the
    :class:`~downscale.nn.protocol.Downscaler` protocol), added up by each decoder from the
    rules of :mod:`downscale.nn.reach`. The bound is exact for the default decoder (factor
    4, kernel 8, padding 2, one coarse and one fine block: ``R = 3 + 2 = 5``; ``3 + 1`` for
    :class:`~downscale.nn.CoarseGridDecoder` with 1x1 fine blocks):
    ``tests/test_inference.py`` moves one coarse value and finds fine cells ``R`` coarse
    cells away changing, none beyond. A model that reads the whole field (attention
    smoothing, the legacy terrain relief) raises
    :class:`~downscale.nn.protocol.NotTileableError`: it runs on whole fields only.

Alignment
    A model may need its tiles to start at multiples of ``model.tile_alignment()`` coarse
    cells (a U-Net pools ``2**depth`` cells at a time): the halo's low end is then moved
    down to such a multiple. On a periodic axis whose length is not a multiple, the tiles
    take the whole circle (the model's own pooling is not periodic there).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from downscale.grid import fine_cell_areas, is_periodic_longitude
from downscale.grid_geometry import GridGeometry, GridKind
from downscale.nn.conserving import block_repeat
from downscale.nn.protocol import NotTileableError, tile_alignment

#: Default bound on ``time steps x fine cells`` of one forward pass (the activations are
#: about ``hidden_channels x 16`` bytes per fine cell: ~0.5 GiB for 32 channels).
DEFAULT_BATCH_CELLS = 1 << 20


def receptive_field(module: nn.Module) -> int:
    """A model's or decoder's receptive field in coarse cells, as it states it.

    Args:
        module: A :class:`~downscale.nn.protocol.Downscaler`, or a decoder of
            :mod:`downscale.nn` (anything with a ``receptive_field()`` method).

    Returns:
        ``R``: every fine cell of coarse block ``(c_y, c_x)`` depends only on the coarse
        cells ``(c_y + dy, c_x + dx)`` with ``|dy|, |dx| <= R``.

    Raises:
        ValueError: (:class:`~downscale.nn.protocol.NotTileableError`) for a module that
            reads the whole field or does not state its receptive field.
    """
    stated = getattr(module, "receptive_field", None)
    if not callable(stated):
        raise NotTileableError(f"the receptive field of {type(module).__name__} is not known "
                               "(it has no receptive_field() method); give the halo "
                               "explicitly")
    return int(stated())


@dataclass(frozen=True)
class Tile:
    """One tile: the coarse rows/columns it reads and the part of the result it keeps.

    Attributes:
        rows: Coarse row indices of the extended tile (tile plus halo), ``(ny,)``.
        cols: Coarse column indices of the extended tile, ``(nx,)`` (may wrap around).
        keep_rows: The tile's own coarse rows, as a slice of ``rows``.
        keep_cols: The tile's own coarse columns, as a slice of ``cols``.
        out_rows: Where the kept rows go in the whole coarse grid.
        out_cols: Where the kept columns go in the whole coarse grid.
        periodic: Whether the extended tile is the whole periodic longitude circle.
    """

    rows: NDArray[np.intp]
    cols: NDArray[np.intp]
    keep_rows: slice
    keep_cols: slice
    out_rows: slice
    out_cols: slice
    periodic: bool


def _axis_windows(n: int, size: int, halo: int, periodic: bool, alignment: int = 1
                  ) -> Iterator[tuple[NDArray[np.intp], slice, slice, bool]]:
    """Extended windows along one axis: (indices, kept part, output part, whole circle)."""
    for start in range(0, n, size):
        stop = min(start + size, n)
        lo = (start - halo) // alignment * alignment  # the halo's low end, aligned
        if periodic and (stop + halo - lo >= n or n % alignment):
            # Reaches all the way round: the whole circle, padded circularly by the model.
            yield np.arange(n), slice(start, stop), slice(start, stop), True
        elif periodic:
            yield (np.arange(lo, stop + halo) % n, slice(start - lo, stop - lo),
                   slice(start, stop), False)
        else:
            lo, hi = max(lo, 0), min(stop + halo, n)
            yield (np.arange(lo, hi), slice(start - lo, stop - lo), slice(start, stop), False)


def plan_tiles(shape: tuple[int, int], tile: int | None, halo: int, periodic: bool,
               alignment: int = 1) -> list[Tile]:
    """Cut a coarse grid into tiles with halos (see the module docstring).

    Args:
        shape: ``(h, w)`` coarse cells.
        tile: Tile edge in coarse cells; None for the whole field (no halo needed).
        halo: Halo width in coarse cells.
        periodic: Whether the last axis is a periodic longitude.
        alignment: Extended tiles start at multiples of this many coarse cells.

    Returns:
        Tiles whose kept parts cover the grid exactly once.
    """
    h, w = shape
    size = max(h, w) if tile is None else max(int(tile), 1)
    tiles = []
    for rows, keep_r, out_r, _ in _axis_windows(h, size, halo, False, alignment):
        for cols, keep_c, out_c, whole in _axis_windows(w, size, halo, periodic, alignment):
            tiles.append(Tile(rows, cols, keep_r, keep_c, out_r, out_c, periodic and whole))
    return tiles


def model_halo(model: nn.Module) -> int:
    """The halo tiles of ``model`` need: its :func:`receptive_field`, in coarse cells.

    Raises:
        ValueError: (:class:`~downscale.nn.protocol.NotTileableError`) for a model that
            reads the whole field or does not state its receptive field.
    """
    return receptive_field(model)


def downscale_field(model: nn.Module, coarse: NDArray[np.floating],
                    coarse_y_bnds: NDArray[np.floating], coarse_x_bnds: NDArray[np.floating],
                    factor: int, *, tile_size: int | None = None, periodic: bool | None = None,
                    latlon: bool = True, geometry: GridGeometry | None = None,
                    halo: int | None = None,
                    batch_cells: int = DEFAULT_BATCH_CELLS,
                    covariate: NDArray[np.floating] | None = None,
                    fine_valid: NDArray[np.bool_] | None = None) -> NDArray[np.float32]:
    """Downscale whole coarse fields, tile by tile with halos, exactly conservatively.

    Args:
        model: A :class:`~downscale.nn.protocol.Downscaler` (in eval mode), called as
            ``model(coarse, fine_area, fine_valid, periodic)`` with shapes
            ``(B, 1, h, w)``, ``(1, 1, H, W)``, ``(B, 1, H, W)`` returning
            ``(B, 1, H, W)`` physical values: a plain model from
            :func:`downscale.checkpoint.load_model`, or a task.
        coarse: ``(T, h, w)`` coarse values in the model's units, NaN = missing.
        coarse_y_bnds: ``(h, 2)`` ascending latitude (degrees) or y (metres) bounds.
        coarse_x_bnds: ``(w, 2)`` ascending longitude (degrees) or x (metres) bounds.
        factor: The model's upsampling factor.
        tile_size: Tile edge in *fine* cells, rounded down to whole coarse cells (at least
            one); None runs the whole field at once.
        periodic: Whether longitude is periodic; None infers it from ``coarse_x_bnds``
            (a full 360 degree circle on a lat-lon grid).
        latlon: Lat-lon grid (spherical areas) or x/y grid in metres (planar areas);
            ignored when ``geometry`` is given.
        geometry: The grid's geometry (:func:`downscale.grid_geometry.geometry_of`):
            true areas of rotated-pole and projected grids.
        halo: Halo in coarse cells; None uses the decoder's :func:`receptive_field`. A
            smaller halo than that makes tiles differ from the whole-field result.
        batch_cells: At most this many ``time steps x fine cells`` per forward pass.
        covariate: Static ``(C, h * factor, w * factor)`` covariate on the fine grid for a
            model trained with one (passed as ``model(..., covariate=...)``, each tile its
            own part), or None.
        fine_valid: Static ``(h * factor, w * factor)`` mask of the fine cells that carry
            data (e.g. ocean cells of an SST grid), or None: every fine cell of a valid
            coarse cell. A coarse cell's mass goes to its valid fine cells only.

    Returns:
        ``(T, h * factor, w * factor)`` float32 fine values, NaN where the coarse cell is
        missing. The area-weighted mean of every coarse cell's fine cells equals its
        coarse value (float32 rounding).

    Raises:
        ValueError: For a coarse array that is not 3-D, a negative halo, or tiles without
            a halo for a decoder whose receptive field is not known.
    """
    values = np.asarray(coarse)
    if values.ndim != 3:
        raise ValueError(f"coarse must have shape (T, h, w), got {values.shape}")
    t_len, h, w = values.shape
    if geometry is not None:
        latlon = geometry.kind is GridKind.LATLON
    if periodic is None:
        periodic = latlon and is_periodic_longitude(coarse_x_bnds)
    y_bnds, x_bnds = np.asarray(coarse_y_bnds), np.asarray(coarse_x_bnds)
    # Areas per tile (the whole fine grid in float64 would be 8 bytes a cell), in units of
    # the mean fine cell: only ratios within a coarse block matter, and float32 likes ~1.
    area_unit = float(np.mean(fine_cell_areas(y_bnds, x_bnds, 1, latlon=latlon,
                                                geometry=geometry))) / factor**2
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    if tile_size is not None and halo is None:
        halo = model_halo(model)
    if halo is not None and halo < 0:
        raise ValueError(f"halo must be >= 0 coarse cells, got {halo}")
    tiles = plan_tiles((h, w), None if tile_size is None else tile_size // factor, halo or 0,
                       periodic, tile_alignment(model))
    out = np.empty((t_len, h * factor, w * factor), dtype=np.float32)
    extra: dict[str, Tensor] = {}
    with torch.inference_mode():
        for tile in tiles:
            rows, cols = _fine_indices(tile.rows, factor), _fine_indices(tile.cols, factor)
            tile_mask = None if fine_valid is None else torch.from_numpy(
                np.ascontiguousarray(fine_valid[rows][:, cols])).to(device)
            if covariate is not None:
                extra["covariate"] = torch.from_numpy(np.ascontiguousarray(
                    covariate[:, rows][:, :, cols])).to(device, dtype)[None]
            tile_area = torch.from_numpy(fine_cell_areas(
                y_bnds[tile.rows], x_bnds[tile.cols], factor, latlon=latlon, geometry=geometry)
                / area_unit
            ).to(device, dtype)
            tile_coarse = values[:, tile.rows][:, :, tile.cols]
            steps = max(1, batch_cells // tile_area.numel())
            ys = slice(tile.keep_rows.start * factor, tile.keep_rows.stop * factor)
            xs = slice(tile.keep_cols.start * factor, tile.keep_cols.stop * factor)
            oy = slice(tile.out_rows.start * factor, tile.out_rows.stop * factor)
            ox = slice(tile.out_cols.start * factor, tile.out_cols.stop * factor)
            for t0 in range(0, t_len, steps):
                x = torch.from_numpy(np.ascontiguousarray(tile_coarse[t0:t0 + steps, None]))
                x = x.to(device, dtype)
                valid = block_repeat(torch.isfinite(x), factor)
                if tile_mask is not None:
                    valid = valid & tile_mask
                if extra:
                    extra["covariate"] = extra["covariate"][:1].expand(x.shape[0], -1, -1, -1)
                y: Tensor = model(x, tile_area[None, None], valid, tile.periodic, **extra)
                out[t0:t0 + steps, oy, ox] = y[:, 0, ys, xs].float().cpu().numpy()
    return out



def _fine_indices(coarse_indices: NDArray[np.intp], factor: int) -> NDArray[np.intp]:
    """The fine rows (or columns) of the given coarse ones, in order."""
    return (coarse_indices[:, None] * factor + np.arange(factor)).ravel()
