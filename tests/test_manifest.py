"""Tests for downscale.manifest against the real data files installed with the packages."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from downscale import manifest as mf
from downscale.errors import DownscaleError, ManifestError
from downscale.manifest import DatasetEntry, load_manifest, resolve, sha256_file

EXPECTED_IDS = {"hadisst_sst", "e1_north_america", "jacksboro_fault_dem", "topobathy",
                "rotated_pole_mslp", "toa_brightness_stereographic"}


@pytest.fixture(autouse=True)
def _no_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(mf.ENV_VAR, raising=False)


@pytest.fixture
def real_doc() -> dict[str, Any]:
    doc = yaml.safe_load(mf.default_manifest_path().read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def _write(path: Path, doc: Any) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def _entry(doc: dict[str, Any], dataset_id: str) -> dict[str, Any]:
    entry = doc["datasets"][dataset_id]
    assert isinstance(entry, dict)
    return entry


# --- the real manifest and files ------------------------------------------------------


def test_manifest_lists_expected_datasets() -> None:
    entries = load_manifest()
    assert set(entries) == EXPECTED_IDS
    for dataset_id, entry in entries.items():
        assert isinstance(entry, DatasetEntry)
        assert entry.id == dataset_id
        assert entry.format in {"netcdf", "npz"}
        assert entry.source_kind == "package"
        assert all("units" in facts for facts in entry.variables.values())
        assert entry.licence and entry.citation and entry.grid


@pytest.mark.parametrize("dataset_id", sorted(EXPECTED_IDS))
def test_every_dataset_resolves_and_verifies(dataset_id: str) -> None:
    path = resolve(dataset_id)
    assert path.is_absolute() and path.is_file()
    assert sha256_file(path) == load_manifest()[dataset_id].sha256


def test_resolve_without_verify_returns_same_path() -> None:
    assert resolve("topobathy", verify=False) == resolve("topobathy")


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000  # > 2 MiB: several blocks
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sha256_file(str(path)) == hashlib.sha256(data).hexdigest()


def test_manifest_facts_match_files() -> None:
    """Spot-check the grid facts written in the manifest against the files."""
    import netCDF4

    with netCDF4.Dataset(resolve("hadisst_sst")) as ds:
        assert ds["sst"].shape == (1, 180, 360)
        assert ds["sst"].units == "degC"
        assert ds["lat"][0] > ds["lat"][-1]  # descending
        assert "academic research use only" in ds.comment
    with netCDF4.Dataset(resolve("e1_north_america")) as ds:
        assert ds["air_temperature"].shape == (240, 37, 49)
        assert ds["air_temperature"].units == "K"
        assert ds["time"].calendar == "360_day"
        assert not hasattr(ds["latitude"], "bounds")
    with np.load(resolve("jacksboro_fault_dem")) as dem:
        assert dem["elevation"].shape == (344, 403)
        assert dem["elevation"].dtype == np.int16
        assert float(dem["dx"]) == pytest.approx(1 / 1200)
        assert float(dem["ymin"]) > float(dem["ymax"])
        assert (float(dem["xmax"]) - float(dem["xmin"])) / float(dem["dx"]) == pytest.approx(403)
    with np.load(resolve("topobathy")) as topo:
        assert topo["topo"].shape == (91, 120)
        assert 234 < topo["longitude"].min() < topo["longitude"].max() < 238
        assert 48 < topo["latitude"].min() < topo["latitude"].max() < 50


# --- checksum and caching -------------------------------------------------------------


def test_wrong_sha256_raises(tmp_path: Path, real_doc: dict[str, Any]) -> None:
    _entry(real_doc, "e1_north_america")["sha256"] = "0" * 64
    path = _write(tmp_path / "manifest.yaml", real_doc)
    with pytest.raises(ManifestError) as info:
        resolve("e1_north_america", manifest=path)
    message = str(info.value)
    assert "e1_north_america" in message
    assert "sha256" in message or "checksum" in message
    assert "0" * 64 in message
    assert load_manifest()["e1_north_america"].sha256 in message  # actual digest
    assert "E1_north_america.nc" in message
    assert "\n" not in message
    # verify=False skips the check.
    assert resolve("e1_north_america", manifest=path, verify=False).is_file()


def test_corrupted_local_file_fails_checksum(tmp_path: Path) -> None:
    data = tmp_path / "field.npz"
    np.savez(data, x=np.arange(4.0))
    doc = {
        "datasets": {
            "local": {
                "description": "a local test file",
                "source": {"path": "field.npz"},  # relative to the manifest
                "format": "npz",
                "variables": {"x": {"units": "1"}},
                "grid": {"shape": [4]},
                "licence": "test",
                "citation": "test",
                "sha256": sha256_file(data),
            }
        }
    }
    path = _write(tmp_path / "m.yaml", doc)
    assert resolve("local", manifest=path) == data.resolve()
    with data.open("ab") as stream:  # size changes, so the digest cache misses
        stream.write(b"junk")
    with pytest.raises(ManifestError, match=r"local.*sha256"):
        resolve("local", manifest=path)


def test_digests_are_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = mf.sha256_file

    def counting(path: Any) -> str:
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(mf, "_DIGEST_CACHE", {})
    monkeypatch.setattr(mf, "sha256_file", counting)
    entries = load_manifest()
    for _ in range(3):
        resolve("hadisst_sst", manifest=entries)
    assert len(calls) == 1


# --- user errors ----------------------------------------------------------------------


def test_unknown_id_lists_known_ids() -> None:
    with pytest.raises(ManifestError) as info:
        resolve("no_such_dataset")
    message = str(info.value)
    assert "no_such_dataset" in message
    for dataset_id in EXPECTED_IDS:
        assert dataset_id in message
    assert isinstance(info.value, DownscaleError)


def test_missing_package_names_pip_distribution(tmp_path: Path, real_doc: dict[str, Any]) -> None:
    entry = _entry(real_doc, "e1_north_america")
    entry["source"] = {"package": "not_installed_sample_pkg", "path": "x.nc"}
    path = _write(tmp_path / "m.yaml", real_doc)
    with pytest.raises(ManifestError) as info:
        resolve("e1_north_america", manifest=path)
    message = str(info.value)
    assert "e1_north_america" in message
    assert "'not_installed_sample_pkg'" in message
    assert "pip install not-installed-sample-pkg" in message


def test_missing_iris_sample_data_names_distribution(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mf.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ManifestError, match=r"pip install iris-sample-data"):
        resolve("e1_north_america")


def test_missing_file_in_package(tmp_path: Path, real_doc: dict[str, Any]) -> None:
    _entry(real_doc, "topobathy")["source"]["path"] = "mpl-data/sample_data/nothere.npz"
    path = _write(tmp_path / "m.yaml", real_doc)
    with pytest.raises(ManifestError, match=r"nothere\.npz.*topobathy.*not found"):
        resolve("topobathy", manifest=path)


def test_url_source_is_not_downloaded(tmp_path: Path, real_doc: dict[str, Any]) -> None:
    _entry(real_doc, "topobathy")["source"] = {"url": "https://example.org/topobathy.npz"}
    path = _write(tmp_path / "m.yaml", real_doc)
    with pytest.raises(ManifestError, match=r"topobathy.*not supported.*path"):
        resolve("topobathy", manifest=path)


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda e: e.pop("sha256"), r"lacks required key\(s\) sha256"),
        (lambda e: e.pop("licence"), r"licence"),
        (lambda e: e.update(format="grib"), r"format 'grib'"),
        (lambda e: e.update(sha256="abc"), r"64 hex"),
        (lambda e: e.update(source={"package": "cartopy"}), r"source"),
        (lambda e: e.update(source="cartopy"), r"source"),
        (lambda e: e.update(variables={"sst": {"standard_name": "x"}}), r"units"),
        (lambda e: e.update(grid=[]), r"grid"),
    ],
)
def test_malformed_entry(
    tmp_path: Path, real_doc: dict[str, Any], mutate: Any, pattern: str
) -> None:
    mutate(_entry(real_doc, "hadisst_sst"))
    path = _write(tmp_path / "m.yaml", real_doc)
    with pytest.raises(ManifestError, match=pattern) as info:
        load_manifest(path)
    assert "hadisst_sst" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "datasets: [unclosed\n",  # YAML syntax error
        "- just\n- a list\n",  # not a mapping
        "other: {}\n",  # no datasets key
        "datasets:\n  x: 3\n",  # entry not a mapping
    ],
)
def test_malformed_manifest(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_manifest_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not found"):
        load_manifest(tmp_path / "absent.yaml")


# --- location -------------------------------------------------------------------------


def test_env_var_overrides_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, real_doc: dict[str, Any]
) -> None:
    real_path = mf.default_manifest_path()
    doc = {"datasets": {"only_sst": _entry(real_doc, "hadisst_sst")}}
    path = _write(tmp_path / "custom.yaml", doc)
    monkeypatch.setenv(mf.ENV_VAR, str(path))
    assert mf.default_manifest_path() == path
    assert set(load_manifest()) == {"only_sst"}
    assert resolve("only_sst").name == "HadISST1_SST_update.nc"
    with pytest.raises(ManifestError, match="only_sst"):
        resolve("hadisst_sst")
    # An explicit path still wins over the environment variable.
    assert set(load_manifest(real_path)) == EXPECTED_IDS


def test_env_var_to_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(mf.ENV_VAR, str(tmp_path / "nope.yaml"))
    with pytest.raises(ManifestError, match=mf.ENV_VAR):
        load_manifest()


def test_default_manifest_is_repo_or_packaged_file() -> None:
    path = mf.default_manifest_path()
    assert path.name == "data_manifest.yaml"
    assert path.is_file()
