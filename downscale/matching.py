"""Which variable of an input a checkpoint applies to: matched by meaning, not by name.

A model learns a quantity (a CF ``standard_name``), not a file's variable name: a model
trained on ``air_temperature`` applies to a CMIP file's ``ta`` when both carry
``standard_name: air_temperature``. :func:`choose_variable` picks the variable of an input
for ``downscale run``. :func:`check_quantity` refuses another quantity and
:func:`units_conversion` says how the values reach the model's units (:mod:`downscale.units`)
or refuses in one line; both are asked by :func:`downscale.checkpoint.check_trained_for`,
the one place every entry point goes through.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from downscale.errors import CheckpointError, InputError
from downscale.units import UnitConversion, same_quantity, unit_conversion


def standard_names_in(path: str) -> dict[str, str]:
    """The gridded variables of a file that carry a ``standard_name``, and that name.

    Read from the header only; an unreadable file gives none (opening it later says what
    is wrong, in one line).
    """
    import xarray as xr

    from downscale.io import gridded_variables

    try:
        with xr.open_dataset(path, decode_times=False) as ds:
            return {name: str(ds[name].attrs["standard_name"]) for name in gridded_variables(ds)
                    if ds[name].attrs.get("standard_name")}
    except (OSError, ValueError):
        return {}


def choose_variable(path: str, trained: str, trained_standard_name: str | None) -> str:
    """The variable of ``path`` that a checkpoint trained on ``trained`` applies to.

    Used when ``--variable`` is not given: the file's variable of the trained name when
    it holds the same quantity, else the one variable that does
    (:func:`~downscale.units.same_quantity`), else the trained name (a variable without a
    ``standard_name`` matches by name). A checkpoint saved before standard names were
    recorded matches by name only.

    Args:
        path: The (first) input file.
        trained: The variable the checkpoint was trained on.
        trained_standard_name: Its ``standard_name`` (None: unknown).

    Returns:
        The variable's name; ``trained`` when nothing matches (opening the file then says
        that it is not found, and lists what there is).

    Raises:
        InputError: Several variables hold the quantity: which one is ambiguous.
    """
    if not trained_standard_name:
        return trained
    names = standard_names_in(path)
    if same_quantity(names.get(trained), trained_standard_name):
        return trained
    matches = sorted(n for n, s in names.items() if same_quantity(s, trained_standard_name))
    if len(matches) > 1:
        raise InputError(f"several variables have the checkpoint's standard_name "
                         f"{trained_standard_name}: {', '.join(matches)}", path=path,
                         hint="choose one with --variable")
    return matches[0] if matches else trained


def check_quantity(trained: dict[str, Any], where: str, variable: str,
                    standard_name: str | None) -> None:
    """Refuse data of another quantity: another standard_name, or else another name.

    Part of :func:`downscale.checkpoint.check_trained_for` (the one place that asks).

    Args:
        trained: The checkpoint's ``downscale_data`` record (``variable``, ``standard_name``).
        where: The checkpoint's path, for the message.
        variable: The variable the data select.
        standard_name: Its ``standard_name`` (None: it has none).

    Raises:
        CheckpointError: One line naming both variables (and standard names).
    """
    name, meaning = str(trained["variable"]), trained.get("standard_name")
    if meaning and standard_name and not same_quantity(meaning, standard_name):
        raise CheckpointError(f"{where}: trained for variable '{name}' (standard_name "
                              f"{meaning}), but the data select '{variable}' (standard_name "
                              f"{standard_name}). Use a checkpoint trained for "
                              f"{standard_name}.")
    if name != variable and not (meaning and standard_name):
        accepted = (f" (or give '{variable}' the standard_name {meaning}, if that is what "
                    "it holds)" if meaning else "")
        raise CheckpointError(f"{where}: trained for variable '{name}', but the data select "
                              f"'{variable}'. Use a checkpoint trained for "
                              f"'{variable}'{accepted}.")


def units_conversion(trained: dict[str, Any], attrs: dict[str, Any], *, where: str,
                     path: str | Path, variable: str) -> UnitConversion | None:
    """How an input's values reach the units a checkpoint was trained in.

    Args:
        trained: The checkpoint's ``downscale_data`` record (``units``, ``standard_name``).
        attrs: The input variable's attributes.
        where: The checkpoint's path, for the message.
        path: The input file, for the message.
        variable: The input variable, for the message.

    Returns:
        The conversion; None when the checkpoint records no units (nothing to convert to).

    Raises:
        CheckpointError: No conversion exists (other dimensions, unparsable units, or a
            depth where the model has a mass without a ``standard_name`` saying it is
            water): one line with the file, variable, both units and what to do.
    """
    target = trained.get("units")
    if not target:
        return None
    source = str(attrs.get("units", "")).strip()
    difference = "difference" in str(attrs.get("units_metadata", ""))
    conversion = unit_conversion(source, str(target),
                                 source_standard_name=attrs.get("standard_name"),
                                 target_standard_name=trained.get("standard_name"),
                                 difference=difference)
    if conversion is None:
        raise CheckpointError(
            f"{where}: trained on '{trained.get('variable')}' in {target}, but {path}: "
            f"{variable} is in {source or 'no units'}, which cannot be converted to {target} "
            f"({_why_not(source, str(target))}). Convert the input to {target}.")
    return conversion


def _why_not(source: str, target: str) -> str:
    """Why cf-units has no conversion, for the message.

    Units it cannot read, another dimension, or a depth of water and a mass whose
    standard_names do not say that one is the other's water equivalent.
    """
    import cf_units

    try:
        unit_in, unit_out = cf_units.Unit(source), cf_units.Unit(target)
    except ValueError:
        return f"cf-units cannot read '{source}' or '{target}'"
    density = cf_units.Unit("kg m-3")
    if (unit_in * density).is_convertible(unit_out) or unit_in.is_convertible(
            unit_out * density):
        return ("a depth of water and a mass convert only when the standard_names say so: "
                "lwe_precipitation_rate and precipitation_flux, for example")
    return "another dimension"
