"""Checks at the door of ``downscale run``: inputs, variable, units, grids, covariate.

Everything here runs before anything is written, so that a bad input is one clear line
(:mod:`downscale.errors`) and no output is half-written.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr
from numpy.typing import NDArray

from downscale.checkpoint import CheckpointInfo, check_trained_for
from downscale.errors import CheckpointError, InputError
from downscale.grid import horizontal_dims

if TYPE_CHECKING:
    from downscale.data.covariate import StaticCovariate
    from downscale.units import UnitConversion


def default_variable(ckpt: CheckpointInfo, first_input: str) -> str:
    """The variable to downscale when ``--variable`` is not given.

    A downscaling checkpoint's variable, matched by meaning: the first input's variable
    with the checkpoint's ``standard_name`` (:func:`downscale.matching.choose_variable`);
    for a terrain generator, which applies to any DEM, the elevation variable of the first
    input (``standard_name: surface_altitude``, or its only gridded variable).
    """
    if not ckpt.is_terrain:
        from downscale.matching import choose_variable

        return choose_variable(first_input, ckpt.variable, ckpt.standard_name)
    from downscale.dem import netcdf_elevation_name

    return netcdf_elevation_name(Path(first_input))


def _check_variable_present(path: str, variable: str, trained: str) -> None:
    """Raise a clear error when an input lacks the variable (unreadable files: open_field)."""
    from downscale.io import gridded_variables_in

    try:
        names = gridded_variables_in(path, variable)
    except InputError:
        return  # missing, corrupt, not NetCDF: open_field says what is wrong
    if variable in names or _has_variable(path, variable):
        return
    import difflib

    close = difflib.get_close_matches(variable, names, n=1)
    guess = f" (did you mean '{close[0]}'?)" if close else ""
    if variable == trained:
        hint = (f"the checkpoint was trained on '{trained}': give files that contain it (if "
                f"yours is the same quantity under another name, rename it, e.g. ncrename -v "
                f"{(close or names or ['NAME'])[0]},{trained})")
    else:
        hint = f"give files that contain '{variable}'"
    raise InputError(f"variable not found{guess}; gridded variables: "
                     f"{', '.join(sorted(names)) or 'none'}", path=path, variable=variable,
                     hint=hint)


def _has_variable(path: str, variable: str) -> bool:
    """Whether the file has ``variable`` at all (a coordinate, say: open_field explains)."""
    with xr.open_dataset(path, decode_times=False) as ds:
        return variable in ds.variables


def open_inputs(paths: Sequence[str], variable: str, ckpt: CheckpointInfo) -> list[xr.Dataset]:
    """Open every input lazily; check the variable and that they share one grid.

    Raises:
        InputError: An input is missing, unreadable, lacks the variable or lies on another
            grid than the first.
    """
    from downscale.data.source import shared_source

    for path in paths:
        _check_variable_present(path, variable, ckpt.variable)
    # Shared with the output plan and the chunks computed here: each file is opened once.
    fields = [shared_source([path], variable).dataset for path in paths]
    first = fields[0]
    for path, field in zip(paths, fields, strict=True):
        if horizontal_dims(field) != horizontal_dims(first):
            raise InputError(f"grid dimensions {horizontal_dims(field)} differ from "
                             f"{horizontal_dims(first)} of {paths[0]}", path=path,
                             variable=variable, hint="regrid the files to one grid")
        for dim in horizontal_dims(field):
            a, b = field[f"{dim}_bnds"].values, first[f"{dim}_bnds"].values
            if a.shape != b.shape or not np.allclose(a, b, rtol=0, atol=1e-6):
                raise InputError(f"grid ({dim}) differs from that of {paths[0]}", path=path,
                                 variable=variable,
                                 hint="regrid the files to one grid, or run them separately")
    return fields


def input_units(paths: Sequence[str], fields: Sequence[xr.Dataset], variable: str,
                ckpt: CheckpointInfo) -> UnitConversion | None:
    """How the inputs' values reach the checkpoint's units (one conversion for all).

    Returns:
        The conversion (:mod:`downscale.units`); None when the checkpoint records no units.

    Raises:
        InputError: An input has no units attribute, or other units than the first.
        CheckpointError: An input holds another quantity, or units with no conversion
            into the checkpoint's (:func:`~downscale.checkpoint.check_trained_for`).
    """
    conversion: UnitConversion | None = None
    for path, field in zip(paths, fields, strict=True):
        attrs = field[variable].attrs
        units = attrs.get("units")
        if ckpt.units is not None and units is None:
            raise InputError(f"has no units attribute; the checkpoint expects '{ckpt.units}'",
                             path=path, variable=variable,
                             hint=f"set it (e.g. ncatted -a units,{variable},o,c,{ckpt.units})")
        this = check_trained_for(ckpt.contents, ckpt.path, units=str(units).strip(), data=path,
                                 terrain=ckpt.is_terrain, variable=variable,
                                 standard_name=attrs.get("standard_name"), convert_units=True)
        if conversion is not None and this is not None and (
                (this.scale, this.offset) != (conversion.scale, conversion.offset)):
            raise InputError(f"units '{this.source}' differ from '{conversion.source}' of "
                             f"{paths[0]}", path=path, variable=variable,
                             hint="convert the files to one unit, or run them separately")
        conversion = conversion or this
    return conversion


def run_attrs(units: UnitConversion | None, spacing_note: str | None = None,
              regrid_note: str | None = None) -> dict[str, str]:
    """Global attributes saying what was done to the inputs before the model saw them.

    Args:
        units: The units conversion (``downscale_units_conversion``), if any.
        spacing_note: Where the model ran at another spacing than it learned
            (``downscale_spacing``, :func:`downscale.spacing.check_spacing`).
        regrid_note: Where it ran on inputs remapped onto its spacing
            (``downscale_regrid``, :func:`downscale.regrid.regrid_for_model`).
    """
    attrs = {}
    if units is not None and not units.is_identity:
        attrs["downscale_units_conversion"] = units.describe()
    if spacing_note:
        attrs["downscale_spacing"] = spacing_note
    if regrid_note:
        attrs["downscale_regrid"] = regrid_note
    return attrs


@functools.lru_cache(maxsize=2)
def covariate_on(path: str, variable: str | None, factor: int, y_bnds: bytes, x_bnds: bytes
                 ) -> StaticCovariate:
    """The static covariate on the fine grid of coarse bounds (bytes: a cache key).

    Read once per process; :func:`downscale.data.covariate.load_covariate` checks its grid.
    """
    from downscale.data.covariate import load_covariate
    from downscale.grid import fine_bounds

    def fine(raw: bytes) -> NDArray[np.float64]:
        return fine_bounds(np.frombuffer(raw, dtype=np.float64).reshape(-1, 2), factor)

    return load_covariate(path, variable, fine(y_bnds), fine(x_bnds))


def bounds_key(field: xr.Dataset) -> tuple[bytes, bytes]:
    """The field's coarse ``(y, x)`` bounds as bytes (the key of :func:`covariate_on`)."""
    ydim, xdim = horizontal_dims(field)
    return (np.asarray(field[f"{ydim}_bnds"].values, np.float64).tobytes(),
            np.asarray(field[f"{xdim}_bnds"].values, np.float64).tobytes())


def check_covariate(covariate: str | None, covariate_variable: str | None,
                    ckpt: CheckpointInfo, field: xr.Dataset) -> str | None:
    """The covariate is given exactly when the checkpoint needs one, on the right grid.

    Returns:
        The covariate's absolute path (workers may have another cwd), or None.
    """
    trained = ckpt.covariate
    if trained is None and covariate is not None:
        raise InputError("the checkpoint was trained without a static covariate",
                         path=covariate, hint="leave out --covariate")
    if trained is None:
        return None
    if covariate is None:
        raise CheckpointError(f"{ckpt.path}: trained with a static covariate "
                              f"('{trained.get('variable')}' in {trained.get('units')}). Pass "
                              "--covariate FILE with it on the fine grid of the input.")
    covariate = str(Path(covariate).resolve())
    got = covariate_on(covariate, covariate_variable, ckpt.factor, *bounds_key(field))
    if trained.get("units") and got.units != trained["units"]:
        raise InputError(f"covariate in {got.units}, but the checkpoint was trained with it "
                         f"in {trained['units']}", path=covariate, variable=got.variable,
                         hint=f"convert it to {trained['units']}")
    return covariate
