"""The plain-torch downscalers (:class:`~downscale.nn.protocol.Downscaler`s) the tasks train.

:class:`ClimateDownscaler`
    One climate variable: normalises the coarse input (and a static covariate) with the
    training statistics saved as buffers, runs a decoder of :mod:`downscale.nn`, and
    returns exactly conservative physical values.
:class:`TerrainDownscaler`
    The terrain generator: coarse elevation (m) in, fine elevation out, with every coarse
    cell's mean elevation kept. Its relief is taken about a *local* mean (a window of
    ``relief_radius`` coarse cells), so it has a finite receptive field and can be tiled.

The Lightning tasks (:mod:`downscale.tasks`) are these models with training added, so the
forward pass exists once and a checkpoint's state dict loads into either. Building one
from a checkpoint needs no Lightning (:func:`downscale.checkpoint.load_model`).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from downscale.nn.coarse_grid import CoarseGridDecoder
from downscale.nn.conserving import ConstraintMode
from downscale.nn.decoder import ConservingDecoder
from downscale.nn.mitigations import DecoderConfigError
from downscale.nn.protocol import NotTileableError, tile_alignment
from downscale.nn.terrain import TerrainGenerator

#: What ``decoder=None`` builds: ``conserving`` (:class:`~downscale.nn.ConservingDecoder`,
#: the default; checkpoints saved without the setting hold it) or ``coarse_grid``
#: (:class:`~downscale.nn.CoarseGridDecoder`: about 4x the fine cells per second, less
#: skilful at equal epochs; docs/decoder_comparison/coarse_grid.md).
DefaultDecoder = Literal["coarse_grid", "conserving"]
DEFAULT_DECODERS: dict[str, type[ConservingDecoder]] = {
    "coarse_grid": CoarseGridDecoder, "conserving": ConservingDecoder}


def _normalised(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``(x - mean) / std`` per channel (``mean``, ``std`` of shape ``(C,)``), NaN as 0."""
    return torch.nan_to_num((x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1), nan=0.0)


