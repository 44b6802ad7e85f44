"""Training throughput: the DataModule's loader against a raw read and the model, and DDP.

Everything runs on one generated input (:func:`benchmarks.inputs.write_field`) with the
default DataModule and model, i.e. what ``downscale fit --data.path X --data.variable tas
--data.factor 4`` trains: 32 x 32 fine patches (8 x 8 coarse), 16 samples a batch,
``num_workers=0``, the conserving decoder with 32 hidden channels.

=========  =========================  ============  =========  =======  =========
size       input (steps x lat x lon)  loader/model  fit steps  workers  whole CPU
=========  =========================  ============  =========  =======  =========
tiny       12 x 90 x 180 (0.8 MB)     6 / 2         3          -        no
small      12 x 90 x 180 (0.8 MB)     6 / 4         6          -        no
medium     64 x 180 x 360 (17 MB)     32 / 32       96         2        yes
large      365 x 720 x 1440 (1.5 GB)  64 / 32       96         2        yes
=========  =========================  ============  =========  =======  =========

("loader/model": batches timed for the loader and the raw reads / training steps timed on
batches in memory; "fit steps": optimizer steps of each short ``fit``; "workers": an extra
loader run with that many DataLoader workers, beside the default of none; "whole CPU": an
extra one-process ``fit`` on torch's default threads besides the one-thread one.) ``tiny`` is
the smoke test's size: it checks that the section runs and reports, with as few timed steps
as its figures need (two fit steps after the first, untimed one).

Standalone: ``python -m benchmarks.training --size small`` prints the markdown section.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import netCDF4
import numpy as np
import torch
import xarray as xr

from benchmarks import checkout_env
from benchmarks.inputs import VARIABLE, write_field
from benchmarks.timing import median_seconds
from downscale.data import DownscalingDataModule
from downscale.data.samples import PATCHES_PER_STEP, Sample
from downscale.tasks import DownscalingTask
from downscale.tasks.base import take_training_stats

FACTOR = 4
#: The loader must deliver this many times what one model consumes (issue 7's target).
TARGET_RATIO = 3.0


@dataclass(frozen=True)
class TrainingSize:
    """One benchmark size (see the module's table)."""

    steps: int
    ny: int
    nx: int
    loader_batches: int
    model_steps: int
    fit_steps: int
    workers: int
    whole_cpu: bool


SIZES = {
    "tiny": TrainingSize(steps=12, ny=90, nx=180, loader_batches=6, model_steps=2,
                         fit_steps=3, workers=0, whole_cpu=False),
    "small": TrainingSize(steps=12, ny=90, nx=180, loader_batches=6, model_steps=4,
                          fit_steps=6, workers=0, whole_cpu=False),
    "medium": TrainingSize(steps=64, ny=180, nx=360, loader_batches=32, model_steps=32,
                           fit_steps=96, workers=2, whole_cpu=True),
    "large": TrainingSize(steps=365, ny=720, nx=1440, loader_batches=64, model_steps=32,
                          fit_steps=96, workers=2, whole_cpu=True),
}


class BatchTimes(L.Callback):
    """Write each training batch's end time (``perf_counter`` seconds) to a JSON file.

    One file per rank, ``<output>.rank<r>.json``: ``{"rank", "world_size", "batch_size",
    "ends"}``. Steady-state rate = samples between the first and the last batch end over
    that span, which leaves out start-up (imports, process group, first-batch warm-up).

    Args:
        output: Path prefix of the files.
    """

    def __init__(self, output: str) -> None:
        self.output = output
        self.ends: list[float] = []
        self.batch_size = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        self.ends.append(time.perf_counter())
        self.batch_size = int(batch["fine"].shape[0])

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size,
                  "batch_size": self.batch_size, "threads": torch.get_num_threads(),
                  "ends": self.ends}
        Path(f"{self.output}.rank{trainer.global_rank}.json").write_text(json.dumps(record))


