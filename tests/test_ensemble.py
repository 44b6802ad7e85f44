"""The stochastic conserving decoder, the fair CRPS loss and the ensemble metrics (issue 16).

Every member conserves each coarse cell's mass exactly (float32 and float64), members
differ, one seed gives the same members, flat input gives flat members, the CRPS estimator
matches its brute-force formula, and a few optimisation steps keep all of it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from downscale.grid import cell_areas_latlon
from downscale.losses import fair_crps
from downscale.metrics.ensemble import (
    crps_ensemble,
    ensemble_scores,
    ensemble_sums,
    member_conservation_sums,
    rank_histogram,
)
from downscale.nn import ClimateDownscaler, StochasticConservingDecoder, ensemble_forward
from downscale.nn.conserving import block_mean

FACTOR, MEMBERS = 4, 4
#: Conservation and flatness tolerance for values near 300: 16 units of rounding.
TOL = {dtype: 16 * torch.finfo(dtype).eps * 300 for dtype in (torch.float32, torch.float64)}


def _area(h: int, w: int, dtype: torch.dtype) -> Tensor:
    """Spherical areas of a band (55S..70N) on the fine grid, mean one, ``(1, 1, H, W)``."""
    lat = np.linspace(-55.0, 70.0, h * FACTOR + 1)
    lon = np.linspace(-20.0, 45.0, w * FACTOR + 1)
    area = cell_areas_latlon(np.stack([lat[:-1], lat[1:]], 1), np.stack([lon[:-1], lon[1:]], 1))
    return torch.as_tensor(area / area.mean(), dtype=dtype)[None, None]


def _model(dtype: torch.dtype, seed: int = 0) -> ClimateDownscaler:
    """An ensemble model with a random (non-zero) head, so noise reaches the output."""
    torch.manual_seed(seed)
    decoder = StochasticConservingDecoder(factor=FACTOR, hidden_channels=8, coarse_blocks=1,
                                          noise_channels=2)
    torch.nn.init.normal_(decoder.head.weight, std=0.3)
    model = ClimateDownscaler(factor=FACTOR, decoder=decoder).to(dtype)
    model.norm_mean.fill_(280.0)
    model.norm_std.fill_(10.0)
    return model


def _inputs(dtype: torch.dtype, flat: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    coarse = torch.full((2, 1, 5, 6), 283.0, dtype=dtype)
    if not flat:
        coarse = coarse + 8 * torch.randn(coarse.shape, generator=g, dtype=dtype)
        coarse[0, 0, 1, 2] = torch.nan  # a missing coarse cell
    area = _area(5, 6, dtype)
    valid = torch.ones(2, 1, 5 * FACTOR, 6 * FACTOR, dtype=torch.bool)
    valid[1, 0, :3, :2] = False  # a coast
    return coarse, area, valid


def _members(model: ClimateDownscaler, seed: int, coarse: Tensor, area: Tensor,
             valid: Tensor) -> Tensor:
    return ensemble_forward(model, MEMBERS, torch.Generator().manual_seed(seed), coarse, area,
                            valid)


def _max_cell_error(members: Tensor, coarse: Tensor, area: Tensor, valid: Tensor) -> float:
    weight = area * valid
    means = torch.stack([block_mean(m, weight, FACTOR)[0] for m in members])
    covered = torch.isfinite(coarse) & (block_mean(weight.to(coarse.dtype), weight, FACTOR)[1]
                                        > 0)
    return float((means - coarse).abs()[:, covered].max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_members_differ_and_each_conserves(dtype: torch.dtype) -> None:
    model = _model(dtype)
    coarse, area, valid = _inputs(dtype)
    with torch.no_grad():
        members = _members(model, 0, coarse, area, valid)
    assert members.shape == (MEMBERS, 2, 1, 20, 24)
    ok = torch.isfinite(members[0])
    spread = (members[1:] - members[:1])[:, ok].abs().amax()
    assert spread > 1e-2  # members differ, by more than rounding
    assert _max_cell_error(members, coarse, area, valid) < TOL[dtype]
    # The metrics package agrees, member by member.
    sums = member_conservation_sums(members[:, :, 0].numpy(), coarse[:, 0].numpy(),
                                    area[0, 0].numpy(), FACTOR)
    assert len(sums) == MEMBERS
    assert all(s.finalize().max_abs < TOL[dtype] for s in sums)


def test_same_seed_same_members_other_seed_other_members() -> None:
    model = _model(torch.float32)
    coarse, area, valid = _inputs(torch.float32)
    with torch.no_grad():
        a, b = _members(model, 7, coarse, area, valid), _members(model, 7, coarse, area, valid)
        c = _members(model, 8, coarse, area, valid)
    assert torch.equal(a.nan_to_num(), b.nan_to_num())
    assert not torch.equal(a.nan_to_num(), c.nan_to_num())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_flat_input_gives_flat_members(dtype: torch.dtype) -> None:
    model = _model(dtype)
    coarse, area, _ = _inputs(dtype, flat=True)
    valid = torch.ones(2, 1, 20, 24, dtype=torch.bool)
    with torch.no_grad():
        members = _members(model, 3, coarse, area, valid)
    assert (members - 283.0).abs().max() < TOL[dtype]


def test_noise_free_member_and_deterministic_model_refuse_noise() -> None:
    coarse, area, valid = _inputs(torch.float64)
    model = _model(torch.float64)
    with torch.no_grad():
        plain = model(coarse, area, valid)  # no noise: the noise-free member
    assert torch.isfinite(plain).any()
    deterministic = ClimateDownscaler(factor=FACTOR, hidden_channels=8).double()
    with pytest.raises(ValueError, match="deterministic"):
        deterministic(coarse, area, valid, noise=torch.zeros(2, 2, 20, 24,
                                                             dtype=torch.float64))
    with pytest.raises(ValueError, match="deterministic"):
        ensemble_forward(deterministic, 2, torch.Generator(), coarse, area, valid)


def test_receptive_field_covers_noise_and_gate() -> None:
    decoder = StochasticConservingDecoder(factor=FACTOR, hidden_channels=8, coarse_blocks=1,
                                          noise_channels=2)
    assert decoder.receptive_field() >= 2


def _brute_crps(x: np.ndarray, y: np.ndarray, fair: bool) -> np.ndarray:
    m = x.shape[0]
    skill = np.mean([np.abs(xi - y) for xi in x], axis=0)
    pairs = sum(np.abs(xi - xj) for xi in x for xj in x)
    out: np.ndarray = skill - pairs / (2 * m * ((m - 1) if fair else m))
    return out


@pytest.mark.parametrize("fair", [True, False])
def test_crps_estimator_matches_brute_force(fair: bool) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 3, 7)), rng.normal(size=(3, 7))
    np.testing.assert_allclose(crps_ensemble(x, y, fair), _brute_crps(x, y, fair),
                               rtol=1e-12, atol=1e-12)
    if fair:
        loss = fair_crps(torch.as_tensor(x), torch.as_tensor(y))
        assert float(loss) == pytest.approx(_brute_crps(x, y, True).mean(), rel=1e-12)


def test_crps_of_a_point_ensemble_is_the_mae() -> None:
    rng = np.random.default_rng(1)
    point, y = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    members = np.repeat(point[None], 4, axis=0)
    np.testing.assert_allclose(crps_ensemble(members, y), np.abs(point - y), atol=1e-12)
    np.testing.assert_allclose(crps_ensemble(point[None], y), np.abs(point - y))
    assert ensemble_scores(members, y).crps == pytest.approx(np.abs(point - y).mean())


def test_rank_histogram_sums_and_is_flat_when_calibrated() -> None:
    rng = np.random.default_rng(2)
    members, truth = rng.normal(size=(4, 20000)), rng.normal(size=20000)
    truth[:5] = np.nan
    counts = rank_histogram(members, truth)
    assert counts.shape == (5,) and counts.sum() == 19995
    assert counts.min() > 0.9 * counts.mean()  # calibrated: flat
    tied = rank_histogram(np.zeros((3, 1000)), np.zeros(1000))  # all tied: spread evenly
    assert tied.sum() == 1000 and tied.min() > 150
    scores = ensemble_scores(members, truth)
    assert scores.spread_skill == pytest.approx(1.0, abs=0.05)
    assert sum(scores.rank_counts) == scores.n_cells == 19995


def test_chunked_sums_equal_whole() -> None:
    rng = np.random.default_rng(3)
    members, truth, w = rng.normal(size=(3, 6, 8)), rng.normal(size=(6, 8)), rng.random((6, 8))
    whole = ensemble_sums(members, truth, w).finalize()
    parts = ensemble_sums(members[:, :2], truth[:2], w[:2]) + ensemble_sums(
        members[:, 2:], truth[2:], w[2:])
    chunked = parts.finalize()
    for name in ("crps", "mae", "rmse", "spread", "spread_skill"):
        assert getattr(chunked, name) == pytest.approx(getattr(whole, name), rel=1e-12)
    assert sum(chunked.rank_counts) == 48


def test_fair_crps_training_keeps_conservation() -> None:
    model = _model(torch.float32)
    coarse, area, valid = _inputs(torch.float32)
    truth = 283.0 + 8 * torch.randn(2, 1, 20, 24, generator=torch.Generator().manual_seed(5))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(4):
        members = ensemble_forward(model, MEMBERS, g, coarse, area, valid)
        loss = fair_crps(members, truth, area * valid)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    assert np.isfinite(losses).all()
    with torch.no_grad():
        members = _members(model, 1, coarse, area, valid)
    assert _max_cell_error(members, coarse, area, valid) < TOL[torch.float32]


def test_task_trains_a_stochastic_decoder_with_the_fair_crps() -> None:
    import lightning as L

    from downscale.tasks import DownscalingTask

    coarse, area, valid = _inputs(torch.float32)
    truth = 283.0 + 8 * torch.randn(2, 1, 20, 24, generator=torch.Generator().manual_seed(5))
    batch = {"coarse": coarse, "fine": truth, "fine_area": area, "fine_valid": valid,
             "periodic": torch.zeros(2, dtype=torch.bool)}
    decoder = StochasticConservingDecoder(factor=FACTOR, hidden_channels=8, coarse_blocks=1,
                                          noise_channels=2)
    task = DownscalingTask(factor=FACTOR, decoder=decoder, train_members=3)
    assert task.stochastic
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=3, logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False)
    loader = torch.utils.data.DataLoader([batch] * 3, batch_size=None)
    trainer.fit(task, train_dataloaders=loader, val_dataloaders=loader)
    logged = trainer.callback_metrics
    assert np.isfinite(float(logged["train_loss"]))
    for name in ("val_crps", "val_spread_skill", "val_ensemble_rmse", "val_rmse"):
        assert np.isfinite(float(logged[name])), name
    with torch.no_grad():
        one, same = task.predict_fine(batch, 4), task.predict_fine(batch, 4)
        members = task.draw_members(batch, MEMBERS, 9)
    assert torch.equal(one.nan_to_num(), same.nan_to_num())
    assert _max_cell_error(members, coarse, area, valid) < TOL[torch.float32]
    with pytest.raises(ValueError, match="train_members"):
        DownscalingTask(factor=FACTOR, decoder=decoder, train_members=1)


def test_ensemble_config_builds_from_a_checkpoint_description() -> None:
    """The config's decoder is one that checkpoints may build (classes under downscale.nn.*)."""
    from pathlib import Path

    import yaml

    from downscale.checkpoint import instantiate

    config = yaml.safe_load((Path(__file__).parents[1] / "configs/model/ensemble.yaml")
                            .read_text())
    decoder = instantiate(config["model"]["init_args"]["decoder"], "ensemble.yaml")
    assert isinstance(decoder, StochasticConservingDecoder) and decoder.noise_channels == 4