class ClimateDownscaler(nn.Module):
    """Downscale one climate variable by an integer factor, conserving mass exactly.

    Args:
        factor: Upsampling factor.
        hidden_channels: Width of the default decoder's feature paths.
        coarse_blocks: Residual conv blocks on the coarse grid (default decoder).
        fine_blocks: Conv blocks on the fine grid (default decoder).
        constraint: Local conservation mode of the default decoder (``additive``,
            ``multiplicative``, ``softmax``, ``none``).
        phase_balanced: Phase-balanced conserving kernels (default decoder).
        decoder: Another decoder, e.g. one of :mod:`downscale.nn.decoders`: a module with
            ``factor``, ``receptive_field()`` and
            ``forward(x, x_norm, fine_area, fine_valid, std, periodic)``. Its factor must
            equal ``factor``. None builds the ``default_decoder`` from the five arguments
            above, which are ignored otherwise.
        covariate_channels: Static fine-grid covariates it reads (0 or 1; default decoder).
        variables: Name of the variable it produces (``("",)`` until known).
        default_decoder: Which decoder ``decoder=None`` builds (:data:`DefaultDecoder`):
            ``conserving`` (:class:`~downscale.nn.ConservingDecoder`, 3x3 blocks on the
            fine grid too; the default, and what checkpoints saved without this setting
            hold) or ``coarse_grid`` (:class:`~downscale.nn.CoarseGridDecoder`, the wide
            convolutions on the coarse grid only).

    Raises:
        DecoderConfigError: (a ``ValueError``) if the decoder's factor or covariate
            channels differ from ``factor`` and ``covariate_channels``.

    Buffers (saved in checkpoints): ``norm_mean``, ``norm_std`` ``(1,)`` of the training
    split (variable units) and ``covariate_mean``, ``covariate_std`` ``(max(K, 1),)`` of
    the covariate (its own units).
    """

    def __init__(self, factor: int = 4, hidden_channels: int = 32, coarse_blocks: int = 2,
                 fine_blocks: int = 1, constraint: ConstraintMode = "additive",
                 phase_balanced: bool = True, decoder: nn.Module | None = None,
                 covariate_channels: int = 0, variables: tuple[str, ...] = ("",),
                 default_decoder: DefaultDecoder = "conserving") -> None:
        super().__init__()
        if covariate_channels not in (0, 1):
            raise DecoderConfigError(f"covariate_channels must be 0 or 1, got "
                                     f"{covariate_channels}")
        if default_decoder not in DEFAULT_DECODERS:
            raise DecoderConfigError(f"default_decoder must be one of "
                                     f"{', '.join(DEFAULT_DECODERS)}, got {default_decoder!r}")
        # The default decoder's arguments, kept to rebuild it (use_default_decoder); None
        # for a decoder given here.
        self._default_args: tuple[Any, ...] | None = None
        if decoder is None:
            self._default_args = (1, factor, hidden_channels, coarse_blocks, fine_blocks,
                                  constraint, phase_balanced, covariate_channels)
            decoder = DEFAULT_DECODERS[default_decoder](*self._default_args)
        elif getattr(decoder, "covariate_channels", 0) != covariate_channels:
            raise DecoderConfigError(
                f"model.decoder ({type(decoder).__name__}) reads "
                f"{getattr(decoder, 'covariate_channels', 0)} covariate channel(s), but "
                f"covariate_channels is {covariate_channels}. Use the default decoder "
                "(decoder: null) for a static covariate.")
        elif getattr(decoder, "factor", None) != factor:
            raise DecoderConfigError(
                f"model.decoder ({type(decoder).__name__}) upsamples by factor "
                f"{getattr(decoder, 'factor', '(none: it has no factor attribute)')}, but the "
                f"data use factor {factor}. Set model.init_args.decoder.init_args.factor: "
                f"{factor} (or --data.factor to the decoder's factor).")
        self.factor, self.covariate_channels = factor, covariate_channels
        self.variables = tuple(variables)
        self.decoder = decoder
        self.norm_mean: Tensor
        self.norm_std: Tensor
        self.register_buffer("norm_mean", torch.zeros(1))
        self.register_buffer("norm_std", torch.ones(1))
        self.covariate_mean: Tensor
        self.covariate_std: Tensor
        self.register_buffer("covariate_mean", torch.zeros(max(covariate_channels, 1)))
        self.register_buffer("covariate_std", torch.ones(max(covariate_channels, 1)))

    def forward(self, coarse: Tensor, fine_area: Tensor, fine_valid: Tensor,
                periodic: bool = False, covariate: Tensor | None = None,
                noise: Tensor | None = None) -> Tensor:
        """Downscale ``(B, 1, h, w)`` physical values to ``(B, 1, h*f, w*f)``.

        Args:
            coarse: Coarse values in the training units, NaN = missing.
            fine_area: ``(1 | B, 1, H, W)`` fine cell areas (any unit).
            fine_valid: ``(B, 1, H, W)`` fine cells that carry a value.
            periodic: Whether the last axis is a whole longitude circle.
            covariate: ``(B, covariate_channels, H, W)`` static covariate in its own units
                (NaN = missing); required when ``covariate_channels > 0``.
            noise: ``(B, N, H, W)`` standard normal noise for a stochastic decoder (one
                with ``noise_channels``, e.g.
                :class:`~downscale.nn.stochastic.StochasticConservingDecoder`; None: its
                noise-free member); must be None for the deterministic decoders.

        Returns:
            ``(B, 1, H, W)`` physical values, NaN at invalid cells.
        """
        # Only stochastic decoders are given the keyword: the others' signature lacks it.
        extra = {"noise": noise} if getattr(self.decoder, "noise_channels", 0) else {}
        if noise is not None and not extra:
            raise ValueError("this model is deterministic: it takes no noise")
        std = self.norm_std.view(1, -1, 1, 1)
        x_norm = _normalised(coarse, self.norm_mean, self.norm_std)
        if not self.covariate_channels:
            out: Tensor = self.decoder(coarse, x_norm, fine_area, fine_valid, std, periodic,
                                       **extra)
            return out
        if covariate is None:
            raise ValueError("this model was built with a static covariate: pass covariate=")
        c_norm = _normalised(covariate.to(coarse.dtype), self.covariate_mean,
                             self.covariate_std)
        out = self.decoder(coarse, x_norm, fine_area, fine_valid, std, periodic, c_norm,
                           **extra)
        return out

    def use_default_decoder(self, kind: DefaultDecoder) -> None:
        """Make a default decoder the default decoder ``kind``, built with the same arguments.

        For a checkpoint that says which default decoder it holds only after the model was
        built (see :func:`downscale.checkpoint.model_upgrades`); its weights load afterwards.
        A decoder given to the constructor is kept.
        """
        if self._default_args is not None:
            self.decoder = DEFAULT_DECODERS[kind](*self._default_args)

    def receptive_field(self) -> int:
        """The decoder's own (the normalisation is per cell), in coarse cells.

        Raises:
            NotTileableError: The decoder reads the whole field, or does not say.
        """
        stated = getattr(self.decoder, "receptive_field", None)
        if not callable(stated):
            raise NotTileableError(f"the receptive field of {type(self.decoder).__name__} is "
                                   "not known (it has no receptive_field() method); give the "
                                   "halo explicitly")
        return int(stated())

    def tile_alignment(self) -> int:
        """The decoder's: coarse cells that a tile's start must be a multiple of."""
        return tile_alignment(self.decoder)