# -- 1. loading ------------------------------------------------------------------------------
def _loader_figures(loader: Iterator[Sample], n_batches: int) -> tuple[dict[str, Any],
                                                                        list[Sample]]:
    """Time ``n_batches`` of ``loader``: start-up (the first batch) and the rate after it.

    The rate is over all later batches together, not a median: with workers, batches
    arrive in bursts (one wait, then batches already made by the other workers).
    """
    start = time.perf_counter()
    batches = [next(loader)]
    first = time.perf_counter()
    for _ in range(n_batches - 1):
        batches.append(next(loader))
    elapsed = time.perf_counter() - first
    samples = sum(int(b["fine"].shape[0]) for b in batches[1:])
    return {"first_batch_s": first - start, "timed_batches": n_batches - 1,
            "samples_per_s": samples / elapsed}, batches


def _raw_read_figures(path: Path, batches: list[Sample], patch: tuple[int, int]
                      ) -> dict[str, Any]:
    """Median time to read the same windows as the loader's batches, without the package.

    Two floors: netCDF4 (the library the package reads through, no Dask) and xarray over
    Dask chunks of one time step (the package's chunking, without normalisation,
    cropping, masking, aggregation or collation).
    """
    ph, pw = patch
    windows = [[(int(t), int(y), int(x)) for t, y, x in
                zip(b["time"], b["y0"], b["x0"], strict=True)] for b in batches]
    figures: dict[str, Any] = {}
    with netCDF4.Dataset(path) as nc:
        var = nc[VARIABLE]
        var.set_auto_mask(False)
        batches_netcdf4 = itertools.cycle(windows)

        def read_netcdf4() -> list[np.ndarray[Any, Any]]:
            return [var[t, y:y + ph, x:x + pw] for t, y, x in next(batches_netcdf4)]

        # The generated grid is already ascending and -180..180, so the loader's windows are
        # the file's windows: check that the raw read is the same data.
        first = np.stack(read_netcdf4())
        got = batches[0]["fine"][:, 0].numpy()
        figures["same_values_as_loader"] = bool(np.array_equal(first, got))
        median = median_seconds(read_netcdf4, len(windows))
    figures["netcdf4_samples_per_s"] = len(windows[0]) / median
    with xr.open_dataset(path, engine="netcdf4", chunks={"time": 1}) as ds:
        da = ds[VARIABLE]
        batches_xarray = itertools.cycle(windows)

        def read_xarray() -> list[np.ndarray[Any, Any]]:
            return [da[t, y:y + ph, x:x + pw].values for t, y, x in next(batches_xarray)]

        median = median_seconds(read_xarray, len(windows))
    figures["xarray_dask_samples_per_s"] = len(windows[0]) / median
    return figures


def _source_read_share(dm: DownscalingDataModule, batches: list[Sample]) -> float:
    """Share of the loader's per-sample time spent in ``FieldSource.read`` (0..1).

    Times the package's own read of the same windows against the whole sample
    (``dataset[i]``: read, mask, aggregate, tensors; collation is in neither), one after
    the other for each sample, so that a change in other load on the machine hits both.
    """
    dataset = dm.train_dataloader().dataset
    ph, pw = dm.patch_shape
    windows = [(int(t), int(y), int(x)) for b in batches[:2]
               for t, y, x in zip(b["time"], b["y0"], b["x0"], strict=True)]
    read_s = sample_s = 0.0
    for _ in range(3):
        for i, (t, y, x) in enumerate(windows):
            start = time.perf_counter()
            dm.source.read(t, slice(y, y + ph), slice(x, x + pw))
            middle = time.perf_counter()
            dataset[i]
            read_s += middle - start
            sample_s += time.perf_counter() - middle
    return read_s / sample_s


def _model_figures(dm: DownscalingDataModule, batches: list[Sample], steps: int,
                   threads: int) -> dict[str, Any]:
    """Median training step (forward, backward, AdamW step) of the default task, in memory.

    Runs with ``threads`` intra-op threads (restored afterwards).
    """
    task = DownscalingTask(factor=dm.factor)
    take_training_stats(task.norm_mean, task.norm_std, dm)
    optimizer = task.configure_optimizers()
    task.train()
    turns = itertools.cycle(batches)

    def step() -> None:
        batch = next(turns)
        optimizer.zero_grad()
        loss = task.training_step(batch, 0)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with warnings.catch_warnings():
            # training_step logs; without a Trainer, Lightning warns and drops the value.
            warnings.filterwarnings("ignore", message=".*self.log.*")
            median = median_seconds(step, steps)
    finally:
        torch.set_num_threads(before)
    batch_size = int(batches[0]["fine"].shape[0])
    return {"median_step_s": median, "samples_per_s": batch_size / median,
            "threads": threads, "parameters": sum(p.numel() for p in task.parameters())}


