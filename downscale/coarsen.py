"""``downscale coarsen``: the area-weighted, NaN-aware coarsening this package trains on.

Each coarse cell is the area-weighted mean (on the sphere) of the valid fine cells it
covers; a coarse cell with no valid fine cell is missing. This is the coarse field that
``fit`` pairs with the fine one and that ``check`` holds a downscaled field to, so::

    downscale coarsen --input fine.nc --factor 4 --output coarse.nc
    downscale run --checkpoint CKPT --input coarse.nc --output downscaled.nc
    downscale check --coarse coarse.nc --fine downscaled.nc

An unweighted block mean (``xarray``'s ``coarsen(...).mean()``, ``cdo`` without cell
areas) is a different field: ``check`` against it reports errors where latitude varies
within a cell or cells are missing. A grid that does not divide by the factor is cropped
at its north/east edge (logged), or refused with ``--no-crop``. The output is CF NetCDF
with cell bounds, written atomically (nothing is left at ``--output`` on failure).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import xarray as xr

from downscale import __version__
from downscale.aggregate import coarsen_field, crop_to_factor
from downscale.check import require_variables
from downscale.errors import InputError
from downscale.helptext import plain
from downscale.io import gridded_variables_in, open_field, write_netcdf


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="downscale coarsen", description=plain(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="fine NetCDF file")
    parser.add_argument("--factor", required=True, type=int,
                        help="fine cells per coarse cell along each axis (e.g. 4)")
    parser.add_argument("--output", required=True, help="coarse NetCDF file to write")
    parser.add_argument("--variable", action="append", help="variable to coarsen "
                        "(repeatable; default: every gridded variable of the file)")
    parser.add_argument("--no-crop", action="store_true", help="refuse a grid that does "
                        "not divide by the factor instead of cropping its north/east edge")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command (see module docstring)."""
    args = _parser().parse_args(argv)
    out = coarsen_file(args.input, args.output, args.factor, args.variable,
                       crop=not args.no_crop)
    print(f"wrote {out}")


def coarsen_file(path: str | Path, output: str | Path, factor: int,
                 variables: Sequence[str] | None = None, *, crop: bool = True) -> Path:
    """Coarsen variables of a NetCDF file by ``factor`` and write them as CF NetCDF.

    Args:
        path: The fine file.
        output: The coarse file (written atomically).
        factor: Fine cells per coarse cell along each axis (>= 2).
        variables: Variables to coarsen; default: every gridded variable of the file.
        crop: Crop a grid that does not divide by ``factor``; else refuse it.

    Returns:
        The path written.

    Raises:
        InputError: Missing file or variable, a factor below 2 or larger than the grid, an
            unusable grid, or an output that cannot be written.
    """
    if factor < 2:
        raise InputError(f"factor must be an integer >= 2, got {factor}", path=path,
                         hint="set --factor")
    if variables:
        require_variables([str(path)], variables)
    names = list(variables or gridded_variables_in(path))
    if not names:
        raise InputError("no gridded variable (2-D or more) in the file", path=path,
                         hint="check that it holds a latitude-longitude field")
    pieces = [coarse_cf(path, name, factor, crop=crop) for name in names]
    return write_netcdf(xr.merge(pieces, combine_attrs="override"), output)


def coarse_cf(path: str | Path, variable: str, factor: int, *, crop: bool = True
              ) -> xr.Dataset:
    """One variable of ``path``, coarsened by ``factor``, as a CF Dataset (lazy)."""
    fine = crop_to_factor(open_field(path, variable), (factor, factor), variable=variable,
                          allow_crop=crop)
    return coarsened_cf(fine, variable, factor)


def coarsened_cf(fine: xr.Dataset, variable: str, factor: int) -> xr.Dataset:
    """The area-weighted coarsening of a normalised field, as a CF Dataset (lazy).

    Args:
        fine: A normalised field (:func:`downscale.io.open_field`) whose grid divides by
            ``factor`` (:func:`downscale.aggregate.crop_to_factor`).
        variable: The variable.
        factor: Fine cells per coarse cell along each axis.

    Returns:
        The coarse field with CF attributes, bounds and a ``history`` naming the source.
    """
    from downscale.cf import downscaled_dataset

    coarse = coarsen_field(fine, variable, (factor, factor))
    action = (f"downscale {__version__} coarsen --factor {factor} (area-weighted mean of "
              f"the valid fine cells) from {fine.attrs.get('source_files', 'memory')}")
    ds = downscaled_dataset(coarse[variable].data, coarse, variable,
                            dict(coarse[variable].attrs), factor=factor, checkpoint="",
                            history=action,
                            extra_attrs={"title": f"{variable} coarsened by a factor of "
                                         f"{factor} (area-weighted)",
                                         "source": f"downscale {__version__} coarsen"})
    ds.attrs.pop("downscale_checkpoint", None)
    return ds
