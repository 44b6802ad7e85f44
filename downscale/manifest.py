"""The data manifest: real sample datasets, where they live and their checksums.

``data_manifest.yaml`` lists datasets by id. Each one names its source (a file inside an
installed Python package, a local path, or a URL), its format, variables, grid, licence,
citation and SHA-256. :func:`resolve` turns an id into a verified local path::

    from downscale.manifest import resolve

    path = resolve("e1_north_america")

The manifest is found, in order: the ``path`` argument, the ``DOWNSCALE_MANIFEST``
environment variable, ``downscale/data_manifest.yaml`` inside an installed wheel, and
``data_manifest.yaml`` at the top of a source (or editable) checkout.

Every problem is raised as :class:`downscale.errors.ManifestError` with a one-line
message that says what is wrong and what to do.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import yaml

from downscale.errors import ManifestError
from downscale.manifest_entry import FORMATS as FORMATS
from downscale.manifest_entry import REQUIRED_KEYS as REQUIRED_KEYS
from downscale.manifest_entry import DatasetEntry, _fail, _parse_entry
from downscale.manifest_entry import SourceKind as SourceKind

__all__ = [
    "ENV_VAR",
    "DatasetEntry",
    "default_manifest_path",
    "load_manifest",
    "resolve",
    "sha256_file",
]

ENV_VAR: Final = "DOWNSCALE_MANIFEST"
"""Environment variable that points at a manifest to use instead of the default one."""

MANIFEST_NAME: Final = "data_manifest.yaml"
_BLOCK_SIZE: Final = 1 << 20  # 1 MiB

# Importable package name -> pip distribution name, where they differ and the
# underscore-to-hyphen rule does not give it.
_DISTRIBUTIONS: Final[Mapping[str, str]] = {
    "iris_sample_data": "iris-sample-data",
    "cartopy": "cartopy",
    "matplotlib": "matplotlib",
    "netCDF4": "netCDF4",
}

# Digests of files already hashed, keyed by (resolved path, mtime in ns, size in bytes),
# so repeated resolve() calls on an unchanged file do not re-read it.
_DIGEST_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Compute the SHA-256 of a file, reading it in 1 MiB blocks.

    Args:
        path: The file to hash.

    Returns:
        The hex digest (64 lower-case characters).

    Raises:
        OSError: If the file cannot be read.

    """
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(_BLOCK_SIZE):
            digest.update(block)
    return digest.hexdigest()


def default_manifest_path() -> Path:
    """Locate the manifest used when no path is given.

    Order: the ``DOWNSCALE_MANIFEST`` environment variable; ``data_manifest.yaml``
    inside the installed ``downscale`` package (wheel installs); the top level of the
    source tree (source checkouts and editable installs).

    Returns:
        The manifest path. It may not exist; :func:`load_manifest` reports that.

    """
    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override).expanduser()
    try:
        packaged = importlib.resources.files("downscale") / MANIFEST_NAME
    except (ModuleNotFoundError, TypeError):  # pragma: no cover - odd installs
        packaged = None
    if isinstance(packaged, Path) and packaged.is_file():
        return packaged
    return Path(__file__).resolve().parents[1] / MANIFEST_NAME


def load_manifest(path: str | os.PathLike[str] | None = None) -> dict[str, DatasetEntry]:
    """Read and validate a data manifest.

    Args:
        path: The manifest file. ``None`` uses :func:`default_manifest_path` (the
            ``DOWNSCALE_MANIFEST`` environment variable, else the packaged or
            source-tree ``data_manifest.yaml``).

    Returns:
        Dataset id -> entry, in file order.

    Raises:
        ManifestError: If the file is missing, is not valid YAML, or an entry lacks a
            required key or has a malformed value.

    """
    manifest = Path(path).expanduser() if path is not None else default_manifest_path()
    try:
        text = manifest.read_text(encoding="utf-8")
    except FileNotFoundError:
        hint = (
            f"Check the {ENV_VAR} environment variable"
            if path is None and os.environ.get(ENV_VAR)
            else "Pass the path of an existing data_manifest.yaml"
        )
        raise _fail(manifest, "data manifest not found", hint) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(manifest, f"cannot read the data manifest ({exc})", "Check the file") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or type(exc).__name__
        place = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise _fail(manifest, f"not valid YAML{place}: {problem}", "Fix the YAML syntax") from None
    datasets = document.get("datasets") if isinstance(document, Mapping) else None
    if not isinstance(datasets, Mapping):
        raise _fail(
            manifest,
            "the data manifest must be a mapping with a 'datasets:' mapping of id -> entry",
            "Check that this is a downscale data manifest",
        )
    return {str(key): _parse_entry(manifest, key, raw) for key, raw in datasets.items()}


