"""Write ``notebooks/conservation.ipynb``: conservation and checkerboard checks on real data.

The notebook is generated so that it can be regenerated and reviewed as Python. It is
written with its outputs cleared (commit-ready); CI executes it with
``pytest --nbmake notebooks/conservation.ipynb``.

Usage::

    python notebooks/make_conservation_notebook.py                 # (re)write the notebook
    python notebooks/make_conservation_notebook.py --figures docs  # also run it and save the
                                                                   # tagged figures as PNG
"""

from __future__ import annotations

import argparse
import base64
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
NOTEBOOK = HERE / "conservation.ipynb"
FIGURE_TAG = "figure:"

CELLS: list[tuple[str, str, str | None]] = [
    # (kind, source, figure name or None)
    ("md", """\
# Mass conservation and checkerboard artifacts on real data

Validates the two guarantees of docs/method.md (conservation, artifacts) on HadISST sea
surface temperature (global, 1 degree, land missing, periodic longitude), downscaled by a
factor of 4:

1. the model's fine field carries exactly the mass of every coarse cell (area-weighted,
   on the sphere, around missing land cells), while bilinear and bicubic interpolation do not;
2. phase-balanced transposed-convolution kernels keep a flat field flat, where kernels that
   only sum to one leave a checkerboard.

Everything comes from the `downscale` package; the last cell asserts the guarantees, so
CI fails if they break. Runs offline on a CPU in about a minute.""", None),
    ("code", """\
import logging
import tempfile
import time
import warnings

import cartopy.crs as ccrs
import lightning as L
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch.utils.data import default_collate

from downscale.aggregate import area_weighted_block_mean, coarsen_field
from downscale.baselines import UpsamplingMethod, upsample
from downscale.data import DownscalingDataModule
from downscale.grid import cell_areas
from downscale.manifest import resolve
from downscale.metrics import (checkerboard_index, conservation_error, rmse,
                               spectral_artifact_index)
from downscale.nn import MassConservingConvTranspose2d
from downscale.plotting import add_geography, natural_earth_available
from downscale.spectra import power_spectrum_radial
from downscale.tasks import DownscalingTask
from downscale.testing import synthetic_field

%matplotlib inline
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")
logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
pd.set_option("display.float_format", "{:.3g}".format)
started = time.perf_counter()
FACTOR = 4""", None),
    ("md", """\
## 1. Data, a small model and the baselines

`manifest://hadisst_sst` resolves to the SST file that cartopy ships (its SHA-256 is checked
against `data_manifest.yaml`). The coarse field is the conservative, area-weighted aggregate
of the fine one. The model trains for a few seconds only: its conservation holds by
construction (a sum-to-one conserving upsampler, then a per-cell projection as the last
operation, docs/method.md#conservation), not because it learnt it.""", None),
    ("code", """\
print("data:", resolve("hadisst_sst"))
L.seed_everything(0, verbose=False)
datamodule = DownscalingDataModule("manifest://hadisst_sst", "sst", factor=FACTOR,
                                   patch_size=64, batch_size=8, samples_per_epoch=64)
task = DownscalingTask(factor=FACTOR, hidden_channels=16)
trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False,
                    limit_val_batches=0, num_sanity_val_steps=0,
                    default_root_dir=tempfile.mkdtemp())
trainer.fit(task, datamodule=datamodule)""", None),
    ("md", """\
Downscale the whole field in one piece (`tiles("all")` gives whole-field samples, so the
longitude wraps around) and compute the classical baselines from the same coarse field.
HadISST holds one month, so training and evaluation share it: the RMSE below is in-sample,
not a held-out skill score.""", None),
    ("code", """\
batch = default_collate([datamodule.tiles("all")[0]])
periodic = bool(batch["periodic"].all())
task.eval()
with torch.no_grad():
    model = task(batch["coarse"], batch["fine_area"], batch["fine_valid"], periodic)
coarse = batch["coarse"][0, 0].numpy()
truth = batch["fine"][0, 0].numpy()
fine_valid = batch["fine_valid"][0, 0].numpy()

grid = datamodule.source.dataset.isel(time=0)
coarse_grid = coarsen_field(grid, "sst", (FACTOR, FACTOR))
area = cell_areas(grid).values  # m^2, shape (180, 360)
units = datamodule.variable_attrs.get("units", "")
fine_fields = {"model": model[0, 0].numpy()}
for method in (UpsamplingMethod.BILINEAR, UpsamplingMethod.BICUBIC,
               UpsamplingMethod.CONSERVATIVE):
    fine_fields[str(method)] = upsample(coarse, FACTOR, method, periodic=periodic,
                                        fine_valid=fine_valid)
print(f"periodic longitude: {periodic}; coarse {coarse.shape} -> fine {truth.shape}; "
      f"Natural Earth coastlines on disk: {natural_earth_available()}")""", None),
    ("md", """\
## 2. Maps

Coarse input, downscaled field and truth on one colour scale (coastlines from Natural Earth
where it is on disk, otherwise from the HadISST land mask that ships with cartopy; nothing
is downloaded).""", None),
    ("code", """\
def map_axes(n, width=5.0):
    fig, axes = plt.subplots(1, n, figsize=(width * n, 3.3), layout="constrained",
                             subplot_kw={"projection": ccrs.PlateCarree()})
    for ax in axes:
        add_geography(ax)
    return fig, axes


panels = [("coarse (x4)", coarse_grid, coarse), ("downscaled (model)", grid, fine_fields["model"]),
          ("truth", grid, truth)]
fig, axes = map_axes(3)
vmin, vmax = np.nanpercentile(truth, [1, 99])
for ax, (title, where, values) in zip(axes, panels):
    mesh = ax.pcolormesh(where["lon"], where["lat"], values, vmin=vmin, vmax=vmax,
                         cmap="RdYlBu_r", shading="nearest", transform=ccrs.PlateCarree())
    ax.set_title(title)
fig.colorbar(mesh, ax=axes, shrink=0.8, label=f"SST ({units})");""", None),
    ("md", """\
Per coarse cell, the area-weighted mean of the valid fine cells minus the coarse value
(docs/method.md#conservation: unweighted means are not conservation; land carries no
area). Each panel has its own symmetric scale, its maximum in the title: the model's error is
float32 rounding
(it grows with the SST value), interpolation misses by up to degrees at the sea-ice edge and
along coasts.""", None),
    ("code", """\
block_error = {name: area_weighted_block_mean(fine_fields[name], area, (FACTOR, FACTOR))[0]
               - coarse for name in ("model", "bilinear", "bicubic")}
fig, axes = map_axes(3)
for ax, (name, err) in zip(axes, block_error.items()):
    largest = np.nanmax(np.abs(err))
    mesh = ax.pcolormesh(coarse_grid["lon"], coarse_grid["lat"], err, vmin=-largest,
                         vmax=largest, cmap="RdBu_r", shading="nearest",
                         transform=ccrs.PlateCarree())
    ax.set_title(f"{name}: max |error| {largest:.1e} {units}")
    fig.colorbar(mesh, ax=ax, orientation="horizontal", shrink=0.8, pad=0.08,
                 label=f"block mean - coarse ({units})")
fig.suptitle("Conservation error per coarse cell (area-weighted, HadISST SST, x4)");""",
     "conservation_error_maps"),
    ("md", """\
## 3. Metrics

`conservation_error` (area-weighted, NaN-aware): `max_abs` is the worst coarse cell in field
units, `max_rel` the same relative to the mean |coarse value|, `global_rel` the relative
error of the total mass. Exact means ~1e-7 in float32 (docs/method.md#conservation);
only the model and the piecewise-constant baseline (float64) get there. The RMSE is in-sample
and the model has
trained for seconds: this notebook checks conservation, not skill.""", None),
    ("code", """\
errors = {name: conservation_error(values, coarse, area, FACTOR)
          for name, values in fine_fields.items()}
metrics = pd.DataFrame({name: {"max_abs": err.max_abs, "max_rel": err.max_rel,
                               "global_rel": err.global_rel,
                               f"rmse ({units})": rmse(fine_fields[name], truth)}
                        for name, err in errors.items()}).T
metrics.index = metrics.index.str.replace("conservative", "piecewise constant")
metrics""", None),
    ("md", """\
## 4. Phase means of a transposed convolution (stride 2, kernel 4)

For a constant input, output phase (a, b) (index mod 2 on both axes) is the input times
s^2 times the sum of the kernel weights of that phase; the output is flat only if every
phase sums to 1/s^2 (docs/method.md#artifacts). The same seeded random logits,
normalised to sum to one (`phase_balanced=False`) or per phase (`phase_balanced=True`).
Interior rows only: the
latitude edges reflect, and a kernel that is not symmetric is only flat there if it is
also mirror-symmetric (`symmetric=True`).""", None),
    ("code", """\
logits = torch.randn(1, 4, 4, generator=torch.Generator().manual_seed(0))
layers = {}
for balanced in (False, True):
    layer = MassConservingConvTranspose2d(1, stride=2, kernel_size=4, phase_balanced=balanced)
    with torch.no_grad():
        layer.logits.copy_(logits)
    layers["phase-balanced" if balanced else "sum to one"] = layer.double()

constant = torch.ones(1, 1, 16, 16, dtype=torch.float64)
phase_means = {}
with torch.no_grad():
    for name, layer in layers.items():
        out = layer(constant, periodic=True)[0, 0, 2:-2].numpy()  # interior rows, even start
        phase_means[name] = {f"({a}, {b})": out[a::2, b::2].mean()
                             for a in range(2) for b in range(2)}
phase_table = pd.DataFrame(phase_means)
phase_table.loc["max - min"] = phase_table.max() - phase_table.min()
phase_table.index.name = "phase (row, col) mod 2"
phase_table""", None),
    ("md", """\
Both checkerboard indices of docs/method.md#artifacts on a smooth synthetic field
(64 x 64 -> 128 x 128, spectral slope -3; mean 5, std 1: like temperature, its level is large
against its
variability, and an unbalanced kernel's checkerboard scales with the level): the
phase-imbalance index (spread of the phase means of the field minus a smoothed copy,
relative to its standard deviation) and the spectral index (dB of power at the alias
frequencies over their neighbours). Bicubic interpolation is the smooth reference.""", None),
    ("code", """\
smooth = synthetic_field((64, 64), seed=1, mean=5.0, std=1.0)
with torch.no_grad():
    upsampled = {name: layer(torch.from_numpy(smooth)[None, None], periodic=True)[0, 0].numpy()
                 for name, layer in layers.items()}
upsampled["bicubic"] = upsample(smooth, 2, UpsamplingMethod.BICUBIC, periodic=True)
artifacts = pd.DataFrame({name: {"checkerboard_index": checkerboard_index(field, 2),
                                 "spectral_artifact_index (dB)":
                                     spectral_artifact_index(field, 2)}
                          for name, field in upsampled.items()}).T
artifacts""", None),
    ("md", """\
## 5. Power spectrum with and without phase balancing

Radially averaged power spectrum (`downscale.spectra.power_spectrum_radial`) of the two
upsampled fields (Hann-tapered, since the latitude edges are not periodic). A stride-2
checkerboard puts power at 0.5 cycles per cell along an axis and at 0.5 x sqrt(2) on the
diagonal. Phase balancing removes the peaks, which carry the field's level; what is left
near the alias frequencies are images of the large scales that a random, non-symmetric
kernel does not filter out (phase balance guarantees flat output for flat input only,
docs/method.md#artifacts).""", None),
    ("code", """\
fig, ax = plt.subplots(figsize=(6.5, 4.2), layout="constrained")
for (name, field), style in zip(upsampled.items(), ("-", "-", ":")):
    freq, power = power_spectrum_radial(field, hann=True)
    ax.loglog(freq, power, style, label=name)
    if name == "phase-balanced":
        floor = power.min() / 100
for alias, text in ((0.5, "alias 0.5"), (0.5 * np.sqrt(2), "diagonal alias")):
    ax.axvline(alias, color="grey", linestyle="--", linewidth=0.8)
    ax.text(alias, 0.02, f"{text} ", rotation=90, va="bottom", ha="right", fontsize=8,
            transform=ax.get_xaxis_transform())
ax.set(xlabel="radial frequency (cycles per fine cell)",
       ylabel="power per Fourier mode (field units$^2$)",
       title="Stride-2 transposed convolution, same logits", ylim=(floor, None))
ax.legend();""", "phase_balance_spectrum"),
    ("md", """\
## 6. The guarantees, asserted

CI fails here if conservation or phase balance breaks.""", None),
    ("code", """\
assert errors["model"].max_rel < 1e-5, errors["model"]
assert errors["model"].global_rel < 1e-6, errors["model"]
assert errors["conservative"].max_rel < 1e-5, errors["conservative"]
assert errors["bilinear"].max_rel > 1e-4, errors["bilinear"]  # interpolation does not conserve
balanced = np.array(list(phase_means["phase-balanced"].values()))
unbalanced = np.array(list(phase_means["sum to one"].values()))
assert np.ptp(balanced) < 1e-6 and np.allclose(balanced, 1.0, atol=1e-6), balanced
assert np.ptp(unbalanced) > 0.01, unbalanced
assert artifacts.loc["phase-balanced", "checkerboard_index"] < artifacts.loc[
    "sum to one", "checkerboard_index"]
print(f"all checks passed in {time.perf_counter() - started:.0f} s")""", None),
]


