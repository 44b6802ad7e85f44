"""Decoder-artifact metrics (issue 6): translation equivariance, spectral replica leakage,
phase coverage and per-phase kernel sums."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from downscale.baselines import upsample
from downscale.metrics import (
    equivariance_error,
    phase_coverage,
    phase_weight_sums,
    spectral_replica_leakage,
    zero_insertion,
)
from downscale.nn import AntiAliasFilter, MassConservingConvTranspose2d
from downscale.testing import synthetic_field

F = 4


def _layer_model(layer: MassConservingConvTranspose2d, periodic: bool = True):  # type: ignore[no-untyped-def]
    def model(coarse: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return layer(torch.from_numpy(coarse)[:, None], None, periodic)[:, 0].numpy()

    return model


def _layer(phase_balanced: bool, random: bool, seed: int = 0) -> MassConservingConvTranspose2d:
    layer = MassConservingConvTranspose2d(1, F, 2 * F, phase_balanced=phase_balanced).double()
    if random:
        with torch.no_grad():
            layer.logits.copy_(torch.randn(layer.logits.shape,
                                           generator=torch.Generator().manual_seed(seed)))
    return layer


@pytest.fixture(scope="module")
def coarse() -> np.ndarray:
    return synthetic_field((2, 12, 16), seed=3, mean=280.0, std=5.0)


@pytest.mark.parametrize("random", [False, True])
def test_integer_shifts_of_a_periodic_phase_balanced_layer_are_exact(coarse: np.ndarray,
                                                                     random: bool) -> None:
    model = _layer_model(_layer(True, random))
    for shift in ((0, 1), (0, 3), (0, -2)):  # along the periodic longitude
        assert equivariance_error(model, coarse, F, shift, periodic=(False, True)) < 1e-13
    # Along the bounded latitude the rolled-in rows are left out: the interior is exact too.
    assert equivariance_error(model, coarse, F, (1, 0), periodic=(False, True)) < 1e-13
    # ...but not if the margin is dropped: the seam of the roll is then compared.
    assert equivariance_error(model, coarse, F, (1, 0), periodic=(False, True), margin=0) > 1e-3


def test_sub_pixel_shifts_break_equivariance_more_for_rough_kernels(coarse: np.ndarray) -> None:
    tent = equivariance_error(_layer_model(_layer(True, False)), coarse, F, (0, 0.5),
                              periodic=(False, True))
    rough = [equivariance_error(_layer_model(_layer(False, True, seed)), coarse, F, (0, 0.5),
                                periodic=(False, True)) for seed in range(3)]
    assert 0 < tent < min(rough)
    bicubic = equivariance_error(lambda c: upsample(c, F, "bicubic", periodic=True), coarse, F,
                                 (0, 0.5), periodic=(False, True))
    assert 0 < bicubic < min(rough)
    # Whole-cell shifts of interpolation on a periodic axis are exact.
    assert equivariance_error(lambda c: upsample(c, F, "bilinear", periodic=True), coarse, F,
                              (0, 2), periodic=(False, True)) < 1e-12


def test_equivariance_error_checks_the_model_output(coarse: np.ndarray) -> None:
    with pytest.raises(ValueError, match="expected"):
        equivariance_error(lambda c: c, coarse, F)
    with pytest.raises(ValueError, match="margin"):
        equivariance_error(_layer_model(_layer(True, False)), coarse, F, (0, 1), margin=8)


def test_leakage_high_for_zero_insertion_low_after_anti_aliasing() -> None:
    smooth = synthetic_field((3, 16, 24), seed=1)
    white = np.random.default_rng(0).normal(size=(3, 16, 24))
    for coarse in (smooth, white):
        z = zero_insertion(coarse, F)
        assert z.sum() == pytest.approx(F**2 * coarse.sum())  # mass on equal areas
        # Each of the f^2 - 1 images carries the baseband's power again.
        assert spectral_replica_leakage(z, F) == pytest.approx(F**2 - 1, rel=0.05)
        filtered = AntiAliasFilter(F)(torch.from_numpy(z)[:, None], True)[:, 0].numpy()
        limit = 0.01 if coarse is smooth else 0.2  # white noise fills the band to its edge
        assert spectral_replica_leakage(filtered, F) < limit
    # Ideal (sinc) interpolation of a periodic field: zero-padding its spectrum, no images.
    # (Odd sizes: no coarse Nyquist bin, which would sit on the band edge.)
    odd = synthetic_field((2, 15, 25), seed=2)
    spectrum = np.fft.fftshift(np.fft.fft2(odd), axes=(-2, -1))
    padded = np.pad(spectrum, ((0, 0), (23, 22), (38, 37)))  # zero frequency to 30, 50
    sinc = np.fft.ifft2(np.fft.ifftshift(padded, axes=(-2, -1))).real
    assert spectral_replica_leakage(sinc, F, hann=False) < 1e-10
    assert spectral_replica_leakage(np.full((8, 8), 3.0), F) == 0.0
    assert math.isnan(spectral_replica_leakage(np.full((8, 8), np.nan), F))


@pytest.mark.parametrize("k, s", [(k, s) for k in range(1, 10) for s in range(1, 5)])
def test_phase_coverage_varies_by_ceil_minus_floor(k: int, s: int) -> None:
    counts = phase_coverage(k, s)
    assert counts.shape == (s, s) and counts.sum() == k * k
    per_axis = np.sqrt(np.diag(counts))  # counts[a, b] = n_a * n_b
    np.testing.assert_array_equal(counts, np.outer(per_axis, per_axis))
    assert per_axis.max() == math.ceil(k / s) and per_axis.min() == k // s
    assert (per_axis.max() == per_axis.min()) == (k % s == 0)


def test_phase_weight_sums_flat_only_when_balanced() -> None:
    for balanced in (True, False):
        kernel = _layer(balanced, True).kernel().detach().numpy()[0, 0]
        sums = phase_weight_sums(kernel, F)
        assert sums.shape == (F, F) and sums.sum() == pytest.approx(1.0)
        if balanced:
            np.testing.assert_allclose(sums, 1 / F**2, rtol=1e-12)
        else:
            assert np.ptp(sums) > 0.01
