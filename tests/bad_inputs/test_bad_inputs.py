"""Every bad input through every entry point it reaches: one line, non-zero, nothing written.

Set ``DOWNSCALE_BAD_INPUT_TABLE=FILE`` to collect the messages users see as JSON
(``python tests/bad_inputs/make_table.py`` does, and rewrites README.md's table).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from cases import CASES, MANIFEST_CASES, Call, Context, malicious_checkpoint
from conftest import VARIABLE, make_latlon_nc

from downscale.errors import DownscaleError
from downscale.io import open_field
from downscale.main import main as cli_main

TABLE_ENV = "DOWNSCALE_BAD_INPUT_TABLE"
_SEEN: list[dict[str, str]] = []


@pytest.fixture(scope="module", autouse=True)
def _table() -> Iterator[None]:
    yield
    target = os.environ.get(TABLE_ENV)
    if target:
        Path(target).write_text(json.dumps(_SEEN, indent=1) + "\n")


@pytest.fixture
def ctx(tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> Context:
    monkeypatch.chdir(tmp_path)
    good = make_latlon_nc(tmp_path / "good.nc", nlat=8, nlon=8, variable=VARIABLE,
                          calendar="360_day", lat=np.arange(8) + 40.5,
                          lon=np.arange(8) + 10.5)
    (tmp_path / "out").mkdir()
    return Context(tmp_path, checkpoint, good, tmp_path / "out" / "result.nc")


def _error_line(call: Call, capsys: pytest.CaptureFixture[str]) -> str:
    """Call one entry point; the one line the user sees (asserting how it failed)."""
    if call.argv is None:
        assert call.api is not None
        with pytest.raises(DownscaleError) as info:
            call.api()
        message = str(info.value)
        assert "\n" not in message
        return message
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli_main(call.argv)
    err = capsys.readouterr().err
    assert exit_info.value.code not in (0, None), err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("downscale: error:")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_in_one_line(case: Any, ctx: Context,
                                          capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    if case.name in MANIFEST_CASES:
        from downscale import manifest as mf

        monkeypatch.setenv(mf.ENV_VAR, str(MANIFEST_CASES[case.name](ctx)))
        monkeypatch.setattr(mf, "_DIGEST_CACHE", {})
    calls = case.build(ctx)
    assert calls
    for entry, call in calls.items():
        line = _error_line(call, capsys)
        for fragment in call.fragments:
            assert fragment in line, (entry, fragment, line)
        assert not ctx.output.exists(), entry
        assert not [p for p in ctx.output.parent.iterdir() if p.name != ".downscale_run.lock"]
        _SEEN.append({"case": case.name, "entry": entry, "note": case.note,
                      "message": line.replace(str(ctx.tmp) + "/", "")})


# -- accepted after normalisation ---------------------------------------------------------
def _run_values(ctx: Context, path: Path) -> xr.Dataset:
    out = ctx.tmp / f"{path.stem}_fine.nc"
    cli_main(["run", "--checkpoint", str(ctx.checkpoint), "--input", str(path), "--output",
              str(out), "--workers", "0", "--no-progress", "--time-chunk", "1",
              "--any-spacing"])  # 1-degree files; the checkpoint learned 5 x 7.5 degrees
    with xr.open_dataset(out) as ds:
        return ds.load()


def test_descending_latitude_is_flipped_and_downscaled_alike(ctx: Context) -> None:
    with xr.open_dataset(ctx.good) as ds:
        flipped = ctx.tmp / "descending.nc"
        ds.isel(lat=slice(None, None, -1)).to_netcdf(flipped)
    field = open_field(flipped, VARIABLE)
    assert np.all(np.diff(field["lat"].values) > 0)
    np.testing.assert_array_equal(field[VARIABLE].values,
                                  open_field(ctx.good, VARIABLE)[VARIABLE].values)
    fine = _run_values(ctx, flipped)
    assert np.all(np.diff(fine["lat"].values) < 0)  # the output keeps the file's order
    xr.testing.assert_allclose(fine[VARIABLE].isel(lat=slice(None, None, -1)),
                               _run_values(ctx, ctx.good)[VARIABLE])
    _SEEN.append({"case": "descending latitude", "entry": "api, run", "note": "accepted",
                  "message": "(accepted: flipped to ascending inside; the output runs north "
                             "to south like the file and equals that of the ascending file, "
                             "flipped)"})


def test_longitude_0_360_across_greenwich_is_unwrapped(ctx: Context) -> None:
    lon_360 = (np.arange(8) - 4 + 0.5) % 360  # 356.5 .. 359.5, 0.5 .. 3.5
    lon_180 = np.arange(8) - 4 + 0.5
    wrapped = make_latlon_nc(ctx.tmp / "lon360.nc", lat=np.arange(8) + 40.5, lon=lon_360,
                             variable=VARIABLE, calendar="360_day")
    plain = make_latlon_nc(ctx.tmp / "lon180.nc", lat=np.arange(8) + 40.5, lon=lon_180,
                           variable=VARIABLE, calendar="360_day")
    field = open_field(wrapped, VARIABLE)
    np.testing.assert_allclose(field["lon"].values, lon_180)
    fine, fine_180 = _run_values(ctx, wrapped), _run_values(ctx, plain)
    # The output keeps the file's 0..360 values and order (356.x .. 359.x, 0.x .. 3.x).
    np.testing.assert_allclose(fine["lon"].values, fine_180["lon"].values % 360, rtol=0,
                               atol=1e-12)
    np.testing.assert_allclose(fine[VARIABLE].values, fine_180[VARIABLE].values, rtol=1e-6)
    _SEEN.append({"case": "longitude 0..360 across Greenwich", "entry": "api, run",
                  "note": "accepted", "message": "(accepted: unwrapped to -3.5..3.5 inside; "
                  "the output keeps the file's 0..360 values and equals that of the "
                  "-180..180 file)"})


def test_values_outside_valid_range_are_missing_and_reported(
        ctx: Context, caplog: pytest.LogCaptureFixture) -> None:
    data = 280.0 + np.random.default_rng(0).random((3, 8, 8))
    data[0, 2, 3] = 500.0
    path = ctx.tmp / "valid_range.nc"
    make_latlon_nc(path, lat=np.arange(8) + 40.5, lon=np.arange(8) + 10.5, data=data,
                   variable=VARIABLE, calendar="360_day",
                   attrs={"valid_range": np.array([180.0, 340.0])})
    with caplog.at_level(logging.WARNING, logger="downscale"):
        field = open_field(path, VARIABLE)
        fine = _run_values(ctx, path)
    assert np.isnan(field[VARIABLE].values).sum() == 1
    assert np.isnan(field[VARIABLE].values[0, 2, 3])
    assert bool(fine[VARIABLE][0, 8:12, 12:16].isnull().all())
    (line,) = [r.getMessage() for r in caplog.records if "valid range" in r.getMessage()]
    assert line == (f"{path}: {VARIABLE}: 1 value outside the declared valid range [180, 340] "
                    "is treated as missing (CF valid_min/valid_max/valid_range).")
    _SEEN.append({"case": "values outside valid_range", "entry": "api, run",
                  "note": "accepted", "message": "(accepted: missing, as CF says; warning "
                  "line) " + line.replace(str(ctx.tmp) + "/", "")})


def test_malicious_checkpoint_payload_never_runs(ctx: Context) -> None:
    from downscale.checkpoint import read_checkpoint
    from downscale.errors import CheckpointError

    path, marker = malicious_checkpoint(ctx.tmp)
    with pytest.raises(CheckpointError, match="not unpickled for safety"):
        read_checkpoint(path)
    with pytest.raises(SystemExit):
        cli_main(["predict", "--config", str(Path(__file__).parents[1] / "conf" /
                                             "e1_tiny.yaml"),
                  "--ckpt_path", str(path), "--prediction_writer.output",
                  str(ctx.output)])
    assert not marker.exists(), "the pickle payload was executed"


# -- a full disk, simulated (for real, on a tmpfs: tests/test_disk_full.py) --------------
def _run_argv(ctx: Context) -> list[str]:
    return ["run", "--checkpoint", str(ctx.checkpoint), "--input", str(ctx.good), "--output",
            str(ctx.output), "--workers", "0", "--no-progress", "--time-chunk", "1",
            "--any-spacing"]  # 1-degree files; the checkpoint learned 5 x 7.5 degrees


def _left_in_output_folder(ctx: Context) -> list[str]:
    return sorted(p.name for p in ctx.output.parent.iterdir() if p.name != ".downscale_run.lock")


def test_an_output_larger_than_the_free_space_is_refused_before_writing(
        ctx: Context, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    usage = shutil.disk_usage(ctx.tmp)._replace(free=1 << 10)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage)
    line = _error_line(Call(_run_argv(ctx), ()), capsys)
    assert "out: not enough free space" in line and "only 1.00 kiB are free" in line, line
    assert _left_in_output_folder(ctx) == []
    _SEEN.append({"case": "output larger than the free space", "entry": "run",
                  "note": "the file system reports 1 KiB free",
                  "message": line.replace(str(ctx.tmp) + "/", "")})


def test_a_disk_that_fills_during_the_write_is_one_line(
        ctx: Context, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """netCDF-C's error for a failed HDF5 write (errno lost), the file system then full."""
    from downscale import writers

    full = []
    real_usage = shutil.disk_usage

    def hdf_error(*args: Any) -> None:
        full.append(True)
        raise RuntimeError("NetCDF: HDF error")

    def usage(path: Any) -> Any:
        return real_usage(path)._replace(free=0) if full else real_usage(path)

    monkeypatch.setattr(writers, "_shaped", hdf_error)
    monkeypatch.setattr(shutil, "disk_usage", usage)
    line = _error_line(Call(_run_argv(ctx), ()), capsys)
    assert "result.nc: air_temperature: disk full while writing (0 B left)" in line, line
    assert _left_in_output_folder(ctx) == []  # the temporary is removed
    _SEEN.append({"case": "disk full during the write", "entry": "run",
                  "note": "NetCDF: HDF error, 0 B left",
                  "message": line.replace(str(ctx.tmp) + "/", "")})
