"""Docstrings as terminal help: no Sphinx markup.

Module docstrings double as the ``--help`` of the commands. Sphinx roles
(``:func:`x```), double back-quotes and the ``::`` of literal blocks are for the API
documentation; a terminal shows the plain names.
"""

from __future__ import annotations

import re

_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")


def plain(doc: str | None) -> str:
    """``doc`` with Sphinx roles, double back-quotes and literal-block ``::`` removed."""
    text = _ROLE.sub(r"\1", doc or "")
    text = text.replace("``", "")
    return re.sub(r"(\S)::$", r"\1:", text, flags=re.MULTILINE)