def local_mean(x: Tensor, radius: int | None, periodic: bool = False) -> Tensor:
    """Mean of the finite cells of ``(B, C, h, w)`` in a ``(2r + 1)^2`` window around each.

    The window is clipped at the field's edges (wrapped along a periodic last axis), so the
    mean at a cell depends on cells at most ``radius`` away: tiles with that halo agree
    with the whole field. ``radius=None`` gives every cell its field's mean (the legacy
    relief of generators trained before local relief; not tileable). Cells without any
    finite neighbour get 0.
    """
    finite = torch.isfinite(x)
    zeroed = torch.where(finite, x, torch.zeros_like(x))
    if radius is None:
        count = finite.sum(dim=(-2, -1), keepdim=True).clamp_min(1)
        return zeroed.sum(dim=(-2, -1), keepdim=True) / count
    both = torch.cat([zeroed, finite.to(x.dtype)], dim=1)
    if periodic:
        both = F.pad(both, (radius, radius, 0, 0), mode="circular")
        both = F.pad(both, (0, 0, radius, radius))
    else:
        both = F.pad(both, (radius, radius, radius, radius))
    sums = F.avg_pool2d(both, 2 * radius + 1, stride=1, divisor_override=1)
    c = x.shape[1]
    return sums[:, :c] / sums[:, c:].clamp_min(1)


