"""One data-manifest entry: the :class:`DatasetEntry` record and the check of its YAML.

:func:`downscale.manifest.load_manifest` reads the file; this module turns each raw
``datasets:`` mapping into a :class:`DatasetEntry`, or raises a one-line
:class:`downscale.errors.ManifestError` naming the manifest, the dataset and the fix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from downscale.errors import ManifestError

FORMATS: Final = frozenset({"netcdf", "npz"})
REQUIRED_KEYS: Final = (
    "description",
    "source",
    "format",
    "variables",
    "grid",
    "licence",
    "citation",
    "sha256",
)

_SHA256_RE: Final = re.compile(r"[0-9a-f]{64}")

SourceKind = Literal["package", "path", "url"]


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset of the manifest.

    Attributes:
        id: The dataset id (its key under ``datasets:``).
        description: What the data is.
        source: Where the file is: ``{"package": ..., "path": ...}`` (path relative to
            the installed package's directory), ``{"path": ...}`` (a local file, relative
            paths taken from the manifest's folder) or ``{"url": ...}``.
        format: ``"netcdf"`` or ``"npz"``.
        variables: Variable name -> facts about it (``units`` always, ``standard_name``
            where one applies, and free-form notes).
        grid: Short description of the grid (shape, resolution, extent, periodicity,
            calendar, quirks).
        licence: Terms of use.
        citation: How to cite the data.
        sha256: Expected SHA-256 of the file, 64 lower-case hex digits.
        manifest_dir: Folder of the manifest the entry came from; relative local
            ``path`` sources are resolved against it.

    """

    id: str
    description: str
    source: Mapping[str, str]
    format: str
    variables: Mapping[str, Mapping[str, Any]]
    grid: Mapping[str, Any]
    licence: str
    citation: str
    sha256: str
    manifest_dir: Path | None = None

    @property
    def source_kind(self) -> SourceKind:
        """Which kind of source the entry has: ``"package"``, ``"path"`` or ``"url"``."""
        if "package" in self.source:
            return "package"
        if "url" in self.source:
            return "url"
        return "path"


def _fail(where: str | os.PathLike[str], problem: str, hint: str) -> ManifestError:
    """Build a one-line :class:`ManifestError` ``<where>: <problem>. <hint>.``."""
    text = f"{os.fspath(where)}: {problem.rstrip('.')}. {hint.rstrip('.')}."
    return ManifestError(" ".join(text.split()))


def _text(manifest: Path, dataset_id: str, raw: Mapping[str, Any], key: str) -> str:
    """Return ``raw[key]`` as a non-empty string or raise ManifestError."""
    value = raw[key]
    if not isinstance(value, str) or not value.strip():
        raise _fail(
            manifest,
            f"dataset '{dataset_id}': '{key}' must be a non-empty string, got {value!r}",
            f"Fix the '{key}' entry of '{dataset_id}'",
        )
    return value.strip()


def _mapping(manifest: Path, dataset_id: str, raw: Mapping[str, Any], key: str) -> dict[str, Any]:
    """Return ``raw[key]`` as a non-empty mapping with string keys or raise."""
    value = raw[key]
    if not isinstance(value, Mapping) or not value or not all(isinstance(k, str) for k in value):
        raise _fail(
            manifest,
            f"dataset '{dataset_id}': '{key}' must be a non-empty mapping with string keys, "
            f"got {type(value).__name__}",
            f"Fix the '{key}' entry of '{dataset_id}'",
        )
    return dict(value)


def _parse_source(manifest: Path, dataset_id: str, raw: Mapping[str, Any]) -> dict[str, str]:
    """Validate the ``source`` block of one entry."""
    source = _mapping(manifest, dataset_id, raw, "source")
    hint = (
        f"Give '{dataset_id}' a source of the form {{package: <name>, path: <path>}}, "
        "{path: <file>} or {url: <address>}"
    )
    for key, value in source.items():
        if not isinstance(value, str) or not value.strip():
            raise _fail(
                manifest,
                f"dataset '{dataset_id}': source '{key}' must be a non-empty string",
                hint,
            )
    keys = set(source)
    allowed = ({"package", "path"}, {"package", "path", "distribution"}, {"path"}, {"url"})
    if keys not in allowed:
        raise _fail(
            manifest,
            f"dataset '{dataset_id}': source has keys {sorted(keys)}, which is not a "
            "recognised kind of source",
            hint,
        )
    return {key: value.strip() for key, value in source.items()}


def _parse_variables(
    manifest: Path, dataset_id: str, raw: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """Validate the ``variables`` block of one entry (each needs ``units``)."""
    variables = _mapping(manifest, dataset_id, raw, "variables")
    parsed: dict[str, dict[str, Any]] = {}
    for name, facts in variables.items():
        if not isinstance(facts, Mapping) or not isinstance(facts.get("units"), str):
            raise _fail(
                manifest,
                f"dataset '{dataset_id}': variable '{name}' needs a mapping with a 'units' string",
                f"Add 'units' to variable '{name}' of '{dataset_id}'",
            )
        parsed[name] = dict(facts)
    return parsed


def _parse_entry(manifest: Path, dataset_id: object, raw: object) -> DatasetEntry:
    """Validate one raw manifest entry and build its :class:`DatasetEntry`."""
    if not isinstance(dataset_id, str) or not dataset_id:
        raise _fail(
            manifest,
            f"dataset id {dataset_id!r} is not a non-empty string",
            "Use plain text ids under 'datasets:'",
        )
    if not isinstance(raw, Mapping):
        raise _fail(
            manifest,
            f"dataset '{dataset_id}' must be a mapping, got {type(raw).__name__}",
            f"Give '{dataset_id}' the keys {', '.join(REQUIRED_KEYS)}",
        )
    missing = [key for key in REQUIRED_KEYS if key not in raw]
    if missing:
        raise _fail(
            manifest,
            f"dataset '{dataset_id}' lacks required key(s) {', '.join(missing)}",
            f"Add them to the '{dataset_id}' entry",
        )
    fmt = _text(manifest, dataset_id, raw, "format").lower()
    if fmt not in FORMATS:
        raise _fail(
            manifest,
            f"dataset '{dataset_id}': format '{fmt}' is not supported",
            f"Use one of {', '.join(sorted(FORMATS))}",
        )
    sha = _text(manifest, dataset_id, raw, "sha256").lower()
    if not _SHA256_RE.fullmatch(sha):
        raise _fail(
            manifest,
            f"dataset '{dataset_id}': sha256 '{sha}' is not 64 hex digits",
            "Put the file's SHA-256 (e.g. from 'sha256sum <file>') in the entry",
        )
    return DatasetEntry(
        id=dataset_id,
        description=_text(manifest, dataset_id, raw, "description"),
        source=_parse_source(manifest, dataset_id, raw),
        format=fmt,
        variables=_parse_variables(manifest, dataset_id, raw),
        grid=_mapping(manifest, dataset_id, raw, "grid"),
        licence=_text(manifest, dataset_id, raw, "licence"),
        citation=_text(manifest, dataset_id, raw, "citation"),
        sha256=sha,
        manifest_dir=manifest.parent,
    )