def _distribution(package: str, source: Mapping[str, str]) -> str:
    """Return the pip distribution name that provides ``package``."""
    return source.get("distribution") or _DISTRIBUTIONS.get(package, package.replace("_", "-"))


def _package_dir(entry: DatasetEntry) -> Path:
    """Find an installed package's directory without importing the package itself."""
    package = entry.source["package"]
    pip_name = _distribution(package, entry.source)
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ManifestError(
            f"dataset '{entry.id}' needs the Python package '{package}', which is not "
            f"installed. Install it with 'pip install {pip_name}'."
        )
    return Path(locations[0])


def _locate(entry: DatasetEntry) -> Path:
    """Return the path an entry's source points at, without checking it exists."""
    kind = entry.source_kind
    if kind == "url":
        raise ManifestError(
            f"dataset '{entry.id}' has a url source ({entry.source['url']}); downloading is "
            "not supported (downscale works offline). Download the file yourself and give "
            "the entry a {path: <local file>} source instead."
        )
    relative = Path(entry.source["path"]).expanduser()
    if kind == "package":
        return _package_dir(entry) / relative
    if not relative.is_absolute() and entry.manifest_dir is not None:
        return entry.manifest_dir / relative
    return relative


def _cached_sha256(path: Path) -> str:
    """SHA-256 of ``path``, cached per (path, mtime, size)."""
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    digest = _DIGEST_CACHE.get(key)
    if digest is None:
        digest = sha256_file(path)
        _DIGEST_CACHE[key] = digest
    return digest


def resolve(
    dataset_id: str,
    *,
    verify: bool = True,
    manifest: Mapping[str, DatasetEntry] | str | os.PathLike[str] | None = None,
) -> Path:
    """Find a dataset's file on disk and, by default, check its SHA-256.

    Args:
        dataset_id: Id of the dataset in the manifest, e.g. ``"hadisst_sst"``.
        verify: Check the file's SHA-256 against the manifest. Digests are cached per
            (path, mtime, size), so repeated calls on an unchanged file are cheap.
        manifest: Entries from :func:`load_manifest`, or the path of a manifest file;
            ``None`` loads the default manifest.

    Returns:
        The absolute path of the file.

    Raises:
        ManifestError: If the id is unknown, the providing package is not installed,
            the file is missing, the source is a URL, or the checksum does not match.

    """
    entries = manifest if isinstance(manifest, Mapping) else load_manifest(manifest)
    entry = entries.get(dataset_id)
    if entry is None:
        known = ", ".join(sorted(entries)) or "(none)"
        raise ManifestError(f"unknown dataset '{dataset_id}'. Known datasets: {known}.")
    path = _locate(entry).resolve()
    if not path.is_file():
        hint = (
            f"Reinstall it with 'pip install --force-reinstall "
            f"{_distribution(entry.source['package'], entry.source)}'"
            if entry.source_kind == "package"
            else "Put the file there or fix the entry's source path"
        )
        raise _fail(path, f"file for dataset '{entry.id}' not found", hint)
    if verify:
        try:
            actual = _cached_sha256(path)
        except OSError as exc:
            raise _fail(
                path, f"cannot read dataset '{entry.id}' ({exc.strerror or exc})", "Check the file"
            ) from None
        if actual != entry.sha256:
            raise _fail(
                path,
                f"dataset '{entry.id}' fails its sha256 checksum: expected {entry.sha256}, "
                f"got {actual}",
                "The file is corrupt or a different version; reinstall the package that "
                "provides it, or, if this version is intended, update the sha256 in the "
                "data manifest",
            )
    return path