def _datamodule(path: Path, size: TrainingSize, **settings: Any) -> DownscalingDataModule:
    """The DataModule with default ``settings`` except for enough patches per epoch for
    ``size.loader_batches`` batches (the default epoch, 512 patches, is 32 batches)."""
    dm = DownscalingDataModule(str(path), VARIABLE, FACTOR, **settings)
    dm.samples_per_epoch = max(dm.samples_per_epoch, size.loader_batches * dm.batch_size)
    return dm


def measure_loading(path: Path, size: TrainingSize) -> dict[str, Any]:
    """Loader, raw-read and model rates on the same file and the same batches (samples/s).

    Returns:
        ``loader`` (default settings, with the step cache; ``setup_s`` is the statistics
        pass, ``cache_hit_rate`` over the timed batches), ``loader_uncached`` (the same
        with ``cache_mb=0``: every sample read through xarray and Dask, as before the cache),
        optionally ``loader_workers`` (``size.workers`` DataLoader workers), ``raw_read``,
        ``model`` (the faster of ``model_by_threads``), ``shapes`` of one batch,
        ``source_read_share`` (uncached), ``estimate_floor_read`` and the ratios.
    """
    uncached = _datamodule(path, size, cache_mb=0)
    uncached.setup("fit")
    before, _ = _loader_figures(iter(uncached.train_dataloader()), size.loader_batches)
    dm = _datamodule(path, size)
    start = time.perf_counter()
    dm.setup("fit")
    setup_s = time.perf_counter() - start
    loader, batches = _loader_figures(iter(dm.train_dataloader()), size.loader_batches)
    reads = dm.source.cache_hits + dm.source.cache_misses
    loader.update(setup_s=setup_s, cache_mb=dm.source.cache_mb,
                  cache_hit_rate=dm.source.cache_hits / reads if reads else 0.0,
                  window_steps=dm.train_dataloader().dataset.window,  # type: ignore[attr-defined]
                  train_steps=len(dm.splits["train"]))
    result: dict[str, Any] = {
        "settings": {"batch_size": dm.batch_size, "patch": list(dm.patch_shape),
                     "num_workers": dm.num_workers, "samples_per_epoch": dm.samples_per_epoch,
                     "cache_mb": dm.source.cache_mb},
        "shapes": {k: list(v.shape) for k, v in batches[0].items()},
        "loader": loader,
        "loader_uncached": before,
        "raw_read": _raw_read_figures(path, batches, dm.patch_shape),
        "source_read_share": _source_read_share(uncached, batches),
    }
    # Torch's default thread count and one thread: on a CPU shared with other work, OpenMP
    # threads waiting for a busy core can make the default many times slower, so the
    # loader is held to the faster (more demanding) of the two.
    models = [_model_figures(dm, batches, size.model_steps, n)
              for n in sorted({torch.get_num_threads(), 1}, reverse=True)]
    result["model_by_threads"] = models
    result["model"] = max(models, key=lambda m: float(m["samples_per_s"]))
    if size.workers:
        workers = _datamodule(path, size, num_workers=size.workers)
        workers.setup("fit")
        result["loader_workers"], _ = _loader_figures(iter(workers.train_dataloader()),
                                                      size.loader_batches)
        result["loader_workers"]["num_workers"] = size.workers
    model_rate = result["model"]["samples_per_s"]
    result["ratios"] = {
        "loader_over_model": loader["samples_per_s"] / model_rate,
        "loader_uncached_over_model": before["samples_per_s"] / model_rate,
        "cache_speedup": loader["samples_per_s"] / before["samples_per_s"],
        "loader_over_netcdf4": loader["samples_per_s"]
        / result["raw_read"]["netcdf4_samples_per_s"],
        "loader_uncached_over_xarray_dask": before["samples_per_s"]
        / result["raw_read"]["xarray_dask_samples_per_s"],
    }
    if "loader_workers" in result:
        result["ratios"]["loader_workers_over_model"] = (
            result["loader_workers"]["samples_per_s"] / model_rate)
    result["meets_target"] = result["ratios"]["loader_over_model"] >= TARGET_RATIO
    # What uncached reads at the netCDF4 floor would give (an estimate from the figures
    # above, not a measurement): the sample's time outside FieldSource.read, plus the floor.
    per_sample = 1.0 / before["samples_per_s"]
    outside_read = per_sample * max(1.0 - result["source_read_share"], 0.0)
    floor_rate = 1.0 / (outside_read + 1.0 / result["raw_read"]["netcdf4_samples_per_s"])
    result["estimate_floor_read"] = {"samples_per_s": floor_rate,
                                     "over_model": floor_rate / model_rate}
    return result