def test_receptive_field_is_enough_for_tiles() -> None:
    """A tile with a halo of ``receptive_field()`` coarse cells (and the same noise) equals the
    whole field inside it, so members can be tiled like the deterministic model."""
    model = _model(torch.float64)
    r = model.receptive_field()
    n = 2 * r + 4
    g = torch.Generator().manual_seed(2)
    coarse = 283.0 + 8 * torch.randn(1, 1, n, n, generator=g, dtype=torch.float64)
    fine_n = n * FACTOR
    noise = torch.randn(1, 2, fine_n, fine_n, generator=g, dtype=torch.float64)
    area = torch.ones(1, 1, fine_n, fine_n, dtype=torch.float64)
    valid = torch.ones(1, 1, fine_n, fine_n, dtype=torch.bool)
    with torch.no_grad():
        whole = model(coarse, area, valid, noise=noise)
        lo, hi = r + 1, r + 3  # two coarse cells in the middle, with a halo of r
        c0, c1 = lo - r, hi + r
        f0, f1 = c0 * FACTOR, c1 * FACTOR
        tile = model(coarse[..., c0:c1, c0:c1], area[..., f0:f1, f0:f1],
                     valid[..., f0:f1, f0:f1], noise=noise[..., f0:f1, f0:f1])
    inner = slice(r * FACTOR, (r + 2) * FACTOR)
    core = slice(lo * FACTOR, hi * FACTOR)
    torch.testing.assert_close(tile[..., inner, inner], whole[..., core, core],
                               rtol=0, atol=1e-10)


def test_epoch_metric_of_two_batches_equals_the_numpy_scores_of_both() -> None:
    from downscale.metrics.epoch import EnsembleScores

    rng = np.random.default_rng(4)
    members, truth = rng.normal(size=(3, 4, 1, 6, 8)), rng.normal(size=(4, 1, 6, 8))
    area = rng.random((1, 1, 6, 8)) + 0.5
    metric = EnsembleScores(3)
    for part in (slice(0, 1), slice(1, 4)):
        metric.update(torch.as_tensor(members[:, part]), torch.as_tensor(truth[part]),
                      torch.as_tensor(area))
    got = metric.compute()
    want = ensemble_scores(members, truth, np.broadcast_to(area, truth.shape))
    assert float(got["crps"]) == pytest.approx(want.crps, rel=1e-12)
    assert float(got["spread_skill"]) == pytest.approx(want.spread_skill, rel=1e-12)
    assert float(got["ensemble_rmse"]) == pytest.approx(want.rmse, rel=1e-12)
