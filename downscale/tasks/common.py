"""What the tasks share: taking the training data's statistics into the model."""

from __future__ import annotations

from typing import Any

from torch import Tensor


def take_training_stats(norm_mean: Tensor, norm_std: Tensor, datamodule: Any) -> dict[str, Any]:
    """Copy the training split's mean and std into the model's buffers (saved in checkpoints).

    Args:
        norm_mean: The task's ``(1,)`` mean buffer, filled in place (variable units).
        norm_std: The task's ``(1,)`` std buffer, filled in place.
        datamodule: The trainer's DataModule (or None); its ``stats`` and ``state_dict()``.

    Returns:
        What the data were (variable, factor, units, ...) without the statistics: the
        ``downscale_data`` record of the checkpoint. Empty without a DataModule.
    """
    stats = getattr(datamodule, "stats", None)
    if stats is not None:
        norm_mean.fill_(stats.mean)
        norm_std.fill_(stats.std)
    if datamodule is None or not hasattr(datamodule, "state_dict"):
        return {}
    return {k: v for k, v in datamodule.state_dict().items() if k != "stats"}