# -- 2. DDP ----------------------------------------------------------------------------------
def fit_rate(path: Path, devices: int, steps: int, workdir: Path,
             threads: int | None = 1) -> dict[str, Any]:
    """Steady-state samples/s of ``downscale fit`` on CPU with ``devices`` processes.

    DDP over gloo when ``devices > 1``. Same per-process batch (the default 16), so the
    global batch is ``16 * devices``. Validation, checkpoints and logging are off, so the
    figure is training alone; the time runs from the first to the last batch end.

    Args:
        path: The training NetCDF file.
        devices: Processes.
        steps: Optimizer steps (``max_steps``); the first is start-up, not timed.
        workdir: Scratch folder (the run's working directory).
        threads: Intra-op threads per process (``OMP_NUM_THREADS``); None leaves the
            choice to torch and Lightning (all cores, divided among DDP processes).
    """
    prefix = workdir / f"fit{devices}"
    config = workdir / f"timer{devices}.yaml"
    config.write_text(json.dumps({"trainer": {"callbacks": [
        {"class_path": "benchmarks.training.BatchTimes",
         "init_args": {"output": str(prefix)}}]}}))
    command = [sys.executable, "-m", "downscale", "fit", "--config", str(config),
               "--data.path", str(path), "--data.variable", VARIABLE,
               "--data.factor", str(FACTOR), "--trainer.accelerator", "cpu",
               "--trainer.devices", str(devices),
               "--trainer.strategy", "ddp" if devices > 1 else "auto",
               "--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "0",
               "--trainer.num_sanity_val_steps", "0", "--trainer.enable_checkpointing", "false",
               "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
               "--trainer.enable_model_summary", "false",
               "--trainer.default_root_dir", str(workdir)]  # config.yaml: removed below
    env = checkout_env()  # the package and this module from this checkout
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=900)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"fit with {devices} device(s) failed:\n{done.stderr[-3000:]}")
    records = [json.loads(p.read_text()) for p in sorted(workdir.glob(f"{prefix.name}.rank*"))]
    # The CLI saves its parsed config to the working directory (no logger folder here).
    for p in [config, workdir / "config.yaml", *workdir.glob(f"{prefix.name}.rank*")]:
        p.unlink(missing_ok=True)
    spans = [r["ends"][-1] - r["ends"][0] for r in records]
    batches = len(records[0]["ends"]) - 1
    global_batch = sum(r["batch_size"] for r in records)
    # The ranks step together (gradients are all-reduced), so the slowest span is the run's.
    return {"devices": devices, "threads_setting": threads, "processes": len(records),
            "threads_per_process": records[0]["threads"], "global_batch": global_batch,
            "timed_steps": batches,
            "steady_s": max(spans), "samples_per_s": global_batch * batches / max(spans),
            "wall_s": wall}


def measure_ddp(path: Path, size: TrainingSize, workdir: Path) -> dict[str, Any]:
    """``fit`` with 1 process and with 2 DDP processes: rates, speed-up and efficiency.

    Both at one thread per process, so the speed-up is that of processes alone (two
    cores: at most 2x); with ``size.whole_cpu``, also one process with torch's default
    threads (all cores), the fair single-process baseline on an otherwise idle machine.
    """
    one = fit_rate(path, 1, size.fit_steps, workdir, threads=1)
    two = fit_rate(path, 2, size.fit_steps, workdir, threads=1)
    speedup = two["samples_per_s"] / one["samples_per_s"]
    result = {"one": one, "two": two, "speedup": speedup, "efficiency": speedup / 2,
              "batch": "same per-process batch (16): global batch 16 vs 32"}
    if size.whole_cpu:
        result["one_all_threads"] = fit_rate(path, 1, size.fit_steps, workdir, threads=None)
        result["speedup_over_all_threads"] = (two["samples_per_s"]
                                              / result["one_all_threads"]["samples_per_s"])
    return result


