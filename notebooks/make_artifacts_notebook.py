"""Write ``notebooks/artifacts.ipynb``: where upsampling artifacts come from, per decoder.

Three views of docs/method.md#artifacts and the seed document's "Understanding and Mitigating
Upsampling Artifacts", all computed with the ``downscale`` package on small synthetic data
(no training, about 20 s on a CPU):

1. the phase-coverage table of transposed convolutions for several ``(k, s)``: how many
   input cells reach each output phase, and the per-phase weight sums of a random
   sum-to-one kernel against a phase-balanced one;
2. the response of every decoder of ``downscale.nn`` to a constant input;
3. power spectra, spectral replica leakage and equivariance errors of the decoders against
   zero insertion, the anti-aliasing filter and classical interpolation.

The last cell asserts what the notebook shows. The notebook is written with its outputs
cleared; CI executes it with ``pytest --nbmake notebooks/artifacts.ipynb``.

Usage::

    python notebooks/make_artifacts_notebook.py
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
NOTEBOOK = HERE / "artifacts.ipynb"

CELLS: list[tuple[str, str]] = [
    ("md", """\
# Upsampling artifacts: phases, flat fields and spectra

A transposed convolution of stride $s$ splits its output into $s^2$ *phases*; output cell
$(i, j)$ belongs to phase $(i \\bmod s, j \\bmod s)$. Phases that receive unequal weight
leave a pattern of period $s$, the checkerboard (Odena et al. 2016, *Deconvolution and
Checkerboard Artifacts*). In the spectrum the same defect is power left at the *images*
of the coarse spectrum, centred on the alias frequencies $j/s$ (zero-insertion view).

Everything below comes from the `downscale` package; the last cell asserts what is shown.
No training: decoders are freshly built, with a random (non-zero) detail head so that
whatever their upsampler imprints becomes visible."""),
    ("code", """\
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from downscale.baselines import upsample
from downscale.compare import decoder_function
from downscale.metrics import (checkerboard_index, equivariance_error, phase_coverage,
                               phase_weight_sums, spectral_artifact_index,
                               spectral_replica_leakage, zero_insertion)
from downscale.nn import (AntiAliasFilter, ConservingDecoder, MassConservingConvTranspose2d,
                          PixelShuffleDecoder, ResizeConvDecoder, TransposedConvDecoder,
                          UNetDecoder)
from downscale.spectra import power_spectrum_radial
from downscale.testing import synthetic_field

%matplotlib inline
pd.set_option("display.float_format", "{:.3g}".format)
pd.set_option("display.width", 140)
started = time.perf_counter()
FACTOR = 4
torch.manual_seed(0);"""),
    ("md", """\
## 1. Phase coverage for several $(k, s)$

`phase_coverage(k, s)[a, b]` counts the input cells that reach an output cell of phase
$(a, b)$: per axis $\\lceil k/s \\rceil$ or $\\lfloor k/s \\rfloor$, so coverage is even only
when $s$ divides $k$. Even coverage is not enough: `phase_weight_sums` gives the response to
a flat input, phase by phase, here times $s^2$ (1 everywhere = flat). A random kernel that
only sums to one is far from it; the phase-balanced parametrisation of
`MassConservingConvTranspose2d` is exactly 1, whatever $k$ and the logits."""),
    ("code", """\
