"""``downscale run``: CF output, resumable outputs, Dask clusters, kill -9, bad input, memory."""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import netCDF4
import numpy as np
import pytest
import torch
import xarray as xr
from conftest import N_TIME, VARIABLE, fit_tiny

import downscale.batch.cli
import downscale.checkpoint
from downscale import __version__
from downscale.batch import RECORD_NAME
from downscale.batch.execute import Runner
from downscale.checkpoint import file_sha256
from downscale.errors import CheckpointError, InputError
from downscale.grid import cell_areas
from downscale.main import main as cli_main
from downscale.metrics import conservation_error
from downscale.testing import measure_process

ROOT = Path(__file__).resolve().parents[1]
#: One time step per chunk everywhere, so every run batches alike and files agree bit for bit.
CHUNK = ["--time-chunk", "1"]
#: Subprocesses: one torch thread, like the reference run and the Dask workers.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


# -- fixtures ------------------------------------------------------------------------------
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(*args: str | Path) -> None:
    downscale.batch.cli.main([str(a) for a in args])


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path,
              coarse_nc: Path) -> Path:
    """The uninterrupted in-process run: one file of all 12 steps."""
    out = tmp_path_factory.mktemp("reference") / "e1_fine.nc"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _run("--checkpoint", checkpoint, "--input", coarse_nc, "--output", out, "--workers",
             "0", *CHUNK)
    finally:
        torch.set_num_threads(threads)
    return out


def _values(path: Path) -> np.ndarray[Any, Any]:
    with xr.open_dataset(path) as ds:
        return np.asarray(ds[VARIABLE].values)


def _finals(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".nc") and n[0] != ".")


def _temporaries(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".tmp"))


# -- the output file -------------------------------------------------------------------------
def test_run_is_listed_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    cli_main(["--help"])
    assert "run " in capsys.readouterr().out


def test_output_is_cf_netcdf_with_provenance(reference: Path, checkpoint: Path,
                                             coarse_nc: Path) -> None:
    with xr.open_dataset(reference) as ds, xr.open_dataset(coarse_nc) as coarse:
        da = ds[VARIABLE]
        assert da.dims == ("time", "lat", "lon") and da.shape == (N_TIME, 36, 48)
        assert da.attrs["units"] == "K" and da.attrs["standard_name"] == VARIABLE
        assert "area: mean" in da.attrs["cell_methods"]
        assert ds.attrs["Conventions"] == "CF-1.11"
        assert ds["lat"].attrs["bounds"] == "lat_bnds" and ds["lon"].attrs["bounds"] == "lon_bnds"
        assert ds["time"].encoding["calendar"] == "360_day"
        np.testing.assert_array_equal(ds["time"].values, coarse["time"].values)
        # Provenance: checkpoint and its sha256, configuration, version, inputs, command.
        assert ds.attrs["downscale_checkpoint"] == str(checkpoint.resolve())
        assert ds.attrs["downscale_checkpoint_sha256"] == file_sha256(checkpoint)
        config = json.loads(ds.attrs["downscale_config"])
        assert config["hyper_parameters"]["hidden_channels"] == 8
        spacing = config["trained_on"].pop("coarse_spacing")  # E1's 1.25 x 1.875 degrees x 4
        assert spacing["dims"] == ["lat", "lon"] and spacing["widths"] == [5.0, 7.5]
        assert config["trained_on"] == {"variable": VARIABLE, "factor": 4, "units": "K",
                                        "standard_name": VARIABLE}
        assert ds.attrs["downscale_version"] == __version__
        assert ds.attrs["downscale_inputs"] == str(coarse_nc.resolve())
        assert "run --checkpoint" in ds.attrs["history"] and str(coarse_nc) in ds.attrs["history"]
        # Each coarse cell of the input keeps its mass exactly.
        err = conservation_error(da.values.astype(np.float64),
                                 coarse[VARIABLE].values.astype(np.float64),
                                 cell_areas(ds).values, 4)
        assert err.max_rel < 1e-5 and err.n_cells == 9 * 12 * N_TIME
    with netCDF4.Dataset(reference) as nc:
        for name, var in nc.variables.items():  # _FillValue on the data variable only
            assert ("_FillValue" in var.ncattrs()) == (name == VARIABLE), name
        data = nc.variables[VARIABLE]
        assert data.filters()["zlib"] and data.chunking() == [1, 36, 48]


