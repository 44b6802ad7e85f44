"""Generated benchmark inputs: CF NetCDF fields with a realistic spectrum (nothing committed).

Each time step is a Gaussian random field with a ``k^-3`` power spectrum (the large-scale
slope of atmospheric temperature, Nastrom & Gage 1985) around a meridional temperature
profile, written one step at a time so files of several GB never sit in memory.
"""

from __future__ import annotations

from pathlib import Path

import netCDF4
import numpy as np

from downscale.testing import synthetic_field

VARIABLE = "tas"


def write_field(path: Path, steps: int, ny: int, nx: int, seed: int = 0,
                chunk_steps: int = 1) -> Path:
    """Write a global ``(steps, ny, nx)`` float32 air temperature (K) to ``path``.

    Args:
        path: Output file (overwritten).
        steps: Time steps (daily, ``noleap`` calendar).
        ny: Latitude cells (equal spacing, -90 to 90).
        nx: Longitude cells (equal spacing, -180 to 180, periodic).
        seed: Random seed; step ``i`` uses ``seed + i``.
        chunk_steps: Time steps per NetCDF chunk (spatial chunk: the whole grid).

    Returns:
        ``path``; its size is about ``4 * steps * ny * nx`` bytes.
    """
    with netCDF4.Dataset(path, "w") as nc:
        nc.Conventions = "CF-1.8"
        nc.title = "downscale benchmark input (generated)"
        nc.createDimension("time", steps)
        nc.createDimension("lat", ny)
        nc.createDimension("lon", nx)
        nc.createDimension("bnds", 2)
        time = nc.createVariable("time", "f8", ("time",))
        time.units, time.calendar, time.standard_name = "days since 2000-01-01", "noleap", "time"
        time[:] = np.arange(steps, dtype=np.float64)
        for name, low, high, units in (("lat", -90.0, 90.0, "degrees_north"),
                                       ("lon", -180.0, 180.0, "degrees_east")):
            edges = np.linspace(low, high, (ny if name == "lat" else nx) + 1)
            coord = nc.createVariable(name, "f8", (name,))
            coord.units, coord.bounds = units, f"{name}_bnds"
            coord.standard_name = "latitude" if name == "lat" else "longitude"
            coord[:] = 0.5 * (edges[1:] + edges[:-1])
            bounds = nc.createVariable(f"{name}_bnds", "f8", (name, "bnds"))
            bounds[:] = np.stack([edges[:-1], edges[1:]], axis=1)
        values = nc.createVariable(VARIABLE, "f4", ("time", "lat", "lon"),
                                   chunksizes=(min(chunk_steps, steps), ny, nx))
        values.units, values.standard_name = "K", "air_temperature"
        lat = np.deg2rad(nc["lat"][:])[:, None]
        profile = 250.0 + 40.0 * np.cos(lat)
        for i in range(steps):
            anomaly = synthetic_field((ny, nx), seed=seed + i, std=3.0)
            values[i] = (profile + anomaly).astype(np.float32)
    return path