rows = []
for k, s in [(2, 2), (3, 2), (4, 2), (5, 2), (3, 3), (4, 3), (6, 3), (4, 4), (6, 4), (8, 4)]:
    coverage = phase_coverage(k, s)
    sums = {}
    for balanced in (False, True):
        layer = MassConservingConvTranspose2d(1, s, k, phase_balanced=balanced,
                                              init="uniform").double()
        with torch.no_grad():
            layer.logits.normal_()  # a random kernel
        kernel = layer.kernel().detach().double().numpy()[0, 0]
        sums[balanced] = phase_weight_sums(kernel, s) * s**2
    rows.append({"k": k, "s": s, "coverage min": coverage.min(), "coverage max": coverage.max(),
                 "ceil(k/s)-floor(k/s)": -(-k // s) - k // s,
                 "random: min": sums[False].min(), "random: max": sums[False].max(),
                 "balanced: min": sums[True].min(), "balanced: max": sums[True].max()})
coverage_table = pd.DataFrame(rows).set_index(["k", "s"])
coverage_table"""),
    ("md", """\
## 2. Constant input, every decoder

A flat coarse field of 280 K through each decoder. The final local-conservation step fixes
every block's mean, so an artifact shows as a pattern *inside* the blocks. Phase-balanced
and phase-free upsamplers (resize-convolve, ICNR pixel shuffle with its low-pass filter)
give a flat field exactly; random unbalanced kernels and a raw pixel shuffle imprint their
phase pattern through the detail path. The mitigations are learnt: freshly built, the
dilated convolution and the attention block (gate at 0.12) change little; opening the
attention gate shows the mechanism, a phase-free average of block-pooled values."""),
    ("code", """\
def build_decoders() -> dict[str, torch.nn.Module]:
    torch.manual_seed(1)
    unbalanced = {"phase_balanced": False, "symmetric": False}
    decoders = {
        "ConservingDecoder (default)": ConservingDecoder(1, FACTOR, 8),
        "TransposedConv, stride-2 stages": TransposedConvDecoder(1, FACTOR, 8),
        "TransposedConv, unbalanced": TransposedConvDecoder(1, FACTOR, 8, **unbalanced),
        "  + dilation 3 + attention": TransposedConvDecoder(1, FACTOR, 8, dilation=3,
                                                            attention=True, **unbalanced),
        "  + attention, gate open": TransposedConvDecoder(1, FACTOR, 8, attention=True,
                                                          **unbalanced),
        "UNet": UNetDecoder(1, FACTOR, 8),
        "PixelShuffle, ICNR + filter": PixelShuffleDecoder(1, FACTOR, 8),
        "PixelShuffle, raw": PixelShuffleDecoder(1, FACTOR, 8, icnr=False, anti_alias=False),
        "ResizeConv": ResizeConvDecoder(1, FACTOR, 8),
    }
    g = torch.Generator().manual_seed(2)
    for name, dec in decoders.items():
        dec.double()
        with torch.no_grad():
            dec.head.weight.copy_(0.3 * torch.randn(dec.head.weight.shape, generator=g,
                                                    dtype=torch.float64))
            if "unbalanced" in name or name.startswith("  +"):
                same = torch.Generator().manual_seed(7)  # the same kernels for all three
                for stage in dec.upsampler.stages:
                    stage.logits.copy_(torch.randn(stage.logits.shape, generator=same,
                                                   dtype=torch.float64))
            if "gate open" in name:
                dec.attention.gate.fill_(10.0)
    return decoders


decoders = build_decoders()
c = 280.0
flat = np.full((1, 8, 12), c)
responses = {name: decoder_function(dec, mean=c)(flat)[0] for name, dec in decoders.items()}
flat_table = pd.DataFrame({
    "max |y - c| / c": {n: np.abs(r - c).max() / c for n, r in responses.items()},
    "checkerboard index": {n: checkerboard_index(r, FACTOR) for n, r in responses.items()}})
flat_table"""),
    ("code", """\
fig, axes = plt.subplots(3, 3, figsize=(11, 7), layout="constrained")
scale = max(np.abs(r - c).max() for r in responses.values())
for ax, (name, r) in zip(axes.flat, responses.items()):
    image = ax.imshow(r[:16, :16] - c, cmap="RdBu_r", vmin=-scale, vmax=scale)
    ax.set_title(name.strip(), fontsize=9)
    ax.set_xticks([]), ax.set_yticks([])
fig.colorbar(image, ax=axes, shrink=0.7, label="y - c (K), first 4 x 4 coarse cells")
fig.suptitle("Response to a constant input (random detail head)");"""),
    ("md", """\
## 3. Spectra, replica leakage and equivariance

A smooth periodic coarse field (spectral slope -3, 16 x 24 cells) upsampled by 4.
`zero_insertion` is the first half of a transposed convolution: the coarse spectrum plus
$f^2 - 1$ images. `AntiAliasFilter` (a box of width $f$ convolved with itself; zeros at
$j/f$) removes most of them. `spectral_replica_leakage` is the power outside the coarse
band over the power inside; `equivariance_error` compares $\\mathrm{model}(S_d x)$ with
$S_{fd}\\,\\mathrm{model}(x)$ for a whole-cell and a half-cell shift along the periodic axis.
Whole-cell shifts commute with every convolutional decoder on a periodic axis except where
the U-Net pads an odd size; half-cell shifts do not commute with any of them."""),
    ("code", """\
coarse = synthetic_field((2, 16, 24), seed=5, mean=280.0, std=5.0)
zeros = zero_insertion(coarse, FACTOR)
filtered = AntiAliasFilter(FACTOR)(torch.from_numpy(zeros)[:, None], True)[:, 0].numpy()
models = {"conservative (piecewise constant)": lambda x: upsample(x, FACTOR, "conservative"),
          "bicubic": lambda x: upsample(x, FACTOR, "bicubic", periodic=True)}
models.update({name: decoder_function(dec, periodic=True, mean=280.0, std=5.0)
               for name, dec in decoders.items()})
outputs = {"zero insertion": zeros, "zero insertion + anti-alias filter": filtered}
outputs.update({name: model(coarse) for name, model in models.items()})
spectral_table = pd.DataFrame({
    "replica leakage": {n: spectral_replica_leakage(o, FACTOR) for n, o in outputs.items()},
    "spectral artifact [dB]": {n: spectral_artifact_index(o, FACTOR)
                               for n, o in outputs.items()},
    "equivariance, 1 cell": {n: equivariance_error(m, coarse, FACTOR, (0, 1),
                                                   periodic=(False, True))
                             for n, m in models.items()},
    "equivariance, 1/2 cell": {n: equivariance_error(m, coarse, FACTOR, (0, 0.5),
                                                     periodic=(False, True))
                               for n, m in models.items()}})
spectral_table"""),
    ("code", """\
fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
for name, field in outputs.items():
    freq, power = power_spectrum_radial(field, hann=True)
    style = {"bicubic": {"color": "black", "lw": 2},
             "zero insertion": {"color": "grey", "ls": ":"},
             "zero insertion + anti-alias filter": {"color": "grey", "ls": "--"}}.get(name, {})
    ax.loglog(freq, power, label=name.strip(), **style)
for j in range(1, FACTOR):
    ax.axvline(j / FACTOR, color="red", lw=0.6, ls="--")
ax.axvline(0.5 / FACTOR, color="blue", lw=0.6, ls="--")
ax.set(xlabel="radial frequency (cycles per fine cell)", ylabel="power per mode (K$^2$)",
       title="blue: coarse Nyquist frequency; red: alias frequencies j / 4", ylim=(1e-12, None))
ax.legend(fontsize=7, ncol=2);"""),
    ("md", """\
## 4. What the notebook shows, asserted
CI fails here if any of it stops being true."""),
    ("code", """\
# 1. Coverage is even exactly when s divides k; only phase balancing evens out the weights.
for (k, s), row in coverage_table.iterrows():
    assert (row["coverage min"] == row["coverage max"]) == (k % s == 0), (k, s)
    assert abs(row["balanced: min"] - 1) < 1e-12 and abs(row["balanced: max"] - 1) < 1e-12
    assert row["random: max"] - row["random: min"] > 0.05, (k, s)
# 2. Flat in, flat out for the phase-balanced and phase-free decoders; not for the others.
for name in ("ConservingDecoder (default)", "TransposedConv, stride-2 stages", "UNet",
             "PixelShuffle, ICNR + filter", "ResizeConv"):
    assert flat_table.loc[name, "max |y - c| / c"] < 1e-12, name
for name in ("TransposedConv, unbalanced", "PixelShuffle, raw"):
    assert flat_table.loc[name, "checkerboard index"] > 0.5, name
assert (flat_table.loc["  + attention, gate open", "max |y - c| / c"]
        < 0.5 * flat_table.loc["TransposedConv, unbalanced", "max |y - c| / c"])
# 3. Zero insertion leaks, the anti-aliasing filter and interpolation do not.
leak = spectral_table["replica leakage"]
assert leak["zero insertion"] > 100 * leak["zero insertion + anti-alias filter"]
assert leak["zero insertion + anti-alias filter"] < 0.02 and leak["bicubic"] < 0.02
assert leak["PixelShuffle, raw"] > leak["PixelShuffle, ICNR + filter"]
whole = spectral_table["equivariance, 1 cell"].drop("UNet").dropna()
assert (whole < 1e-12).all(), whole
assert (spectral_table["equivariance, 1/2 cell"].dropna() > 1e-4).all()
print(f"all checks passed in {time.perf_counter() - started:.0f} s")"""),
]


def build() -> nbformat.NotebookNode:
    """The notebook, outputs cleared, with stable cell ids (diffs stay small)."""
    cells = []
    for number, (kind, source) in enumerate(CELLS):
        cell = new_markdown_cell(source) if kind == "md" else new_code_cell(source)
        cell.id = f"cell-{number:02d}"
        cells.append(cell)
    notebook = new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python",
                                       "name": "python3"}
    notebook.metadata["language_info"] = {"name": "python"}
    return notebook


def main() -> None:
    """Write the notebook (outputs cleared)."""
    notebook = build()
    nbformat.validate(notebook)
    nbformat.write(notebook, NOTEBOOK)
    print(f"wrote {NOTEBOOK}")


if __name__ == "__main__":
    main()