# -- the section -----------------------------------------------------------------------------
def run(size: str, workdir: Path) -> dict[str, Any]:
    """Measure the training section at ``size`` (``small``/``medium``/``large``).

    Args:
        size: A key of :data:`SIZES`.
        workdir: An empty scratch folder (the caller removes it); the generated input is
            deleted here when done.

    Returns:
        JSON-serialisable figures: ``size``, ``input``, ``loading`` (see
        :func:`measure_loading`), ``ddp`` (see :func:`measure_ddp`), ``gpu`` (not measured)
        and ``load_average_1min`` (other work on the machine, before and after).
    """
    chosen = SIZES[size]
    # Other work on the same cores shows in every figure here; the load says how much.
    load_before = os.getloadavg()[0]
    path = write_field(workdir / "training_input.nc", chosen.steps, chosen.ny, chosen.nx)
    try:
        result: dict[str, Any] = {
            "size": size, "input": {**asdict(chosen), "bytes": path.stat().st_size},
            "loading": measure_loading(path, chosen), "ddp": measure_ddp(path, chosen, workdir)}
    finally:
        path.unlink()
    result["load_average_1min"] = {"before": load_before, "after": os.getloadavg()[0],
                                   "cores": os.cpu_count()}
    model_rate = result["loading"]["model"]["samples_per_s"]
    result["gpu"] = {"measured": False, "reason": "no GPU on this machine",
                     "rule": "the loader must deliver at least the GPU's training-step rate",
                     "cpu_model_samples_per_s": model_rate}
    return result


def markdown(result: dict[str, Any]) -> str:
    """The section as markdown: absolute figures (samples/s, s) and the ratios."""
    load = result["load_average_1min"]
    note = (f"_Machine load (1-min average) {load['before']:.1f} before, {load['after']:.1f} "
            f"after, on {load['cores']} cores: other work shares the CPU._\n\n")
    return note + _loading_markdown(result) + "\n" + _ddp_markdown(result["ddp"])


