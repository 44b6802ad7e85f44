"""``downscale run --regrid conservative``: inputs remapped onto the model's coarse spacing.

A model learned one coarse spacing (:mod:`downscale.spacing`). An input at another one is,
when the user asks, first remapped conservatively (area-weighted, with xarray-regrid's
``conservative`` method: a maintained regridder, not one of ours) onto a grid of the
model's spacing, and the model downscales the remapped field. The model conserves exactly
against what it is given, so conservation then holds against the **remapped** field, not
the original one; the output says so (``downscale_regrid``) and the remapped inputs are
kept for checking (``downscale check --coarse REMAPPED --fine OUTPUT``).

The target grid: the whole cells of the model's spacing that fit in the input's extent,
centred on it (a strip narrower than one model cell along each edge is left out), on the
same kind of grid (latitude-longitude onto latitude-longitude, projected onto projected).
The remapped files are written once into ``.downscale_regrid/`` of the output directory,
named like their inputs under a tag of what made them, so a rerun finds them unchanged
(and the resume record still matches).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from numpy.typing import NDArray

from downscale.errors import CheckpointError, InputError
from downscale.grid import horizontal_dims
from downscale.spacing import GridSpacing, coarse_spacing

#: Where the remapped inputs live, inside the output directory.
REGRID_FOLDER = ".downscale_regrid"


def target_edges(bounds: NDArray[np.floating], width: float) -> NDArray[np.float64]:
    """Cell edges of ``width`` covering as much of an axis as whole cells do, centred.

    Args:
        bounds: The input axis' bounds, ``(n, 2)``, ascending.
        width: The model's cell width along the axis (the bounds' units).

    Returns:
        ``(m + 1,)`` ascending edges, ``m >= 1``.
    """
    low, high = float(np.min(bounds)), float(np.max(bounds))
    n = max(1, math.floor((high - low) / width + 1e-9))
    start = low + ((high - low) - n * width) / 2
    return start + width * np.arange(n + 1, dtype=np.float64)


def remapped_field(field: xr.Dataset, variable: str, spacing: GridSpacing,
                   path: str | None = None) -> xr.Dataset:
    """A normalised field remapped conservatively onto a grid of ``spacing``.

    Args:
        field: A normalised coarse field (:func:`downscale.io.open_field`).
        variable: Its variable.
        spacing: The model's coarse spacing, on the same kind of grid.
        path: The input file, for the message.

    Returns:
        The remapped field with CF bounds, the variable's attributes kept; NaN where the
        input has no valid value.

    Raises:
        InputError: The input spans fewer than two of the model's cells along an axis.
    """
    from xarray_regrid import Grid  # noqa: F401  (registers the .regrid accessor)

    ydim, xdim = horizontal_dims(field)
    coords: dict[str, object] = {}
    for dim, width in zip((ydim, xdim), spacing.widths, strict=True):
        edges = target_edges(field[f"{dim}_bnds"].values, width)
        if edges.size < 3:
            raise InputError(f"spans less than two of the model's cells ({spacing.describe()}) "
                             f"along '{dim}': nothing to remap onto", path=path,
                             variable=variable, hint="give a larger input")
        coords[dim] = (dim, (edges[:-1] + edges[1:]) / 2, dict(field[dim].attrs))
        coords[f"{dim}_bnds"] = ((dim, "bnds"), np.stack([edges[:-1], edges[1:]], axis=1))
    target = xr.Dataset(coords={ydim: coords[ydim], xdim: coords[xdim]})
    source = field[[variable]].drop_vars([f"{d}_bnds" for d in (ydim, xdim)], errors="ignore")
    latitude = ydim if ydim == "lat" else None
    out: xr.Dataset = source.regrid.conservative(target, latitude_coord=latitude,
                                                 time_dim="time")
    out = out.transpose(*field[variable].dims)
    out[variable] = out[variable].astype(np.float32).assign_attrs(field[variable].attrs)
    for dim in (ydim, xdim):
        out[f"{dim}_bnds"] = coords[f"{dim}_bnds"]  # type: ignore[assignment]
        out[dim].attrs["bounds"] = f"{dim}_bnds"
    if "time" in field.coords:
        out = out.assign_coords(time=field["time"])
    return out.assign_attrs(dict(field.attrs))


def _tag(path: str, spacing: GridSpacing) -> str:
    """What a remapped file is made of: the input (path, size, time) and the spacing."""
    from importlib.metadata import version

    stat = os.stat(path)
    text = json.dumps([str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns,
                       spacing.as_dict(), version("xarray-regrid")])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def regrid_inputs(paths: Sequence[str], fields: Sequence[xr.Dataset], variable: str,
                  spacing: GridSpacing, directory: Path) -> list[str]:
    """Remap each input onto ``spacing``; the remapped files' paths, in order.

    A remapped file already made from the same input and spacing is reused.

    Args:
        paths: The inputs.
        fields: The inputs opened (normalised).
        variable: The variable downscaled.
        spacing: The model's coarse spacing (:func:`downscale.spacing.recorded_spacing`).
        directory: The output directory (created if missing).

    Raises:
        CheckpointError: The model's grid is of another kind than the inputs'.
        InputError: xarray-regrid is not installed, or the directory cannot be written.
    """
    try:
        import xarray_regrid  # noqa: F401
    except ImportError as exc:
        raise InputError("--regrid conservative needs xarray-regrid",
                         hint="pip install 'downscale[regrid]'") from exc
    given = coarse_spacing(fields[0])
    if given.dims != spacing.dims:
        raise CheckpointError(f"the model's grid is {spacing.describe()}, the input's "
                              f"{given.describe()}: --regrid conservative remaps within one "
                              "kind of grid (latitude-longitude or projected). Give an input "
                              "on the model's kind of grid.")
    from downscale.io import write_netcdf

    out = []
    for path, field in zip(paths, fields, strict=True):
        target = directory / REGRID_FOLDER / _tag(path, spacing) / Path(path).name
        if not target.exists():
            remapped = remapped_field(field, variable, spacing, path).compute()
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise InputError(f"cannot create the folder of remapped inputs "
                                 f"({exc.strerror or exc})", path=target.parent,
                                 hint="choose a writable output directory") from exc
            write_netcdf(remapped, target)
        out.append(str(target))
    return out


def regrid_note(before: GridSpacing, after: GridSpacing, paths: Sequence[str]) -> str:
    """The output's ``downscale_regrid`` attribute: what was remapped, and where it is."""
    from importlib.metadata import version

    return (f"inputs remapped conservatively (xarray-regrid {version('xarray-regrid')}) "
            f"from {before.describe()} onto the model's {after.describe()}; conservation "
            f"holds against the remapped field: {', '.join(paths)}")


