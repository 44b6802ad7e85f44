"""Maps of coarse, downscaled and true fields: the demo, the notebooks and ``run --plot``.

Coastlines come from data installed with the package, never from a download: Natural
Earth when cartopy already has it on disk, otherwise the land/sea boundary of the 1 degree
HadISST field that ships with cartopy (the 0.5 contour of its land mask; manifest id
``hadisst_sst``). The figure names the source, or says that there was none.

Colour scales span the 1st-99th percentiles of the fields shown; the colour bar's
arrows (``extend``) show where values lie beyond. An error panel (model minus truth) has
its own symmetric scale and its RMSE in the title.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from numpy.typing import NDArray

#: Where coastlines came from, as written in the figure.
NATURAL_EARTH, HADISST_MASK, NO_COASTLINES = (
    "coastlines: Natural Earth", "coastlines: HadISST 1° land mask",
    "no coastline data available")

Extend = Literal["neither", "both", "min", "max"]


def natural_earth_available(resolution: str = "110m") -> bool:
    """Whether cartopy's Natural Earth coastlines are on disk (cartopy would download them)."""
    import cartopy

    name = f"shapefiles/natural_earth/physical/ne_{resolution}_coastline.shp"
    roots = [cartopy.config.get("pre_existing_data_dir", ""), cartopy.config.get("data_dir", "")]
    return any(root and (Path(root) / name).exists() for root in roots)


@functools.lru_cache(maxsize=1)
def land_mask() -> xr.DataArray | None:
    """Land (1) and sea (0) on HadISST's 1 degree grid, or None when the file is missing.

    HadISST marks land as missing (sea ice has a temperature), so its missing cells are
    the land of a real land/sea mask.
    """
    from downscale.errors import DownscaleError
    from downscale.manifest import resolve

    try:
        path = resolve("hadisst_sst")
        with xr.open_dataset(path, decode_times=False) as ds:
            sst = ds["sst"].isel(time=0).load()
    except (DownscaleError, OSError, KeyError, ValueError):
        return None
    land = sst.isnull().astype(np.float32).sortby("lat")
    return land.rename("land")


def add_geography(ax: Any) -> str:
    """Coastlines from installed data, and labelled gridlines; returns the source used."""
    import cartopy.crs as ccrs

    source = NO_COASTLINES
    if natural_earth_available():
        ax.coastlines(linewidth=0.6)
        source = NATURAL_EARTH
    elif (land := land_mask()) is not None:
        ax.contour(land["lon"], land["lat"], land.values, levels=[0.5], colors="k",
                   linewidths=0.6, transform=ccrs.PlateCarree())
        source = HADISST_MASK
    gl = ax.gridlines(draw_labels=True, linewidth=0.3, alpha=0.5)
    gl.top_labels = gl.right_labels = False
    return source


def colour_limits(values: NDArray[Any], *, symmetric: bool = False
                  ) -> tuple[float, float, Extend]:
    """The 1st-99th percentile range of ``values`` and the colour bar's ``extend``.

    Args:
        values: Any shape; NaN ignored.
        symmetric: A range ``(-m, m)``, ``m`` the 99th percentile of ``|values|`` (errors).
    """
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0, 1.0, "neither"
    if symmetric:
        m = float(np.percentile(np.abs(finite), 99)) or 1.0
        lo, hi = -m, m
    else:
        lo, hi = (float(v) for v in np.percentile(finite, [1, 99]))
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
    below, above = bool(finite.min() < lo), bool(finite.max() > hi)
    extend: Extend = ("both" if below and above else "min" if below
                      else "max" if above else "neither")
    return lo, hi, extend


def field_title(da: xr.DataArray) -> str:
    """What a field is: its long name (or standard name), units and time."""
    name = str(da.attrs.get("long_name") or da.attrs.get("standard_name") or da.name or "")
    name = name.replace("_", " ")
    units = da.attrs.get("units")
    text = f"{name} ({units})" if units else name
    if "time" in da.coords and da["time"].size == 1:
        text += f", {str(da['time'].values.item() if da['time'].ndim else da['time'].values)[:10]}"
    return text


