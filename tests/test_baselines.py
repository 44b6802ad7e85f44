from __future__ import annotations

import numpy as np
import pytest

from downscale.baselines import (
    UpsamplingMethod,
    bicubic,
    bilinear,
    fill_missing_nearest,
    piecewise_constant,
    upsample,
)
from downscale.testing import synthetic_field

METHODS = list(UpsamplingMethod)


def centres(n: int, factor: int) -> np.ndarray:
    """Coarse index coordinates of the fine cell centres (cell-centre alignment)."""
    return (np.arange(n * factor) + 0.5) / factor - 0.5


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("factor", [1, 2, 3, 4])
def test_shapes_and_leading_dims(method: UpsamplingMethod, factor: int) -> None:
    coarse = np.random.default_rng(0).normal(size=(2, 3, 5, 7))
    out = upsample(coarse, factor, method)
    assert out.shape == (2, 3, 5 * factor, 7 * factor)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(upsample(coarse[1, 2], factor, method), out[1, 2])
    if factor == 1:
        np.testing.assert_allclose(out, coarse, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("periodic", [False, True])
def test_constant_in_constant_out(method: UpsamplingMethod, periodic: bool) -> None:
    out = upsample(np.full((6, 8), 273.15), 4, method, periodic)
    np.testing.assert_allclose(out, 273.15, rtol=1e-14)


@pytest.mark.parametrize("interp", [bilinear, bicubic])
def test_linear_ramp_is_reproduced_in_the_interior(interp: object) -> None:
    factor, h, w = 3, 64, 60
    yy, xx = np.meshgrid(np.arange(h, dtype=float), np.arange(w, dtype=float), indexing="ij")
    coarse = 2.0 + 0.7 * yy - 1.3 * xx
    fy, fx = np.meshgrid(centres(h, factor), centres(w, factor), indexing="ij")
    expected = 2.0 + 0.7 * fy - 1.3 * fx
    out = interp(coarse, factor)  # type: ignore[operator]
    # Bilinear is exact between the outermost centres; the cubic spline's edge condition
    # decays by ~0.27 per coarse cell, so it is exact (1e-9) 20 cells in.
    margin = 0 if interp is bilinear else 20
    inside = ((fy >= margin) & (fy <= h - 1 - margin) & (fx >= margin) & (fx <= w - 1 - margin))
    np.testing.assert_allclose(out[inside], expected[inside], rtol=0, atol=1e-9)


def test_bicubic_interpolates_the_coarse_values() -> None:
    coarse = synthetic_field((12, 16), seed=1)
    out = bicubic(coarse, 3)  # factor 3: the middle child sits on the coarse centre
    np.testing.assert_allclose(out[1::3, 1::3], coarse, atol=1e-12)


@pytest.mark.parametrize("method", [UpsamplingMethod.BILINEAR, UpsamplingMethod.BICUBIC])
def test_periodic_longitude_has_no_seam(method: UpsamplingMethod) -> None:
    factor = 4
    coarse = synthetic_field((16, 48), seed=2)  # periodic in both axes
    out = upsample(coarse, factor, method, periodic=True)
    # Shifting the input around the globe shifts the output: no special column.
    shifted = upsample(np.roll(coarse, 5, axis=-1), factor, method, periodic=True)
    np.testing.assert_allclose(shifted, np.roll(out, 5 * factor, axis=-1), atol=1e-12)
    # And it equals interpolating three copies side by side, taking the middle one.
    tiled = upsample(np.concatenate([coarse] * 3, axis=-1), factor, method)
    np.testing.assert_allclose(out, tiled[:, 48 * factor:96 * factor], atol=1e-10)
    # Without wrapping the edge columns differ from that.
    bounded = upsample(coarse, factor, method)
    assert np.abs(bounded[:, 0] - out[:, 0]).max() > 1e-3


@pytest.mark.parametrize("method", METHODS)
def test_nan_propagation(method: UpsamplingMethod) -> None:
    factor = 2
    coarse = synthetic_field((2, 10, 12), seed=3)
    coarse[0, 4, 5] = np.nan
    coarse[1] = np.nan
    out = upsample(coarse, factor, method, periodic=True)
    missing = np.isnan(out[0])
    expected = np.zeros_like(missing)
    expected[8:10, 10:12] = True
    np.testing.assert_array_equal(missing, expected)
    assert np.isnan(out[1]).all()
    # A NaN does not spread: it is filled from its neighbours before interpolating.
    filled = coarse[0].copy()
    filled[4, 5] = fill_missing_nearest(coarse[0])[4, 5]
    reference = upsample(filled, factor, method, periodic=True)
    np.testing.assert_allclose(out[0][~missing], reference[~missing], atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_fine_valid_mask(method: UpsamplingMethod) -> None:
    coarse = synthetic_field((6, 6), seed=4)
    valid = np.ones((12, 12), dtype=bool)
    valid[3, 7] = False
    out = upsample(coarse, 2, method, fine_valid=valid)
    assert np.isnan(out[3, 7]) and np.isfinite(np.delete(out.ravel(), 3 * 12 + 7)).all()


def test_piecewise_constant_is_block_repeat_and_keeps_dtype() -> None:
    coarse = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = piecewise_constant(coarse, 2)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[::2, ::2], coarse)
    np.testing.assert_array_equal(out[1::2, 1::2], coarse)
    assert bicubic(coarse, 2).dtype == np.float32


def test_method_names_and_bad_input() -> None:
    coarse = np.ones((4, 4))
    np.testing.assert_array_equal(upsample(coarse, 2, "bicubic"),
                                  upsample(coarse, 2, UpsamplingMethod.BICUBIC))
    with pytest.raises(ValueError):
        upsample(coarse, 2, "lanczos")
    with pytest.raises(ValueError, match="factor"):
        upsample(coarse, 0, "bilinear")
    with pytest.raises(ValueError, match="shape"):
        upsample(np.ones(4), 2, "bilinear")
