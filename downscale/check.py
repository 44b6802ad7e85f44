"""``downscale check``: audit any pair of NetCDF files on nested grids for conservation.

Works on files written by this package or by any other tool (CDO, xESMF, a neural net).
For each variable it reports the area-weighted conservation error per coarse cell (max
and mean) and globally, the checkerboard index of the fine field at the nesting factor,
and the share of missing fine cells. Exit status 0 when every variable is within the
tolerance, 1 when one is not, 2 for unusable input.

Example::

    downscale check --coarse tas_coarse.nc --fine tas_downscaled.nc --tolerance 1e-5
    downscale check --coarse sst_1deg.nc --fine sst_bilinear.nc --variable sst --json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import xarray as xr

from downscale.errors import InputError
from downscale.grid import horizontal_dims, nesting_factor
from downscale.helptext import plain
from downscale.io import gridded_variables_in, open_field
from downscale.io.curvilinear_input import in_coarse_index_space
from downscale.metrics import ConservationError, checkerboard_index, conservation_error_xr

log = logging.getLogger(__name__)

#: Default tolerance on the relative conservation error (float32 output is exact to ~1e-7).
DEFAULT_TOLERANCE = 1e-5


@dataclass(frozen=True)
class VariableAudit:
    """Audit figures of one variable (conservation errors in the variable's units)."""

    variable: str
    units: str
    factor: int
    conservation: ConservationError
    checkerboard_index: float
    missing_share: float
    passed: bool

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["conservation"] = self.conservation.as_dict()
        return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="downscale check", description=plain(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--coarse", required=True, help="coarse NetCDF file")
    parser.add_argument("--fine", required=True, help="fine (downscaled) NetCDF file")
    parser.add_argument("--variable", action="append", help="variable to audit (repeatable; "
                        "default: every gridded variable in both files)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="largest relative conservation error (per coarse cell and "
                        f"global) that passes (default {DEFAULT_TOLERANCE:g})")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Run the audit (see module docstring); exits 1 when a variable fails."""
    args = _parser().parse_args(argv)
    variables = checked_variables(args.coarse, args.fine, args.variable)
    audits = [audit_variable(args.coarse, args.fine, v, args.tolerance) for v in variables]
    if args.json:
        print(json.dumps({"coarse": args.coarse, "fine": args.fine,
                          "tolerance": args.tolerance,
                          "passed": all(a.passed for a in audits),
                          "variables": [a.as_dict() for a in audits]}, indent=2,
                         default=_json_number))
    else:
        print(format_table(audits, args.tolerance))
    if not all(a.passed for a in audits):
        raise SystemExit(1)


def checked_variables(coarse_path: str, fine_path: str, chosen: Sequence[str] | None
                      ) -> list[str]:
    """The variables to audit: ``chosen`` (each checked in both files), or all in common.

    Raises:
        InputError: A file is missing or unreadable, or lacks a chosen variable.
    """
    if not chosen:
        return common_variables(coarse_path, fine_path)
    require_variables((coarse_path, fine_path), chosen)
    return list(chosen)


def require_variables(paths: Sequence[str], chosen: Sequence[str]) -> None:
    """Check that every file holds every chosen variable (the commands' ``--variable``).

    Raises:
        InputError: A file is missing or unreadable, or lacks a chosen variable; the
            message lists the file's gridded variables (never its bounds).
    """
    for path, names in zip(paths, _gridded(*paths, variable=", ".join(chosen)), strict=True):
        for variable in chosen:
            if variable not in names:
                raise InputError(f"variable not found; gridded variables: "
                                 f"{', '.join(sorted(names)) or 'none'}", path=path,
                                 variable=variable, hint="choose one with --variable")


def _gridded(*paths: str, variable: str | None = None) -> list[set[str]]:
    """The gridded (non-bounds) data variables of each file (``variable``: for messages)."""
    return [set(gridded_variables_in(path, variable)) for path in paths]


def common_variables(coarse_path: str, fine_path: str) -> list[str]:
    """Gridded data variables present in both files (bounds variables excluded)."""
    names = _gridded(coarse_path, fine_path)
    common = sorted(names[0] & names[1])
    if not common:
        raise InputError(f"no gridded variable in common with {coarse_path} (coarse has "
                         f"{sorted(names[0])}, fine has {sorted(names[1])})", path=fine_path,
                         hint="name the variable with --variable")
    return common


def audit_variable(coarse_path: str, fine_path: str, variable: str, tolerance: float
                   ) -> VariableAudit:
    """Conservation, checkerboard and missing-value figures of one variable.

    Raises:
        InputError: The grids do not nest, the units or time steps differ.
    """
    coarse = open_field(coarse_path, variable)
    # A curvilinear fine file numbers its own cells: renumbered in the coarse file's.
    fine = in_coarse_index_space(coarse, open_field(fine_path, variable))
    fine = _within(coarse, fine, variable)
    factor = _nesting(coarse, fine, fine_path, variable)
    cu, fu = coarse[variable].attrs.get("units"), fine[variable].attrs.get("units")
    if cu != fu:
        raise InputError(f"units '{fu}' differ from the coarse file's '{cu}'", path=fine_path,
                         variable=variable, hint="convert one file to the other's units")
    if coarse.sizes["time"] != fine.sizes["time"]:
        raise InputError(f"{fine.sizes['time']} time steps, the coarse file has "
                         f"{coarse.sizes['time']}", path=fine_path, variable=variable,
                         hint="compare files covering the same time steps")
    error = conservation_error_xr(fine, coarse, factor, variable=variable)
    fine_values = fine[variable]
    indices = [checkerboard_index(fine_values.isel(time=t).values, factor)
               for t in range(fine.sizes["time"])]
    finite = [i for i in indices if math.isfinite(i)]
    missing = float(np.isnan(fine_values.data).mean().compute())
    passed = (error.max_rel <= tolerance and error.global_rel <= tolerance
              and error.n_uncovered == 0)
    return VariableAudit(variable, str(fu or ""), factor, error,
                         float(np.mean(finite)) if finite else float("nan"), missing, passed)


def _within(coarse: xr.Dataset, fine: xr.Dataset, variable: str) -> xr.Dataset:
    """The fine cells inside the coarse grid's extent (logged when some are outside).

    ``coarsen`` and ``fit`` crop a grid that does not divide by the factor at its
    north/east edge, so a truth file may hold a few more rows or columns than its coarse
    version covers; they take no part in the audit.
    """
    keep = {}
    for cd, fd in zip(horizontal_dims(coarse), horizontal_dims(fine), strict=True):
        cb, fb = coarse[f"{cd}_bnds"].values, fine[f"{fd}_bnds"].values
        tol = 1e-4 * float(np.min(np.abs(np.diff(fb, axis=1))))
        inside = (fb[:, 0] >= cb.min() - tol) & (fb[:, 1] <= cb.max() + tol)
        if not inside.all() and inside.any():
            keep[fd] = np.flatnonzero(inside)
    if keep:
        dropped = ", ".join(f"{fine.sizes[d] - len(i)} along '{d}'" for d, i in keep.items())
        log.info("%s: ignoring the fine cells outside the coarse grid (%s)", variable, dropped)
        fine = fine.isel(keep)
    return fine


def _nesting(coarse: xr.Dataset, fine: xr.Dataset, fine_path: str, variable: str) -> int:
    """The common nesting factor of both axes; refuse grids that do not nest."""
    cdims, fdims = horizontal_dims(coarse), horizontal_dims(fine)
    factors = []
    for cd, fd in zip(cdims, fdims, strict=True):
        factor = nesting_factor(coarse[f"{cd}_bnds"].values, fine[f"{fd}_bnds"].values)
        if factor is None:
            raise InputError(f"the fine grid does not nest in the coarse grid along '{fd}' "
                             f"({coarse.sizes[cd]} coarse vs {fine.sizes[fd]} fine cells)",
                             path=fine_path, variable=variable,
                             hint="compare files whose fine cells tile the coarse cells exactly")
        factors.append(factor)
    if factors[0] != factors[1]:
        raise InputError(f"nesting factors differ by axis ({factors[0]} and {factors[1]})",
                         path=fine_path, variable=variable,
                         hint="only equal factors along both axes are supported")
    return factors[0]


def format_table(audits: Sequence[VariableAudit], tolerance: float) -> str:
    """Human-readable report, one block per variable."""
    lines = []
    for a in audits:
        c = a.conservation
        lines += [
            f"{a.variable} [{a.units}] factor {a.factor}: {'PASS' if a.passed else 'FAIL'} "
            f"(tolerance {tolerance:g})",
            f"  conservation per coarse cell: max {c.max_abs:.3e} {a.units}, mean "
            f"{c.mean_abs:.3e} {a.units}, max relative {c.max_rel:.3e}",
            f"  conservation global: {c.global_abs:.3e} {a.units}, relative {c.global_rel:.3e}"
            f"  ({c.n_cells} coarse cells"
            + (f", {c.n_uncovered} with no valid fine cell" if c.n_uncovered else "") + ")",
            f"  checkerboard index {a.checkerboard_index:.3e}, missing fine cells "
            f"{100 * a.missing_share:.1f}%",
        ]
    return "\n".join(lines)


def _json_number(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