def test_tiled_run_equals_whole_field_run(reference: Path, checkpoint: Path, coarse_nc: Path,
                                          tmp_path: Path) -> None:
    out = tmp_path / "tiled.nc"
    # 8 fine cells = 2 coarse cells per tile, halo of 5 coarse cells (the receptive field).
    _run("--checkpoint", checkpoint, "--input", coarse_nc, "--output", out, "--workers", "0",
         "--tile-size", "8", *CHUNK)
    np.testing.assert_allclose(_values(out), _values(reference), rtol=0, atol=2e-4)


def test_one_output_per_input_and_joined_inputs(reference: Path, checkpoint: Path,
                                                coarse_nc: Path, tmp_path: Path) -> None:
    with xr.open_dataset(coarse_nc) as ds:
        halves = [tmp_path / "first.nc", tmp_path / "second.nc"]
        for path, part in zip(halves, (slice(0, 5), slice(5, N_TIME)), strict=True):
            ds.isel(time=part).to_netcdf(path)
    outdir = tmp_path / "per_input"
    _run("--checkpoint", checkpoint, "--input", *halves, "--output-dir", outdir, "--workers",
         "0", *CHUNK)
    assert _finals(outdir) == ["first_downscaled.nc", "second_downscaled.nc"]
    joined = np.concatenate([_values(outdir / n) for n in _finals(outdir)])
    np.testing.assert_array_equal(joined, _values(reference))
    _run("--checkpoint", checkpoint, "--input", *halves, "--output", tmp_path / "joined.nc",
         "--workers", "0", *CHUNK)
    np.testing.assert_array_equal(_values(tmp_path / "joined.nc"), _values(reference))


def test_zarr_output_equals_netcdf_with_the_same_cf_attributes(
        reference: Path, checkpoint: Path, coarse_nc: Path, tmp_path: Path) -> None:
    store = tmp_path / "fine.zarr"
    _run("--checkpoint", checkpoint, "--input", coarse_nc, "--output", store, "--workers", "0",
         *CHUNK)
    assert (store / ".zmetadata").is_file()  # consolidated
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    with xr.open_zarr(store) as got, xr.open_dataset(reference) as want:
        np.testing.assert_array_equal(got[VARIABLE].values, want[VARIABLE].values)
        for name in want.variables:
            assert got[name].attrs == want[name].attrs, name
        # NaN-aware: the output keeps the input's _FillValue, which may be NaN.
        np.testing.assert_equal(got[VARIABLE].encoding["_FillValue"],
                                want[VARIABLE].encoding["_FillValue"])
        assert got.attrs.keys() == want.attrs.keys()
        assert {k: v for k, v in got.attrs.items() if k != "history"} == {
            k: v for k, v in want.attrs.items() if k != "history"}
        xr.testing.assert_identical(got.drop_vars(VARIABLE).drop_attrs(),
                                    want.drop_vars(VARIABLE).drop_attrs())
    # --output-dir with --format zarr: one store per block, the same values.
    _run("--checkpoint", checkpoint, "--input", coarse_nc, "--output-dir", tmp_path / "blocks",
         "--time-block", "5", "--format", "zarr", "--workers", "0", *CHUNK)
    names = sorted(n for n in os.listdir(tmp_path / "blocks") if n.endswith(".zarr"))
    assert names == [f"{VARIABLE}_000000-000004.zarr", f"{VARIABLE}_000005-000009.zarr",
                     f"{VARIABLE}_000010-000011.zarr"]
    parts = []
    for name in names:
        with xr.open_zarr(tmp_path / "blocks" / name) as part:
            parts.append(part[VARIABLE].values)
    np.testing.assert_array_equal(np.concatenate(parts), _values(reference))


