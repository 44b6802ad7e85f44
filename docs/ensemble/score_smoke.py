"""Score an ensemble checkpoint on the E1 validation patches (docs/ensemble/README.md).

Usage: python docs/ensemble/score_smoke.py [CHECKPOINT] [MEMBERS]
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from downscale.checkpoint import build_model
from downscale.data import DownscalingDataModule
from downscale.metrics.ensemble import EnsembleSums, ensemble_sums, member_conservation_sums
from downscale.nn import ensemble_forward


def main(checkpoint: str, members: int) -> None:
    """Print the ensemble scores, the noise-free member MAE and the worst conservation."""
    raw = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model = build_model(raw, checkpoint).eval()
    data = DownscalingDataModule(path="manifest://e1_north_america", variable="air_temperature",
                                 factor=4, patch_size=32, batch_size=16)
    data.setup("fit")
    total, worst, errors = EnsembleSums(), 0.0, []
    generator = torch.Generator().manual_seed(0)
    for batch in data.val_dataloader():
        args = (batch["coarse"], batch["fine_area"], batch["fine_valid"],
                bool(batch["periodic"].all()))
        with torch.no_grad():
            ens = ensemble_forward(model, members, generator, *args)
            plain = model(*args)
        truth = batch["fine"].numpy()
        total += ensemble_sums(ens.numpy(), truth,
                               batch["fine_area"].expand_as(batch["fine"]).numpy())
        ok = np.isfinite(truth) & np.isfinite(plain.numpy())
        errors.append(np.abs(plain.numpy() - truth)[ok])
        sums = member_conservation_sums(ens[:, :, 0].numpy(), batch["coarse"][:, 0].numpy(),
                                        batch["fine_area"][0, 0].numpy(), 4)
        worst = max([worst, *(s.finalize().max_abs for s in sums)])
    print(total.finalize())
    print(f"noise-free member MAE {np.concatenate(errors).mean():.4f}, "
          f"max member conservation error {worst:.3g}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/ens_fit/out/checkpoints/last.ckpt",
         int(sys.argv[2]) if len(sys.argv) > 2 else 8)
