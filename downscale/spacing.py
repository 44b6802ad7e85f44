"""The coarse spacing a model learned, and inputs at another one refused in one line.

A model learns a coarse spacing: features a few coarse cells wide, slopes of a DEM over
cells of so many metres. Applied to an input at another spacing it gives an answer that
looks right and is not (a terrain generator trained on 90 m cells runs on a 2.4 km DEM
without an error). A checkpoint records its coarse spacing (:func:`coarse_spacing` of the
training data, in ``downscale_data``); :func:`check_spacing` compares an input's with it.

How spacings compare. A cell's width is the median of its axis' bound widths (so a
Gaussian or Mercator-spaced axis has one figure). Two grids of one kind compare in their
own units (degrees, metres) within :data:`RELATIVE_TOLERANCE`. A latitude-longitude grid
and a projected one compare in metres at each grid's central latitude, within
:data:`METRES_TOLERANCE` (a degree of longitude shrinks with latitude: the figures are
approximate). A checkpoint saved before spacings were recorded is not checked (logged).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import xarray as xr

from downscale.curvilinear import lattice_of, median_spacing
from downscale.errors import CheckpointError
from downscale.grid import EARTH_RADIUS_M, horizontal_dims
from downscale.grid_geometry import GridKind, geometry_of

log = logging.getLogger(__name__)

#: Relative difference of two spacings of one kind of grid that still counts as the same.
RELATIVE_TOLERANCE: Final = 0.01
#: The same between a latitude-longitude and a projected grid, compared in metres.
METRES_TOLERANCE: Final = 0.1


@dataclass(frozen=True)
class GridSpacing:
    """Cell widths of a grid along its two horizontal axes.

    Attributes:
        dims: ``("lat", "lon")`` or ``("rlat", "rlon")`` of a rotated-pole grid (widths
            in degrees) or ``("y", "x")`` (metres).
        widths: Median cell width along each axis, in those units.
        metres: The same in metres (longitude at the grid's central latitude).
    """

    dims: tuple[str, str]
    widths: tuple[float, float]
    metres: tuple[float, float]

    @property
    def latlon(self) -> bool:
        """Whether the widths are in degrees."""
        return self.dims[0] in ("lat", "rlat")

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form, as recorded in a checkpoint."""
        return {"dims": list(self.dims), "widths": list(self.widths),
                "metres": list(self.metres)}

    def describe(self) -> str:
        """``"5 x 7.5 degrees (lat x lon)"`` or ``"370 x 370 m (y x x)"``."""
        units = "degrees" if self.latlon else "m"
        extra = (f", about {_length(self.metres[0])} x {_length(self.metres[1])}"
                 if self.latlon else "")
        return (f"{self.widths[0]:.6g} x {self.widths[1]:.6g} {units} "
                f"({self.dims[0]} x {self.dims[1]}{extra})")

    def matches(self, other: GridSpacing) -> bool:
        """Whether ``other`` is the same spacing (see the module docstring)."""
        if self.dims == other.dims:
            pairs, tol = zip(self.widths, other.widths, strict=True), RELATIVE_TOLERANCE
        else:
            pairs, tol = zip(self.metres, other.metres, strict=True), METRES_TOLERANCE
        return all(math.isclose(a, b, rel_tol=tol) for a, b in pairs)


def _length(metres: float) -> str:
    """A length for a message: ``"556 km"``, ``"92.7 m"``."""
    return f"{metres / 1000:.4g} km" if metres >= 10_000 else f"{metres:.4g} m"


def coarse_spacing(field: xr.Dataset, factor: int = 1) -> GridSpacing:
    """The coarse spacing of a normalised field's grid (its own, or ``factor`` times it).

    Args:
        field: A normalised field with ``{dim}_bnds`` bounds (:func:`downscale.io.open_field`).
        factor: 1 for a coarse field; the upsampling factor for a fine one (training data
            coarsened by it).
    """
    ydim, xdim = horizontal_dims(field)
    geometry = geometry_of(field)
    if geometry.kind is GridKind.CURVILINEAR:  # index space: its cells' edges on the sphere
        dy_m, dx_m = median_spacing(lattice_of(geometry.mapping))
        return GridSpacing((ydim, xdim), (dy_m * factor, dx_m * factor),
                           (dy_m * factor, dx_m * factor))
    widths = tuple(float(np.median(np.abs(np.diff(field[f"{d}_bnds"].values, axis=1))))
                   * factor for d in (ydim, xdim))
    dy, dx = widths
    if geometry.kind is GridKind.ROTATED:  # degrees on the sphere, rotated
        ydim, xdim = "rlat", "rlon"
    if ydim in ("lat", "rlat"):
        bounds = field[f"{horizontal_dims(field)[0]}_bnds"].values
        centre = math.radians(float(bounds.min() + bounds.max()) / 2)
        metres = (EARTH_RADIUS_M * math.radians(dy),
                  EARTH_RADIUS_M * math.cos(centre) * math.radians(dx))
    else:
        metres = (dy, dx)
    return GridSpacing((ydim, xdim), (dy, dx), metres)


def recorded_spacing(trained: dict[str, Any]) -> GridSpacing | None:
    """The coarse spacing a checkpoint's ``downscale_data`` records (None: none)."""
    saved = trained.get("coarse_spacing")
    if not isinstance(saved, dict):
        return None
    dims, widths, metres = saved.get("dims"), saved.get("widths"), saved.get("metres")
    if not (isinstance(dims, list) and isinstance(widths, list) and isinstance(metres, list)):
        return None
    return GridSpacing((str(dims[0]), str(dims[1])), (float(widths[0]), float(widths[1])),
                       (float(metres[0]), float(metres[1])))


def check_spacing(trained: dict[str, Any], field: xr.Dataset, *, where: str, path: str,
                  terrain: bool = False, refuse: bool = True) -> str | None:
    """Refuse an input whose coarse spacing is not the one the checkpoint learned.

    Args:
        trained: The checkpoint's ``downscale_data`` record.
        field: The (coarse) input, normalised.
        where: The checkpoint's path, for the message.
        path: The input file, for the message.
        terrain: A terrain generator (its DEM spacing in the message).
        refuse: Refuse another spacing; False (``--any-spacing``): log it and go on.

    Returns:
        None where the spacings agree (or the checkpoint records none); else, when not
        refused, a line for the output's attributes saying both spacings.

    Raises:
        CheckpointError: One line with both spacings and what to do.
    """
    model = recorded_spacing(trained)
    if model is None:
        log.warning("%s does not record the coarse spacing it was trained at (saved by an "
                    "older version): the spacing of %s is not checked.", where, path)
        return None
    given = coarse_spacing(field)
    if model.matches(given):
        return None
    what = "coarse DEMs" if terrain else "coarse cells"
    if refuse:
        raise CheckpointError(f"{where}: trained on {what} of {model.describe()}, but {path} "
                              f"has cells of {given.describe()}. Give an input at the "
                              "model's spacing, pass --regrid conservative to remap it onto "
                              "that spacing first, or --any-spacing to apply it anyway.")
    note = (f"applied at {given.describe()}, though trained on {what} of "
            f"{model.describe()} (--any-spacing)")
    log.info("%s: %s.", path, note)  # asked for: said, and recorded in the output
    return note