def plot_panels(fields: Sequence[tuple[str, xr.DataArray]], path: str | Path, *,
                title: str = "", units: str = "", truth: xr.DataArray | None = None,
                model: xr.DataArray | None = None) -> Path:
    """Maps side by side on one colour scale, and an error panel; saved as a PNG.

    Args:
        fields: ``(label, field)`` pairs; each field is 2-D with ``lat``/``lon``
            coordinates (a coarse field on its own, coarser grid).
        path: PNG path.
        title: Figure title (default: :func:`field_title` of the last field).
        units: Colour bar label (default: the last field's units).
        truth: With ``model``: add a panel ``model - truth`` with its RMSE.
        model: The downscaled field compared with ``truth`` (same grid).

    Returns:
        ``path``.
    """
    import cartopy.crs as ccrs

    from downscale.metrics import rmse

    last = fields[-1][1]
    units = units or str(last.attrs.get("units", ""))
    error = model - truth if model is not None and truth is not None else None
    n = len(fields) + (error is not None)
    lon = np.concatenate([np.ravel(f["lon"].values) for _, f in fields])
    projection = ccrs.PlateCarree(central_longitude=float((lon.min() + lon.max()) / 2))
    fig, axes = plt.subplots(1, n, figsize=(3.9 * n + 0.6, 3.7), layout="constrained",
                             subplot_kw={"projection": projection})
    axes = list(np.atleast_1d(axes))
    vmin, vmax, extend = colour_limits(np.concatenate([np.ravel(f.values) for _, f in fields]))
    extent = _extent([f for _, f in fields])
    sources = set()
    mesh = None
    for ax, (label, field) in zip(axes, fields, strict=False):
        mesh = _map(ax, field, vmin, vmax, "RdYlBu_r", extent)
        sources.add(add_geography(ax))
        ax.set_title(label, fontsize=10)
    assert mesh is not None
    fig.colorbar(mesh, ax=axes[:len(fields)], shrink=0.85, extend=extend, label=units)
    if error is not None:
        lo, hi, err_extend = colour_limits(error.values, symmetric=True)
        err_mesh = _map(axes[-1], error, lo, hi, "RdBu_r", extent)
        sources.add(add_geography(axes[-1]))
        score = rmse(np.asarray(model.values), np.asarray(truth.values))  # type: ignore[union-attr]
        axes[-1].set_title(f"model - truth (RMSE {score:.3g} {units})".replace(" )", ")"),
                           fontsize=10)
        fig.colorbar(err_mesh, ax=axes[-1], shrink=0.85, extend=err_extend,
                     label=f"error ({units})" if units else "error")
    fig.suptitle(title or field_title(last), fontsize=11)
    fig.text(0.005, 0.005, "; ".join(sorted(sources)) + "\ncolour bars: 1st-99th "
             "percentiles, arrows mark values beyond", fontsize=7, color="0.3")
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _extent(fields: Sequence[xr.DataArray]) -> list[float]:
    """``[lon0, lon1, lat0, lat1]`` covering every field's cells (bounds, or centres)."""
    edges = []
    for name in ("lon", "lat"):
        values = [np.ravel(f[f"{name}_bnds"].values if f"{name}_bnds" in f.coords
                           else f[name].values) for f in fields]
        joined = np.concatenate(values)
        edges += [float(joined.min()), float(joined.max())]
    return edges


def _map(ax: Any, field: xr.DataArray, vmin: float, vmax: float, cmap: str,
         extent: list[float]) -> Any:
    import cartopy.crs as ccrs

    mesh = ax.pcolormesh(field["lon"], field["lat"], field.values, vmin=vmin, vmax=vmax,
                         cmap=cmap, transform=ccrs.PlateCarree(), shading="nearest")
    ax.set_extent(extent, crs=ccrs.PlateCarree())
    return mesh


def plot_output(output: str | Path, png: str | Path, *, variable: str | None = None,
                truth: str | Path | None = None, coarse: str | Path | None = None,
                time_index: int = 0) -> Path:
    """A map of one time step of a downscaled file, with its input and truth if given.

    Serves ``downscale run --plot PNG``: the coarse input (``coarse``), the output, the
    truth (``truth``, a file on the output's grid) and, with a truth, the error panel.

    Args:
        output: A downscaled NetCDF file (``run``/``predict`` output).
        png: The PNG to write.
        variable: The variable; default: the file's only gridded one.
        truth: Optional fine truth on the output's grid (cropped to it when larger).
        coarse: Optional coarse input.
        time_index: Which time step to show.

    Returns:
        ``png``.

    Raises:
        InputError: A file is missing or unreadable, lacks the variable, or the truth's
            grid differs from the output's.
    """
    from downscale.errors import InputError
    from downscale.io import gridded_variables_in, open_field

    if variable is None:
        names = gridded_variables_in(output)
        if len(names) != 1:
            raise InputError(f"{len(names)} gridded variables ({', '.join(names)})",
                             path=output, hint="name the one to plot")
        variable = names[0]

    model = open_field(output, variable)[variable]
    model = model.isel(time=min(time_index, model.sizes["time"] - 1)).load()

    def same_step(path: str | Path, grid: bool) -> xr.DataArray:
        """The field of ``path`` at the model's time (and on its grid when ``grid``)."""
        field = open_field(path, variable)[variable]
        try:
            field = field.sel(time=model["time"])
            if grid:
                field = field.sel(lat=model["lat"], lon=model["lon"], method="nearest",
                                  tolerance=1e-6)
        except KeyError as exc:
            raise InputError(f"no field at the output's time {model['time'].values}"
                             + (" on the output's grid" if grid else ""), path=path,
                             variable=variable,
                             hint="give the file the output was made from") from exc
        return field.load()

    fields = [("coarse input", same_step(coarse, False))] if coarse is not None else []
    fields.append(("downscaled", model))
    truth_map = None
    if truth is not None:
        truth_map = same_step(truth, True).assign_coords(lat=model["lat"], lon=model["lon"])
        fields.append(("truth", truth_map))
    return plot_panels(fields, png, title=field_title(model), truth=truth_map,
                       model=model if truth_map is not None else None)
