"""Decoder options (issue 6): exact per-cell conservation for every decoder, U-Net skips
that align for odd sizes, flat in / flat out where phases are balanced, the dilation check
and the Sobolev kernel penalty."""

from __future__ import annotations

import warnings
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from downscale.grid import cell_areas_latlon
from downscale.main import main
from downscale.nn import (
    AntiAliasFilter,
    CoarseGridDecoder,
    ConservingDecoder,
    DecoderConfigError,
    PhaseMixingConv,
    PixelShuffleDecoder,
    ResizeConvDecoder,
    TransposedConvDecoder,
    UNetDecoder,
    sobolev_h1_penalty,
    transposed_kernel_penalty,
    transposed_kernels,
)
from downscale.nn.unet import UNet, crop_to, pad_to_multiple
from downscale.tasks import DownscalingTask
from downscale.testing import assert_mass_conserved

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "conf" / "e1_tiny.yaml")

DECODERS: dict[str, Any] = {
    "coarse_grid": lambda f: CoarseGridDecoder(1, f, 8, 1, 1, fine_channels=4),
    "conserving_fine_grid": lambda f: ConservingDecoder(1, f, 8, 1, 1),
    "stages": lambda f: TransposedConvDecoder(1, f, 8, 1, 1),
    "stages_unbalanced_mitigated": lambda f: TransposedConvDecoder(
        1, f, 8, 1, 1, phase_balanced=False, symmetric=False, dilation=3, attention=True),
    "single_stage": lambda f: TransposedConvDecoder(1, f, 8, 1, 1, stage_stride=None),
    "unet": lambda f: UNetDecoder(1, f, 4, depth=2),
    "pixel_shuffle": lambda f: PixelShuffleDecoder(1, f, 8, 1, 1),
    "pixel_shuffle_raw": lambda f: PixelShuffleDecoder(1, f, 8, 1, 1, icnr=False,
                                                       anti_alias=False),
    "resize_conv": lambda f: ResizeConvDecoder(1, f, 8, 1, 1, dilation=1, attention=True),
}


