"""Area-weighted conservative aggregation from a fine grid to a nested coarse grid.

A coarse cell C is the union of ``factor_y x factor_x`` fine cells f. Its value is the
area-weighted mean of its *valid* fine cells::

    x_C = sum_f(a_f * y_f) / sum_f(a_f),   f valid (not NaN)

so that ``A_C_valid * x_C`` is exactly the mass of its children
(docs/method.md#conservation). A coarse cell with no valid child is NaN. These are the
numpy/xarray versions; the torch version used inside the model lives in
:mod:`downscale.nn.conserving`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import xarray as xr
from numpy.typing import NDArray

from downscale.errors import InputError
from downscale.grid import coarse_bounds, horizontal_dims

log = logging.getLogger(__name__)


def block_sum(values: NDArray[Any], factor: tuple[int, int]) -> NDArray[Any]:
    """Sum non-overlapping ``factor`` blocks over the last two axes.

    Args:
        values: Array of shape ``(..., ny * fy, nx * fx)``.
        factor: ``(fy, fx)``.

    Returns:
        Array of shape ``(..., ny, nx)``.
    """
    fy, fx = factor
    *lead, h, w = values.shape
    if fy < 1 or fx < 1 or h % fy or w % fx:
        raise ValueError(f"a {h}x{w} grid does not divide into {fy}x{fx} blocks")
    blocks = values.reshape(*lead, h // fy, fy, w // fx, fx)
    summed: NDArray[Any] = blocks.sum(axis=(-3, -1))
    return summed


def block_repeat(values: NDArray[Any], factor: tuple[int, int]) -> NDArray[Any]:
    """Repeat each cell of the last two axes into a ``factor`` block (piecewise constant)."""
    return np.repeat(np.repeat(values, factor[0], axis=-2), factor[1], axis=-1)


def area_weighted_block_mean(values: NDArray[np.floating], fine_area: NDArray[np.floating],
                             factor: tuple[int, int]) -> tuple[NDArray[np.float64],
                                                               NDArray[np.float64]]:
    """NaN-aware area-weighted mean of each block, and the valid area of each block.

    Args:
        values: Fine field, shape ``(..., H, W)``; NaN marks missing cells.
        fine_area: Fine cell areas, shape ``(H, W)`` (any consistent unit).
        factor: ``(fy, fx)`` with ``H % fy == W % fx == 0``.

    Returns:
        ``(mean, valid_area)``, both of shape ``(..., H // fy, W // fx)`` in float64;
        ``mean`` is NaN where a block has no valid cell.
    """
    v = np.asarray(values, dtype=np.float64)
    valid = np.isfinite(v)
    weights = np.where(valid, np.broadcast_to(fine_area, v.shape), 0.0)
    mass = block_sum(np.where(valid, v, 0.0) * weights, factor)
    area = block_sum(weights, factor)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(area > 0, mass / np.where(area > 0, area, 1.0), np.nan)
    return mean, area


def crop_to_factor(ds: xr.Dataset, factor: tuple[int, int], *, variable: str | None = None,
                   allow_crop: bool = True) -> xr.Dataset:
    """Crop the trailing rows/columns so each horizontal size divides by ``factor``.

    Args:
        ds: A normalised field.
        factor: ``(fy, fx)``.
        variable: Name used in messages.
        allow_crop: When False, raise instead of cropping.

    Raises:
        InputError: If cropping is needed but not allowed, or the grid is smaller than one
            coarse cell.
    """
    _check_factor(factor)
    ydim, xdim = horizontal_dims(ds)
    keep = {d: ds.sizes[d] - ds.sizes[d] % f for d, f in zip((ydim, xdim), factor, strict=True)}
    if min(keep.values()) == 0:
        raise InputError(f"grid {ds.sizes[ydim]}x{ds.sizes[xdim]} is smaller than one coarse "
                         f"cell at factor {factor}", path=ds.attrs.get("source_files"),
                         variable=variable, hint="use a smaller factor")
    if keep[ydim] == ds.sizes[ydim] and keep[xdim] == ds.sizes[xdim]:
        return ds
    if not allow_crop:
        raise InputError(f"grid {ds.sizes[ydim]}x{ds.sizes[xdim]} is not divisible by the "
                         f"factor {factor}", path=ds.attrs.get("source_files"), variable=variable,
                         hint="crop the grid or allow cropping (--data.crop true)")
    log.info("Cropping %s grid from %dx%d to %dx%d so that it divides by factor %s",
             variable or "the", ds.sizes[ydim], ds.sizes[xdim], keep[ydim], keep[xdim], factor)
    return ds.isel({ydim: slice(0, keep[ydim]), xdim: slice(0, keep[xdim])})


def _check_factor(factor: tuple[int, int]) -> None:
    if len(factor) != 2 or any(int(f) != f or f < 1 for f in factor):
        raise ValueError(f"factor must be two positive integers (fy, fx), got {factor}")


def coarsen_field(ds: xr.Dataset, variable: str, factor: tuple[int, int]) -> xr.Dataset:
    """Conservatively aggregate a normalised field to the grid ``factor`` times coarser.

    The grid must already divide by ``factor`` (see :func:`crop_to_factor`). Lazy inputs
    stay lazy: the aggregation is mapped over the Dask blocks.

    Args:
        ds: Normalised field with ``<dim>_bnds`` coordinates.
        variable: The variable to aggregate.
        factor: ``(fy, fx)``.

    Returns:
        A normalised field on the coarse grid with the same attributes; coarse centres are
        the midpoints of the coarse bounds.
    """
    from downscale.grid import cell_areas

    _check_factor(factor)
    ydim, xdim = horizontal_dims(ds)
    if ds.sizes[ydim] % factor[0] or ds.sizes[xdim] % factor[1]:
        raise InputError(f"grid {ds.sizes[ydim]}x{ds.sizes[xdim]} is not divisible by the "
                         f"factor {factor}", path=ds.attrs.get("source_files"), variable=variable,
                         hint="crop it first (aggregate.crop_to_factor)")
    area = cell_areas(ds).values
    fine = ds[variable]
    fine = fine.transpose(..., ydim, xdim)
    # Integer fields aggregate to means, which need a floating type (and NaN).
    dtype = fine.dtype if np.issubdtype(fine.dtype, np.floating) else np.dtype(np.float64)

    def _aggregate(block: NDArray[np.floating]) -> NDArray[np.floating]:
        mean, _ = area_weighted_block_mean(block, area, factor)
        return mean.astype(dtype)

    data = fine.data
    if hasattr(data, "map_blocks"):
        # Each block must hold whole horizontal fields for the block means to be exact.
        nd = data.ndim
        data = data.rechunk({nd - 2: -1, nd - 1: -1})
        data = data.map_blocks(_aggregate, dtype=dtype, chunks=(
            *data.chunks[:-2], (ds.sizes[ydim] // factor[0],), (ds.sizes[xdim] // factor[1],)))
    else:
        data = _aggregate(np.asarray(data))
    yb = coarse_bounds(ds[f"{ydim}_bnds"].values, factor[0])
    xb = coarse_bounds(ds[f"{xdim}_bnds"].values, factor[1])
    coords: dict[str, Any] = {
        ydim: (ydim, yb.mean(axis=1), ds[ydim].attrs),
        xdim: (xdim, xb.mean(axis=1), ds[xdim].attrs),
        f"{ydim}_bnds": ((ydim, "bnds"), yb),
        f"{xdim}_bnds": ((xdim, "bnds"), xb),
    }
    for dim in fine.dims[:-2]:
        if dim in ds.coords:
            coords[str(dim)] = ds[dim]
    out = xr.Dataset({variable: (fine.dims, data, fine.attrs)}, coords=coords, attrs=ds.attrs)
    return out
