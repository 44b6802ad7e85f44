"""Validation metrics: mass conservation, checkerboard artifacts and skill.

Pure functions on numpy arrays (with thin xarray wrappers); no torch, no Lightning, so the
same code scores the model, the baselines and files on disk. Fine fields have shape
``(..., H, W)`` and coarse fields ``(..., h, w)`` with ``H = factor * h``,
``W = factor * w``; leading dimensions (time, batch, channel) are all included in a score.
NaN marks a missing cell everywhere.

Conservation follows docs/method.md#conservation and is computed in two steps, in the style of
weatherbench2: :func:`conservation_sums` turns one chunk into summable partial sums
(:class:`ConservationSums`), and :meth:`ConservationSums.finalize` turns their sum into a
:class:`ConservationError`. :func:`conservation_error` does both for one array; the same
partial sums can be computed per Dask chunk or per worker and added.

The two checkerboard measures of docs/method.md#artifacts are :func:`checkerboard_index` (phase
imbalance in the space domain) and :func:`spectral_artifact_index` (power at the stride's
alias frequencies).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from itertools import pairwise

import numpy as np
import xarray as xr
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from downscale.aggregate import area_weighted_block_mean
from downscale.baselines import fill_missing_nearest
from downscale.grid import cell_areas, horizontal_dims, nesting_factor

FloatArray = NDArray[np.float64]

# ---------------------------------------------------------------------------------------
# Conservation
# ---------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------
# Checkerboard artifacts
# ---------------------------------------------------------------------------------------


def checkerboard_index(field: ArrayLike, stride: int, *, smooth_width: int | None = None
                       ) -> float:
    """Phase-imbalance index of a field upsampled with stride ``stride`` (docs/method.md#artifacts).

    Definition:

    1. ``smooth`` = the field filtered along each horizontal axis by a centred trapezoid of
       width ``smooth_width`` cells (taps ``[1/2, 1, ..., 1, 1/2] / smooth_width``). With a
       width that is a multiple of ``stride`` the filter removes any pattern that repeats
       every ``stride`` cells and has zero mean, and it reproduces linear fields exactly.
       Missing cells are left out (normalised convolution).
    2. ``residual = field - smooth`` on the valid cells whose whole filter window lies on
       valid cells inside the grid (all valid cells if that leaves a phase empty).
    3. The ``stride**2`` phase means of the residual, phase ``(i % stride, j % stride)`` on
       the last two axes, pooled over the leading dimensions.
    4. ``index = (max - min of the phase means) / std``, where ``std`` is the field's
       spatial standard deviation (each 2-D slice's own mean removed).

    Args:
        field: Field of shape ``(..., H, W)``, any units; NaN = missing.
        stride: The upsampling stride (factor) whose phases are compared.
        smooth_width: Even filter width in cells, ideally a multiple of ``stride``;
            ``2 * stride`` by default.

    Returns:
        The dimensionless index: 0 for a constant field, about 0 for smooth or bicubic
        output, about ``2 a / std`` for a checkerboard of amplitude ``a``. NaN if the field
        has no valid cell.

    Raises:
        ValueError: For a bad stride or width, or a grid too small for every phase.
    """
    values = np.asarray(field, dtype=np.float64)
    width = 2 * stride if smooth_width is None else smooth_width
    if isinstance(stride, bool) or not isinstance(stride, int | np.integer) or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride!r}")
    if width < 2 or width % 2:
        raise ValueError(f"smooth_width must be an even number >= 2, got {width}")
    if values.ndim < 2:
        raise ValueError(f"expected a field of shape (..., H, W), got {values.shape}")
    valid = np.isfinite(values)
    if not valid.any():
        return math.nan
    if np.ptp(values[valid]) == 0 or stride == 1:
        return 0.0
    smooth, support = _normalised_smooth(values, valid, width)
    residual = np.where(valid, values - smooth, 0.0)
    means = _phase_means(residual, valid & (support > 1.0 - 1e-9), stride)
    if means is None:
        means = _phase_means(residual, valid, stride)
    if means is None:
        raise ValueError(f"grid {values.shape[-2:]} has phases without valid cells at "
                         f"stride {stride}")
    return float((means.max() - means.min()) / _spatial_std(values, valid))


def _normalised_smooth(values: FloatArray, valid: NDArray[np.bool_], width: int
                       ) -> tuple[FloatArray, FloatArray]:
    """NaN-aware separable trapezoid smoothing; also returns each cell's window support."""
    taps = np.ones(width + 1)
    taps[[0, -1]] = 0.5
    taps /= width
    num = np.where(valid, values, 0.0)
    den = valid.astype(np.float64)
    for axis in (-2, -1):
        num = ndimage.convolve1d(num, taps, axis=axis, mode="constant")
        den = ndimage.convolve1d(den, taps, axis=axis, mode="constant")
    smooth = num / np.where(den > 0, den, 1.0)
    return smooth, den


def _phase_means(residual: FloatArray, use: NDArray[np.bool_], stride: int
                 ) -> FloatArray | None:
    used = np.where(use, residual, 0.0)
    means = np.empty(stride * stride)
    for k, (a, b) in enumerate(np.ndindex(stride, stride)):
        count = use[..., a::stride, b::stride].sum()
        if count == 0:
            return None
        means[k] = used[..., a::stride, b::stride].sum() / count
    return means


def _spatial_std(values: FloatArray, valid: NDArray[np.bool_]) -> float:
    """RMS over slices of each slice's standard deviation; floored against rounding."""
    count = valid.sum(axis=(-2, -1), keepdims=True)
    zeroed = np.where(valid, values, 0.0)
    mean = zeroed.sum(axis=(-2, -1), keepdims=True) / np.maximum(count, 1)
    var = float(np.where(valid, (values - mean) ** 2, 0.0).sum() / valid.sum())
    # A field this flat is constant to working precision: its residual is rounding noise.
    floor = 1e-10 * float(np.abs(values[valid]).max())
    return max(math.sqrt(var), floor, np.finfo(np.float64).tiny)


def spectral_artifact_index(field: ArrayLike, stride: int, *, tile: int | None = None
                            ) -> float:
    """Excess power at the alias frequencies of ``stride``, in decibels (docs/method.md#artifacts).

    Definition (a Welch periodogram compared bin by bin):

    1. The field is cut into ``tile x tile`` windows overlapping by half (clipped to the
       grid, last two axes, every leading slice). Windows with a missing cell are skipped,
       so a land mask costs windows, not accuracy. If every window has one, windows of
       half the size are tried (down to ``8 * stride``), and as a last resort the missing
       cells are filled with their nearest valid value.
    2. Each window has its mean removed and is multiplied by a periodic 2-D Hann window;
       ``P`` is the mean of ``|FFT2|^2`` over the windows (``tile x tile`` bins).
    3. The alias frequencies are ``(j / stride, k / stride)`` cycles per cell for
       ``0 <= j, k < stride``, ``(j, k) != (0, 0)``; an artifact that repeats every
       ``stride`` cells has all its power there.
    4. For each alias bin, ``peak`` is the mean of ``P`` over the 3 x 3 bins around it (the
       Hann window spreads a tone over exactly these) and ``ring`` the mean over the bins at
       Chebyshev distance 2 (wrapping), leaving out bins next to any alias bin or to 0.
    5. ``index = 10 log10(sum(peak) / sum(ring))`` over the alias bins.

    Args:
        field: Field of shape ``(..., H, W)``; NaN = missing.
        stride: The upsampling stride (at least 2).
        tile: Window size in cells; ``16 * stride`` by default. A multiple of ``stride``
            puts the alias frequencies on exact bins; it needs to be at least
            ``5 * stride`` to leave neighbouring bins.

    Returns:
        Index in dB: 0 for a constant field, about 0 for white noise, below 0 for smooth or
        interpolated fields (their spectrum falls towards the alias frequencies), and tens
        of dB for a checkerboard. ``+inf`` if all the power is at the alias bins, ``-inf``
        if none is; NaN if the field has no valid cell.

    Raises:
        ValueError: For a bad stride, or a grid too small to leave neighbouring bins.
    """
    values = np.asarray(field, dtype=np.float64)
    if isinstance(stride, bool) or not isinstance(stride, int | np.integer) or stride < 2:
        raise ValueError(f"stride must be an integer >= 2, got {stride!r}")
    if values.ndim < 2:
        raise ValueError(f"expected a field of shape (..., H, W), got {values.shape}")
    valid = np.isfinite(values)
    if not valid.any():
        return math.nan
    if np.ptp(values[valid]) == 0:
        return 0.0
    size = 16 * stride if tile is None else tile
    sizes = [size]
    while sizes[-1] // 2 >= 8 * stride:  # smaller windows fit between coastlines
        sizes.append(sizes[-1] // 2)
    power = None
    for n in sizes:
        power = _welch_periodogram(values, (min(n, values.shape[-2]), min(n, values.shape[-1])))
        if power is not None:
            break
    if power is None:
        shape = (min(size, values.shape[-2]), min(size, values.shape[-1]))
        power = _welch_periodogram(fill_missing_nearest(values), shape)
    assert power is not None
    peak, ring = _alias_peaks_and_rings(power, stride)
    if peak == 0 and ring == 0:
        return 0.0
    ratio = _ratio(peak, ring)
    return 10.0 * math.log10(ratio) if ratio > 0 else -math.inf


def _welch_periodogram(values: FloatArray, shape: tuple[int, int]) -> FloatArray | None:
    """Mean Hann-windowed power spectrum of the complete half-overlapping tiles, or None."""
    th, tw = shape
    window = np.outer(_hann(th), _hann(tw))
    total, count = np.zeros(shape), 0
    for plane in values.reshape(-1, *values.shape[-2:]):
        tiles = np.lib.stride_tricks.sliding_window_view(plane, shape)
        tiles = tiles[::max(th // 2, 1), ::max(tw // 2, 1)].reshape(-1, th, tw)
        tiles = tiles[np.isfinite(tiles).all(axis=(-2, -1))]
        if len(tiles):
            tiles = tiles - tiles.mean(axis=(-2, -1), keepdims=True)
            total += (np.abs(np.fft.fft2(tiles * window)) ** 2).sum(axis=0)
            count += len(tiles)
    return total / count if count else None


def _hann(n: int) -> FloatArray:
    """Periodic Hann window: its DFT has exactly three non-zero bins."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def _alias_peaks_and_rings(power: FloatArray, stride: int) -> tuple[float, float]:
    h, w = power.shape
    centres = {(round(j * h / stride) % h, round(k * w / stride) % w)
               for j in range(stride) for k in range(stride)}
    near = {((cy + dy) % h, (cx + dx) % w) for cy, cx in centres
            for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
    ring_offsets = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                    if max(abs(dy), abs(dx)) == 2]
    peak_total, ring_total, used = 0.0, 0.0, 0
    for cy, cx in centres - {(0, 0)}:
        block = {((cy + dy) % h, (cx + dx) % w) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
        ring = {((cy + dy) % h, (cx + dx) % w) for dy, dx in ring_offsets} - near
        if ring:
            peak_total += float(np.mean([power[b] for b in block]))
            ring_total += float(np.mean([power[r] for r in ring]))
            used += 1
    if not used:
        raise ValueError(f"grid {power.shape} is too small for alias frequencies of stride "
                         f"{stride}: no neighbouring bins are left")
    return peak_total, ring_total


# ---------------------------------------------------------------------------------------
# Skill
# ---------------------------------------------------------------------------------------


def rmse(pred: ArrayLike, truth: ArrayLike) -> float:
    """Root-mean-square error over the cells valid in both, in field units (NaN if none)."""
    diff, _ = _paired_difference(pred, truth)
    return math.sqrt(float(np.mean(diff**2))) if diff.size else math.nan


def mae(pred: ArrayLike, truth: ArrayLike) -> float:
    """Mean absolute error over the cells valid in both, in field units (NaN if none)."""
    diff, _ = _paired_difference(pred, truth)
    return float(np.mean(np.abs(diff))) if diff.size else math.nan


def bias(pred: ArrayLike, truth: ArrayLike) -> float:
    """Mean of ``pred - truth`` over the cells valid in both, in field units (NaN if none)."""
    diff, _ = _paired_difference(pred, truth)
    return float(np.mean(diff)) if diff.size else math.nan


def lat_weighted_rmse(pred: ArrayLike, truth: ArrayLike, lat: ArrayLike) -> float:
    """RMSE with each cell weighted by ``cos(lat)``, normalised over the valid cells.

    ``sqrt(sum w e^2 / sum w)`` over the cells valid in both fields, so equal latitudes
    give :func:`rmse`.

    Args:
        pred: Prediction, shape ``(..., H, W)``.
        truth: Reference, same shape; NaN = missing in either.
        lat: Cell-centre latitudes in degrees, shape ``(H,)`` (or broadcastable to the
            fields, e.g. ``(H, W)`` for a curvilinear grid).

    Returns:
        The weighted RMSE in field units; NaN if no cell has weight.
    """
    p, t = np.broadcast_arrays(np.asarray(pred, dtype=np.float64),
                               np.asarray(truth, dtype=np.float64))
    lat_arr = np.asarray(lat, dtype=np.float64)
    if lat_arr.ndim == 1:
        lat_arr = lat_arr[:, None]
    weight = np.broadcast_to(np.clip(np.cos(np.deg2rad(lat_arr)), 0.0, None), p.shape)
    both = np.isfinite(p) & np.isfinite(t)
    total = float(weight[both].sum())
    if total <= 0:
        return math.nan
    return math.sqrt(float((weight[both] * (p[both] - t[both]) ** 2).sum()) / total)


def _paired_difference(pred: ArrayLike, truth: ArrayLike
                       ) -> tuple[FloatArray, NDArray[np.bool_]]:
    p, t = np.broadcast_arrays(np.asarray(pred, dtype=np.float64),
                               np.asarray(truth, dtype=np.float64))
    both = np.isfinite(p) & np.isfinite(t)
    return p[both] - t[both], both


# ---------------------------------------------------------------------------------------
# Terrain slopes
# ---------------------------------------------------------------------------------------


def slope_violation_fraction(slope: ArrayLike, theta_max_deg: float) -> float:
    """Share of cells steeper than the limit ``theta_max_deg`` (docs/method.md#terrain).

    Args:
        slope: Slope magnitudes ``|grad h|`` (m/m, the tangent of the slope angle), any
            shape, e.g. from :func:`downscale.losses.slope`; NaN = undefined, left out.
        theta_max_deg: The limit in degrees, ``0 < theta_max_deg < 90``.

    Returns:
        The fraction in ``[0, 1]`` of the finite slopes with ``slope > tan(theta_max)``;
        NaN if no slope is finite.

    Raises:
        ValueError: If ``theta_max_deg`` is not in ``(0, 90)``.
    """
    if not 0.0 < theta_max_deg < 90.0:
        raise ValueError(f"theta_max_deg must be in (0, 90) degrees, got {theta_max_deg}")
    values = np.asarray(slope, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan
    return float(np.mean(values > math.tan(math.radians(theta_max_deg))))


def slope_wasserstein_distance(slope: ArrayLike, reference: ArrayLike, *,
                               weights: ArrayLike | None = None,
                               reference_weights: ArrayLike | None = None) -> float:
    """1-D Wasserstein (earth mover's) distance between two slope distributions.

    Every finite cell is one sample of its distribution (optionally weighted, e.g. by cell
    area); the two fields need not have the same shape. The distance is the area between
    the two cumulative distribution functions (:func:`scipy.stats.wasserstein_distance`).

    Args:
        slope: Slope magnitudes of the generated terrain (m/m), any shape; NaN left out.
        reference: Slope magnitudes of the real terrain (m/m), any shape; NaN left out.
        weights: Non-negative weights of ``slope``'s cells, same shape, or None (equal).
        reference_weights: Weights of ``reference``'s cells, same shape, or None.

    Returns:
        The distance in m/m (0 for identical distributions); NaN if either has no finite
        slope.
    """
    # Imported here: only this metric needs scipy.stats.
    from scipy.stats import wasserstein_distance

    samples: list[tuple[FloatArray, FloatArray | None]] = []
    for values, w in ((slope, weights), (reference, reference_weights)):
        arr = np.asarray(values, dtype=np.float64)
        keep = np.isfinite(arr)
        if w is not None:
            w_arr = np.broadcast_to(np.asarray(w, dtype=np.float64), arr.shape)
            keep &= np.isfinite(w_arr) & (w_arr >= 0)
            samples.append((arr[keep], w_arr[keep]))
        else:
            samples.append((arr[keep], None))
    (u, u_w), (v, v_w) = samples
    if u.size == 0 or v.size == 0:
        return math.nan
    return float(wasserstein_distance(u, v, u_w, v_w))


def slope_angle_percentile(slope: ArrayLike, q: float) -> float:
    """The ``q``-th percentile of the slope angle in degrees: a data-driven slope limit.

    Args:
        slope: Slope magnitudes (m/m), any shape; NaN left out.
        q: Percentile in ``[0, 100]``.

    Returns:
        ``degrees(arctan(percentile(slope, q)))``; NaN if no slope is finite.
    """
    values = np.asarray(slope, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan
    return float(np.degrees(np.arctan(np.percentile(values, q))))


# ---------------------------------------------------------------------------------------
# Decoder artifacts: phase coverage, translation equivariance, spectral replicas
# ---------------------------------------------------------------------------------------


def phase_coverage(kernel_size: int, stride: int) -> NDArray[np.int64]:
    """How many input cells reach each output phase of a transposed convolution.

    With stride ``s`` and a ``k x k`` kernel, output cell ``i`` (full output, before
    cropping) receives tap ``t`` of input cell ``(i - t) / s`` exactly when
    ``t = i (mod s)``; the number of taps per phase along one axis is ``ceil(k/s)`` or
    ``floor(k/s)``, so it varies by ``ceil(k/s) - floor(k/s)`` (zero iff ``s`` divides
    ``k``; Odena et al. 2016). Cropping (padding) only relabels the phases.

    Args:
        kernel_size: ``k >= 1``.
        stride: ``s >= 1``.

    Returns:
        Integer array ``(s, s)``: entry ``(a, b)`` counts the input cells that reach an
        output cell of phase ``(a, b)`` (the product of the two axes' counts).
    """
    if kernel_size < 1 or stride < 1:
        raise ValueError(f"need kernel_size, stride >= 1, got {kernel_size}, {stride}")
    counts = np.bincount(np.arange(kernel_size) % stride, minlength=stride).astype(np.int64)
    return np.outer(counts, counts)


def phase_weight_sums(kernel: ArrayLike, stride: int) -> FloatArray:
    """Per-phase sums of a transposed-convolution kernel: the response to a flat input.

    A constant input ``c`` gives ``c * sums[a, b]`` at output phase ``(a, b)``
    (docs/method.md#artifacts), so the output is flat only if every phase sums to
    ``1 / s^2`` (for a kernel that sums to one).

    Args:
        kernel: Weights ``(..., k, k)``.
        stride: ``s``.

    Returns:
        ``(..., s, s)``: ``sums[..., a, b] = sum(kernel[..., a::s, b::s])``.
    """
    w = np.asarray(kernel, dtype=np.float64)
    if w.ndim < 2 or stride < 1:
        raise ValueError(f"expected kernels (..., k, k) and stride >= 1, got {w.shape}, "
                         f"{stride}")
    out = np.empty((*w.shape[:-2], stride, stride))
    for a, b in np.ndindex(stride, stride):
        out[..., a, b] = w[..., a::stride, b::stride].sum(axis=(-2, -1))
    return out


def zero_insertion(coarse: ArrayLike, factor: int) -> FloatArray:
    """Upsample by inserting zeros: each coarse value times ``factor^2`` on one fine cell.

    The first half of a transposed convolution (the second is a convolution with its
    kernel). On equal areas it keeps the mass; its spectrum is the coarse spectrum repeated
    at the image frequencies ``(j, l) / factor`` cycles per fine cell, which an
    interpolation filter must remove.

    Args:
        coarse: ``(..., h, w)``.
        factor: ``f >= 1``.

    Returns:
        ``(..., h f, w f)`` with the coarse values (times ``f^2``) at cells ``(f i, f j)``.
    """
    values = np.asarray(coarse, dtype=np.float64)
    if values.ndim < 2 or factor < 1:
        raise ValueError(f"expected (..., h, w) and factor >= 1, got {values.shape}, {factor}")
    *lead, h, w = values.shape
    fine = np.zeros((*lead, h * factor, w * factor))
    fine[..., ::factor, ::factor] = values * factor**2
    return fine


def spectral_replica_leakage(fine: ArrayLike, factor: int, *, hann: bool = True) -> float:
    """Power an upsampler leaves at the images of the coarse spectrum, relative to the baseband.

    Zero-insertion view of upsampling by ``f``: the fine spectrum is the coarse one (the
    baseband, ``|nu_y|, |nu_x| < 1 / (2 f)`` cycles per fine cell) plus ``f^2 - 1`` images
    of it centred on ``(j, l) / f``; together they tile the whole spectrum. An ideal
    interpolator keeps the baseband and removes the images. Definition:

    1. each 2-D slice has its mean removed (and is tapered by a periodic 2-D Hann window
       when ``hann``, against the jump at the wrap-around of a non-periodic field);
    2. ``P = sum over slices of |FFT2|^2``;
    3. ``leakage = (sum P outside the baseband) / (sum P inside)``, bins on the band edge
       (the coarse Nyquist frequency) counting half to each side.

    Zero insertion of white noise scores ``f^2 - 1`` (15 at ``f = 4``), ideal (sinc)
    interpolation 0. A real fine field has its own power beyond the coarse scales, so the
    truth's leakage is the reference: more is artifact or noise, less is over-smoothing.

    Args:
        fine: ``(..., H, W)``; missing cells are filled from their nearest valid neighbour.
        factor: Upsampling factor ``f >= 2``.
        hann: Taper with a Hann window (recommended unless the field is periodic in both
            axes).

    Returns:
        The dimensionless ratio (0 for a constant field, ``inf`` if the baseband is empty
        but the rest is not); NaN if the field has no valid cell.
    """
    values = np.asarray(fine, dtype=np.float64)
    if isinstance(factor, bool) or not isinstance(factor, int | np.integer) or factor < 2:
        raise ValueError(f"factor must be an integer >= 2, got {factor!r}")
    if values.ndim < 2:
        raise ValueError(f"expected a field of shape (..., H, W), got {values.shape}")
    if not np.isfinite(values).any():
        return math.nan
    h, w = values.shape[-2:]
    planes = fill_missing_nearest(values).reshape(-1, h, w)
    planes = planes - planes.mean(axis=(-2, -1), keepdims=True)
    if hann:
        planes = planes * np.outer(_hann(h), _hann(w))
    power = (np.abs(np.fft.fft2(planes)) ** 2).sum(axis=0)
    band = np.outer(_baseband_weight(h, factor), _baseband_weight(w, factor))
    total = float(power.sum())
    inside = float((power * band).sum())
    return _ratio(total - inside, inside) if total > 0 else 0.0


def _baseband_weight(n: int, factor: int) -> FloatArray:
    """1 inside the coarse band ``|nu| < 1/(2f)``, 1/2 on its edge, 0 outside."""
    distance = np.abs(np.abs(np.fft.fftfreq(n)) * 2 * factor - 1.0)  # 0 on the band edge
    inside = np.abs(np.fft.fftfreq(n)) * 2 * factor < 1.0
    return np.where(distance < 1e-9, 0.5, inside.astype(np.float64))


def equivariance_error(model: Callable[[FloatArray], ArrayLike], coarse: ArrayLike,
                       factor: int, shift: tuple[float, float] = (0.0, 1.0), *,
                       periodic: bool | tuple[bool, bool] = False,
                       margin: int | None = None) -> float:
    """How far a downscaling model is from commuting with a translation of its input.

    ``model(S_d x)`` is compared with ``S_{f d} model(x)``, where ``S_d`` shifts by
    ``d = (d_y, d_x)`` coarse cells and ``S_{f d}`` by the same distance on the fine grid.
    Whole-cell shifts are exact rolls; fractional ones interpolate with cubic splines
    (``scipy.ndimage.shift``), wrapping on periodic axes and holding the edge value on the
    others. A transposed convolution commutes with whole coarse-cell shifts whatever its
    kernel; sub-pixel shifts break that, more so for rough or off-centre kernels (seed
    document, "Impact on Translation Equivariance").

    Along a non-periodic shifted axis the rolled-in strip is not data, so ``margin`` coarse
    cells at both ends of that axis are left out of the comparison.

    Args:
        model: ``model(coarse) -> fine``: ``(..., h, w)`` to ``(..., h f, w f)``, numpy in
            and out (wrap a torch module in a small function).
        coarse: The input, ``(..., h, w)``.
        factor: Upsampling factor ``f``.
        shift: ``(d_y, d_x)`` in coarse cells, e.g. ``(0, 1)`` (whole cell) or
            ``(0, 0.5)`` (sub-pixel).
        periodic: Whether each axis ``(y, x)`` wraps around (one bool for both).
        margin: Coarse cells left out at each end of a shifted non-periodic axis;
            ``ceil(|d|) + 2`` by default.

    Returns:
        ``RMS(model(S_d x) - S_{f d} model(x)) / std(model(x))`` over the compared cells
        (each slice's own mean removed for the std): dimensionless, 0 for a perfectly
        equivariant model. NaN if no cell is compared.

    Raises:
        ValueError: If the model's output does not have the fine shape, or the margin
            leaves no cell.
    """
    x = np.asarray(coarse, dtype=np.float64)
    wraps = (periodic, periodic) if isinstance(periodic, bool) else tuple(periodic)
    if x.ndim < 2 or len(wraps) != 2:
        raise ValueError(f"expected coarse (..., h, w) and two periodic flags, got {x.shape}")
    reference = np.asarray(model(x), dtype=np.float64)
    expected_shape = (*x.shape[:-2], x.shape[-2] * factor, x.shape[-1] * factor)
    if reference.shape != expected_shape:
        raise ValueError(f"model output has shape {reference.shape}, expected "
                         f"{expected_shape}")
    moved = np.asarray(model(_shift_field(x, shift, wraps)), dtype=np.float64)
    expected = _shift_field(reference, (shift[0] * factor, shift[1] * factor), wraps)
    keep = np.ones(reference.shape[-2:], dtype=bool)
    for axis, (d, wrap) in enumerate(zip(shift, wraps, strict=True)):
        if d != 0 and not wrap:
            m = (math.ceil(abs(d)) + 2 if margin is None else margin) * factor
            if 2 * m >= keep.shape[axis]:
                raise ValueError(f"margin of {m} fine cells leaves nothing of axis {axis} "
                                 f"({keep.shape[axis]} cells)")
            edge = [slice(None), slice(None)]
            edge[axis] = slice(0, m)
            keep[tuple(edge)] = False
            edge[axis] = slice(keep.shape[axis] - m, None)
            keep[tuple(edge)] = False
    use = keep & np.isfinite(moved) & np.isfinite(expected) & np.isfinite(reference)
    if not use.any():
        return math.nan
    diff = (moved - expected)[use]
    return math.sqrt(float(np.mean(diff**2))) / _spatial_std(reference, use)


def _shift_field(field: FloatArray, shift: tuple[float, float], wraps: tuple[bool, ...]
                 ) -> FloatArray:
    """Shift the last two axes by ``shift`` cells: roll whole cells, splines otherwise."""
    out = field
    for axis, (d, wrap) in zip((-2, -1), zip(shift, wraps, strict=True), strict=True):
        if d == 0:
            continue
        if float(d).is_integer():
            out = np.roll(out, int(d), axis=axis)
        else:
            vector = [0.0] * out.ndim
            vector[axis] = float(d)
            out = ndimage.shift(out, vector, order=3, mode="grid-wrap" if wrap else "nearest")
    return out
