"""The Downscaler protocol: what every model that the tiler, ``run`` and ``predict`` call is.

A :class:`Downscaler` is a plain ``nn.Module`` (no Lightning) that turns coarse fields into
fine ones by an integer ``factor``, states its own receptive field, and is called one way::

    fine = model(coarse, fine_area, fine_valid, periodic, covariate=None, noise=None)

Shapes and units (``B`` samples or time steps, ``C`` variables, ``h x w`` coarse cells,
``H = h * factor``, ``W = w * factor`` fine cells):

- ``coarse`` ``(B, C, h, w)``: physical values in the units the model was trained on
  (K, mm/day, m of elevation ...), NaN where missing.
- ``fine_area`` ``(1 | B, 1, H, W)``: fine cell areas, any unit (only ratios within a
  coarse cell matter; the tiler gives them in units of the mean fine cell).
- ``fine_valid`` ``(B, C, H, W)`` bool: fine cells that carry a value.
- ``periodic``: whether the last axis is a whole periodic longitude circle.
- ``covariate`` ``(B, K, H, W)``: static fine-grid covariates in their own units (e.g.
  surface altitude in m), for a model trained with ``K > 0`` of them; else None.
- ``noise`` ``(B, N, H, W)``: fine-grid noise for a stochastic model; None draws the
  model's own (deterministic for a fixed seed) or means none.

It returns ``(B, C, H, W)`` physical values in the input's units, NaN where ``fine_valid``
is False or the coarse cell is missing.

``receptive_field()`` is ``R`` in coarse cells: every fine cell of coarse cell
``(cy, cx)`` depends only on coarse cells ``(cy + dy, cx + dx)`` with ``|dy|, |dx| <= R``
(and the covariates and noise over the same cells), *including* the model's own padding
and edge handling. A tile extended by ``R`` coarse cells on every side therefore gives the
whole-field result (:mod:`downscale.inference`). A model whose output depends on the
whole field (global attention, field means) raises :class:`NotTileableError` instead.

A model may also state ``tile_alignment()``: tiles must start at multiples of that many
coarse cells (a U-Net pools ``2**depth`` cells at a time); 1 when absent.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

from downscale.errors import DownscaleError


class NotTileableError(DownscaleError, ValueError):
    """A model whose output depends on the whole field: it has no finite receptive field."""


@runtime_checkable
class Downscaler(Protocol):
    """A plain-torch downscaling model (see the module docstring for shapes and units).

    Attributes:
        factor: Fine cells per coarse cell along each axis.
        variables: Names of the variables it produces, one per output channel (``("",)``
            for a bare decoder that does not know what it downscales).
    """

    factor: int
    variables: tuple[str, ...]

    def receptive_field(self) -> int:
        """Coarse cells on every side that one coarse cell's fine cells depend on.

        Raises:
            NotTileableError: The output depends on the whole field.
        """
        ...

    def forward(self, coarse: Tensor, fine_area: Tensor, fine_valid: Tensor,
                periodic: bool = False, covariate: Tensor | None = None,
                noise: Tensor | None = None) -> Tensor:
        """``(B, C, h, w)`` coarse values to ``(B, C, h*f, w*f)`` fine values (same units)."""
        ...

    def __call__(self, coarse: Tensor, fine_area: Tensor, fine_valid: Tensor,
                 periodic: bool = False, covariate: Tensor | None = None,
                 noise: Tensor | None = None) -> Tensor:
        """Same as :meth:`forward` (``nn.Module.__call__``)."""
        ...


def tile_alignment(model: object) -> int:
    """Coarse cells that a tile's start must be a multiple of: the model's own, else 1."""
    stated = getattr(model, "tile_alignment", None)
    return int(stated()) if callable(stated) else 1