class TerrainDownscaler(nn.Module):
    """Generate fine elevation (m) from coarse elevation with :class:`TerrainGenerator`.

    The feature path reads the relief ``(h - local_mean(h)) / norm_std``: the same
    landform looks the same at any altitude, so a generator trained on one DEM applies to
    another, and the local mean keeps the receptive field finite.

    Args:
        factor: Upsampling factor.
        hidden_channels: Width of the generator's feature paths.
        coarse_blocks: Residual conv blocks on the coarse grid.
        fine_blocks: Conv blocks on the fine grid.
        noise_channels: Channels of fine-grid noise (0: none).
        conserve: Keep every coarse cell's mean elevation exactly.
        noise_seed: Seed of the noise drawn when ``forward`` is given none.
        relief_radius: Half-width of the local-mean window in coarse cells; None takes
            each field's own mean (generators trained before local relief; not tileable).
        variables: Name of the variable it produces.

    Buffers (saved in checkpoints): ``norm_mean``, ``norm_std`` ``(1,)``, elevation
    statistics of the training region (m); ``norm_std`` scales relief and detail.
    """

    def __init__(self, factor: int = 4, hidden_channels: int = 32, coarse_blocks: int = 2,
                 fine_blocks: int = 2, noise_channels: int = 0, conserve: bool = True,
                 noise_seed: int = 0, relief_radius: int | None = 8,
                 variables: tuple[str, ...] = ("elevation",)) -> None:
        super().__init__()
        if relief_radius is not None and relief_radius < 0:
            raise ValueError(f"relief_radius must be >= 0 coarse cells, got {relief_radius}")
        self.factor, self.noise_seed, self.relief_radius = factor, noise_seed, relief_radius
        self.variables = tuple(variables)
        self.generator = TerrainGenerator(factor, hidden_channels, coarse_blocks, fine_blocks,
                                          noise_channels, conserve)
        self.norm_mean: Tensor
        self.norm_std: Tensor
        self.register_buffer("norm_mean", torch.zeros(1))
        self.register_buffer("norm_std", torch.ones(1))

    def draw_noise(self, like: Tensor, seed: int | None) -> Tensor | None:
        """Standard normal ``(B, noise_channels, H, W)`` noise, or None without noise.

        Args:
            like: A float ``(B, ., H, W)`` tensor: the shape, device and dtype.
            seed: Seed of the noise; None draws from torch's global generator (training).
        """
        channels = self.generator.noise_channels
        if not channels:
            return None
        b, _, h, w = like.shape
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        noise = torch.randn(b, channels, h, w, generator=generator)
        return noise.to(like.device, like.dtype)

    def forward(self, coarse: Tensor, fine_area: Tensor, fine_valid: Tensor,
                periodic: bool = False, covariate: Tensor | None = None,
                noise: Tensor | None = None) -> Tensor:
        """``(B, 1, h, w)`` coarse elevation (m) to ``(B, 1, h*f, w*f)`` (NaN off-grid).

        Args:
            coarse: Coarse elevation in metres, NaN = missing.
            fine_area: ``(1 | B, 1, H, W)`` fine cell areas (any unit).
            fine_valid: ``(B, 1, H, W)`` fine cells that carry a value.
            periodic: Whether the last axis is a whole longitude circle.
            covariate: Must be None (the generator reads elevation only).
            noise: ``(B, noise_channels, H, W)`` noise; None draws it from ``noise_seed``
                (the same terrain on every call).
        """
        if covariate is not None:
            raise ValueError("the terrain generator takes no covariate")
        std = self.norm_std.view(1, -1, 1, 1)
        finite = torch.isfinite(coarse)
        mean = local_mean(coarse, self.relief_radius, periodic)
        relief = torch.where(finite, (coarse - mean) / std, torch.zeros_like(coarse))
        if noise is None:
            noise = self.draw_noise(fine_area.expand(coarse.shape[0], -1, -1, -1),
                                    self.noise_seed)
        fine: Tensor = self.generator(coarse, relief, fine_area, std, noise, periodic)
        return torch.where(fine_valid, fine, torch.full_like(fine, torch.nan))

    def receptive_field(self) -> int:
        """Coarse cells on each side: the generator's, behind the local-mean window.

        Raises:
            NotTileableError: For the legacy field-mean relief, or with noise (drawn for
                the whole field at once, so a tile would draw other noise).
        """
        if self.relief_radius is None:
            raise NotTileableError("this terrain generator (trained before local relief) "
                                   "takes each field's relief about its own mean elevation, "
                                   "so tiles would differ from the whole field")
        if self.generator.noise_channels:
            raise NotTileableError("this terrain generator draws noise for the whole field "
                                   "at once, so tiles would draw other noise")
        return self.generator.receptive_field(self.relief_radius)
