"""Checkpoints build the plain-torch model without Lightning, checked in one place."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import downscale.checkpoint
from downscale.checkpoint import (
    build_model,
    check_trained_for,
    instantiate,
    load_model,
    read_checkpoint,
)
from downscale.errors import CheckpointError
from downscale.nn import (
    ClimateDownscaler,
    CoarseGridDecoder,
    ConservingDecoder,
    Downscaler,
    TerrainDownscaler,
    UNetDecoder,
)
from downscale.tasks import DownscalingTask, TerrainTask


def _inputs(factor: int, h: int = 6, w: int = 7) -> tuple[torch.Tensor, ...]:
    coarse = torch.from_numpy(np.random.default_rng(0).normal(280.0, 5.0, (2, 1, h, w))).float()
    coarse[0, 0, 1, 2] = torch.nan
    area = torch.rand(1, 1, h * factor, w * factor) + 0.5
    valid = torch.isfinite(coarse).repeat_interleave(factor, -2).repeat_interleave(factor, -1)
    return coarse, area, valid


def test_load_model_imports_no_lightning(checkpoint: Path) -> None:
    code = ("import sys; from downscale.checkpoint import load_model, read_checkpoint; "
            f"info = read_checkpoint({str(checkpoint)!r}); "
            "model = load_model(info.path, info.sha256, 'cpu', info.task); "
            "print(type(model).__name__, sorted(k for k in sys.modules if 'lightning' in k))")
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code], env=dict(os.environ),
                          capture_output=True, text=True, timeout=300, check=True)
    assert done.stdout.split() == ["ClimateDownscaler", "[]"]
    assert "lightning" not in done.stderr  # the import-time log names every module imported


def test_plain_model_equals_the_lightning_task(checkpoint: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(downscale.checkpoint, "_MODELS", {})
    monkeypatch.setattr(downscale.checkpoint, "MODEL_LOADS", 0)
    info = read_checkpoint(checkpoint)
    plain = load_model(info.path, info.sha256, "cpu", info.task)
    assert load_model(info.path, info.sha256, "cpu", info.task) is plain
    assert downscale.checkpoint.MODEL_LOADS == 1
    assert isinstance(plain, Downscaler) and not plain.training
    assert plain.variables == (info.variable,) and plain.factor == info.factor
    task = DownscalingTask.load_from_checkpoint(checkpoint, map_location="cpu",
                                                weights_only=True).eval()
    coarse, area, valid = _inputs(info.factor)
    with torch.no_grad():
        torch.testing.assert_close(plain(coarse, area, valid), task(coarse, area, valid),
                                   rtol=0, atol=0, equal_nan=True)
    with pytest.raises(CheckpointError, match="not a TerrainTask"):
        load_model(info.path, info.sha256, "cpu", "TerrainTask")


def _saved(path: Path, model: torch.nn.Module, hparams: dict[str, Any],
           task: str = "DownscalingTask", variable: str = "tas") -> Path:
    """A checkpoint laid out as ``downscale fit`` saves one (hyperparameters, data, weights)."""
    import lightning

    torch.save({"hyper_parameters": {**hparams, "_class_path": f"downscale.tasks.{task}"},
                "downscale_data": {"variable": variable, "units": "K", "factor": model.factor},
                "state_dict": model.state_dict(),
                "pytorch-lightning_version": lightning.__version__}, path)
    return path


def test_a_yaml_decoder_is_built_from_its_class_path(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ClimateDownscaler(2, decoder=UNetDecoder(factor=2, hidden_channels=4, depth=1))
    config = {"class_path": "downscale.nn.decoders.UNetDecoder",
              "init_args": {"factor": 2, "hidden_channels": 4, "depth": 1}}
    path = _saved(tmp_path / "unet.ckpt", model, {"factor": 2, "decoder": config, "lr": 0.1})
    built = build_model(torch.load(path, weights_only=True), str(path))
    assert isinstance(built.decoder, UNetDecoder)
    coarse, area, valid = _inputs(2)
    with torch.no_grad():
        torch.testing.assert_close(built(coarse, area, valid), model(coarse, area, valid),
                                   rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("class_path", ["os.system", "subprocess.Popen",
                                        "downscale.nn.protocol.tile_alignment",
                                        "downscale.nn.decoders.NoSuchDecoder",
                                        "downscale.nnx.Module"])
def test_class_paths_outside_downscale_nn_modules_are_never_built(class_path: str) -> None:
    nested = {"class_path": "downscale.nn.decoders.UNetDecoder",
              "init_args": {"factor": 2, "depth": {"class_path": class_path}}}
    for config in ({"class_path": class_path, "init_args": {"command": "true"}}, nested):
        with pytest.raises(CheckpointError, match="ckpt: "):
            instantiate(config, "x.ckpt")


def test_terrain_saved_before_local_relief_keeps_its_field_mean(tmp_path: Path) -> None:
    torch.manual_seed(0)
    task = TerrainTask(factor=2, hidden_channels=4, coarse_blocks=1, fine_blocks=1)
    hparams = {k: v for k, v in task.hparams.items() if k != "relief_radius"}
    path = _saved(tmp_path / "old.ckpt", task, hparams, "TerrainTask", "topo")
    info = read_checkpoint(path)
    plain = load_model(info.path, info.sha256, "cpu", info.task)
    loaded = TerrainTask.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    assert isinstance(plain, TerrainDownscaler) and plain.variables == ("topo",)
    assert plain.relief_radius is None and loaded.relief_radius is None
    new = _saved(tmp_path / "new.ckpt", task, dict(task.hparams), "TerrainTask")
    assert build_model(torch.load(new, weights_only=True), str(new)).relief_radius == 8


def test_default_decoder_saved_before_the_coarse_grid_one_loads_as_it_was(tmp_path: Path
                                                                         ) -> None:
    """A checkpoint without ``default_decoder`` holds the fine-grid ConservingDecoder."""
    torch.manual_seed(0)
    old = DownscalingTask(factor=2, hidden_channels=4, coarse_blocks=1,
                          default_decoder="conserving")
    with torch.no_grad():
        for param in old.decoder.parameters():
            param.add_(0.3 * torch.randn_like(param))
    hparams = {k: v for k, v in old.hparams.items() if k != "default_decoder"}
    path = _saved(tmp_path / "old.ckpt", old, hparams)
    plain = build_model(torch.load(path, weights_only=True), str(path))
    loaded = DownscalingTask.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    assert type(plain.decoder) is ConservingDecoder and type(loaded.decoder) is ConservingDecoder
    assert loaded.hparams["default_decoder"] == "conserving"
    coarse, area, valid = _inputs(2)
    with torch.no_grad():
        for model in (plain, loaded):
            torch.testing.assert_close(model.eval()(coarse, area, valid),
                                       old.eval()(coarse, area, valid), rtol=0, atol=0,
                                       equal_nan=True)
    new = DownscalingTask(factor=2, hidden_channels=4, coarse_blocks=1,
                          default_decoder="coarse_grid")
    path = _saved(tmp_path / "new.ckpt", new, dict(new.hparams))
    assert type(build_model(torch.load(path, weights_only=True), str(path)).decoder) is (
        CoarseGridDecoder)


@pytest.mark.parametrize(("checks", "fragment"), [
    ({"factor": 2}, "trained for factor 4, but the data use factor 2"),
    ({"variable": "tas"}, "trained for variable 'air_temperature', but the data select 'tas'"),
    ({"units": "degC", "data": "in.nc"}, "in K, but in.nc is in degC. Convert the input to K"),
    ({"units": None}, "is in no units (no units attribute)"),
    ({"covariate_channels": 1}, "trained with 0 static covariate channel(s)"),
    ({"units": "ft", "terrain": True}, "elevation in K, but the DEM is in ft"),
])
def test_one_place_refuses_what_does_not_match(checks: dict[str, Any], fragment: str) -> None:
    saved = {"hyper_parameters": {"factor": 4},
             "downscale_data": {"variable": "air_temperature", "units": "K"}}
    with pytest.raises(CheckpointError, match=r"^m\.ckpt: ") as info:
        check_trained_for(saved, "m.ckpt", **checks)
    assert fragment in str(info.value)
    check_trained_for(saved, "m.ckpt", factor=4, variable="air_temperature", units="K",
                      covariate_channels=0)
    check_trained_for(saved, "m.ckpt", variable="topo", terrain=True)
