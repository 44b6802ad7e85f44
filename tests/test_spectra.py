from __future__ import annotations

import numpy as np
import pytest

from downscale.spectra import power_spectrum_radial


def test_pure_sine_peaks_at_its_frequency() -> None:
    n = 64
    x = np.arange(n)
    field = np.sin(2 * np.pi * 8 * x / n)[None, :] * np.ones((n, 1))  # 8 cycles along x
    freq, power = power_spectrum_radial(field)
    assert freq[np.argmax(power)] == pytest.approx(8 / n)
    ring = np.flatnonzero(np.isclose(freq, 8 / n))[0]
    assert np.delete(power, ring).max() < 1e-12 * power[ring]


def test_diagonal_sine_and_spacing() -> None:
    n = 32
    y, x = np.mgrid[:n, :n]
    field = np.cos(2 * np.pi * 4 * (x + y) / n)
    freq, power = power_spectrum_radial(field, spacing=0.5)
    # |k| = 4 * sqrt(2) / n cycles per cell = twice that per unit length at spacing 0.5.
    assert freq[np.argmax(power)] == pytest.approx(2 * round(4 * np.sqrt(2)) / n)


def test_white_noise_is_flat_and_sums_to_variance() -> None:
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(32, 64, 64))
    freq, power = power_spectrum_radial(noise)
    assert freq[0] == pytest.approx(1 / 64)
    assert freq[-1] == pytest.approx(round(np.sqrt(2) * 32) / 64)
    # Each of the 64^2 modes carries variance 1 / 64^2 on average.
    expected = 1.0 / 64**2
    well_sampled = freq >= 4 / 64
    assert np.allclose(power[well_sampled], expected, rtol=0.15)
    assert power.mean() == pytest.approx(expected, rel=0.05)


def test_checkerboard_lands_on_the_diagonal_alias() -> None:
    y, x = np.mgrid[:16, :16]
    freq, power = power_spectrum_radial((-1.0) ** (x + y))
    assert freq[np.argmax(power)] == pytest.approx(round(np.sqrt(2) * 8) / 16)


def test_leading_dims_are_averaged_and_hann_window_runs() -> None:
    rng = np.random.default_rng(1)
    fields = rng.normal(size=(2, 3, 16, 24))
    freq, power = power_spectrum_radial(fields)
    _, first = power_spectrum_radial(fields[0])
    _, second = power_spectrum_radial(fields[1])
    assert np.allclose(power, 0.5 * (first + second))
    assert freq.shape == power.shape
    _, tapered = power_spectrum_radial(fields, hann=True)
    assert tapered.shape == power.shape and np.isfinite(tapered).all()


@pytest.mark.parametrize("bad", [np.zeros(5), np.zeros((1, 5)), np.full((4, 4), np.nan)])
def test_rejects_bad_fields(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        power_spectrum_radial(bad)


def test_rejects_bad_spacing() -> None:
    with pytest.raises(ValueError, match="spacing"):
        power_spectrum_radial(np.zeros((4, 4)), spacing=0.0)