def regrid_for_model(trained: dict[str, object], where: str, paths: Sequence[str],
                     fields: Sequence[xr.Dataset], variable: str, directory: Path
                     ) -> tuple[list[str], str | None]:
    """The inputs to downscale with ``--regrid conservative``, and the note on the output.

    Inputs already at the model's spacing are left as they are (no note).

    Args:
        trained: The checkpoint's ``downscale_data`` record.
        where: The checkpoint's path, for messages.
        paths: The inputs.
        fields: The inputs opened (one grid: :func:`downscale.batch.inputs.open_inputs`).
        variable: The variable downscaled.
        directory: The output directory (the remapped inputs go inside it).

    Raises:
        CheckpointError: The checkpoint does not record its spacing (saved by an older
            version), or its grid is of another kind than the inputs'.
    """
    from downscale.spacing import recorded_spacing

    model = recorded_spacing(dict(trained))
    if model is None:
        raise CheckpointError(f"{where}: does not record the coarse spacing it was trained "
                              "at (saved by an older version), so --regrid conservative has "
                              "no target. Give inputs at the model's spacing without --regrid.")
    before = coarse_spacing(fields[0])
    if model.matches(before):
        return list(paths), None
    remapped = regrid_inputs(paths, fields, variable, model, directory)
    return remapped, regrid_note(before, model, remapped)