def test_format_applies_to_output_dir_only(checkpoint: Path, coarse_nc: Path,
                                           tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--format applies to --output-dir"):
        _run("--checkpoint", checkpoint, "--input", coarse_nc, "--output", tmp_path / "x.nc",
             "--format", "zarr", "--workers", "0")


def test_run_imports_no_lightning(checkpoint: Path, coarse_nc: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "downscale", "run", "--checkpoint",
         str(checkpoint), "--input", str(coarse_nc), "--output", str(tmp_path / "x.nc"),
         "--workers", "0", "--no-progress"], env=ENV, capture_output=True, text=True,
        timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")]
    # The run's own modules were timed (main imports the command's module with importlib,
    # which -X importtime does not list; the modules it imports are).
    assert {"downscale.batch.execute", "downscale.nn.models", "downscale.writers"} <= set(imported)
    lightning = [m for m in imported if m.split(".")[0] in (
        "lightning", "pytorch_lightning", "lightning_fabric", "lightning_utilities")]
    assert not lightning, lightning[:10]


def test_predict_and_run_give_identical_values(checkpoint: Path, e1_path: Path,
                                              tmp_path: Path) -> None:
    """One tiler: ``predict`` (whole coarse chunks, tiles with halos) == ``run``."""
    from conftest import TINY

    from downscale.aggregate import coarsen_field, crop_to_factor
    from downscale.io import open_field, write_netcdf

    predicted = tmp_path / "predicted.nc"
    cli_main(["predict", "--config", TINY, "--ckpt_path", str(checkpoint), "--data.tile_size",
              "8", "--prediction_writer.output", str(predicted)])
    assert not _temporaries(tmp_path)
    with xr.open_dataset(predicted) as ds:
        times, expected = ds["time"].values, ds[VARIABLE].values
    fine = crop_to_factor(open_field(e1_path, VARIABLE), (4, 4)).sel(time=times)
    coarse = write_netcdf(coarsen_field(fine, VARIABLE, (4, 4)).compute(),
                          tmp_path / "coarse.nc")
    # The same time steps per forward pass as predict's batch_size (4): the same rounding.
    _run("--checkpoint", checkpoint, "--input", coarse, "--output", tmp_path / "run.nc",
         "--workers", "0", "--tile-size", "8", "--time-chunk", "4")
    np.testing.assert_array_equal(_values(tmp_path / "run.nc"), expected)


# -- resuming ----------------------------------------------------------------------------------
def test_rerun_skips_verified_outputs_and_redoes_the_rest(
        reference: Path, checkpoint: Path, coarse_nc: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="downscale")
    coarse_nc = Path(shutil.copy2(coarse_nc, tmp_path / "coarse.nc"))  # its mtime changes
    outdir = tmp_path / "blocks"
    args = ("--checkpoint", checkpoint, "--input", coarse_nc, "--output-dir", outdir,
            "--time-block", "5", "--workers", "0", *CHUNK)
    _run(*args)
    names = _finals(outdir)
    assert names == [f"{VARIABLE}_000000-000004.nc", f"{VARIABLE}_000005-000009.nc",
                     f"{VARIABLE}_000010-000011.nc"]
    record = json.loads((outdir / RECORD_NAME).read_text())["outputs"]
    assert {n: e["sha256"] for n, e in record.items()} == {
        n: file_sha256(outdir / n) for n in names}
    stamps = {n: (outdir / n).stat().st_mtime_ns for n in names}

    caplog.clear()
    _run(*args)
    assert caplog.text.count("complete and verified") == 3
    assert stamps == {n: (outdir / n).stat().st_mtime_ns for n in names}

    with open(outdir / names[1], "r+b") as handle:  # damaged after it was written
        handle.seek(-100, os.SEEK_END)
        handle.write(b"\0" * 100)
    (outdir / names[2]).unlink()
    caplog.clear()
    _run(*args)
    assert caplog.text.count("complete and verified") == 1
    assert (outdir / names[0]).stat().st_mtime_ns == stamps[names[0]]
    joined = np.concatenate([_values(outdir / n) for n in names])
    np.testing.assert_array_equal(joined, _values(reference))

    os.utime(coarse_nc)  # a changed input: everything is redone
    caplog.clear()
    _run(*args)
    assert "complete and verified" not in caplog.text
    assert not _temporaries(outdir)


def test_a_directory_with_the_old_manifest_still_resumes(
        checkpoint: Path, coarse_nc: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """Directories written before the record's rename hold downscale_manifest.json."""
    outdir = tmp_path / "old"
    args = ("--checkpoint", checkpoint, "--input", coarse_nc, "--output-dir", outdir,
            "--time-block", "6", "--workers", "0", *CHUNK)
    _run(*args)
    (outdir / RECORD_NAME).rename(outdir / "downscale_manifest.json")
    caplog.set_level(logging.INFO, logger="downscale")
    _run(*args)
    assert caplog.text.count("complete and verified") == 2
    assert (outdir / RECORD_NAME).is_file()
    assert not (outdir / "downscale_manifest.json").exists()


def test_a_second_run_into_the_same_directory_is_refused(checkpoint: Path, coarse_nc: Path,
                                                        tmp_path: Path) -> None:
    outdir = tmp_path / "busy"
    outdir.mkdir()
    with open(outdir / ".downscale_run.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(InputError, match="another downscale run"):
            _run("--checkpoint", checkpoint, "--input", coarse_nc, "--output-dir", outdir,
                 "--workers", "0")
    assert not _finals(outdir)


def test_kill_9_mid_run_then_rerun_resumes(reference: Path, checkpoint: Path, coarse_nc: Path,
                                           tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    outdir = tmp_path / "killed"
    args = ["--checkpoint", str(checkpoint), "--input", str(coarse_nc), "--output-dir",
            str(outdir), "--time-block", "3", "--workers", "0", *CHUNK]
    expected = _values(reference)
    checked: set[str] = set()

    def check_new_finals() -> None:
        """A final name must hold a complete file from the moment it appears."""
        for name in _finals(outdir):
            if name not in checked:
                start = int(name.rsplit("_", 1)[1].split("-")[0])
                np.testing.assert_array_equal(_values(outdir / name), expected[start:start + 3])
                checked.add(name)

    log_file = open(tmp_path / "killed.log", "w")  # closed in the finally below
    proc = subprocess.Popen([sys.executable, "-m", "tests.helpers.run_with_faults",
                             "--pause", "computed:0.4", "--", *args], cwd=ROOT,
                            env={**ENV, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                            stderr=log_file)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if outdir.is_dir():
                check_new_finals()
                if checked and _temporaries(outdir):  # one file done, the next under way
                    break
            time.sleep(0.005)
        assert proc.poll() is None, "the run ended before it was killed: " + (
            tmp_path / "killed.log").read_text()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        log_file.close()
    check_new_finals()
    assert proc.returncode == -signal.SIGKILL
    assert 1 <= len(checked) < 4
    assert _temporaries(outdir), "the killed run left no temporary behind"
    stamps = {n: (outdir / n).stat().st_mtime_ns for n in checked}

    caplog.set_level(logging.INFO, logger="downscale")
    _run(*args)
    assert "Removed the stale temporary" in caplog.text
    assert caplog.text.count("complete and verified") == len(checked)
    assert stamps == {n: (outdir / n).stat().st_mtime_ns for n in checked}
    assert not _temporaries(outdir)
    assert len(_finals(outdir)) == 4
    check_new_finals()
    joined = np.concatenate([_values(outdir / n) for n in _finals(outdir)])
    np.testing.assert_array_equal(joined, expected)


# -- Dask -----------------------------------------------------------------------------------
@pytest.fixture
def local_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Two worker processes with one thread each, started and stopped here.

    The processes are forked from this one (torch and the package already imported: fast);
    with one torch thread, as DataLoader workers are. The model cache is emptied first, so
    that the workers' load counts are their own.
    """
    from distributed import LocalCluster

    monkeypatch.setattr(downscale.checkpoint, "_MODELS", {})
    monkeypatch.setattr(downscale.checkpoint, "MODEL_LOADS", 0)
    with dask.config.set({"distributed.worker.multiprocessing-method": "fork"}):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               dashboard_address=":0", silence_logs=logging.ERROR)
    try:
        yield cluster
    finally:
        cluster.close()


def _same_file(path: Path, reference: Path) -> None:
    with xr.open_dataset(path) as got, xr.open_dataset(reference) as want:
        got.attrs.pop("history")
        want.attrs.pop("history")
        xr.testing.assert_identical(got, want)


def test_local_cluster_writes_the_same_files_as_the_in_process_run(
        local_cluster: Any, reference: Path, checkpoint: Path, coarse_nc: Path,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from distributed import Client

    runners: list[Runner] = []

    class Recorded(Runner):
        def __init__(self, client: Any) -> None:
            super().__init__(client)
            runners.append(self)

    monkeypatch.setattr(downscale.batch.cli, "Runner", Recorded)
    common = ("--checkpoint", checkpoint, "--input", coarse_nc, "--scheduler",
              local_cluster.scheduler_address, *CHUNK)
    # One file: the workers compute the chunks, this process writes them as they come.
    _run(*common, "--output", tmp_path / "one.nc")
    _same_file(tmp_path / "one.nc", reference)
    # The 12 chunks went to Dask in a window of two per worker thread, never more.
    (runner,) = runners
    assert runner.most_in_flight == 4
    # Zarr: every chunk written into the store by the worker that computed it.
    _run(*common, "--output", tmp_path / "one.zarr")
    with xr.open_zarr(tmp_path / "one.zarr") as got:
        np.testing.assert_array_equal(got[VARIABLE].values, _values(reference))
    # Blocks: the workers write their own files.
    _run(*common, "--output-dir", tmp_path / "blocks", "--time-block", "4")
    names = _finals(tmp_path / "blocks")
    assert len(names) == 3
    joined = np.concatenate([_values(tmp_path / "blocks" / n) for n in names])
    np.testing.assert_array_equal(joined, _values(reference))
    with Client(local_cluster) as client:
        loads = client.run(lambda: downscale.checkpoint.MODEL_LOADS)
    assert len(loads) == 2 and all(n <= 1 for n in loads.values()), loads
    assert sum(loads.values()) >= 1


FAKE_JOBQUEUE = """
import json, os
from distributed import LocalCluster

class SLURMCluster(LocalCluster):
    \"\"\"Stands in for dask_jobqueue.SLURMCluster: local worker processes, no sbatch.

    One process per "job", as on SLURM: threads sharing one process would share one HDF5
    library, which is not thread-safe (such a run can die of SIGBUS).
    \"\"\"

    def __init__(self, **kwargs):
        with open(os.environ["FAKE_JOBQUEUE_LOG"], "w") as log:
            json.dump(kwargs, log)
        super().__init__(n_workers=0, processes=True, threads_per_worker=1,
                         dashboard_address=":0")

    def scale(self, n=0, jobs=0, **kwargs):
        return super().scale(jobs)
"""


def test_slurm_recipe_runs_downscale_run_on_its_cluster(reference: Path, checkpoint: Path,
                                                        coarse_nc: Path,
                                                        tmp_path: Path) -> None:
    fake = tmp_path / "fake" / "dask_jobqueue"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(FAKE_JOBQUEUE)
    log = tmp_path / "jobqueue.json"
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(fake.parent), str(ROOT)]),
           "FAKE_JOBQUEUE_LOG": str(log)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "pipelines" / "slurm_run.py"), "--jobs", "2", "--cores",
         "1", "--queue", "short", "--job-extra=--gres=gpu:1", "--", "--checkpoint",
         str(checkpoint), "--input", str(coarse_nc), "--output-dir", str(tmp_path / "out"),
         "--time-block", "6", *CHUNK], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    settings = json.loads(log.read_text())
    assert settings["queue"] == "short" and settings["processes"] == 1
    assert settings["job_extra_directives"] == ["--gres=gpu:1"]
    joined = np.concatenate([_values(tmp_path / "out" / n) for n in _finals(tmp_path / "out")])
    np.testing.assert_array_equal(joined, _values(reference))


def test_slurm_recipe_without_dask_jobqueue_is_one_clear_line(tmp_path: Path) -> None:
    # Before the run: with dask-jobqueue (CI's slow step installs it) the recipe would wait
    # for SLURM workers.
    if importlib.util.find_spec("dask_jobqueue") is not None:
        pytest.skip("dask-jobqueue is installed here")
    result = subprocess.run(
        [sys.executable, str(ROOT / "pipelines" / "slurm_run.py"), "--", "--checkpoint", "x"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "pip install dask-jobqueue" in result.stderr


# -- bad input: one line, exit status 2, nothing written ---------------------------------
def _bad_cases(tmp: Path, checkpoint: Path, coarse_nc: Path) -> dict[str, tuple[list[str],
                                                                                list[str]]]:
    """Name -> (arguments, fragments the error line must contain)."""
    with xr.open_dataset(coarse_nc) as ds:
        ds = ds.load()
    renamed = tmp / "tas.nc"  # without a standard_name: not the checkpoint's quantity
    tas = ds.rename({VARIABLE: "tas"})
    del tas["tas"].attrs["standard_name"]
    tas.to_netcdf(renamed)
    metres = tmp / "metres.nc"  # units with no conversion into K (degC converts)
    ds.assign({VARIABLE: ds[VARIABLE].assign_attrs(units="m")}).to_netcdf(metres)
    shifted = tmp / "shifted.nc"
    ds.assign_coords(lon=ds["lon"] + 7.5, lon_bnds=ds["lon_bnds"] + 7.5).to_netcdf(shifted)
    garbage = tmp / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint" * 64)
    afile = tmp / "a_file"
    afile.write_text("x")
    ck, inp, out = str(checkpoint), str(coarse_nc), str(tmp / "out" / "x.nc")
    (tmp / "out").mkdir()
    return {
        "missing checkpoint": (["--checkpoint", str(tmp / "nope.ckpt"), "--input", inp,
                                "--output", out], ["nope.ckpt", "checkpoint file not found"]),
        "corrupt checkpoint": (["--checkpoint", str(garbage), "--input", inp, "--output", out],
                               ["garbage.ckpt", "not a readable checkpoint"]),
        "another variable": (["--checkpoint", ck, "--input", str(renamed), "--variable", "tas",
                              "--output", out],
                             [f"trained for variable '{VARIABLE}'", "'tas'"]),
        "variable missing": (["--checkpoint", ck, "--input", str(renamed), "--output", out],
                             [str(renamed), VARIABLE, "variable not found", "tas"]),
        "other units": (["--checkpoint", ck, "--input", str(metres), "--output", out],
                        [str(metres), "is in m", "in K"]),
        "different grids": (["--checkpoint", ck, "--input", inp, str(shifted),
                             "--output-dir", str(tmp / "out")],
                            [str(shifted), "grid (lon) differs"]),
        "missing input": (["--checkpoint", ck, "--input", str(tmp / "absent.nc"), "--output",
                           out], ["absent.nc", "file not found"]),
        "unwritable output directory": (["--checkpoint", ck, "--input", inp, "--output-dir",
                                         str(afile / "sub")],
                                        ["a_file/sub", "cannot create the output directory"]),
        "missing output directory": (["--checkpoint", ck, "--input", inp, "--output",
                                      str(tmp / "no" / "x.nc")], ["does not exist"]),
    }


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path, coarse_nc: Path
             ) -> dict[str, tuple[list[str], subprocess.CompletedProcess[str], Path]]:
    """Every bad-input case run as ``python -m downscale run``, all at once."""
    tmp = tmp_path_factory.mktemp("bad")
    procs = {}
    for name, (args, fragments) in _bad_cases(tmp, checkpoint, coarse_nc).items():
        procs[name] = (fragments, subprocess.Popen(
            [sys.executable, "-m", "downscale", "run", *args, "--workers", "0"], env=ENV,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = {}
    for name, (fragments, proc) in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        results[name] = (fragments, subprocess.CompletedProcess(proc.args, proc.returncode,
                                                                stdout, stderr), tmp)
    return results


@pytest.mark.parametrize("case", ["missing checkpoint", "corrupt checkpoint",
                                  "another variable", "variable missing", "other units",
                                  "different grids", "missing input",
                                  "unwritable output directory", "missing output directory"])
def test_bad_input_is_one_line_and_exit_2(
        bad_runs: dict[str, tuple[list[str], subprocess.CompletedProcess[str], Path]],
        case: str) -> None:
    fragments, result, tmp = bad_runs[case]
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("downscale: error: ") and "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not list(tmp.rglob("*.nc.*.tmp"))
    assert not (tmp / "out" / "x.nc").exists() and not list((tmp / "out").glob("*.nc"))


def _unwritable_directory(tmp_path: Path) -> Path:
    """A directory this process cannot create files in, also when it runs as root."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        return locked
    # Root ignores permission bits; sysfs refuses new files even to root.
    candidate = Path("/sys/kernel")
    try:
        (candidate / "downscale_probe.tmp").open("w").close()
    except OSError:
        return candidate
    pytest.skip("no directory here refuses root's writes")


def test_read_only_output_directory_is_refused(checkpoint: Path, coarse_nc: Path,
                                               tmp_path: Path) -> None:
    locked = _unwritable_directory(tmp_path)
    try:
        with pytest.raises(InputError, match="not writable"):
            _run("--checkpoint", checkpoint, "--input", coarse_nc, "--output-dir", locked,
                 "--workers", "0")
    finally:
        if locked.is_relative_to(tmp_path):
            locked.chmod(0o755)


def test_checkpoint_errors_are_checkpoint_errors(checkpoint: Path, coarse_nc: Path,
                                                 tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="trained for variable"):
        _run("--checkpoint", checkpoint, "--input", coarse_nc, "--variable", "tas",
             "--output", tmp_path / "x.nc")


# -- memory --------------------------------------------------------------------------------
def _write_big_input(path: Path, nt: int, ny: int = 800, nx: int = 1250) -> Path:
    """A smooth global float64 temperature field written step by step: nt * 8 MB."""
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("time", nt)
        nc.createDimension("lat", ny)
        nc.createDimension("lon", nx)
        t = nc.createVariable("time", "f8", ("time",))
        t.units, t.calendar = "days since 2000-01-01", "noleap"
        t[:] = np.arange(nt)
        lat_edges, lon_edges = np.linspace(-90, 90, ny + 1), np.linspace(-180, 180, nx + 1)
        for name, edges, units in (("lat", lat_edges, "degrees_north"),
                                   ("lon", lon_edges, "degrees_east")):
            var = nc.createVariable(name, "f8", (name,))
            var.units = units
            var[:] = 0.5 * (edges[1:] + edges[:-1])
        values = nc.createVariable(VARIABLE, "f8", ("time", "lat", "lon"))
        values.units, values.standard_name = "K", VARIABLE
        lat = np.deg2rad(nc["lat"][:])[:, None]
        lon = np.deg2rad(nc["lon"][:])[None, :]
        base = 250 + 40 * np.cos(lat) + 5 * np.sin(3 * lon) * np.cos(2 * lat)
        for i in range(nt):
            values[i] = base + 0.01 * i
    return path


def _run_measured(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``downscale run`` in a subprocess; peak RSS of it and of every descendant."""
    usage = measure_process([sys.executable, "-m", "downscale", "run", *args], env)
    assert usage.returncode == 0, usage.stderr[-3000:]
    return {"client": usage.peak_main, "workers": usage.peak_children[-2:],
            "total": usage.peak_total, "seconds": usage.seconds}


@pytest.mark.slow
def test_memory_is_bounded_by_the_chunk_not_the_input(tmp_path: Path) -> None:
    limit = 900 << 20
    ckpt = fit_tiny(tmp_path, "--data.factor", "2", "--model.hidden_channels", "2",
                "--model.coarse_blocks", "0", "--model.fine_blocks", "0")
    small = _write_big_input(tmp_path / "small.nc", nt=8)
    big = _write_big_input(tmp_path / "big.nc", nt=128)  # 1.0 GB, more than the limit
    assert big.stat().st_size > limit
    # Workers are killed at 95 % of the limit; pausing and spilling would only hide that.
    env = {**ENV, "DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE": "False",
           "DASK_DISTRIBUTED__WORKER__MEMORY__SPILL": "False",
           "DASK_DISTRIBUTED__WORKER__MEMORY__TARGET": "False"}
    measured = {}
    for name, path in (("small", small), ("big", big)):
        measured[name] = _run_measured(
            ["--checkpoint", str(ckpt), "--input", str(path), "--output-dir",
             str(tmp_path / name), "--time-block", "32", "--tile-size", "512", "--workers",
             "2", "--memory-limit", str(limit), "--no-progress", "--any-spacing"], env)
        size = path.stat().st_size
        print(f"\n{name}: input {size >> 20} MiB, worker limit {limit >> 20} MiB, peak RSS: "
              f"workers {[r >> 20 for r in measured[name]['workers']]} MiB, client "
              f"{measured[name]['client'] >> 20} MiB, all processes "
              f"{measured[name]['total'] >> 20} MiB; {measured[name]['seconds']:.0f} s")
    worst = max(measured["big"]["workers"])
    assert worst < 0.95 * limit < big.stat().st_size
    # 16 times the input, the same memory: bounded by the chunk, not by the input.
    assert worst < max(measured["small"]["workers"]) + (128 << 20)
    assert measured["big"]["client"] < measured["small"]["client"] + (128 << 20)
    names = _finals(tmp_path / "big")
    assert len(names) == 4
    with xr.open_dataset(tmp_path / "big" / names[-1]) as fine, \
            xr.open_dataset(big) as coarse:
        last = fine[VARIABLE].isel(time=-1).values.astype(np.float64)
        err = conservation_error(last, coarse[VARIABLE].isel(time=-1).values,
                                 cell_areas(fine).values, 2)
    assert err.max_rel < 1e-5
    shutil.rmtree(tmp_path / "big")