def _perturb(dec: nn.Module, seed: int) -> None:
    """Make a decoder look trained: non-zero detail head, non-uniform conserving kernels."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in dec.named_parameters():
            if name.endswith("logits") or name.startswith("head."):
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)


def _inputs(f: int, h: int, w: int, periodic: bool, dtype: torch.dtype, seed: int
            ) -> dict[str, Tensor]:
    """Batch of 2 with missing coarse cells, a fine mask and spherical areas."""
    g = torch.Generator().manual_seed(seed)
    x = 280.0 + 10.0 * torch.randn(2, 1, h, w, generator=g, dtype=torch.float64)
    x[torch.rand(2, 1, h, w, generator=g) < 0.15] = float("nan")
    valid = torch.rand(2, 1, h * f, w * f, generator=g) > 0.2
    lat = np.linspace(-50.0, 65.0, h * f + 1)
    lon = np.linspace(0.0, 360.0 if periodic else 40.0, w * f + 1)
    area = cell_areas_latlon(np.stack([lat[:-1], lat[1:]], 1), np.stack([lon[:-1], lon[1:]], 1))
    return {"x": x.to(dtype), "x_norm": torch.nan_to_num((x - 280.0) / 10.0).to(dtype),
            "fine_area": torch.from_numpy(area / area.mean()).to(dtype)[None, None],
            "fine_valid": valid, "std": torch.full((1, 1, 1, 1), 10.0, dtype=dtype)}


def _run(dec: nn.Module, inp: dict[str, Tensor], periodic: bool) -> Tensor:
    out: Tensor = dec(inp["x"], inp["x_norm"], inp["fine_area"], inp["fine_valid"], inp["std"],
                      periodic)
    return out


@pytest.mark.parametrize("name", list(DECODERS))
def test_every_decoder_conserves_every_coarse_cell(name: str) -> None:
    for f, (h, w), periodic, (dtype, tol) in product(
            (2, 4), ((3, 5), (4, 4)), (False, True),
            ((torch.float32, 1e-5), (torch.float64, 1e-10))):
        torch.manual_seed(f + h)
        dec = DECODERS[name](f).to(dtype)
        _perturb(dec, seed=h * w)
        inp = _inputs(f, h, w, periodic, dtype, seed=f * h + w)
        y = _run(dec, inp, periodic)
        assert y.shape == (2, 1, h * f, w * f) and y.dtype == dtype
        valid = (torch.isfinite(inp["x"]).repeat_interleave(f, -2).repeat_interleave(f, -1)
                 & inp["fine_valid"])
        assert torch.isfinite(y[valid]).all() and torch.isnan(y[~valid]).all()
        assert_mass_conserved(y.detach().double().numpy(), inp["x"].double().numpy(),
                              inp["fine_area"][0, 0].double().numpy(), f, rtol=tol)


@pytest.mark.parametrize("h, w", [(1, 1), (1, 4), (3, 5), (5, 7), (7, 3), (9, 12)])
def test_unet_handles_odd_sizes(h: int, w: int) -> None:
    torch.manual_seed(0)
    trunk = UNet(4, depth=3)
    for periodic in (False, True):
        assert trunk(torch.randn(2, 4, h, w), periodic).shape == (2, 4, h, w)
    dec = UNetDecoder(1, 4, 4, depth=3).double()
    _perturb(dec, seed=1)
    inp = _inputs(4, h, w, True, torch.float64, seed=h + w)
    y = _run(dec, inp, True)
    assert y.shape == (2, 1, 4 * h, 4 * w)
    assert_mass_conserved(y.detach().numpy(), inp["x"].numpy(),
                          inp["fine_area"][0, 0].numpy(), 4, rtol=1e-10)


@pytest.mark.parametrize("h, w", [(1, 1), (3, 5), (6, 7), (9, 12)])
def test_unet_pad_and_crop_keep_cells_aligned(h: int, w: int) -> None:
    """Halving then doubling gives back a field that is constant on the 2x2 blocks anchored
    at (0, 0): padding and cropping at the same (high) end keep every cell in place."""
    blocks = torch.randn(1, 1, (h + 1) // 2, (w + 1) // 2, dtype=torch.float64)
    field = blocks.repeat_interleave(2, -2).repeat_interleave(2, -1)[..., :h, :w]
    for periodic in (False, True):
        padded = pad_to_multiple(field, 2, periodic)
        assert padded.shape[-2:] == (2 * ((h + 1) // 2), 2 * ((w + 1) // 2))
        pooled = F.avg_pool2d(padded, 2)
        if not periodic or w % 2 == 0:  # a wrapped column is a different value
            torch.testing.assert_close(pooled, blocks)
        back = crop_to(F.interpolate(pooled, scale_factor=2, mode="nearest"), (h, w))
        assert back.shape == field.shape
        if not periodic or w % 2 == 0:
            torch.testing.assert_close(back, field)


FLAT = ["stages", "stages_unbalanced_mitigated", "single_stage", "unet", "pixel_shuffle",
        "resize_conv"]


@pytest.mark.parametrize("name", FLAT)
def test_flat_input_gives_flat_output(name: str) -> None:
    """Constant in, constant out, also with a non-zero head: phase-balanced (or phase-free)
    upsamplers leave nothing for the detail path to imprint. The unbalanced stages start
    phase-balanced (tent kernels)."""
    torch.manual_seed(3)
    dec = DECODERS[name](4).double()
    with torch.no_grad():
        dec.head.weight.normal_(0.0, 0.5)
        for m in dec.modules():  # any symmetric balanced kernel keeps flat flat
            if hasattr(m, "logits") and getattr(m, "symmetric", False):
                m.logits.normal_()
    c = 287.5
    for (h, w), periodic in product(((3, 5), (4, 4)), (False, True)):
        x = torch.full((2, 1, h, w), c, dtype=torch.float64)
        area = torch.rand(1, 1, 4 * h, 4 * w, dtype=torch.float64) + 0.5
        valid = torch.ones(2, 1, 4 * h, 4 * w, dtype=torch.bool)
        y = dec(x, torch.zeros_like(x), area, valid, torch.ones(1, 1, 1, 1,
                                                                 dtype=torch.float64), periodic)
        assert (y - c).abs().max() <= 1e-10 * c, name


def test_raw_pixel_shuffle_imprints_a_checkerboard_the_filter_removes() -> None:
    torch.manual_seed(4)
    raw = DECODERS["pixel_shuffle_raw"](4).double()
    with torch.no_grad():
        raw.head.weight.normal_(0.0, 0.5)
    x = torch.full((1, 1, 4, 4), 1.0, dtype=torch.float64)
    args = (torch.zeros_like(x), torch.ones(1, 1, 16, 16, dtype=torch.float64),
            torch.ones(1, 1, 16, 16, dtype=torch.bool), torch.ones(1, 1, 1, 1,
                                                                   dtype=torch.float64), True)
    with torch.no_grad():
        interior = raw(x, *args)[0, 0, 4:12, 4:12]
    assert float(interior.max() - interior.min()) > 1e-3  # a pattern of period 4
    # The anti-aliasing filter removes any pattern of period f exactly (zeros at j / f):
    # away from the (replicated) top and bottom rows only the pattern's mean is left.
    pattern = torch.randn(4, 4, dtype=torch.float64).repeat(4, 4)[None, None]
    smoothed = AntiAliasFilter(4)(pattern, periodic=True)[0, 0, 3:13]
    torch.testing.assert_close(smoothed, torch.full_like(smoothed, float(pattern.mean())))


@pytest.mark.parametrize("stride, dilation", [(2, 2), (2, 4), (4, 4), (4, 8), (3, 6)])
def test_dilation_multiple_of_stride_is_refused(stride: int, dilation: int) -> None:
    with pytest.raises(ValueError, match=f"dilation {dilation} is a multiple of the "
                                         f"upsampling stride {stride}"):
        PhaseMixingConv(8, stride, dilation)


def test_dilation_check_in_decoders() -> None:
    for d in (1, 2, 3, 5):  # factor 4, one stage: 2 mixes half the phases, accepted
        ResizeConvDecoder(1, 4, 8, dilation=d)
    with pytest.raises(DecoderConfigError, match="multiple of the upsampling stride 4"):
        ResizeConvDecoder(1, 4, 8, dilation=4)
    with pytest.raises(ValueError, match="multiple of the upsampling stride 2"):
        TransposedConvDecoder(1, 4, 8, dilation=2)  # stride-2 stages
    TransposedConvDecoder(1, 4, 8, dilation=3)
    with pytest.raises(ValueError, match="not a power of the stage stride 2"):
        TransposedConvDecoder(1, 3, 8)
    TransposedConvDecoder(1, 3, 8, stage_stride=None)


def test_dilation_check_is_one_line_from_the_cli(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    variant = tmp_path / "bad.yaml"
    variant.write_text("model:\n  class_path: downscale.tasks.DownscalingTask\n  init_args:\n"
                       "    decoder:\n      class_path: downscale.nn.decoders.ResizeConvDecoder\n"
                       "      init_args: {factor: 4, dilation: 8}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", TINY, "--config", str(variant), "--trainer.fast_dev_run", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert err[-1].startswith("downscale: error: dilation 8 is a multiple")


def test_task_checks_the_decoder_factor() -> None:
    with pytest.raises(ValueError, match="upsamples by factor 2, but the data use factor 4"):
        DownscalingTask(factor=4, decoder=ResizeConvDecoder(1, 2, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "nn.Module in hyperparameters" warning
        task = DownscalingTask(factor=2, decoder=ResizeConvDecoder(1, 2, 8), sobolev_weight=2.0)
    assert isinstance(task.decoder, ResizeConvDecoder) and "decoder" not in task.hparams
    assert task.hparams["sobolev_weight"] == 2.0
    assert isinstance(DownscalingTask(factor=2).decoder, ConservingDecoder)


def test_sobolev_penalty_zero_for_constant_and_grows_with_roughness() -> None:
    g = torch.Generator().manual_seed(0)
    assert float(sobolev_h1_penalty(torch.full((3, 4, 4), 0.0625))) == 0.0
    ramp = torch.linspace(0.0, 1.0, 6)
    smooth = (ramp[:, None] + ramp[None, :])[None]
    noise = torch.randn(1, 6, 6, generator=g)
    penalties = [float(sobolev_h1_penalty(smooth + a * noise)) for a in (0.0, 0.1, 0.5, 2.0)]
    assert penalties == sorted(penalties) and penalties[0] > 0
    assert float(sobolev_h1_penalty(smooth)) == pytest.approx(2 * 6 * 5 * 0.2**2)
    # The task's penalty: mean over kernels, differentiable, from the conserving layers.
    dec = TransposedConvDecoder(1, 4, 8)
    kernels = transposed_kernels(dec)
    assert len(kernels) == 4 and all(k.shape[-2:] == (4, 4) for k in kernels)
    penalty = transposed_kernel_penalty(kernels)
    penalty.backward()
    assert dec.base.stages[0].logits.grad is not None
    assert len(transposed_kernels(ConservingDecoder(1, 4, 8))) == 2
    assert float(transposed_kernel_penalty([])) == 0.0
    uniform = TransposedConvDecoder(1, 4, 8)
    with torch.no_grad():
        for k in uniform.modules():
            if hasattr(k, "logits"):
                k.logits.zero_()
    assert float(transposed_kernel_penalty(transposed_kernels(uniform))) < 1e-12
