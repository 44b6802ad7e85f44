"""The input's conventions, recorded when a field is normalised, and the way back to them.

:func:`downscale.io.open_field` brings every input onto one internal form (dims
``(time, lat, lon)`` or ``(time, y, x)``, ascending latitude, longitude in -180..180,
bounds ``lat_bnds``...). Users' scripts, like CDO and xESMF, expect the output in *their*
form: ``latitude`` stays ``latitude``, a 0..360 longitude stays 0..360, a descending
latitude stays descending, and time bounds and the variable's attributes survive.

:class:`FieldConventions` records that form when a field is normalised. It lives in the
normalised Dataset's ``encoding``, which xarray keeps through ``isel``, ``sel``, ``chunk``,
``concat`` and pickling and never writes to a file; :func:`conventions_of` gets it back.
:func:`restore` turns a fine-grid Dataset in the internal form into the user's form, and
:class:`UserLayout` does the same for the bare ``(time, H, W)`` arrays of time slabs.

The way back: each fine cell lies in one cell of the recorded grid (its *parent*). It
takes the parent's shift back to the file's longitude range (a whole number of turns) and
is ordered by the parent's position in the file, then by its own coordinate in the file's
direction. When the fine grid nests in the recorded one (the recorded grid is the coarse
input, or the fine grid itself), its bounds are computed afresh from the file's own bounds
with :func:`downscale.grid.fine_bounds`: a 0..360 grid gets exactly the fine
coordinates a 0..360 computation gives, not shifted and rounded ones.

Modules: :mod:`~downscale.conventions.record` (what the input looks like, taken when it is
opened) and :mod:`~downscale.conventions.restoring` (the way back, used by every writer).
"""

from downscale.conventions.record import (
    KEY,
    AxisConventions,
    FieldConventions,
    TimeBounds,
    add_file_metadata,
    conventions_of,
    join_in_time,
    record_field,
    with_conventions,
)
from downscale.conventions.restoring import DROPPED_ATTRS, UserLayout, restore, user_layout

__all__ = ["DROPPED_ATTRS", "KEY", "AxisConventions", "FieldConventions", "TimeBounds",
           "UserLayout", "add_file_metadata", "conventions_of", "join_in_time", "record_field",
           "restore", "user_layout", "with_conventions"]
