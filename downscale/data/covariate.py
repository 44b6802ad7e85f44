"""A static covariate on the fine grid (e.g. generated terrain) for the climate downscaler.

The downscaler may read one static field at the *fine* resolution besides the coarse
variable: typically surface altitude, made by the terrain generator (``downscale run`` with a
``TerrainTask`` checkpoint) or taken from a real DEM. Orography carries the fine-scale
structure of temperature (lapse rate) and precipitation (rain shadows) that the coarse field
cannot.

The covariate must lie on the fine grid cell for cell: its cell bounds equal the fine grid's
(the north/east cells beyond a grid cropped to divide by the factor are ignored).
"""

from __future__ import annotations

from dataclasses import dataclass

import dask
import numpy as np
from numpy.typing import NDArray

from downscale.errors import InputError
from downscale.grid import horizontal_dims

#: Largest difference (degrees or metres) between covariate and fine cell bounds.
BOUNDS_TOLERANCE = 1e-6


@dataclass(frozen=True)
class StaticCovariate:
    """One static field on the fine grid and its normalisation.

    Attributes:
        values: ``(H, W)`` float32 values in ``units``, NaN where missing.
        variable: Its name in the file.
        units: Its units (``"m"`` for altitude), or None.
        path: The file it was read from.
        mean: Mean of the finite values (``units``), used to normalise it.
        std: Their standard deviation (``units``; 1 if the field is constant).
    """

    values: NDArray[np.float32]
    variable: str
    units: str | None
    path: str
    mean: float
    std: float

    def describe(self) -> dict[str, object]:
        """What a checkpoint records of the covariate it was trained with."""
        return {"variable": self.variable, "units": self.units, "mean": self.mean,
                "std": self.std}


def covariate_variable(path: str, variable: str | None) -> str:
    """The covariate's variable: ``variable``, else the file's elevation variable."""
    if variable:
        return variable
    from pathlib import Path

    from downscale.dem import netcdf_elevation_name

    return netcdf_elevation_name(Path(path))


def load_covariate(path: str, variable: str | None, fine_y_bnds: NDArray[np.floating],
                   fine_x_bnds: NDArray[np.floating]) -> StaticCovariate:
    """Read a static covariate and check that it lies on the given fine grid.

    Args:
        path: NetCDF file (or ``manifest://<id>``) with one static 2-D field (or a
            single time step).
        variable: Its variable; None picks the elevation variable
            (``standard_name: surface_altitude``, or the only gridded one).
        fine_y_bnds: ``(H, 2)`` ascending bounds of the fine grid's rows.
        fine_x_bnds: ``(W, 2)`` ascending bounds of its columns.

    Returns:
        The covariate cut to ``(H, W)``.

    Raises:
        InputError: The file cannot be read, holds several time steps, lies on another grid,
            or has no finite value.
    """
    from downscale.data.source import resolve_path
    from downscale.io import open_field

    path = resolve_path(path)
    name = covariate_variable(path, variable)
    ds = open_field(path, name)
    if ds.sizes.get("time", 1) != 1:
        raise InputError(f"{ds.sizes['time']} time steps; a static covariate has one",
                         path=path, variable=name, hint="select one time step (e.g. ncks -d "
                         "time,0) or give a 2-D field")
    ydim, xdim = horizontal_dims(ds)
    for dim, wanted in ((ydim, fine_y_bnds), (xdim, fine_x_bnds)):
        got = np.asarray(ds[f"{dim}_bnds"].values)
        n = len(wanted)
        if len(got) < n or not np.allclose(got[:n], wanted, rtol=0, atol=BOUNDS_TOLERANCE):
            raise InputError(f"its grid ({dim}: {len(got)} cells from {got[0, 0]:.6g}) is not "
                             f"the fine grid ({n} cells from {wanted[0, 0]:.6g})", path=path,
                             variable=name, hint="give the covariate on the fine grid of the "
                             "data (e.g. generate it with 'downscale run' and a terrain "
                             "checkpoint from the coarse grid)")
    da = ds[name].isel({"time": 0, ydim: slice(0, len(fine_y_bnds)),
                        xdim: slice(0, len(fine_x_bnds))})
    with dask.config.set(scheduler="synchronous"):
        values = np.asarray(da.values, dtype=np.float32)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise InputError("no finite values", path=path, variable=name,
                         hint="give a covariate with data")
    std = float(finite.std(dtype=np.float64))
    return StaticCovariate(values, name, da.attrs.get("units"), path,
                           float(finite.mean(dtype=np.float64)), std if std > 0 else 1.0)
