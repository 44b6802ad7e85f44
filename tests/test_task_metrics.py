"""Epoch metrics of the tasks: figures of the whole epoch, not means of per-batch figures."""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

from downscale.aggregate import block_repeat
from downscale.metrics import conservation_error, rmse
from downscale.metrics.epoch import CellRMSE, Conservation
from downscale.tasks import DownscalingTask, TerrainTask
from downscale.tasks.base import BaseTask

FACTOR = 2


def _batch(n: int, error: float = 0.0, noise: float = 0.0, seed: int = 0) -> dict[str, Tensor]:
    """A batch whose prediction conserves exactly, but for ``error`` added to one fine cell.

    The coarse values lie in [280, 290] K in every batch, so the batches share one scale.
    """
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(280.0, 290.0, (n, 1, 4, 6))
    exact = block_repeat(coarse, (FACTOR, FACTOR))
    pred = exact.copy()
    pred[0, 0, 1, 2] += error
    fine = exact + noise * rng.standard_normal(exact.shape)
    area = np.cos(np.deg2rad(np.linspace(10.0, 60.0, 8)))[:, None] * np.ones((1, 12))
    return {"coarse": torch.tensor(coarse), "fine": torch.tensor(fine),
            "pred": torch.tensor(pred), "fine_area": torch.tensor(area)[None, None],
            "fine_valid": torch.ones(exact.shape, dtype=torch.bool),
            "periodic": torch.zeros(n, dtype=torch.bool)}


class _GivenPrediction(DownscalingTask):
    """The task with its network replaced by the batch's own ``pred``."""

    def predict_fine(self, batch: dict[str, Tensor], seed: int | None = None) -> Tensor:
        return batch["pred"]


def _validate(batches: list[dict[str, Tensor]]) -> dict[str, float]:
    task = _GivenPrediction(factor=FACTOR, hidden_channels=4, coarse_blocks=1, fine_blocks=1)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    (logged,) = trainer.validate(task, dataloaders=loader, verbose=False)
    return logged


def _concatenated(batches: list[dict[str, Tensor]], key: str) -> np.ndarray:
    return np.concatenate([b[key].numpy() for b in batches])


def test_logged_conservation_max_is_the_worst_batch_not_a_mean_of_maxima() -> None:
    batches = [_batch(4, seed=0), _batch(4, error=5.0, seed=1), _batch(4, seed=2),
               _batch(4, seed=3)]
    logged = _validate(batches)
    area = batches[0]["fine_area"][0, 0].numpy()
    worst = conservation_error(batches[1]["pred"], batches[1]["coarse"], area, FACTOR)
    whole = conservation_error(_concatenated(batches, "pred"), _concatenated(batches, "coarse"),
                               area, FACTOR)
    assert worst.max_rel > 1e-3  # a large error in one batch ...
    for clean in (0, 2, 3):  # ... and none in the others
        assert conservation_error(batches[clean]["pred"], batches[clean]["coarse"], area,
                                  FACTOR).max_abs < 1e-12
    # The epoch's worst cell (relative to the epoch's scale), not a quarter of it.
    assert logged["val_conservation_max_rel"] == pytest.approx(whole.max_rel, rel=1e-6)
    assert logged["val_conservation_max_rel"] == pytest.approx(worst.max_rel, rel=1e-2)
    assert logged["val_conservation_global_rel"] == pytest.approx(whole.global_rel, rel=1e-5)


def test_logged_rmse_of_unequal_batches_is_the_rmse_over_all_cells() -> None:
    batches = [_batch(3, noise=0.1, seed=0), _batch(1, noise=3.0, seed=1)]
    logged = _validate(batches)
    pred, truth = _concatenated(batches, "pred"), _concatenated(batches, "fine")
    per_batch = [rmse(b["pred"], b["fine"]) for b in batches]
    assert logged["val_rmse"] == pytest.approx(rmse(pred, truth), rel=1e-6)
    weighted_mean = (3 * per_batch[0] + per_batch[1]) / 4  # what Lightning's mean logged
    assert abs(logged["val_rmse"] - weighted_mean) > 0.1
    assert logged["val_mae"] == pytest.approx(np.mean(np.abs(pred - truth)), rel=1e-6)


def test_metrics_are_cloned_per_stage_and_hold_no_weights() -> None:
    task = DownscalingTask(factor=FACTOR, hidden_channels=4, coarse_blocks=1, fine_blocks=1)
    assert task.val_metrics is not task.test_metrics
    assert task.val_metrics.prefix == "val_" and task.test_metrics.prefix == "test_"
    assert set(task.val_metrics.keys(keep_base=True)) == set(
        task.test_metrics.keys(keep_base=True))
    # A task's state dict stays its plain model's (checkpoints load into either).
    assert not any("metrics" in key for key in task.state_dict())
    assert isinstance(TerrainTask(factor=FACTOR), BaseTask)


def test_terrain_task_logs_its_figures_once_per_epoch() -> None:
    task = TerrainTask(factor=FACTOR, hidden_channels=4, coarse_blocks=1, fine_blocks=1)
    batch = {k: v.float() if v.is_floating_point() else v for k, v in _batch(2).items()}
    batch.update(dy=torch.full((2, 1, 8, 1), 1000.0), dx=torch.full((2, 1, 8, 1), 1000.0))
    task.validation_step(batch, 0)
    figures = task.val_metrics.compute()
    assert {"val_rmse", "val_slope_violation_fraction", "val_real_slope_violation_fraction",
            "val_slope_wasserstein", "val_checkerboard_index",
            "val_conservation_max_abs"} <= set(figures)


# -- across processes ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_figures(rank: int, port: int, batches: list[dict[str, Tensor]], out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        rmse_metric, conservation = CellRMSE(), Conservation(FACTOR)
        for batch in batches[rank::2]:  # as a DistributedSampler shards them
            rmse_metric.update(batch["pred"], batch["fine"])
            conservation.update(batch["pred"], batch["coarse"], batch["fine_area"])
        figures = {"rmse": float(rmse_metric.compute()),
                   **{k: float(v) for k, v in conservation.compute().items()}}
        (out / f"rank{rank}.json").write_text(json.dumps(figures))
    finally:
        dist.destroy_process_group()


def test_epoch_metrics_reduce_across_two_processes(tmp_path: Path) -> None:
    batches = [_batch(3, noise=0.1, seed=0), _batch(1, error=5.0, noise=2.0, seed=1),
               _batch(2, noise=0.5, seed=2)]
    # Forked, not spawned: a spawned process would import the package again (~20 s each).
    mp.start_processes(_rank_figures, args=(_free_port(), batches, tmp_path), nprocs=2,
                       join=True, start_method="fork")
    out = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    pred, truth = _concatenated(batches, "pred"), _concatenated(batches, "fine")
    area = batches[0]["fine_area"][0, 0].numpy()
    whole = conservation_error(pred, _concatenated(batches, "coarse"), area, FACTOR)
    for rank in (0, 1):  # both processes see the figures of all batches
        assert out[rank]["rmse"] == pytest.approx(rmse(pred, truth), rel=1e-9)
        assert out[rank]["conservation_max_rel"] == pytest.approx(whole.max_rel, rel=1e-9)
        assert out[rank]["conservation_global_rel"] == pytest.approx(whole.global_rel,
                                                                     rel=1e-6, abs=1e-15)
    assert not math.isnan(out[0]["rmse"])
