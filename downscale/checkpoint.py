"""Checkpoints of ``downscale fit``: read weights-only, check, build the model.

One place for what a checkpoint is: :func:`read_checkpoint` reads its metadata without
building anything; :func:`check_trained_for` refuses one trained for another factor,
variable, units or covariates; :func:`build_model` builds the plain-torch model
(:mod:`downscale.nn.models`) from its hyperparameters and weights, and :func:`load_model`
does so once per process. Nothing here imports Lightning: the tasks' state dicts are the
plain models' (the tasks inherit them), and a decoder saved as ``class_path``/``init_args``
is built only from :mod:`downscale.nn` (:func:`instantiate`). Used by ``downscale run``,
``predict`` and the tasks.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from downscale.errors import CheckpointError

if TYPE_CHECKING:
    from downscale.units import UnitConversion


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
    def standard_name(self) -> str | None:
        """The CF ``standard_name`` of the variable it was trained on (None: not recorded)."""
        name = self.config.get("trained_on", {}).get("standard_name")
        return str(name) if name else None

    @property
    def contents(self) -> dict[str, Any]:
        """What :func:`check_trained_for` reads, as in the checkpoint file."""
        return {"hyper_parameters": self.config.get("hyper_parameters", {}),
                "downscale_data": self.config.get("trained_on", {})}

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
    return _load_once(path)[0]


def _load_once(path: str | os.PathLike[str], sha256: str | None = None) -> tuple[Any, str]:
    """A checkpoint's contents and the sha256 of the same bytes: the file is read once.

    Args:
        path: The checkpoint file.
        sha256: The digest it must have (a run checks that the file did not change), or
            None.

    Raises:
        CheckpointError: As :func:`load_checkpoint_dict`; or the digest differs.
    """
    import io

    import torch

    where = Path(path)
    if not where.is_file():
        raise CheckpointError(f"{where}: checkpoint file not found. Check the path given to "
                              "--checkpoint or --ckpt_path.")
    data = where.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if sha256 is not None and digest != sha256:
        raise CheckpointError(f"{where}: the checkpoint changed while the run was going on. "
                              "Run again.")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), digest
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


def checkpoint_task(raw: Any, where: str | os.PathLike[str]) -> str:
    """The task a checkpoint holds (a key of :data:`TASKS`), after checking it is one.

    Raises:
        CheckpointError: It does not record what it was trained for, or holds a class
            that is not on the whitelist.
    """
    trained = raw.get("downscale_data") if isinstance(raw, dict) else None
    hparams = raw.get("hyper_parameters") if isinstance(raw, dict) else None
    if not isinstance(trained, dict) or not trained.get("variable") or not isinstance(
            hparams, dict) or "factor" not in hparams:
        raise CheckpointError(f"{where}: not a downscaling checkpoint (it does not record the "
                              "variable and factor it was trained for). Give a .ckpt file "
                              "saved by 'downscale fit' with a DownscalingTask.")
    task = _task_name(hparams, plain_state_dict(raw))
    if task is None:
        raise CheckpointError(f"{where}: holds a {hparams.get('_class_path')}, which "
                              f"'downscale run' does not run. Give a checkpoint of "
                              f"{' or '.join(TASKS)}.")
    return task


def plain_state_dict(raw: Any) -> dict[str, Any]:
    """The checkpoint's weights, keyed as the plain model's (the tasks' keys are the same)."""
    state = raw.get("state_dict") if isinstance(raw, dict) else None
    return dict(state) if isinstance(state, dict) else {}


def read_checkpoint(path: str | os.PathLike[str]) -> CheckpointInfo:
    """Read a ``DownscalingTask`` checkpoint's metadata (tensors only, ``weights_only``).

    Raises:
        CheckpointError: The file is missing or unreadable, or is not a checkpoint of a
            downscaling model trained by this package.
    """
    where = Path(path)
    raw, sha256 = _load_once(where)
    task = checkpoint_task(raw, where)
    trained, hparams = raw["downscale_data"], raw["hyper_parameters"]
    state = plain_state_dict(raw)
    norm = {k: float(state[f"norm_{k}"].flatten()[0]) for k in ("mean", "std")
            if f"norm_{k}" in state}
    config = {"hyper_parameters": {k: v for k, v in hparams.items() if not k.startswith("_")},
              "trained_on": trained, "normalisation": norm, "task": task}
    return CheckpointInfo(str(where.resolve()), sha256, str(trained["variable"]),
                          trained.get("units"), int(hparams["factor"]),
                          json.loads(json.dumps(config, default=str)), task)


#: ``units=`` of :func:`check_trained_for` left out: the data's units are not known.
NOT_GIVEN: Final = object()


def check_trained_for(checkpoint: dict[str, Any], where: str, *, factor: int | None = None,
                      variable: str | None = None, units: object = NOT_GIVEN,
                      data: str = "the data", covariate_channels: int | None = None,
                      terrain: bool = False, standard_name: str | None = None,
                      convert_units: bool = False) -> UnitConversion | None:
    """Refuse a checkpoint trained for another factor, quantity, units or covariates.

    The one place for these checks: :func:`load_model`, the tasks' ``on_load_checkpoint``
    (``predict``, ``--ckpt_path``) and ``run`` ask it. An argument left None is not checked.
    A variable matches by meaning: another name is accepted when its ``standard_name`` is
    the checkpoint's (:func:`downscale.units.same_quantity`); a checkpoint saved without a
    standard name matches by name only.

    Args:
        checkpoint: The checkpoint's contents (``hyper_parameters``, ``downscale_data``).
        where: The checkpoint's path (or a word for it), named in the messages.
        factor: The data's upsampling factor.
        variable: The variable the data select (not checked for terrain: a generator
            trained on one DEM applies to another).
        units: The data's units of that variable (None: it has none); not checked when
            not given.
        data: The data files, named in the units message.
        covariate_channels: Static covariate channels the model is configured for.
        terrain: Whether it is a terrain generator (elevation in the messages).
        standard_name: The data variable's ``standard_name`` (None: it has none).
        convert_units: The caller converts units (``run``): other units are accepted when
            cf-units converts them (:mod:`downscale.units`); else they must be the same.

    Returns:
        With ``convert_units`` and ``units`` given: how the data's values reach the model's
        units (None when the checkpoint records none). Otherwise None.

    Raises:
        CheckpointError: With one line naming the checkpoint and what to change.
    """
    hparams = checkpoint.get("hyper_parameters") or {}
    trained = checkpoint.get("downscale_data") or {}
    saved = hparams.get("covariate_channels", 0)
    if covariate_channels is not None and saved != covariate_channels:
        raise CheckpointError(f"{where}: trained with {saved} static covariate channel(s), "
                              f"but the model is configured for {covariate_channels}. Set "
                              f"--model.init_args.covariate_channels {saved}.")
    saved_factor = hparams.get("factor")
    if factor is not None and saved_factor is not None and saved_factor != factor:
        raise CheckpointError(f"{where}: trained for factor {saved_factor}, but the data use "
                              f"factor {factor}. Use a checkpoint trained for factor {factor} "
                              f"or set --data.factor {saved_factor}.")
    if not terrain and trained.get("variable") and variable:
        from downscale.matching import check_quantity

        check_quantity(trained, where, variable, standard_name)
    if units is NOT_GIVEN:
        return None
    if convert_units and (units or not trained.get("units")):
        from downscale.matching import units_conversion

        attrs = {"units": units, "standard_name": standard_name}
        return units_conversion(trained, attrs, where=where, path=data,
                                variable=variable or str(trained.get("variable")))
    if terrain and trained.get("units") and units and trained["units"] != units:
        raise CheckpointError(f"{where}: trained on elevation in {trained['units']}, but the "
                              f"DEM is in {units}. Convert the DEM to {trained['units']}.")
    if not terrain and trained.get("units") and units != trained["units"]:
        raise CheckpointError(f"{where}: trained on '{trained.get('variable')}' in "
                              f"{trained['units']}, but {data} is in "
                              f"{units or 'no units (no units attribute)'}. Convert the input "
                              f"to {trained['units']}.")
    return None


_MODELS: dict[tuple[str, str, str, str], Any] = {}
#: How many times this process has loaded a model (tests check: once per worker).
MODEL_LOADS = 0


def load_model(checkpoint: str, sha256: str, device: str = "cpu",
               task: str = "DownscalingTask") -> Any:
    """The checkpoint's plain-torch model in eval mode, loaded once per process.

    No Lightning is imported: the model is :class:`~downscale.nn.models.ClimateDownscaler`
    or :class:`~downscale.nn.models.TerrainDownscaler` (a
    :class:`~downscale.nn.protocol.Downscaler`), built by :func:`build_model`.

    Args:
        checkpoint: Path of the checkpoint.
        sha256: Its expected sha256 (part of the cache key; checked when loading).
        device: Torch device to put the model on; ``"auto"``: cuda where available.
        task: A key of :data:`TASKS` (:attr:`CheckpointInfo.task`); the checkpoint must
            hold that task.

    Raises:
        CheckpointError: The file changed since the run started, or cannot be loaded.
    """
    global MODEL_LOADS
    if device == "auto":  # resolved where the model runs (a worker may have a GPU we lack)
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    key = (checkpoint, sha256, device, task)
    if key not in _MODELS:
        raw = _load_once(checkpoint, sha256)[0]
        held = checkpoint_task(raw, checkpoint)
        if held != task:
            raise CheckpointError(f"{checkpoint}: holds a {held}, not a {task}. Give a "
                                  f"checkpoint of {task}.")
        model = build_model(raw, checkpoint)
        _MODELS[key] = model.to(device).eval()
        MODEL_LOADS += 1
    return _MODELS[key]


#: Only classes in these modules are ever built from a checkpoint's ``class_path``.
ALLOWED_MODULE_PREFIX = "downscale.nn."


def instantiate(config: Any, where: str) -> Any:
    """Build a ``class_path``/``init_args`` config (nested ones too), ``downscale.nn`` only.

    Lightning saves a decoder chosen in YAML as such a dict. No code named by the file
    runs unless it is a ``torch.nn.Module`` class in a module under
    :data:`ALLOWED_MODULE_PREFIX`.

    Raises:
        CheckpointError: For a class outside the whitelist or arguments it refuses.
    """
    import importlib

    from torch import nn

    if isinstance(config, list):
        return [instantiate(item, where) for item in config]
    if not isinstance(config, dict):
        return config
    if "class_path" not in config:
        return {key: instantiate(value, where) for key, value in config.items()}
    class_path = str(config["class_path"])
    module_name, _, name = class_path.rpartition(".")
    if not module_name.startswith(ALLOWED_MODULE_PREFIX):
        raise CheckpointError(f"{where}: names the class {class_path}, which is not built "
                              f"(only classes under {ALLOWED_MODULE_PREFIX} are). Give a "
                              "checkpoint saved by 'downscale fit'.")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise CheckpointError(f"{where}: names the class {class_path}, which this version "
                              "of downscale does not have.") from exc
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise CheckpointError(f"{where}: {class_path} is not a torch module; it is not built.")
    args = instantiate(config.get("init_args") or {}, where)
    try:
        return cls(**args)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: cannot build {class_path} ({exc}).") from exc


def build_model(raw: dict[str, Any], where: str) -> Any:
    """The plain-torch model of a checkpoint's contents, weights loaded, without Lightning.

    The hyperparameters that the model's constructor takes are read from
    ``hyper_parameters`` (a decoder from its ``class_path``/``init_args``); the tasks'
    training settings (learning rate, ...) are left out. Generators saved before local
    relief (no ``relief_radius``) keep their field-mean relief.

    Raises:
        CheckpointError: The weights do not fit the model the hyperparameters describe.
    """
    import inspect

    from downscale.nn.models import ClimateDownscaler, TerrainDownscaler

    task = checkpoint_task(raw, where)
    hparams = raw["hyper_parameters"]
    cls = TerrainDownscaler if task == "TerrainTask" else ClimateDownscaler
    names = inspect.signature(cls.__init__).parameters
    kwargs = {k: instantiate(v, where) for k, v in hparams.items()
              if k in names and k != "variables"}
    kwargs.update(model_upgrades(hparams, task))
    try:
        model = cls(variables=(str(raw["downscale_data"]["variable"]),), **kwargs)
        model.load_state_dict(plain_state_dict(raw))
    except CheckpointError:
        raise
    except Exception as exc:
        reason = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"{where}: the model cannot be loaded ({type(exc).__name__}: "
                              f"{reason}). Give a checkpoint saved by this version of "
                              "downscale.") from exc
    return model


def model_upgrades(hparams: dict[str, Any], task: str) -> dict[str, Any]:
    """Settings that a checkpoint saved by an older version lacks, as it was trained.

    A terrain generator saved without ``relief_radius`` took relief about each field's
    mean: ``relief_radius=None`` keeps that (the default now is a local mean). A climate
    model saved without ``default_decoder`` holds the fine-grid
    :class:`~downscale.nn.ConservingDecoder` where its decoder is the default one:
    ``default_decoder="conserving"`` (the default now is the coarse-grid decoder).
    """
    if task == "TerrainTask" and "relief_radius" not in hparams:
        return {"relief_radius": None}
    if task == "DownscalingTask" and "default_decoder" not in hparams:
        return {"default_decoder": "conserving"}
    return {}
