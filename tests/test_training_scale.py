"""Multi-process training (DDP over gloo on CPU), rank sharding, resume, SLURM configs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler

from downscale.data import DownscalingDataModule
from downscale.main import main

ROOT = Path(__file__).resolve().parents[1]
DDP = str(ROOT / "tests" / "conf" / "e1_ddp.yaml")


def test_two_process_ddp_fit_through_the_cli(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "downscale", "fit", "--config", DDP], cwd=tmp_path,
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "distributed_backend=gloo" in result.stderr
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in result.stderr
    assert (tmp_path / "outputs" / "checkpoints" / "last.ckpt").exists()


def test_ranks_draw_disjoint_training_samples() -> None:
    dm = DownscalingDataModule("manifest://e1_north_america", "air_temperature", 4,
                               patch_size=16, samples_per_epoch=32)
    dm.setup()
    dataset = dm.train_dataloader().dataset
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=False)
        seen.append({(int(dataset[i]["time"]), int(dataset[i]["y0"]), int(dataset[i]["x0"]))
                     for i in sampler})
    indices = [set(DistributedSampler(dataset, num_replicas=2, rank=r, shuffle=False))
               for r in range(2)]
    assert not indices[0] & indices[1]
    assert len(indices[0] | indices[1]) == 32
    # Distinct indices draw distinct patches (a collision of all three is vanishingly rare).
    assert len(seen[0] & seen[1]) <= 1


def test_resume_with_ckpt_path_last_continues_the_run(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    common = ["--config", DDP, "--trainer.devices", "1", "--trainer.strategy", "auto",
              "--trainer.limit_val_batches", "1"]
    main(["fit", *common, "--trainer.max_epochs", "1"])
    first = torch.load(tmp_path / "outputs/checkpoints/last.ckpt", weights_only=False)
    main(["fit", *common, "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    second = torch.load(tmp_path / "outputs/checkpoints/last.ckpt", weights_only=False)
    assert first["epoch"] == 0 and second["epoch"] == 1
    assert second["global_step"] == 2 * first["global_step"]


@pytest.mark.parametrize("trainer", ["gpu", "ddp", "slurm"])
def test_trainer_configs_parse(trainer: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "configs/experiments/e1_north_america.yaml"),
              "--config", str(ROOT / f"configs/trainer/{trainer}.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "strategy" in out
    if trainer == "slurm":
        assert "SLURMEnvironment" in out and "auto_requeue: true" in out