def _loading_markdown(result: dict[str, Any]) -> str:
    load, inp, s = result["loading"], result["input"], result["loading"]["settings"]
    loader, raw, model, ratios = load["loader"], load["raw_read"], load["model"], load["ratios"]
    rate = model["samples_per_s"]
    lines = [
        f"### Training data loading ({result['size']}: {inp['steps']} x {inp['ny']} x "
        f"{inp['nx']} float32, {inp['bytes'] / 1e6:.1f} MB)",
        "",
        f"Default settings: patches {s['patch'][0]} x {s['patch'][1]}, batch "
        f"{s['batch_size']}, num_workers {s['num_workers']}; default model, "
        f"{model['parameters']} parameters. Samples/s: loaders over all batches after the "
        "first; reads and model steps, medians over batches.",
        "",
        "| what | samples/s | / fastest model step |",
        "|---|---:|---:|",
        f"| DataModule train loader (step cache {loader['cache_mb']:.0f} MiB, hit rate "
        f"{loader['cache_hit_rate']:.0%}, patches from {_window_text(loader)}) | "
        f"{loader['samples_per_s']:.0f} | "
        f"**{ratios['loader_over_model']:.2f}x** |",
        f"| same, `cache_mb=0` (every sample through xarray + Dask; before the cache) | "
        f"{load['loader_uncached']['samples_per_s']:.0f} | "
        f"{ratios['loader_uncached_over_model']:.2f}x |",
    ]
    if "loader_workers" in load:
        w = load["loader_workers"]
        lines.append(f"| same, {w['num_workers']} workers (start-up {w['first_batch_s']:.2f} s)"
                     f" | {w['samples_per_s']:.0f} | {ratios['loader_workers_over_model']:.2f}x |")
    lines += [f"| raw read, netCDF4 windows | {raw['netcdf4_samples_per_s']:.0f} | "
              f"{raw['netcdf4_samples_per_s'] / rate:.2f}x |",
              f"| raw read, xarray on Dask chunks | {raw['xarray_dask_samples_per_s']:.0f} | "
              f"{raw['xarray_dask_samples_per_s'] / rate:.2f}x |"]
    lines += [f"| model training step, {m['threads']} thread(s), in memory | "
              f"{m['samples_per_s']:.0f} | {m['samples_per_s'] / rate:.2f}x |"
              for m in load["model_by_threads"]]
    lines += [
        "",
        f"- Loader / model: **{ratios['loader_over_model']:.2f}x** against the faster model "
        f"figure ({model['threads']} thread(s)); target >= {TARGET_RATIO:.0f}x: "
        f"{'met' if load['meets_target'] else 'missed'}. The step cache: "
        f"{ratios['cache_speedup']:.1f}x the uncached loader. Loader / netCDF4 floor "
        f"{ratios['loader_over_netcdf4']:.2f}; uncached loader / xarray-Dask read "
        f"{ratios['loader_uncached_over_xarray_dask']:.2f}.",
        f"- Uncached, `FieldSource.read` (xarray selection + a Dask compute per sample) is "
        f"{load['source_read_share']:.0%} of the time of one sample. Setup (statistics pass)"
        f" {loader['setup_s']:.2f} s; first batch {loader['first_batch_s']:.3f} s. The raw "
        f"read returns the loader's values: {raw['same_values_as_loader']}.",
        f"- Estimate, not measured: with uncached reads at the netCDF4 floor the loader "
        f"would give "
        f"about {load['estimate_floor_read']['samples_per_s']:.0f} samples/s "
        f"({load['estimate_floor_read']['over_model']:.1f}x the model).",
        f"- GPU: not measured (no GPU here). To keep a GPU fed, the loader must deliver the "
        f"GPU's training-step rate: k x {rate:.0f} samples/s for a GPU k times this CPU. "
        f"The default loader delivers {loader['samples_per_s']:.0f} samples/s, so it keeps "
        f"up only while k <= {ratios['loader_over_model']:.1f} (per loader process).",
    ]
    return "\n".join(lines) + "\n"


def _window_text(loader: dict[str, Any]) -> str:
    """Which time steps the loader's patches came from (see ``RandomPatchDataset``)."""
    window, steps = loader.get("window_steps"), loader.get("train_steps")
    if window is None or window == steps:
        return f"all {steps} training steps"
    return (f"a moving window of {window} of the {steps} training steps the cache can hold, "
            f"{PATCHES_PER_STEP} patches each")


def _ddp_markdown(ddp: dict[str, Any]) -> str:
    runs = [ddp["one"], ddp["two"], *([ddp["one_all_threads"]] if "one_all_threads" in ddp
                                      else [])]
    lines = [
        "### DDP on CPU: 2 processes vs 1 (gloo)",
        "",
        f"Short `downscale fit` ({ddp['one']['timed_steps'] + 1} steps, no validation, "
        f"checkpoints or logger), {ddp['batch']}; samples/s in steady state, from the first "
        "to the last batch end (start-up is in wall s only).",
        "",
        "| processes | threads each | global batch | samples/s | steady s | wall s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['processes']} | {r['threads_per_process']} | {r['global_batch']} | "
              f"{r['samples_per_s']:.0f} | {r['steady_s']:.2f} | {r['wall_s']:.1f} |"
              for r in runs]
    lines += ["", f"- 2 processes vs 1 (one thread each): speed-up **{ddp['speedup']:.2f}x**, "
              f"efficiency {ddp['efficiency']:.0%} (2 cores: at most 2x)."]
    if "speedup_over_all_threads" in ddp:
        lines.append(f"- 2 processes vs 1 process on all "
                     f"{ddp['one_all_threads']['threads_per_process']} threads: "
                     f"{ddp['speedup_over_all_threads']:.2f}x.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.training --size small [--json out.json] [--workdir DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training")
    parser.add_argument("--size", choices=tuple(SIZES), default="small")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--workdir", type=Path,
                        help="scratch folder (default: a temporary one, removed after)")
    args = parser.parse_args(argv)
    if args.workdir:
        result = run(args.size, args.workdir)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = run(args.size, Path(tmp))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
