"""CF-1.11 metadata for the NetCDF files the package writes, in the input's conventions.

Every output passes the IOOS compliance-checker's ``cf:1.11`` suite without errors or
warnings (``tests/test_standards.py``): bounds are data variables, not coordinates (so no
global ``coordinates`` attribute), and CF-1.11's recommended ``units_metadata`` is stated
for temperatures and for times on calendars with leap seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dask.array as dsa
import numpy as np
import xarray as xr

from downscale import __version__
from downscale.conventions import FieldConventions, conventions_of, restore
from downscale.grid_geometry import GRID_MAPPING_COORD, GridKind, geographic_coords, geometry_of
from downscale.io import history_line

CONVENTIONS = "CF-1.11"

#: Attributes copied from the source variable to the downscaled one.
_KEPT_ATTRS = ("standard_name", "long_name", "units", "units_metadata", "cell_methods",
               "comment")


def downscaled_dataset(values: np.ndarray[Any, Any] | dsa.Array, template: xr.Dataset,
                       variable: str, source_attrs: dict[str, Any], *, factor: int,
                       checkpoint: str, fill_value: float = 1e20, history: str | None = None,
                       extra_attrs: Mapping[str, Any] | None = None) -> xr.Dataset:
    """Wrap a downscaled array in a CF-compliant Dataset on the fine grid.

    Args:
        values: ``(time, H, W)`` (or ``(H, W)`` for fields without time), NaN = missing;
            a numpy array, or a Dask array that stays lazy (written chunk by chunk).
        template: The fine grid (coords and bounds) in normalised form, from
            :func:`downscale.io.open_field`. When it carries the input's conventions
            (:func:`downscale.conventions.conventions_of`), the Dataset comes back in
            them (:func:`downscale.conventions.restore`): names, dimension order,
            longitude range, latitude order, time bounds, attributes, encoding.
        variable: Output variable name (the source's name).
        source_attrs: The source variable's attributes (units, standard_name, ...).
        factor: The upsampling factor, recorded in the history.
        checkpoint: The checkpoint used, recorded in the history.
        fill_value: ``_FillValue`` written for missing cells.
        history: What was done, for the ``history`` entry (a timestamp is prepended);
            default: the ``downscale predict`` command.
        extra_attrs: Further global attributes (provenance), added last.

    """
    record = conventions_of(template)
    ydim = "lat" if "lat" in template.dims else "y"
    xdim = "lon" if ydim == "lat" else "x"
    no_time = bool(template.attrs.get("downscale_added_time"))
    dims: tuple[str, ...] = ("time", ydim, xdim)
    if no_time:
        template = template.isel(time=0, drop=True)
        values = values.reshape(values.shape[-2:])
        dims = (ydim, xdim)
    attrs = {k: source_attrs[k] for k in _KEPT_ATTRS if k in source_attrs}
    methods = str(attrs.get("cell_methods", ""))
    if "area:" not in methods:
        attrs["cell_methods"] = (methods + " area: mean").strip()
    attrs.update(_units_metadata(attrs))
    ds = xr.Dataset({variable: (dims, values.astype(np.float32), attrs)},
                    coords={c: template[c] for c in template.coords})
    # Bounds are not coordinates in CF (and as coordinates xarray would list them in a
    # global "coordinates" attribute, which CF does not have).
    ds = ds.reset_coords([c for c in map(str, ds.coords) if c.endswith("_bnds")])
    ds[variable].encoding.update(_FillValue=np.float32(fill_value), zlib=True, complevel=4)
    for dim in (ydim, xdim):
        ds[dim].attrs["bounds"] = f"{dim}_bnds"
        ds[dim].encoding["_FillValue"] = None
        ds[f"{dim}_bnds"].encoding["_FillValue"] = None
    if ydim == "y":
        ds = _with_grid_mapping(ds, variable, record)
    if "time" in ds.coords:
        ds["time"].attrs.setdefault("standard_name", "time")
        ds["time"].attrs.setdefault("axis", "T")
        ds["time"].attrs.pop("bounds", None)
        if _calendar(ds["time"]) in _LEAP_SECOND_CALENDARS:
            ds["time"].attrs.setdefault("units_metadata", "leap_seconds: unknown")
        # CF 2.5.1: coordinate variables must not have a _FillValue (xarray adds one).
        ds["time"].encoding["_FillValue"] = None
    sources = str(template.attrs.get("source_files", ""))
    if history is None:
        history = (f"downscale {__version__} predict --ckpt_path {checkpoint} "
                   f"(factor {factor}) from {sources}")
    ds.attrs = {
        "Conventions": CONVENTIONS,
        "title": f"{variable} downscaled by a factor of {factor} with downscale",
        "source": f"downscale {__version__}: mass-conserving learned downscaling",
        "history": history_line(history),
        "downscale_checkpoint": checkpoint,
        "downscale_factor": np.int32(factor),
        "downscale_inputs": sources,
        **(extra_attrs or {}),
    }
    out = restore(ds, record)
    if ydim == "y" and geometry_of(template).kind is GridKind.CURVILINEAR:
        out = _bare_index_dims(out, variable)
    return out


def _bare_index_dims(ds: xr.Dataset, variable: str) -> xr.Dataset:
    """A curvilinear grid's index dimensions, without coordinate variables (CF 5.2).

    Their values would be cell positions in index space (:mod:`downscale.curvilinear`),
    which tools take for map axes; the 2-D lat/lon place the cells.
    """
    dims = [str(d) for d in ds[variable].dims[-2:]]
    bounds = [str(ds[d].attrs.get("bounds", "")) for d in dims if d in ds.variables]
    return ds.drop_vars([v for v in (*dims, *bounds) if v in ds.variables])


def _with_grid_mapping(ds: xr.Dataset, variable: str, record: FieldConventions | None
                       ) -> xr.Dataset:
    """x/y axes described; a mapped grid's 2-D lat/lon and its grid mapping variable.

    A curvilinear grid has 2-D lat/lon and no grid mapping.

    The grid mapping variable is the input's (:func:`downscale.conventions.restore`
    copies it) or, for a field without a record, ``crs``.
    """
    geometry = geometry_of(ds)
    rotated = geometry.kind is GridKind.ROTATED
    curvilinear = geometry.kind is GridKind.CURVILINEAR
    for dim, std in (("y", "latitude"), ("x", "longitude")):
        if rotated:
            ds[dim].attrs.update(units="degrees", standard_name=f"grid_{std}")
        else:
            ds[dim].attrs.update(units="m", standard_name=f"projection_{dim}_coordinate")
        ds[dim].attrs["axis"] = dim.upper()
    if not geometry.mapped:
        return ds
    extra = geographic_coords(ds)
    ds = ds.drop_vars(GRID_MAPPING_COORD).assign(extra).set_coords(["lat", "lon"])
    for name in extra:
        ds[name].encoding["_FillValue"] = None
        if name.endswith("_bnds"):  # xarray would give bounds a "coordinates" attribute
            ds[name].encoding["coordinates"] = None
    ds[variable].encoding["coordinates"] = "lat lon"
    if not curvilinear and (record is None or record.grid_mapping is None):
        ds["crs"] = ((), np.int32(0), dict(geometry.mapping))
        ds[variable].attrs["grid_mapping"] = "crs"
    return ds


#: Calendars whose times may or may not count leap seconds (CF-1.11 §4.4.3).
_LEAP_SECOND_CALENDARS = ("standard", "gregorian", "proleptic_gregorian", "julian")


def _calendar(time: xr.DataArray) -> str:
    """The CF calendar of a decoded time coordinate."""
    if np.issubdtype(time.dtype, np.datetime64):
        return str(time.encoding.get("calendar", "proleptic_gregorian"))
    return str(time.encoding.get("calendar", time.attrs.get("calendar", "standard")))


def _units_metadata(attrs: Mapping[str, Any]) -> dict[str, str]:
    """CF-1.11 §3.1.2 ``units_metadata`` for a temperature that does not state it.

    A quantity whose standard name ends in "temperature" is a temperature on its scale
    (differences, anomalies and tendencies have names of their own); any other
    temperature unit is marked unknown rather than guessed.
    """
    if "units_metadata" in attrs:
        return {}
    standard = str(attrs.get("standard_name", ""))
    units = str(attrs.get("units", "")).strip()
    if standard.endswith("temperature"):
        return {"units_metadata": "temperature: on_scale"}
    if units in ("K", "degC", "Celsius", "degree_Celsius", "celsius", "degF", "degree_C"):
        return {"units_metadata": "temperature: unknown"}
    return {}
