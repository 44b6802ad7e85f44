"""Maps of coarse, downscaled and true fields (matplotlib + cartopy, offline-safe)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr


def natural_earth_available(resolution: str = "110m") -> bool:
    """Whether cartopy's Natural Earth coastlines are on disk (cartopy would download them)."""
    import cartopy

    name = f"shapefiles/natural_earth/physical/ne_{resolution}_coastline.shp"
    roots = [cartopy.config.get("pre_existing_data_dir", ""), cartopy.config.get("data_dir", "")]
    return any(root and (Path(root) / name).exists() for root in roots)


def add_geography(ax: Any) -> None:
    """Coastlines when available offline, otherwise only labelled gridlines."""
    if natural_earth_available():
        ax.coastlines(linewidth=0.6)
    gl = ax.gridlines(draw_labels=True, linewidth=0.3, alpha=0.5)
    gl.top_labels = gl.right_labels = False


def plot_panels(fields: Sequence[tuple[str, xr.DataArray]], path: str | Path, *,
                title: str = "", units: str = "") -> Path:
    """Plot 2-D lat/lon fields side by side on one colour scale and save a PNG.

    Args:
        fields: ``(label, field)`` pairs; each field has ``lat``/``lon`` coordinates.
        path: PNG path.
        title: Figure title.
        units: Colour bar label.

    """
    import cartopy.crs as ccrs

    values = np.concatenate([np.ravel(f.values) for _, f in fields])
    vmin, vmax = np.nanpercentile(values, [1, 99])
    fig, axes = plt.subplots(1, len(fields), figsize=(4.2 * len(fields), 3.6),
                             subplot_kw={"projection": ccrs.PlateCarree()}, layout="constrained")
    mesh = None
    for ax, (label, field) in zip(np.atleast_1d(axes), fields, strict=True):
        mesh = ax.pcolormesh(field["lon"], field["lat"], field.values, vmin=vmin, vmax=vmax,
                             cmap="RdYlBu_r", transform=ccrs.PlateCarree(), shading="nearest")
        add_geography(ax)
        ax.set_title(label, fontsize=10)
    assert mesh is not None
    fig.colorbar(mesh, ax=axes, shrink=0.8, label=units)
    if title:
        fig.suptitle(title, fontsize=11)
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
