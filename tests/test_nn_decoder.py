"""Property tests for ConservingDecoder and the default CoarseGridDecoder: exact per-cell
conservation (DESIGN.md §3), flat in / flat out at initialisation (§4), and both kept
through an optimisation step."""

from __future__ import annotations

from itertools import product

import numpy as np
import pytest
import torch
from torch import Tensor

from downscale.grid import cell_areas_latlon
from downscale.nn import CoarseGridDecoder, ConservingDecoder

F32_TOL, F64_TOL = 1e-5, 1e-10
SIZES = [(3, 4), (4, 5), (5, 5), (4, 4)]  # odd and even coarse sizes on both axes
#: The fine-grid decoder and the coarse-grid one (the default): the same guarantees.
DECODER_CLASSES = pytest.mark.parametrize("cls", [ConservingDecoder, CoarseGridDecoder])


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _bsum(a: Tensor, f: int) -> Tensor:
    *lead, h, w = a.shape
    return a.reshape(*lead, h // f, f, w // f, f).sum(dim=(-3, -1))


def _rep(a: Tensor, f: int) -> Tensor:
    return a.repeat_interleave(f, -2).repeat_interleave(f, -1)


def _latlon_area(H: int, W: int, periodic: bool) -> Tensor:
    """Spherical areas of a real band (55S..70N), normalised to mean one as the data does."""
    lat = np.linspace(-55.0, 70.0, H + 1)
    lon = np.linspace(0.0, 360.0, W + 1) if periodic else np.linspace(-20.0, 45.0, W + 1)
    area = cell_areas_latlon(np.stack([lat[:-1], lat[1:]], 1), np.stack([lon[:-1], lon[1:]], 1))
    return torch.from_numpy(area / area.mean())


def _inputs(f: int, h: int, w: int, periodic: bool, dtype: torch.dtype, seed: int,
            positive: bool = False) -> dict[str, Tensor]:
    """A batch of 2 with missing coarse cells and a fine validity mask (like an SST field)."""
    g = _gen(seed)
    B, H, W = 2, h * f, w * f
    if positive:
        x = torch.exp(torch.randn(B, 1, h, w, generator=g, dtype=torch.float64))
    else:
        x = 280.0 + 10.0 * torch.randn(B, 1, h, w, generator=g, dtype=torch.float64)
    x[torch.rand(B, 1, h, w, generator=g) < 0.15] = float("nan")
    fine_valid = torch.rand(B, 1, H, W, generator=g) > 0.2
    fine_valid[0, :, :f, :f] = False  # one coarse cell with no valid fine cell
    area = _latlon_area(H, W, periodic)[None, None].expand(B, 1, H, W)
    mean = torch.nanmean(x)
    std = torch.sqrt(torch.nanmean((x - mean) ** 2))
    x_norm = torch.nan_to_num((x - mean) / std, nan=0.0)
    return {"x": x.to(dtype), "x_norm": x_norm.to(dtype), "fine_area": area.to(dtype),
            "fine_valid": fine_valid, "std": std.reshape(1, 1, 1, 1).expand(B, 1, 1, 1).to(dtype)}


def _check(dec: ConservingDecoder, inp: dict[str, Tensor], periodic: bool, tol: float
           ) -> tuple[Tensor, float]:
    """Run the decoder; check shape, NaN layout, finiteness and per-cell conservation.

    Returns the output and the worst relative per-coarse-cell error.
    """
    f = dec.factor
    x = inp["x"]
    y = dec(x, inp["x_norm"], inp["fine_area"], inp["fine_valid"], inp["std"], periodic)
    B, C, h, w = x.shape
    assert y.shape == (B, C, h * f, w * f) and y.dtype == x.dtype
    valid = _rep(torch.isfinite(x), f) & inp["fine_valid"].expand_as(y)
    assert torch.isfinite(y[valid]).all()
    assert torch.isnan(y[~valid]).all()
    wgt = inp["fine_area"].double().expand_as(y) * valid
    total = _bsum(wgt, f)
    mean = _bsum(torch.where(valid, y.double(), 0.0) * wgt, f) / total.clamp_min(1e-300)
    check = torch.isfinite(x) & (total > 0)
    assert check.sum() > 0
    err = float(((mean - x.double()).abs() / x.double().abs())[check].max().detach())
    assert err <= tol, err
    return y, err


@DECODER_CLASSES
@pytest.mark.parametrize("f", [2, 3, 4])
@pytest.mark.parametrize("periodic", [False, True])
def test_decoder_conserves_every_cell(cls: type[ConservingDecoder], f: int, periodic: bool
                                      ) -> None:
    for (h, w), (dtype, tol) in product(SIZES[:2], ((torch.float32, F32_TOL),
                                                    (torch.float64, F64_TOL))):
        torch.manual_seed(f)
        dec = cls(channels=1, factor=f, hidden_channels=8).to(dtype)
        # a trained-looking decoder: non-zero detail head and non-uniform base kernels
        with torch.no_grad():
            dec.head.weight.normal_(0.0, 0.3)
            dec.base.logits.normal_()
            dec.upsample.logits.normal_()
        _check(dec, _inputs(f, h, w, periodic, dtype, seed=h * w + f), periodic, tol)


@DECODER_CLASSES
@pytest.mark.parametrize("constraint", ["additive", "multiplicative", "softmax"])
@pytest.mark.parametrize("f", [2, 3])
def test_decoder_constraint_modes(cls: type[ConservingDecoder], constraint: str, f: int
                                  ) -> None:
    for (h, w), periodic, (dtype, tol) in product(SIZES[2:], (False, True),
                                                  ((torch.float32, F32_TOL),
                                                   (torch.float64, F64_TOL))):
        torch.manual_seed(0)
        dec = cls(1, f, hidden_channels=8, constraint=constraint  # type: ignore[arg-type]
                  ).to(dtype)
        with torch.no_grad():
            dec.head.weight.normal_(0.0, 0.3)
        inp = _inputs(f, h, w, periodic, dtype, seed=h + w, positive=constraint != "additive")
        y, _ = _check(dec, inp, periodic, tol)
        if constraint != "additive":
            assert (y[torch.isfinite(y)] > 0).all()


@DECODER_CLASSES
@pytest.mark.parametrize("f", [2, 3, 4])
def test_optimisation_step_keeps_conservation(cls: type[ConservingDecoder], f: int) -> None:
    torch.manual_seed(1)
    dec = cls(1, f, hidden_channels=8).double()
    inp = _inputs(f, 3, 4, True, torch.float64, seed=7)
    before = {n: p.detach().clone() for n, p in dec.named_parameters()}
    opt = torch.optim.Adam(dec.parameters(), lr=1e-2)
    target = 280.0 + 10.0 * torch.randn(2, 1, 3 * f, 4 * f, generator=_gen(3),
                                        dtype=torch.float64)
    for _ in range(2):  # the head starts at zero: the second step reaches the trunk too
        opt.zero_grad()
        y = dec(inp["x"], inp["x_norm"], inp["fine_area"], inp["fine_valid"], inp["std"], True)
        ok = torch.isfinite(y)
        loss = ((y[ok] - target[ok]) ** 2).mean()
        loss.backward()
        for name, p in dec.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        opt.step()
    changed = {n for n, p in dec.named_parameters() if not torch.equal(p, before[n])}
    assert {"head.weight", "base.logits", "stem.weight"} <= changed, changed
    for periodic in (True, False):
        _check(dec, inp, periodic, F64_TOL)
    # float32 after the step, too
    _check(dec.float(), _inputs(f, 3, 4, True, torch.float32, seed=7), True, F32_TOL)


@DECODER_CLASSES
@pytest.mark.parametrize("f", [2, 3, 4])
@pytest.mark.parametrize("constraint", ["additive", "multiplicative", "softmax"])
def test_constant_in_constant_out_at_init(cls: type[ConservingDecoder], f: int,
                                          constraint: str) -> None:
    """Zero-initialised head: the output is the base upsampler's, flat everywhere (edges and
    corners too) because the base kernels are mirror-symmetric and phase-balanced."""
    torch.manual_seed(2)
    dec = cls(1, f, hidden_channels=8, constraint=constraint  # type: ignore[arg-type]
              ).double()
    assert dec.base.symmetric and dec.base.phase_balanced
    assert dec.upsample.symmetric and dec.upsample.phase_balanced
    assert torch.count_nonzero(dec.head.weight) == 0
    with torch.no_grad():  # any symmetric kernel would do, not only the uniform start
        dec.base.logits.normal_()
    c = 3.25
    for (h, w), periodic in product(SIZES, (False, True)):
        B, H, W = 2, h * f, w * f
        x = torch.full((B, 1, h, w), c, dtype=torch.float64)
        fine_valid = torch.rand(B, 1, H, W, generator=_gen(h * w)) > 0.2  # coarse all valid
        for area, valid in ((torch.ones(1, 1, H, W, dtype=torch.float64), fine_valid),
                            (torch.full((1, 1, H, W), 0.7, dtype=torch.float64), None)):
            valid = torch.ones(B, 1, H, W, dtype=torch.bool) if valid is None else valid
            y = dec(x, torch.zeros_like(x), area, valid, torch.ones(1, 1, 1, 1,
                                                                      dtype=torch.float64),
                    periodic)
            assert torch.isnan(y[~valid.expand_as(y)]).all()
            assert (y[valid.expand_as(y)] - c).abs().max() <= 1e-12 * c


@DECODER_CLASSES
@pytest.mark.parametrize("f", [2, 3, 4])
def test_every_kernel_sums_to_one_with_balanced_phases(cls: type[ConservingDecoder], f: int
                                                       ) -> None:
    """Whatever the logits, both conserving layers (physical base and feature upsampler)
    have positive, mirror-symmetric kernels summing to one, each phase to ``1/f^2``."""
    torch.manual_seed(f)
    dec = cls(1, f, hidden_channels=8).double()
    with torch.no_grad():
        dec.base.logits.normal_(0.0, 2.0)
        dec.upsample.logits.normal_(0.0, 2.0)
    for layer in (dec.base, dec.upsample):
        kernel = layer.kernel()
        k = kernel.shape[-1]
        assert (kernel > 0).all()
        torch.testing.assert_close(kernel.sum(dim=(-2, -1)),
                                   torch.ones(kernel.shape[:2], dtype=kernel.dtype))
        torch.testing.assert_close(kernel, kernel.flip(-1).flip(-2))
        for a, b in product(range(f), range(f)):
            phase = kernel[..., a:k:f, b:k:f].sum(dim=(-2, -1))
            torch.testing.assert_close(phase, torch.full_like(phase, 1.0 / f**2))
