"""Map-style datasets of coarse/fine samples: random training patches, deterministic tiles.

Every sample is a dict of tensors (one leading channel dim, ``C = 1``):

* ``coarse``: ``(1, h, w)`` conservative aggregate of ``fine`` (NaN where no valid child);
* ``fine``: ``(1, H, W)`` target, NaN where missing (absent for coarse-only inputs);
* ``fine_area``: ``(1, H, W)`` fine cell areas divided by their mean (unitless);
* ``fine_valid``: ``(1, H, W)`` cells that carry data (the static mask);
* ``covariate``: ``(1, H, W)`` a static fine-grid covariate such as surface altitude, in
  its own units (only when the DataModule has one; see :mod:`downscale.data.covariate`);
* ``periodic``: whether the sample spans the whole periodic longitude circle;
* ``time``, ``y0``, ``x0``: where the sample sits in the fine grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import NDArray
from torch.utils.data import Dataset

from downscale.aggregate import area_weighted_block_mean
from downscale.data.source import FieldSource

Sample = dict[str, torch.Tensor]


def tile_starts(n: int, tile: int, factor: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, n)``, aligned to ``factor``.

    The last tile is moved back to end at ``n`` (so tiles may overlap, never overhang).
    """
    if tile >= n:
        return [0]
    starts = list(range(0, n - tile + 1, tile))
    if starts[-1] + tile < n:
        starts.append((n - tile) // factor * factor)
    return starts


def make_sample(fine: NDArray[np.float32], area: NDArray[np.float64], valid: NDArray[np.bool_],
                factor: int, periodic: bool, t: int, y0: int, x0: int,
                coarse: NDArray[np.float32] | None = None) -> Sample:
    """Assemble one sample from a fine block (see module docstring).

    ``coarse`` is read from the user's coarse file when given; otherwise it is the
    conservative aggregate of ``fine``.
    """
    fine = np.where(valid, fine, np.nan).astype(np.float32)
    if coarse is None:
        coarse = area_weighted_block_mean(fine, area, (factor, factor))[0].astype(np.float32)
    return {
        "coarse": torch.from_numpy(np.asarray(coarse, dtype=np.float32))[None],
        "fine": torch.from_numpy(fine)[None],
        "fine_area": torch.from_numpy((area / area.mean()).astype(np.float32))[None],
        "fine_valid": torch.from_numpy(valid.copy())[None],
        "periodic": torch.tensor(periodic),
        "time": torch.tensor(t),
        "y0": torch.tensor(y0),
        "x0": torch.tensor(x0),
    }


def read_sample(source: FieldSource, coarse_source: FieldSource | None, valid: NDArray[np.bool_],
                t: int, y0: int, x0: int, size: tuple[int, int],
                covariate: NDArray[np.float32] | None = None) -> Sample:
    """Read the fine block at ``(t, y0, x0)`` of ``size`` (and its coarse block) as a sample.

    ``covariate`` is the static ``(H, W)`` fine-grid covariate, if any; its block is added.
    """
    f = source.factor
    ys, xs = slice(y0, y0 + size[0]), slice(x0, x0 + size[1])
    coarse = None
    if coarse_source is not None:
        coarse = coarse_source.read(t, slice(y0 // f, (y0 + size[0]) // f),
                                    slice(x0 // f, (x0 + size[1]) // f))
    periodic = source.periodic and size[1] == source.shape[2]
    sample = make_sample(source.read(t, ys, xs), source.fine_area[ys, xs], valid[ys, xs], f,
                         periodic, t, y0, x0, coarse)
    if covariate is not None:
        sample["covariate"] = torch.from_numpy(np.ascontiguousarray(covariate[ys, xs]))[None]
    return sample


#: Patches drawn from each time step of a window before the window moves on (see
#: :class:`RandomPatchDataset`): one whole-step read then serves this many samples.
PATCHES_PER_STEP = 16


class RandomPatchDataset(Dataset[Sample]):
    """Random patches from random time steps of the training split.

    When the source's step cache holds every training step, each sample's time step is
    drawn uniformly. When it does not (a long, fine record), uniform draws would miss the
    cache on almost every sample and read a whole step for one patch. Time steps are then
    drawn from a *window* of as many steps as the cache holds: consecutive samples cycle
    through the window's steps, so a batch still mixes many steps, and after
    :data:`PATCHES_PER_STEP` patches of each the window moves on along a shuffled order of
    all training steps (a new order each epoch). Every step is drawn equally often over
    the order, and the cache hit rate is about ``1 - 1/PATCHES_PER_STEP`` per process.

    Args:
        source: The fine field.
        times: Time indices to draw from.
        patch_size: ``(ph, pw)`` in fine cells, multiples of the factor, at most the grid.
        valid: Static mask of the fine grid, ``(H, W)``.
        length: Samples per epoch.
        coarse_source: The user's coarse field on the nested grid, if any.
        seed: Base seed; each index gives the same patch in every run (reproducible with
            any number of workers).
        covariate: Static ``(H, W)`` fine-grid covariate, if any.

    """

    def __init__(self, source: FieldSource, times: Sequence[int], patch_size: tuple[int, int],
                 valid: NDArray[np.bool_], length: int, seed: int = 0,
                 coarse_source: FieldSource | None = None,
                 covariate: NDArray[np.float32] | None = None) -> None:
        self.source, self.times, self.patch_size = source, list(times), patch_size
        self.coarse_source, self.covariate = coarse_source, covariate
        self.valid, self.length, self.seed = valid, length, seed
        self.epoch = 0
        self._order: tuple[int, NDArray[np.int64]] | None = None  # (epoch, order of times)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Sample:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        f = self.source.factor
        _, h, w = self.source.shape
        ph, pw = self.patch_size
        t = self.time_of(index, rng)
        y0 = int(rng.integers(0, (h - ph) // f + 1)) * f
        x0 = int(rng.integers(0, (w - pw) // f + 1)) * f
        return read_sample(self.source, self.coarse_source, self.valid, t, y0, x0,
                           self.patch_size, self.covariate)

    @property
    def window(self) -> int:
        """Time steps drawn from at once: all, unless the step cache holds fewer."""
        held = self.source.cache_steps
        return len(self.times) if held == 0 or held >= len(self.times) else held

    def time_of(self, index: int, rng: np.random.Generator) -> int:
        """The time step of sample ``index`` (see the class docstring)."""
        n, window = len(self.times), self.window
        if window == n:
            return int(self.times[rng.integers(n)])
        if self._order is None or self._order[0] != self.epoch:
            # Seeded by (seed, epoch) only, so every worker and rank gets the same order.
            self._order = (self.epoch, np.random.default_rng((self.seed, self.epoch))
                           .permutation(n))
        block = index // (window * PATCHES_PER_STEP)
        return int(self.times[self._order[1][(block * window + index % window) % n]])


class TileDataset(Dataset[Sample]):
    """Deterministic tiles covering every time step given (validation, test, prediction).

    Args:
        source: The fine field.
        times: Time indices, in order.
        tile_size: ``(th, tw)`` in fine cells (multiples of the factor), or None for whole
            fields.
        valid: Static mask of the fine grid, ``(H, W)``.
        coarse_source: The user's coarse field on the nested grid, if any.
        covariate: Static ``(H, W)`` fine-grid covariate, if any.

    """

    def __init__(self, source: FieldSource, times: Sequence[int],
                 tile_size: tuple[int, int] | None, valid: NDArray[np.bool_],
                 coarse_source: FieldSource | None = None,
                 covariate: NDArray[np.float32] | None = None) -> None:
        self.source, self.times, self.valid = source, list(times), valid
        self.coarse_source, self.covariate = coarse_source, covariate
        _, h, w = source.shape
        th, tw = tile_size or (h, w)
        self.tile_size = (min(th, h), min(tw, w))
        f = source.factor
        self.index = [(t, y0, x0) for t in self.times for y0 in tile_starts(h, th, f)
                      for x0 in tile_starts(w, tw, f)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> Sample:
        t, y0, x0 = self.index[index]
        return read_sample(self.source, self.coarse_source, self.valid, t, y0, x0,
                           self.tile_size, self.covariate)
