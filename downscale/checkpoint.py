"""Checkpoints of ``downscale fit``: read weights-only, check, build the model.

One place for what a checkpoint is: :func:`read_checkpoint` reads its metadata without
building anything, :func:`load_model` builds the model once per process. Used by
``downscale run``, ``predict`` and the tasks.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from downscale.errors import CheckpointError


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint was trained for, read without building the model.

    Attributes:
        path: Absolute path of the checkpoint file.
        sha256: Hex digest of the file.
        variable: The variable it was trained on.
        units: That variable's units (None if the training data had none).
        factor: Upsampling factor.
        config: Hyperparameters, training data and normalisation (JSON-able).
        task: The LightningModule it holds: ``"DownscalingTask"`` (a climate variable) or
            ``"TerrainTask"`` (the terrain generator: coarse DEM in, fine DEM out).
    """

    path: str
    sha256: str
    variable: str
    units: str | None
    factor: int
    config: dict[str, Any]
    task: str = "DownscalingTask"

    @property
    def covariate(self) -> dict[str, Any] | None:
        """The static covariate it was trained with (variable, units, ...), or None."""
        trained = self.config.get("trained_on", {}).get("covariate")
        return trained if isinstance(trained, dict) else None

    @property
    def is_terrain(self) -> bool:
        """Whether the checkpoint is a terrain generator (any DEM's elevation, in metres)."""
        return self.task == "TerrainTask"


#: The LightningModules ``run`` loads, by class name. A checkpoint names its class
#: (``_class_path``) but only these are ever imported: no code is chosen by the file.
TASKS = {"DownscalingTask": "downscale.tasks.DownscalingTask",
         "TerrainTask": "downscale.tasks.TerrainTask"}


def _task_name(hparams: dict[str, Any], state: dict[str, Any]) -> str | None:
    """The task a checkpoint holds: its recorded class, else what its weights belong to."""
    class_path = str(hparams.get("_class_path") or "")
    if class_path:
        name = class_path.rsplit(".", 1)[-1]
        return name if TASKS.get(name) == class_path else None
    if any(key.startswith("generator.") for key in state):
        return "TerrainTask"
    return "DownscalingTask"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for piece in iter(lambda: handle.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def load_checkpoint_dict(path: str | os.PathLike[str]) -> Any:
    """A checkpoint's contents, unpickled with ``weights_only`` (no code runs on loading).

    Raises:
        CheckpointError: The file is missing, corrupt, or holds Python objects besides
            tensors and plain containers (refused rather than executed).
    """
    import torch

    where = Path(path)
    if not where.is_file():
        raise CheckpointError(f"{where}: checkpoint file not found. Check the path given to "
                              "--checkpoint or --ckpt_path.")
    try:
        return torch.load(where, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = " ".join(str(exc).split())
        if "WeightsUnpickler error:" in text:  # torch's advice to unpickle anyway is omitted
            detail = text.split("WeightsUnpickler error:")[1].split(" Check the doc")[0]
            reason = (f"corrupt, or it holds Python objects besides tensors, which are not "
                      f"unpickled for safety: {detail.strip()}")
        else:
            reason = f"{type(exc).__name__}: {text[:300]}"
        raise CheckpointError(f"{where}: not a readable checkpoint ({reason}). Give a .ckpt "
                              "file saved by 'downscale fit'.") from exc


def read_checkpoint(path: str | os.PathLike[str]) -> CheckpointInfo:
    """Read a ``DownscalingTask`` checkpoint's metadata (tensors only, ``weights_only``).

    Raises:
        CheckpointError: The file is missing or unreadable, or is not a checkpoint of a
            downscaling model trained by this package.
    """
    where = Path(path)
    raw = load_checkpoint_dict(where)
    trained = raw.get("downscale_data") if isinstance(raw, dict) else None
    hparams = raw.get("hyper_parameters") if isinstance(raw, dict) else None
    if not isinstance(trained, dict) or not trained.get("variable") or not isinstance(
            hparams, dict) or "factor" not in hparams:
        raise CheckpointError(f"{where}: not a downscaling checkpoint (it does not record the "
                              "variable and factor it was trained for). Give a .ckpt file "
                              "saved by 'downscale fit' with a DownscalingTask.")
    state = raw.get("state_dict", {})
    task = _task_name(hparams, state)
    if task is None:
        raise CheckpointError(f"{where}: holds a {hparams.get('_class_path')}, which "
                              f"'downscale run' does not run. Give a checkpoint of "
                              f"{' or '.join(TASKS)}.")
    norm = {k: float(state[f"norm_{k}"].flatten()[0]) for k in ("mean", "std")
            if f"norm_{k}" in state}
    config = {"hyper_parameters": {k: v for k, v in hparams.items() if not k.startswith("_")},
              "trained_on": trained, "normalisation": norm, "task": task}
    return CheckpointInfo(str(where.resolve()), file_sha256(where), str(trained["variable"]),
                          trained.get("units"), int(hparams["factor"]),
                          json.loads(json.dumps(config, default=str)), task)


_MODELS: dict[tuple[str, str, str], Any] = {}
#: How many times this process has loaded a model (tests check: once per worker).
MODEL_LOADS = 0


def load_model(checkpoint: str, sha256: str, device: str = "cpu",
               task: str = "DownscalingTask") -> Any:
    """The checkpoint's model in eval mode, loaded once per process.

    Args:
        checkpoint: Path of the checkpoint.
        sha256: Its expected sha256 (part of the cache key; checked when loading).
        device: Torch device to put the model on; ``"auto"``: cuda where available.
        task: A key of :data:`TASKS` (:attr:`CheckpointInfo.task`). A ``TerrainTask`` is
            wrapped in :class:`~downscale.tasks.terrain.TerrainFieldModel`, so both are
            called alike by :func:`downscale.inference.downscale_field`.

    Raises:
        CheckpointError: The file changed since the run started, or cannot be loaded.
    """
    global MODEL_LOADS
    if device == "auto":  # resolved where the model runs (a worker may have a GPU we lack)
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    key = (checkpoint, sha256, device)
    if key not in _MODELS:
        import torch

        from downscale.tasks import DownscalingTask, TerrainTask
        from downscale.tasks.terrain import TerrainFieldModel

        if file_sha256(checkpoint) != sha256:
            raise CheckpointError(f"{checkpoint}: the checkpoint changed while the run was "
                                  "going on. Run again.")
        model: torch.nn.Module
        try:
            if task == "TerrainTask":
                model = TerrainFieldModel(TerrainTask.load_from_checkpoint(
                    checkpoint, map_location="cpu", weights_only=True))
            else:
                model = DownscalingTask.load_from_checkpoint(checkpoint, map_location="cpu",
                                                             weights_only=True)
        except CheckpointError:
            raise
        except Exception as exc:
            reason = " ".join(str(exc).split())[:300]
            raise CheckpointError(f"{checkpoint}: the model cannot be loaded "
                                  f"({type(exc).__name__}: {reason}). Give a checkpoint "
                                  "saved by this version of downscale.") from exc
        _MODELS[key] = model.to(device).eval()
        MODEL_LOADS += 1
    return _MODELS[key]
