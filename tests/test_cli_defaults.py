"""What a new user meets on the command line (issue 19): where outputs go, bounded
training that stops by itself, quiet output, a short fast help, fast input errors."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from downscale.main import main

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
#: A tiny model and epoch, as flags (no config): the defaults under test come from the CLI.
TINY_FLAGS = ("--data.variable", "tas", "--data.factor", "4", "--data.batch_size", "2",
              "--data.samples_per_epoch", "4", "--model.hidden_channels", "8",
              "--model.coarse_blocks", "1", "--trainer.accelerator", "cpu",
              "--trainer.enable_progress_bar", "false")


def _write_tas(path: Path, nt: int = 12, ny: int = 16, nx: int = 24) -> Path:
    """A small smooth temperature file (K) with time bounds, as CF files have them."""
    lat = np.linspace(30.0, 30.0 + (ny - 1), ny)
    lon = np.linspace(10.0, 10.0 + (nx - 1), nx)
    yy, xx = np.meshgrid(lat, lon, indexing="ij")
    base = 280 + 10 * np.cos(np.deg2rad(yy)) + 2 * np.sin(np.deg2rad(3 * xx))
    data = base[None] + np.random.default_rng(1).normal(0, 0.5, (nt, ny, nx))
    ds = xr.Dataset({"tas": (("time", "lat", "lon"), data.astype("f4"),
                             {"units": "K", "standard_name": "air_temperature"}),
                     "time_bnds": (("time", "bnds"),
                                   np.stack([np.arange(nt), np.arange(nt) + 1], axis=1))},
                    coords={"time": np.arange(nt) + 0.5, "lat": lat, "lon": lon})
    ds.time.attrs.update(units="days since 2000-01-01", calendar="noleap", bounds="time_bnds")
    ds.to_netcdf(path)
    return path


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "downscale", *args], capture_output=True,
                          text=True, timeout=600, cwd=cwd, env=ENV)


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_default_root_dir_holds_logs_and_a_stable_last_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work, root = tmp_path / "work", tmp_path / "runs"
    work.mkdir()
    data = _write_tas(work / "my.nc")
    monkeypatch.chdir(work)
    fit = ["fit", "--data.path", str(data), *TINY_FLAGS, "--trainer.max_epochs", "1",
           "--trainer.default_root_dir", str(root)]
    main(fit)
    main(fit)  # a second run: a new version folder, the same last.ckpt path
    assert _files(work) == {"my.nc"}, "fit wrote into the current folder"
    files = _files(root)
    assert {"version_0/metrics.csv", "version_0/config.yaml", "version_1/metrics.csv",
            "checkpoints/last.ckpt"} <= files, files
    assert not any("last-v" in f for f in files)
    # The recorded configuration is the one that was used.
    assert f"default_root_dir: {root}" in (root / "version_1" / "config.yaml").read_text()
    # predict finds the checkpoint by name and makes no training folders.
    out = tmp_path / "pred.nc"
    main(["predict", "--data.path", str(data), "--data.variable", "tas",
          "--trainer.default_root_dir", str(root), "--ckpt_path", "last",
          "--trainer.enable_progress_bar", "false", "--prediction_writer.output", str(out)])
    main(["validate", "--data.path", str(data), "--data.variable", "tas",
          "--trainer.default_root_dir", str(root), "--ckpt_path", "last",
          "--trainer.enable_progress_bar", "false"])
    assert out.exists()
    assert _files(root) == files and _files(work) == {"my.nc"}


def test_ckpt_path_last_without_a_run_is_one_line(tmp_path: Path) -> None:
    data = _write_tas(tmp_path / "my.nc")
    result = _cli("predict", "--data.path", str(data), "--data.variable", "tas",
                  "--ckpt_path", "last", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "outputs/checkpoints/last.ckpt" in last and "--ckpt_path" in last
    assert _files(tmp_path) == {"my.nc"}


def test_a_failed_fit_leaves_no_empty_version_folder(tmp_path: Path) -> None:
    data = _write_tas(tmp_path / "my.nc")
    # A factor larger than the grid fails in the DataModule's setup, after the trainer.
    result = _cli("fit", "--data.path", str(data), *TINY_FLAGS, "--data.factor", "32",
                  "--trainer.default_root_dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("runs/version_*"))
    assert _files(tmp_path) == {"my.nc"}


def test_flags_only_fit_stops_by_itself_and_is_quiet(tmp_path: Path) -> None:
    data = _write_tas(tmp_path / "my.nc")
    # lr 0: the validation loss never improves, so early stopping must end the run.
    result = _cli("fit", "--data.path", str(data), *TINY_FLAGS, "--model.lr", "0",
                  cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "outputs" / "version_0" / "metrics.csv") as handle:
        epochs = {row["epoch"] for row in csv.DictReader(handle) if row.get("val_loss")}
    assert 2 <= len(epochs) <= 12, epochs  # patience 10, far below the 100-epoch bound
    assert (tmp_path / "outputs" / "checkpoints" / "last.ckpt").exists()
    assert not (tmp_path / "lightning_logs").exists()
    text = result.stdout + result.stderr
    for noise in ("litlogger", "litmodels", "srun", "GPU available", "TPU available",
                  "LeafSpec", "Tip:"):
        assert noise not in text, noise


def test_verbose_shows_lightnings_messages(tmp_path: Path) -> None:
    data = _write_tas(tmp_path / "my.nc")
    result = _cli("fit", "--verbose", "--data.path", str(data), *TINY_FLAGS,
                  "--trainer.fast_dev_run", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GPU available" in result.stdout + result.stderr


_NO_LIGHTNING = """
import sys
from downscale.main import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    print("exit", exc.code)
assert not any(m == "lightning" or m.startswith("lightning.") for m in sys.modules), \\
    "lightning was imported"
"""


def _without_lightning(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _NO_LIGHTNING, *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd, env=ENV)


def test_fit_help_is_short_starts_with_what_users_set_and_needs_no_lightning(
        tmp_path: Path) -> None:
    result = _without_lightning("fit", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) < 60
    for flag in ("--data.path", "--data.variable", "--data.factor", "--trainer.max_epochs",
                 "--trainer.devices", "--config", "--help-all"):
        assert flag in result.stdout, flag
    assert result.stdout.index("--data.path") < result.stdout.index("--trainer.max_epochs")
    assert ":mod:" not in result.stdout and "``" not in result.stdout


def test_full_help_is_lightnings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help-all"])
    assert exit_info.value.code == 0
    assert "--trainer.gradient_clip_val" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["missing file", "missing variable", "in the yaml"])
def test_bad_data_is_reported_before_lightning_loads(tmp_path: Path, case: str) -> None:
    data = _write_tas(tmp_path / "my.nc")
    if case == "missing file":
        args = ["--data.path", str(tmp_path / "nope.nc"), "--data.variable", "tas"]
    elif case == "missing variable":
        args = ["--data.path", str(data), "--data.variable", "pr"]
    else:
        config = tmp_path / "c.yaml"
        config.write_text(f"data:\n  init_args:\n    path: {data}\n    variable: pr\n")
        args = ["--config", str(config)]
    result = _without_lightning("fit", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr  # the assertion on sys.modules held
    assert "exit 2" in result.stdout
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("downscale: error:")
    if case != "missing file":
        assert "pr" in line and "tas" in line and "time_bnds" not in line
