"""Units of horizontal coordinates: degrees for latitude/longitude, a length for x/y.

:func:`coordinate_scale` gives the factor that brings a coordinate into the package's units
(1 for degrees, 1000 for km) or refuses it in one line: radians would make the cell areas,
and so conservation, wrong. Part of the input checks of :mod:`downscale.validate`, which
re-exports it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from downscale.errors import InputError

Fail = Callable[[str, str], InputError]

#: CF's spellings of latitude and longitude units (CF 4.1, 4.2), lower case.
LAT_UNITS = ("degrees_north", "degree_north", "degrees_n", "degree_n")
LON_UNITS = ("degrees_east", "degree_east", "degrees_e", "degree_e")
_DEGREE_SPELLINGS = (*LAT_UNITS, *LON_UNITS, "degrees", "degree")


def coordinate_scale(units: object, dim: str, label: str, *, latlon: bool, fail: Fail
                     ) -> float:
    """The factor that brings a horizontal coordinate into the package's units.

    Latitude/longitude must be in degrees: radians (or another angle) are refused, since
    the cell areas, and so conservation, follow from them. Projected ``y``/``x`` must carry
    a length unit; they are converted to metres (a factor of 1000 for km).

    Args:
        units: The coordinate's units attribute (None: none).
        dim: ``"lat"``, ``"lon"``, ``"y"`` or ``"x"``.
        label: The coordinate's name in the file, for the message.
        latlon: Whether the grid is latitude-longitude.
        fail: Builds the error (file and variable filled in).

    Raises:
        InputError: Angles not in degrees; projected coordinates without a length unit.
    """
    text = "" if units is None else str(units).strip()
    import cf_units

    try:
        unit = cf_units.Unit(text) if text else None
    except ValueError:
        unit = None
    if latlon:
        degrees = f"degrees_{'north' if dim == 'lat' else 'east'}"
        if not text or text.lower() in _DEGREE_SPELLINGS:
            return 1.0  # no units: the name or standard_name said latitude/longitude
        # udunits counts angles as dimensionless: "1" and "%" convert to degrees too.
        factor = (float(unit.convert(1.0, "degree"))
                  if unit is not None and unit.is_convertible("degree") else math.nan)
        if math.isclose(factor, 1.0):
            return 1.0
        if text.lower() not in ("1", "%") and np.isfinite(factor):
            raise fail(f"the '{label}' coordinate is in {text}, not degrees (the cell areas, "
                       "and so conservation, would be wrong)",
                       f"convert it to degrees (multiply by {factor:.10g}) and set "
                       f"units={degrees}")
        raise fail(f"the '{label}' coordinate has units '{text}', not degrees",
                   f"set units={degrees} if the values are degrees")
    if unit is not None and unit.is_convertible("m"):
        return float(unit.convert(1.0, "m"))
    raise fail(f"the projected '{label}' coordinate has "
               + (f"units '{text}', not a length" if text else "no units"),
               "set its units attribute to a length (e.g. units=m)")