def build() -> nbformat.NotebookNode:
    """The notebook, outputs cleared, with stable cell ids (diffs stay small)."""
    cells = []
    for number, (kind, source, figure) in enumerate(CELLS):
        cell = new_markdown_cell(source) if kind == "md" else new_code_cell(source)
        cell.id = f"cell-{number:02d}"
        if figure:
            cell.metadata["tags"] = [FIGURE_TAG + figure]
        cells.append(cell)
    notebook = new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python",
                                       "name": "python3"}
    notebook.metadata["language_info"] = {"name": "python"}
    return notebook


def save_figures(notebook: nbformat.NotebookNode, folder: Path) -> list[Path]:
    """Execute the notebook and write each tagged cell's PNG output to ``folder``."""
    from nbclient import NotebookClient

    NotebookClient(notebook, timeout=600, resources={"metadata": {"path": str(HERE)}}).execute()
    written = []
    folder.mkdir(parents=True, exist_ok=True)
    for cell in notebook.cells:
        names = [t[len(FIGURE_TAG):] for t in cell.metadata.get("tags", [])
                 if t.startswith(FIGURE_TAG)]
        pngs = [o["data"]["image/png"] for o in cell.get("outputs", [])
                if "image/png" in o.get("data", {})]
        for name, png in zip(names, pngs, strict=False):
            path = folder / f"{name}.png"
            path.write_bytes(base64.b64decode(png))
            written.append(path)
    return written


def main() -> None:
    """Write the notebook; with ``--figures DIR`` also execute it and save its figures."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--figures", type=Path, help="execute and save tagged figures here")
    args = parser.parse_args()
    notebook = build()
    nbformat.validate(notebook)
    nbformat.write(notebook, NOTEBOOK)
    print(f"wrote {NOTEBOOK}")
    if args.figures:
        for path in save_figures(notebook, args.figures):
            print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
