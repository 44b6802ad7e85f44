"""Mass conservation of a fine field against its coarse field (docs/method.md#conservation).

Computed in two steps, in the style of weatherbench2: :func:`conservation_sums` turns one
chunk into summable partial sums (:class:`ConservationSums`), and
:meth:`ConservationSums.finalize` turns their sum into a :class:`ConservationError`.
:func:`conservation_error` does both for one array; the same partial sums can be computed
per Dask chunk or per worker and added. :func:`conservation_error_xr` is the xarray front
end, by dimension name.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from itertools import pairwise

import numpy as np
import xarray as xr
from numpy.typing import ArrayLike

from downscale.aggregate import area_weighted_block_mean
from downscale.grid import cell_areas, horizontal_dims, nesting_factor


@dataclass(frozen=True)
class ConservationError:
    """How far a fine field is from conserving the mass of a coarse one.

    See docs/method.md#conservation.

    For each compared coarse cell C with value ``x_C``, let ``A_C`` be the area of its valid
    fine cells and ``y_C`` their area-weighted mean; the cell's error is ``e_C = y_C - x_C``
    (field units). Missing fine cells carry no area.

    Attributes:
        max_abs: ``max_C |e_C|``, in field units.
        mean_abs: Area-weighted mean of ``|e_C|``, in field units.
        max_rel: ``max_abs`` divided by the area-weighted mean of ``|x_C|`` (dimensionless;
            ``inf`` if that scale is 0 but the error is not). For fields near zero
            (anomalies) prefer ``max_abs``.
        global_abs: ``|fine mass - coarse mass| / total area``, i.e. ``|sum A_C e_C| /
            sum A_C``, in field units.
        global_rel: ``|fine mass - coarse mass| / |coarse mass|`` (dimensionless; ``inf``
            if the coarse mass is 0 but the error is not).
        n_cells: Number of coarse cells compared, over all leading dimensions.
        n_uncovered: Coarse cells that have a value but no valid fine cell; they are not
            compared, but a non-zero count means the fine field lost those cells entirely.

    All values are NaN when no cell was compared.
    """

    max_abs: float
    mean_abs: float
    max_rel: float
    global_abs: float
    global_rel: float
    n_cells: int
    n_uncovered: int = 0

    def as_dict(self) -> dict[str, float]:
        """The fields as a flat ``{name: value}`` dict, e.g. for a logger."""
        return {key: float(value) for key, value in asdict(self).items()}


@dataclass(frozen=True)
class ConservationSums:
    """Summable partial sums of one chunk, from which :class:`ConservationError` follows.

    Chunks must split the data along leading dimensions, or along horizontal lines that
    fall on coarse cell edges. Add chunks with ``+`` (or ``sum(parts,
    ConservationSums.empty())``) and call :meth:`finalize`. Areas are in the unit of the
    ``fine_area`` given to :func:`conservation_sums`, values in field units.

    Attributes:
        n_cells: Coarse cells compared.
        n_uncovered: Coarse cells with a value but no valid fine cell.
        area: ``sum A_C`` over compared cells.
        abs_error_area: ``sum A_C |e_C|``.
        max_abs: ``max |e_C|`` (0 when no cell was compared).
        mass_error: ``sum A_C e_C``, the fine mass minus the coarse mass.
        coarse_mass: ``sum A_C x_C``.
        abs_coarse_area: ``sum A_C |x_C|``.
    """

    n_cells: int
    n_uncovered: int
    area: float
    abs_error_area: float
    max_abs: float
    mass_error: float
    coarse_mass: float
    abs_coarse_area: float

    @classmethod
    def empty(cls) -> ConservationSums:
        """The neutral element of ``+``."""
        return cls(0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)

    def __add__(self, other: ConservationSums) -> ConservationSums:
        return ConservationSums(
            n_cells=self.n_cells + other.n_cells,
            n_uncovered=self.n_uncovered + other.n_uncovered,
            area=self.area + other.area,
            abs_error_area=self.abs_error_area + other.abs_error_area,
            max_abs=max(self.max_abs, other.max_abs),
            mass_error=self.mass_error + other.mass_error,
            coarse_mass=self.coarse_mass + other.coarse_mass,
            abs_coarse_area=self.abs_coarse_area + other.abs_coarse_area,
        )

    def finalize(self) -> ConservationError:
        """Combine the sums into the error measures of :class:`ConservationError`."""
        if self.n_cells == 0 or self.area <= 0:
            nan = math.nan
            return ConservationError(nan, nan, nan, nan, nan, self.n_cells, self.n_uncovered)
        return ConservationError(
            max_abs=self.max_abs,
            mean_abs=self.abs_error_area / self.area,
            max_rel=_ratio(self.max_abs, self.abs_coarse_area / self.area),
            global_abs=abs(self.mass_error) / self.area,
            global_rel=_ratio(abs(self.mass_error), abs(self.coarse_mass)),
            n_cells=self.n_cells,
            n_uncovered=self.n_uncovered,
        )


def conservation_sums(fine: ArrayLike, coarse: ArrayLike, fine_area: ArrayLike,
                      factor: int) -> ConservationSums:
    """Partial sums of the conservation error of one chunk (see :class:`ConservationSums`).

    Args:
        fine: Fine field, shape ``(..., H, W)``; non-finite cells are missing and carry no
            area.
        coarse: Coarse field, shape ``(..., H / factor, W / factor)``, the same (or a
            broadcastable) leading shape; NaN cells are not compared.
        fine_area: Fine cell areas, shape ``(H, W)``, any unit.
        factor: Integer nesting factor on both horizontal axes.

    Returns:
        The chunk's :class:`ConservationSums`.

    Raises:
        ValueError: If the shapes do not nest or the areas are negative or not finite.
    """
    fine_arr = np.asarray(fine, dtype=np.float64)
    coarse_arr = np.asarray(coarse, dtype=np.float64)
    area = np.asarray(fine_area, dtype=np.float64)
    _check_nested(fine_arr.shape, coarse_arr.shape, area.shape, factor)
    if not (np.isfinite(area).all() and (area >= 0).all()):
        raise ValueError("fine_area must be finite and non-negative")
    fine_mean, valid_area = area_weighted_block_mean(fine_arr, area, (factor, factor))
    fine_mean, valid_area, coarse_arr = np.broadcast_arrays(fine_mean, valid_area, coarse_arr)
    has_value = np.isfinite(coarse_arr)
    compared = has_value & (valid_area > 0)
    err = fine_mean[compared] - coarse_arr[compared]
    a = valid_area[compared]
    x = coarse_arr[compared]
    return ConservationSums(
        n_cells=int(compared.sum()),
        n_uncovered=int((has_value & ~compared).sum()),
        area=float(a.sum()),
        abs_error_area=float((a * np.abs(err)).sum()),
        max_abs=float(np.abs(err).max(initial=0.0)),
        mass_error=float((a * err).sum()),
        coarse_mass=float((a * x).sum()),
        abs_coarse_area=float((a * np.abs(x)).sum()),
    )


def conservation_error(fine: ArrayLike, coarse: ArrayLike, fine_area: ArrayLike,
                       factor: int) -> ConservationError:
    """Area-weighted conservation error of a fine field against its coarse field.

    Per coarse cell, the area-weighted mean of its valid fine cells is compared with the
    coarse value (local conservation), and the masses are summed over the whole array
    (global conservation). Coarse cells that are NaN, or whose fine cells are all missing,
    are left out. The error is zero to float64 rounding (~1e-16 relative) when ``fine`` is
    the piecewise-constant upsampling of ``coarse``, whatever the areas and missing cells.

    Args:
        fine: Fine field, shape ``(..., H, W)``, NaN = missing.
        coarse: Coarse field, shape ``(..., H / factor, W / factor)``, NaN = missing.
        fine_area: Fine cell areas, shape ``(H, W)`` (any unit, e.g. from
            :func:`downscale.grid.cell_areas_latlon`).
        factor: Integer nesting factor.

    Returns:
        The :class:`ConservationError` (errors in field units or dimensionless).
    """
    return conservation_sums(fine, coarse, fine_area, factor).finalize()


def conservation_error_xr(fine: xr.Dataset | xr.DataArray, coarse: xr.Dataset | xr.DataArray,
                          factor: int | None = None, *, variable: str | None = None,
                          fine_area: ArrayLike | None = None) -> ConservationError:
    """:func:`conservation_error` for normalised xarray fields, by dimension name.

    The horizontal dimensions are ``(lat, lon)`` or ``(y, x)``; all other dimensions must be
    the same in both fields and are included. The fine field is processed one chunk of its
    first other dimension at a time (its Dask chunks, if any), so memory is bounded by a
    chunk.

    Args:
        fine: Normalised fine field: a Dataset with ``<dim>_bnds`` coordinates (areas are
            computed from them, spherical for lat/lon, planar for y/x in metres), or a
            DataArray together with ``fine_area``.
        coarse: Coarse field, Dataset or DataArray.
        factor: Nesting factor; inferred from the bounds (Datasets) or the sizes if None.
        variable: The data variable of Dataset inputs; optional when there is only one.
        fine_area: Fine cell areas, shape ``(H, W)``; overrides the bounds.

    Returns:
        The :class:`ConservationError`.

    Raises:
        ValueError: If the fields do not nest, their other dimensions differ, or areas
            cannot be found.
    """
    fine_da, coarse_da = _data_array(fine, variable), _data_array(coarse, variable)
    ydim, xdim = horizontal_dims(fine_da)
    if horizontal_dims(coarse_da) != (ydim, xdim):
        raise ValueError(f"fine dims {fine_da.dims} and coarse dims {coarse_da.dims} differ")
    lead = [str(d) for d in fine_da.dims if d not in (ydim, xdim)]
    if set(lead) != {str(d) for d in coarse_da.dims} - {ydim, xdim}:
        raise ValueError(f"fine dims {fine_da.dims} and coarse dims {coarse_da.dims} differ")
    factor = _infer_factor(fine, coarse, fine_da, coarse_da, (ydim, xdim), factor)
    if fine_area is not None:
        area = np.asarray(fine_area, dtype=np.float64)
    elif isinstance(fine, xr.Dataset):
        area = cell_areas(fine).transpose(ydim, xdim).values
    else:
        raise ValueError("pass fine_area, or the fine field as a Dataset with "
                         f"{ydim}_bnds/{xdim}_bnds coordinates")
    fine_da = fine_da.transpose(*lead, ydim, xdim)
    coarse_da = coarse_da.transpose(*lead, ydim, xdim)
    total = ConservationSums.empty()
    for part in _leading_chunks(fine_da, lead):
        total += conservation_sums(fine_da.isel(part).values, coarse_da.isel(part).values,
                                   area, factor)
    return total.finalize()


def _data_array(field: xr.Dataset | xr.DataArray, variable: str | None) -> xr.DataArray:
    if isinstance(field, xr.DataArray):
        return field
    if variable is None:
        names = list(field.data_vars)
        if len(names) != 1:
            raise ValueError(f"pass variable=: the Dataset has data variables {names}")
        variable = str(names[0])
    return field[variable]


def _infer_factor(fine: xr.Dataset | xr.DataArray, coarse: xr.Dataset | xr.DataArray,
                  fine_da: xr.DataArray, coarse_da: xr.DataArray, dims: tuple[str, str],
                  factor: int | None) -> int:
    found: set[int | None] = set()
    for dim in dims:
        name = f"{dim}_bnds"
        if name in fine.coords and name in coarse.coords:
            found.add(nesting_factor(coarse[name].values, fine[name].values))
        else:
            n_fine, n_coarse = fine_da.sizes[dim], coarse_da.sizes[dim]
            found.add(n_fine // n_coarse if n_coarse and n_fine % n_coarse == 0 else None)
    if None in found or len(found) != 1:
        raise ValueError(f"the fine and coarse grids do not nest with one factor on {dims}")
    inferred = found.pop()
    assert inferred is not None
    if factor is not None and factor != inferred:
        raise ValueError(f"factor {factor} given, but the grids nest with factor {inferred}")
    return inferred


def _leading_chunks(da: xr.DataArray, lead: list[str]) -> list[dict[str, slice]]:
    if not lead:
        return [{}]
    dim = lead[0]
    sizes = da.chunksizes.get(dim) if da.chunks is not None else None
    steps = list(sizes) if sizes else [da.sizes[dim]]
    edges = np.cumsum([0, *steps])
    return [{dim: slice(int(a), int(b))} for a, b in pairwise(edges)]


def _check_nested(fine: tuple[int, ...], coarse: tuple[int, ...], area: tuple[int, ...],
                  factor: int) -> None:
    if isinstance(factor, bool) or not isinstance(factor, int | np.integer) or factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor!r}")
    if len(fine) < 2 or len(coarse) < 2:
        raise ValueError(f"fields need two horizontal axes, got {fine} and {coarse}")
    if (fine[-2], fine[-1]) != (coarse[-2] * factor, coarse[-1] * factor):
        raise ValueError(f"fine grid {fine[-2:]} is not coarse grid {coarse[-2:]} "
                         f"times factor {factor}")
    if area != fine[-2:]:
        raise ValueError(f"fine_area has shape {area}, expected {fine[-2:]}")
    try:
        np.broadcast_shapes(fine[:-2], coarse[:-2])
    except ValueError:
        raise ValueError(f"leading dimensions {fine[:-2]} and {coarse[:-2]} do not match"
                         ) from None


def _ratio(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return 0.0 if num == 0 else math.inf
