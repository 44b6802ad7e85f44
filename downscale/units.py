"""Converting a variable's units into a model's and back, with cf-units.

A model learns a quantity in the units it was trained in. An input holding the same
quantity in other units is converted on the way in (:meth:`UnitConversion.to_model`) and
the prediction converted back on the way out (:meth:`UnitConversion.from_model`), so a
degC input gives a degC output. Every conversion between units of one dimension is affine,
``model = scale * input + offset``: an area-weighted mean of converted values is the
converted mean, so a prediction that conserves in the model's units conserves in the
input's as well.

Liquid water equivalent. udunits cannot turn a mass flux (``kg m-2 s-1``,
``precipitation_flux``) into a depth rate (``mm day-1``, ``lwe_precipitation_rate``):
that needs the density of water. CF defines the ``lwe_`` quantities at the density of
liquid water, 1000 kg m-3, so the conversion is done, and only, when the two
standard names say that one is the liquid water equivalent of the other
(:data:`LWE_EQUIVALENTS`); a depth rate without that statement is refused rather than
assumed to be water.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, TypeVar

import numpy as np

#: Density of liquid water (kg m-3) at which CF defines its ``lwe_`` quantities.
WATER_DENSITY: Final = 1000.0
#: CF ``lwe_`` standard names and the mass quantity each is the water equivalent of.
LWE_EQUIVALENTS: Final = {
    "lwe_precipitation_rate": "precipitation_flux",
    "lwe_thickness_of_precipitation_amount": "precipitation_amount",
    "lwe_snowfall_rate": "snowfall_flux",
    "lwe_thickness_of_snowfall_amount": "snowfall_amount",
}

Values = TypeVar("Values", bound=np.ndarray[Any, Any])


@dataclass(frozen=True)
class UnitConversion:
    """``model = scale * input + offset``: an input's units into a model's.

    Attributes:
        source: The input's units attribute.
        target: The model's units.
        scale: Model units per input unit.
        offset: Added after scaling (temperatures on a scale: K = degC + 273.15).
    """

    source: str
    target: str
    scale: float = 1.0
    offset: float = 0.0

    @property
    def is_identity(self) -> bool:
        """Whether the values need no conversion (the same units, perhaps spelt otherwise)."""
        return self.scale == 1.0 and self.offset == 0.0

    def to_model(self, values: Values) -> Values:
        """Input values in the model's units (computed in float64, returned in their dtype)."""
        if self.is_identity:
            return values
        out = np.asarray(values, dtype=np.float64) * self.scale + self.offset
        return out.astype(values.dtype, copy=False)  # type: ignore[return-value]

    def from_model(self, values: Values) -> Values:
        """Model values (a prediction) back in the input's units, in their dtype."""
        if self.is_identity:
            return values
        out = (np.asarray(values, dtype=np.float64) - self.offset) / self.scale
        return out.astype(values.dtype, copy=False)  # type: ignore[return-value]

    def describe(self) -> str:
        """One phrase for the output's history: ``"degC converted to K and back"``."""
        return f"{self.source} converted to {self.target} and back"


def same_quantity(a: str | None, b: str | None) -> bool:
    """Whether two CF standard names name one quantity (equal, or water equivalents)."""
    if not a or not b:
        return False
    return a == b or LWE_EQUIVALENTS.get(a) == b or LWE_EQUIVALENTS.get(b) == a


def unit_conversion(source: str, target: str, *, source_standard_name: str | None = None,
                    target_standard_name: str | None = None,
                    difference: bool = False) -> UnitConversion | None:
    """The conversion of ``source`` units into ``target`` units, or None where none exists.

    Args:
        source: The input's units attribute.
        target: The model's units.
        source_standard_name: The input's ``standard_name`` (for water equivalents).
        target_standard_name: The model's ``standard_name``.
        difference: The values are temperature differences (CF ``units_metadata:
            "temperature: difference"``): scaled, never shifted by an offset.

    Returns:
        The conversion; None when cf-units cannot parse either units or they are of other
        dimensions (and are not a water equivalent of each other).
    """
    import cf_units

    if source.strip() == target.strip():
        return UnitConversion(source, target)
    try:
        unit_in, unit_out = cf_units.Unit(source), cf_units.Unit(target)
    except ValueError:
        return None
    density = _water_density_factor(source_standard_name, target_standard_name)
    if density != 1.0:
        # kg m-2 = (m of water) * 1000 kg m-3: bring the depth side to a mass.
        per_mass = cf_units.Unit("kg m-3")
        unit_in = unit_in * per_mass if density > 1.0 else unit_in
        unit_out = unit_out * per_mass if density < 1.0 else unit_out
    if not unit_in.is_convertible(unit_out):
        return None
    zero = 0.0 if difference else float(unit_in.convert(0.0, unit_out))
    scale = (float(unit_in.convert(1.0, unit_out)) - (float(unit_in.convert(0.0, unit_out))))
    return UnitConversion(source, target, scale * density, zero * density)


def _water_density_factor(source: str | None, target: str | None) -> float:
    """The density factor of a conversion: 1000, 1/1000 or 1 (no water equivalent).

    1000 when the input is the water equivalent of the model's mass quantity, its
    inverse the other way round.
    """
    if source in LWE_EQUIVALENTS and LWE_EQUIVALENTS[source] == target:
        return WATER_DENSITY
    if target in LWE_EQUIVALENTS and LWE_EQUIVALENTS[target] == source:
        return 1.0 / WATER_DENSITY
    return 1.0
