"""Plausibility of inputs: the value, valid-range, coverage and coordinate-unit checks, once.

A CF-valid file can still hold impossible numbers (docs/method.md, "Bad input"). Every
entry point goes through this module:

* :func:`check_values` -- a block of values just read (``run``'s chunks, training's scan):
  infinities, undeclared fill values (magnitudes >= 1e20 and the common sentinels -9999,
  -999, -32767, named when found) and values outside the physical bounds of the quantity.
  The bounds come from the CF ``standard_name`` (:data:`PHYSICAL_BOUNDS`, in SI units) and
  are converted into the file's units with cf-units, never guessed from a variable name.
* :func:`mask_outside_valid_range` -- ``valid_min``/``valid_max``/``valid_range``: values
  outside are missing, as CF says; their count is logged as one warning line.
* :func:`check_coverage` -- a file or a time step with no valid value at all: one warning
  line (an error with ``strict``).
* :func:`coordinate_scale` -- latitude/longitude must be in degrees (radians are refused),
  projected x/y in a length unit (km are converted to the metres the package assumes);
  it lives in :mod:`downscale.coordinate_units` and is re-exported here.

Errors are :class:`~downscale.errors.InputError`: one line naming the file, the variable,
the count, an example position (time, lat, lon) and what to do.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr
from numpy.typing import NDArray

from downscale.coordinate_units import Fail as Fail
from downscale.coordinate_units import coordinate_scale as coordinate_scale
from downscale.errors import InputError

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

#: Values at or beyond this magnitude in a field are undeclared fill values, not data.
SUSPICIOUS_MAGNITUDE = 1e20
#: Fill values found in files that forget to declare them, and what they are.
SENTINELS: Mapping[float, str] = {
    -9999.0: "a common fill value", -999.0: "a common fill value",
    -32767.0: "the int16 fill value", 1e20: "the CMIP fill value",
    9.969209968386869e36: "the netCDF default fill value"}


@dataclass(frozen=True)
class PhysicalBounds:
    """The values a quantity can take, in SI ``units``; None: unbounded on that side.

    ``exclusive``: the lower bound itself is impossible (0 K).
    """

    lower: float | None
    upper: float | None
    units: str
    exclusive: bool = False


_KELVIN = PhysicalBounds(0.0, None, "K", exclusive=True)
_NON_NEGATIVE = PhysicalBounds(0.0, None, "1")
#: Physical bounds by CF standard_name (SI units). Non-negative quantities (units "1") keep
#: their bound of 0 in whatever units the file uses, convertible or not (mm/day, %).
PHYSICAL_BOUNDS: Mapping[str, PhysicalBounds] = {
    **dict.fromkeys(("air_temperature", "surface_temperature", "sea_surface_temperature",
                     "sea_water_temperature", "dew_point_temperature",
                     "air_potential_temperature", "soil_temperature"), _KELVIN),
    **dict.fromkeys(("precipitation_flux", "precipitation_amount", "lwe_precipitation_rate",
                     "thickness_of_rainfall_amount", "rainfall_flux", "snowfall_flux",
                     "convective_precipitation_flux", "relative_humidity", "wind_speed",
                     "surface_snow_amount", "surface_downwelling_shortwave_flux_in_air",
                     "atmosphere_mass_content_of_water_vapor"), _NON_NEGATIVE),
    "specific_humidity": PhysicalBounds(0.0, 1.0, "1"),
    "cloud_area_fraction": PhysicalBounds(0.0, 1.0, "1"),
    "surface_air_pressure": PhysicalBounds(0.0, None, "Pa", exclusive=True),
    "air_pressure_at_mean_sea_level": PhysicalBounds(0.0, None, "Pa", exclusive=True),
    "surface_altitude": PhysicalBounds(-11000.0, 9000.0, "m"),
}


@functools.lru_cache(maxsize=64)
def physical_bounds(standard_name: str, units: str) -> PhysicalBounds | None:
    """The bounds of a quantity converted into ``units``; None where none are known.

    Args:
        standard_name: CF standard_name of the variable.
        units: The variable's units attribute.

    Returns:
        The bounds in ``units``, or None: an unknown standard_name, or units that cannot be
        converted from the quantity's SI units (the bounds are then not checked; non-negative
        quantities keep their bound of 0 in any units).
    """
    bounds = PHYSICAL_BOUNDS.get(standard_name)
    if bounds is None:
        return None
    if bounds.units == "1" and bounds.upper is None:
        return bounds  # a bound of 0 holds in every (offset-free) unit of the quantity
    import cf_units

    try:
        source, target = cf_units.Unit(bounds.units), cf_units.Unit(units)
        if not source.is_convertible(target):
            return None

        def convert(value: float | None) -> float | None:
            return None if value is None else float(source.convert(value, target))

        return PhysicalBounds(convert(bounds.lower), convert(bounds.upper), units,
                              bounds.exclusive)
    except ValueError:  # units cf-units cannot parse
        return None


def _describe_position(da: xr.DataArray, index: tuple[int, ...],
                       offset: Mapping[str, int] | None, dims: Sequence[str] | None = None
                       ) -> str:
    """``time=..., lat=..., lon=...`` of one position of a block of ``da``.

    ``dims``: the dimensions ``index`` runs over (default the trailing ones of ``da``).
    """
    dims = dims or [str(d) for d in da.dims[da.ndim - len(index):]]
    parts = []
    for dim, i in zip(dims, index, strict=True):
        i += (offset or {}).get(dim, 0)
        if dim in da.coords and 0 <= i < da.sizes[dim]:
            value = da[dim].values[i]
            text = (np.datetime_as_string(value, unit="s") if isinstance(value, np.datetime64)
                    else f"{value:g}" if isinstance(value, float | np.floating) else str(value))
            parts.append(f"{dim}={text.removesuffix('T00:00:00').removesuffix(' 00:00:00')}")
        else:
            parts.append(f"{dim} index {i}")
    return ", ".join(parts)


def _first(mask: NDArray[np.bool_]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(int(np.flatnonzero(mask)[0]), mask.shape))


def check_values(da: xr.DataArray, values: np.ndarray[Any, Any], *,
                 path: PathLike | None = None, offset: Mapping[str, int] | None = None) -> None:
    """Refuse infinities, undeclared fill values and physically impossible values.

    Args:
        da: The field the values came from (its name, attributes and coordinates).
        values: A block of its data, the trailing dimensions of ``da`` (any shape).
        path: The file, for the message; default the file ``da`` was read from.
        offset: Where the block starts in ``da`` by dimension name (e.g. ``{"time": 12}``),
            so that the message gives the right position; default the start.

    Raises:
        InputError: The block holds infinities, magnitudes >= 1e20 (undeclared fill values),
            a common sentinel (-9999, -999, -32767) the quantity cannot take, or values
            outside the physical bounds of its standard_name. The message names the count,
            the first position and the sentinel where one is recognised.
    """
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.number):
        return
    where = path or da.attrs.get("source_files") or da.encoding.get("source")

    def refuse(problem: str, mask: NDArray[np.bool_], hint: str) -> InputError:
        at = _describe_position(da, _first(mask), offset)
        count = int(np.count_nonzero(mask))
        return InputError(problem.format(n=count, s="s" * (count > 1), at=at,
                                         look="look" if count > 1 else "looks"), path=where,
                          variable=str(da.name), hint=hint.format(at=at))

    infinite = np.isinf(values)
    if infinite.any():
        raise refuse("the field contains {n} infinite value{s}", infinite,
                     "replace them with a declared _FillValue (the first is at {at})")
    huge = np.abs(np.nan_to_num(values)) >= SUSPICIOUS_MAGNITUDE
    if huge.any():
        largest = float(np.max(np.abs(values[huge])))
        raise refuse(f"values of magnitude {largest:.6g} look like undeclared fill values "
                     f"({_sentinel_name(values[huge])}{{n}} value{{s}}, first at {{at}})", huge,
                     "declare them with the _FillValue or missing_value attribute")
    bounds = physical_bounds(str(da.attrs.get("standard_name", "")),
                             str(da.attrs.get("units", "")).strip())
    for sentinel, what in SENTINELS.items():
        hits = values == sentinel
        if abs(sentinel) < SUSPICIOUS_MAGNITUDE and hits.any() and not _admits(bounds, sentinel):
            raise refuse(f"{{n}} value{{s}} equal to {sentinel:g} ({what}) {{look}} like an "
                         "undeclared fill value (first at {at})", hits,
                         f"declare it with the _FillValue or missing_value attribute (e.g. "
                         f"ncatted -a _FillValue,{da.name},o,d,{sentinel:g}), or fix the values")
    if bounds is not None:
        _check_bounds(values, bounds, str(da.attrs.get("standard_name")), refuse)


def _sentinel_name(huge: NDArray[Any]) -> str:
    for sentinel, what in SENTINELS.items():
        if abs(sentinel) >= SUSPICIOUS_MAGNITUDE and np.any(np.isclose(huge, sentinel,
                                                                        rtol=1e-6)):
            return f"{sentinel:g}, {what}; "
    return ""


def _admits(bounds: PhysicalBounds | None, value: float) -> bool:
    """Whether the quantity can take ``value`` (unknown quantities: sentinels cannot)."""
    if bounds is None:
        return False
    low_ok = bounds.lower is None or value > bounds.lower or (
        value == bounds.lower and not bounds.exclusive)
    return low_ok and (bounds.upper is None or value <= bounds.upper)


def _check_bounds(values: NDArray[Any], bounds: PhysicalBounds, name: str,
                  refuse: Callable[[str, NDArray[np.bool_], str], InputError]) -> None:
    hint = ("check the units attribute and the standard_name; if these are fill values, "
            "declare them with _FillValue")
    units = "" if bounds.units == "1" else f" {bounds.units}"
    with np.errstate(invalid="ignore"):
        if bounds.lower is not None:
            low = values <= bounds.lower if bounds.exclusive else values < bounds.lower
            if low.any():
                side = "at or below" if bounds.exclusive else "below"
                example = float(values[_first(low)])
                raise refuse(f"{{n}} value{{s}} {side} {bounds.lower:g}{units}, impossible "
                             f"for {name} (first at {{at}}: {example:g})", low, hint)
        if bounds.upper is not None:
            high = values > bounds.upper
            if high.any():
                example = float(values[_first(high)])
                raise refuse(f"{{n}} value{{s}} above {bounds.upper:g}{units}, impossible for "
                             f"{name} (first at {{at}}: {example:g})", high, hint)


def suspicious(da: xr.DataArray, lowest: float, highest: float, n_infinite: int) -> bool:
    """Whether a field's extremes need a close look by :func:`check_values`.

    For one lazy pass over a large field (training's scan): only when this is true are the
    time steps read again, one by one, to find and name the offending values.

    Args:
        da: The field (its attributes).
        lowest: The smallest finite value (NaN where there is none).
        highest: The largest finite value (NaN where there is none).
        n_infinite: The number of infinite values.
    """
    if n_infinite or max(abs(lowest), abs(highest)) >= SUSPICIOUS_MAGNITUDE:
        return True
    if not (np.isfinite(lowest) and np.isfinite(highest)):
        return False  # no finite value at all: nothing to check
    bounds = physical_bounds(str(da.attrs.get("standard_name", "")),
                             str(da.attrs.get("units", "")).strip())
    if any(lowest <= s <= highest and not _admits(bounds, s) for s in SENTINELS):
        return True
    return bounds is not None and not (_admits(bounds, lowest) and _admits(bounds, highest))


# -- CF valid range --------------------------------------------------------------------------
def declared_valid_range(da: xr.DataArray) -> tuple[float, float] | None:
    """``(low, high)`` from ``valid_range`` or ``valid_min``/``valid_max``, in data units.

    CF states them in the stored (packed) units; they are unpacked with the variable's
    ``scale_factor``/``add_offset`` as xarray unpacked the data.
    """
    attrs = {**da.encoding, **da.attrs}
    if "valid_range" in attrs:
        low, high = (float(v) for v in np.ravel(attrs["valid_range"])[:2])
    elif "valid_min" in attrs or "valid_max" in attrs:
        low = float(np.ravel(attrs.get("valid_min", -np.inf))[0])
        high = float(np.ravel(attrs.get("valid_max", np.inf))[0])
    else:
        return None
    scale = float(np.ravel(attrs.get("scale_factor", 1.0))[0])
    add = float(np.ravel(attrs.get("add_offset", 0.0))[0])
    low, high = sorted((low * scale + add, high * scale + add))
    return low, high


#: Counts already reported, by file, variable, range and modification time.
_REPORTED: dict[tuple[str, str, tuple[float, float], int], int] = {}


def mask_outside_valid_range(da: xr.DataArray, path: PathLike | None) -> xr.DataArray:
    """Values outside the declared valid range become missing (CF); one warning if any.

    The count needs one pass over the data (only for files that declare a range); it is
    counted and reported once per file and process.

    Returns:
        ``da`` (lazy if it was) with NaN outside the range, or ``da`` itself without one.
    """
    valid = declared_valid_range(da)
    if valid is None:
        return da
    low, high = valid
    outside = (da < low) | (da > high)
    try:
        stamp = os.stat(path).st_mtime_ns if path is not None else 0
    except OSError:
        stamp = 0
    key = (str(path), str(da.name), valid, stamp)
    if key not in _REPORTED:
        _REPORTED[key] = count = int(outside.sum())
        if count:
            span = f"[{low:g}, {high:g}]"
            log.warning("%s: %s: %d value%s outside the declared valid range %s %s treated "
                        "as missing (CF valid_min/valid_max/valid_range).", path, da.name,
                        count, "s" * (count > 1), span, "are" if count > 1 else "is")
    masked = da.where(~outside)
    masked.attrs, masked.encoding = dict(da.attrs), dict(da.encoding)
    return masked


# -- all missing -----------------------------------------------------------------------------
def check_coverage(da: xr.DataArray, *, path: PathLike | None = None,
                   strict: bool = False) -> NDArray[np.int64]:
    """Warn about (or, ``strict``, refuse) a field or time steps with no valid value.

    Reads the field once (lazily, one time step per chunk).

    Args:
        da: A normalised field, dims ``(time, y, x)``.
        path: The file(s), for the message.
        strict: Raise instead of warning.

    Returns:
        The number of valid values of each time step, shape ``(time,)``.

    Raises:
        InputError: With ``strict``, when every value, or every value of a time step, is
            missing.
    """
    counts = np.asarray(da.notnull().sum([d for d in da.dims if d != "time"]).values,
                        dtype=np.int64).reshape(-1)
    report_coverage(da, counts, path=path, strict=strict)
    return counts


def report_coverage(da: xr.DataArray, counts: Sequence[int] | NDArray[np.int64], *,
                    path: PathLike | None = None, strict: bool = False) -> None:
    """The message of :func:`check_coverage` from counts of valid values per time step."""
    counts = np.asarray(counts)
    where = path or da.attrs.get("source_files")
    empty = np.flatnonzero(counts == 0)
    if empty.size == 0:
        return
    if empty.size == counts.size:
        problem = f"all values are missing (NaN or _FillValue) in all {counts.size} time steps"
    else:
        at = _describe_position(da, (int(empty[0]),), None, ("time",))
        problem = (f"{empty.size} of {counts.size} time steps have no valid value (first: "
                   f"{at})")
    if strict:
        raise InputError(problem, path=where, variable=str(da.name),
                         hint="check the file and its _FillValue attribute (without --strict "
                         "this is a warning and missing input gives missing output)")
    log.warning("%s: %s: %s; the output is missing there too.", where, da.name, problem)
