"""The results of ``downscale compare`` and the files they go to.

:class:`Comparison` holds the table rows and spectra; :func:`write_outputs` writes
``table.csv``, ``table.md`` (columns :data:`COLUMNS`) and ``spectra.png`` (:func:`plot_spectra`).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]

#: Table columns: (key, header, format).
COLUMNS: list[tuple[str, str, str]] = [
    ("variant", "variant", "{}"),
    ("parameters", "parameters", "{:,.0f}"),
    ("epochs", "epochs", "{:.0f}"),
    ("seconds_per_epoch", "s / epoch", "{:.2f}"),
    ("rmse", "RMSE [{units}]", "{:.4f}"),
    ("conservation_max_rel", "conservation error (max rel.)", "{:.1e}"),
    ("checkerboard_index", "checkerboard index", "{:.4f}"),
    ("spectral_artifact_db", "spectral artifact [dB]", "{:.2f}"),
    ("replica_leakage", "replica leakage", "{:.4f}"),
    ("equivariance_int", "equivariance error, 1 cell", "{:.1e}"),
    ("equivariance_subpixel", "equivariance error, 1/2 cell", "{:.4f}"),
]


@dataclass
class Comparison:
    """What :func:`downscale.compare.run_comparison` found.

    Attributes:
        rows: One dict per variant, baseline and the truth, keyed like :data:`COLUMNS`.
        spectra: Radially averaged power spectra ``{name: (frequency, power)}`` in cycles
            per fine cell and field units squared (mean over the test fields).
        factor: The upsampling factor.
        units: Units of the field.
        machine: One line on the CPU, threads and load, for reading the timings.
    """

    rows: list[dict[str, Any]]
    spectra: dict[str, tuple[FloatArray, FloatArray]]
    factor: int
    units: str
    machine: str = ""


def write_outputs(result: Comparison, out: Path, command: str) -> str:
    """Write ``table.csv``, ``table.md`` and ``spectra.png``; return the Markdown table."""
    rows = result.rows
    headers = [header.format(units=result.units) for _, header, _ in COLUMNS]
    with open(out / "table.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow([key for key, _, _ in COLUMNS])
        for row in rows:
            writer.writerow([_csv_value(row.get(key)) for key, _, _ in COLUMNS])
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [_cell(row.get(key), fmt) for key, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (out / "table.md").write_text(f"Made by:\n\n    {command}\n\nMachine: {result.machine}\n\n"
                                  f"{table}\n")
    plot_spectra(result.spectra, result.factor, out / "spectra.png")
    return table


def plot_spectra(spectra: dict[str, tuple[FloatArray, FloatArray]], factor: int,
                 path: Path) -> None:
    """Log-log power spectra and their ratio to the truth's, alias frequencies marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ratio_ax) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    truth = spectra.get("truth")
    for name, (freq, power) in spectra.items():
        style = {"color": "black", "lw": 2.2} if name == "truth" else (
            {"color": "grey", "ls": "--"} if name == "bicubic" else {})
        ax.loglog(freq, power, label=name, **style)
        if truth is not None and len(truth[1]) == len(power):
            ratio_ax.semilogx(freq, power / truth[1], label=name, **style)
    from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

    for a in (ax, ratio_ax):
        a.xaxis.set_major_locator(FixedLocator([0.03, 0.1, 0.3, 0.5]))
        a.xaxis.set_major_formatter(ScalarFormatter())
        a.xaxis.set_minor_formatter(NullFormatter())
        for j in range(1, factor):
            a.axvline(j / factor, color="red", lw=0.6, ls=":")
        a.axvline(0.5 / factor, color="blue", lw=0.6, ls=":")
        a.set_xlabel("frequency [cycles per fine cell]")
    ax.set_ylabel("power per mode [field units²]")
    ax.set_title("radially averaged power spectra (test split)")
    ratio_ax.set_ylabel("power / truth's power")
    ratio_ax.set_title("ratio to truth (blue: coarse Nyquist; red: alias frequencies)")
    ratio_ax.axhline(1.0, color="black", lw=0.8)
    ax.legend(fontsize=7, ncol=2)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return fmt.format(value) if not isinstance(value, str) else value


def _csv_value(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return ""
    return value
