"""Variables matched by meaning, units converted, spacing checked (issue 20, items 3 and 4).

Units and spacings are tested on their own; ``downscale run`` through the command line on
small files made from the session's tiny E1 checkpoint (air_temperature in K, coarse cells
of 5 x 7.5 degrees).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from conftest import VARIABLE, make_latlon_nc

from downscale.aggregate import area_weighted_block_mean, coarsen_field
from downscale.checkpoint import check_trained_for
from downscale.errors import CheckpointError
from downscale.grid import cell_areas
from downscale.io import open_field, write_netcdf
from downscale.main import main as cli_main
from downscale.metrics import conservation_error
from downscale.spacing import GridSpacing, coarse_spacing
from downscale.units import unit_conversion

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- units --------------------------------------------------------------------------------
def test_celsius_and_kelvin_convert_both_ways_exactly() -> None:
    conversion = unit_conversion("degC", "K")
    assert conversion is not None
    assert (conversion.scale, conversion.offset) == (1.0, 273.15)
    values = np.array([-40.0, 0.0, 21.5])
    np.testing.assert_allclose(conversion.to_model(values), values + 273.15, rtol=0, atol=1e-12)
    np.testing.assert_allclose(conversion.from_model(conversion.to_model(values)), values,
                               rtol=0, atol=1e-12)
    same = unit_conversion("K", "kelvin")  # the same unit spelt otherwise: no change
    assert same is not None and same.is_identity
    difference = unit_conversion("degC", "K", difference=True)
    assert difference is not None and difference.offset == 0.0


def test_a_depth_of_water_converts_to_a_mass_only_when_the_standard_names_say_so() -> None:
    assert unit_conversion("mm day-1", "kg m-2 s-1") is None  # no density assumed
    rate = unit_conversion("mm day-1", "kg m-2 s-1", source_standard_name="lwe_precipitation_rate",
                           target_standard_name="precipitation_flux")
    assert rate is not None
    np.testing.assert_allclose(rate.to_model(np.array([86400.0])), [1.0], rtol=1e-12)
    back = unit_conversion("kg m-2 s-1", "mm day-1", source_standard_name="precipitation_flux",
                           target_standard_name="lwe_precipitation_rate")
    assert back is not None
    np.testing.assert_allclose(back.to_model(np.array([1.0])), [86400.0], rtol=1e-12)
    assert unit_conversion("m", "K") is None and unit_conversion("furlongs!", "K") is None


def test_a_checkpoint_applies_to_a_variable_of_another_name_with_its_standard_name() -> None:
    saved = {"hyper_parameters": {"factor": 4},
             "downscale_data": {"variable": "air_temperature", "units": "K",
                                "standard_name": "air_temperature"}}
    check_trained_for(saved, "m.ckpt", variable="ta", standard_name="air_temperature")
    with pytest.raises(CheckpointError, match="standard_name surface_temperature"):
        check_trained_for(saved, "m.ckpt", variable="air_temperature",
                          standard_name="surface_temperature")
    with pytest.raises(CheckpointError, match="give 'ta' the standard_name air_temperature"):
        check_trained_for(saved, "m.ckpt", variable="ta")
    # Units: the same ones only, unless the caller converts them (run does).
    with pytest.raises(CheckpointError, match="Convert the input to K"):
        check_trained_for(saved, "m.ckpt", units="degC")
    conversion = check_trained_for(saved, "m.ckpt", units="degC", convert_units=True)
    assert conversion is not None and conversion.offset == 273.15


# -- spacing --------------------------------------------------------------------------------
def test_spacing_of_a_fine_grid_times_the_factor_is_the_coarse_one(
        coarse_nc: Path) -> None:
    coarse = open_field(coarse_nc, VARIABLE)
    spacing = coarse_spacing(coarse)
    assert spacing.dims == ("lat", "lon") and spacing.widths == pytest.approx((5.0, 7.5))
    assert spacing.matches(GridSpacing(("lat", "lon"), (5.0 * 1.005, 7.5), (0.0, 0.0)))
    assert not spacing.matches(GridSpacing(("lat", "lon"), (2.5, 3.75), (0.0, 0.0)))
    # A projected grid of about the same metres matches (within 10 %), another does not.
    assert spacing.matches(GridSpacing(("y", "x"), spacing.metres, spacing.metres))
    assert not spacing.matches(GridSpacing(("y", "x"), (9e4, 9e4), (9e4, 9e4)))


# -- downscale run ------------------------------------------------------------------------
def _run(*args: str | Path) -> None:
    cli_main(["run", *map(str, args), "--workers", "0", "--no-progress"])


def _error_line(capsys: pytest.CaptureFixture[str], *args: str | Path) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        _run(*args)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("downscale: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def kelvin(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path, coarse_nc: Path
           ) -> xr.Dataset:
    """The run of the checkpoint on its own variable (K), loaded."""
    out = tmp_path_factory.mktemp("kelvin") / "fine.nc"
    _run("--checkpoint", checkpoint, "--input", coarse_nc, "--output", out)
    with xr.open_dataset(out) as ds:
        return ds.load()


def _variant(coarse_nc: Path, path: Path, change: Any) -> Path:
    with xr.open_dataset(coarse_nc) as ds:
        change(ds.load()).to_netcdf(path)
    return path


def test_ta_is_downscaled_by_an_air_temperature_model_and_keeps_its_name(
        checkpoint: Path, coarse_nc: Path, kelvin: xr.Dataset, tmp_path: Path) -> None:
    ta = _variant(coarse_nc, tmp_path / "ta.nc", lambda ds: ds.rename({VARIABLE: "ta"}))
    _run("--checkpoint", checkpoint, "--input", ta, "--output", tmp_path / "ta_fine.nc")
    with xr.open_dataset(tmp_path / "ta_fine.nc") as ds:
        assert VARIABLE not in ds and ds["ta"].attrs["standard_name"] == "air_temperature"
        np.testing.assert_array_equal(ds["ta"].values, kelvin[VARIABLE].values)


def test_celsius_input_is_converted_and_the_output_is_in_celsius_and_conserves(
        checkpoint: Path, coarse_nc: Path, kelvin: xr.Dataset, tmp_path: Path) -> None:
    def to_celsius(ds: xr.Dataset) -> xr.Dataset:
        attrs = {**ds[VARIABLE].attrs, "units": "degC"}
        return ds.assign({VARIABLE: (ds[VARIABLE] - 273.15).assign_attrs(attrs)})

    celsius = _variant(coarse_nc, tmp_path / "celsius.nc", to_celsius)
    _run("--checkpoint", checkpoint, "--input", celsius, "--output", tmp_path / "c_fine.nc")
    with xr.open_dataset(tmp_path / "c_fine.nc") as fine, xr.open_dataset(celsius) as coarse:
        assert fine[VARIABLE].attrs["units"] == "degC"
        assert fine.attrs["downscale_units_conversion"] == "degC converted to K and back"
        values = fine[VARIABLE].values.astype(np.float64)
        np.testing.assert_allclose(values, kelvin[VARIABLE].values - 273.15, rtol=0, atol=1e-4)
        err = conservation_error(values, coarse[VARIABLE].values, cell_areas(fine).values, 4)
    assert err.max_abs < 1e-4  # degC; float32 output of values near 290 K


@pytest.mark.parametrize(("attrs", "fragments"), [
    ({"units": "m"}, ("{path}: air_temperature is in m", "cannot be converted to K",
                      "Convert the input to K")),
    ({"standard_name": "sea_surface_temperature"}, (
        "standard_name air_temperature", "standard_name sea_surface_temperature")),
], ids=["units with no conversion", "another quantity of the same name"])
def test_what_the_model_cannot_take_is_refused_in_one_line(
        attrs: dict[str, str], fragments: tuple[str, ...], checkpoint: Path, coarse_nc: Path,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _variant(coarse_nc, tmp_path / "other.nc", lambda ds: ds.assign(
        {VARIABLE: ds[VARIABLE].assign_attrs(**attrs)}))
    line = _error_line(capsys, "--checkpoint", checkpoint, "--input", path, "--output",
                       tmp_path / "x.nc")
    for fragment in (str(checkpoint), *fragments):
        assert fragment.format(path=path) in line
    assert not (tmp_path / "x.nc").exists()


def test_an_input_at_another_spacing_is_refused_in_one_line(
        checkpoint: Path, e1_path: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    fine = open_field(e1_path, VARIABLE).isel(time=slice(0, 2), lat=slice(0, 36),
                                              lon=slice(0, 48))
    half = write_netcdf(coarsen_field(fine, VARIABLE, (2, 2)).compute(), tmp_path / "half.nc")
    line = _error_line(capsys, "--checkpoint", checkpoint, "--input", half, "--output",
                       tmp_path / "x.nc")
    for fragment in (str(checkpoint), "5 x 7.5 degrees", str(half), "2.5 x 3.75 degrees",
                     "--regrid conservative"):
        assert fragment in line
    assert not (tmp_path / "x.nc").exists()


def test_a_one_degree_file_is_refused_unless_any_spacing(
        checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_latlon_nc(tmp_path / "one.nc", nlat=8, nlon=8, variable=VARIABLE)
    line = _error_line(capsys, "--checkpoint", checkpoint, "--input", path, "--output",
                       tmp_path / "x.nc")
    assert "1 x 1 degrees" in line
    _run("--checkpoint", checkpoint, "--input", path, "--output", tmp_path / "x.nc",
         "--any-spacing")
    with xr.open_dataset(tmp_path / "x.nc") as ds:
        assert "1 x 1 degrees" in ds.attrs["downscale_spacing"]


def test_regrid_conservative_remaps_onto_the_model_spacing_and_conserves_against_it(
        checkpoint: Path, tmp_path: Path) -> None:
    pytest.importorskip("xarray_regrid")
    rng = np.random.default_rng(0)
    path = make_latlon_nc(tmp_path / "half.nc", lat=np.arange(40) * 0.5 + 40.25,
                          lon=np.arange(60) * 0.5 + 10.25, nt=2, variable=VARIABLE,
                          data=250.0 + 50.0 * rng.random((2, 40, 60)))
    out = tmp_path / "out" / "fine.nc"
    out.parent.mkdir()
    _run("--checkpoint", checkpoint, "--input", path, "--output", out, "--regrid",
         "conservative")
    (remapped,) = (tmp_path / "out" / ".downscale_regrid").glob("*/half.nc")
    source = open_field(path, VARIABLE)
    with xr.open_dataset(remapped) as coarse, xr.open_dataset(out) as fine:
        # The remap is xarray-regrid's; here it is an exact area-weighted mean (the 0.5
        # degree cells nest in the 5 x 7.5 degree ones).
        assert coarse[VARIABLE].shape == (2, 4, 4)
        expected, _ = area_weighted_block_mean(source[VARIABLE].values.astype(np.float64),
                                               cell_areas(source).values, (10, 15))
        np.testing.assert_allclose(coarse[VARIABLE].values, expected, rtol=1e-6)
        err = conservation_error(fine[VARIABLE].values.astype(np.float64),
                                 coarse[VARIABLE].values, cell_areas(fine).values, 4)
        assert fine[VARIABLE].shape == (2, 16, 16) and err.max_rel < 1e-6
        assert str(remapped) in fine.attrs["downscale_regrid"]
        assert "--regrid conservative" in fine.attrs["history"]
    # A rerun finds the remapped input unchanged, and the output complete.
    before = out.stat().st_mtime_ns
    _run("--checkpoint", checkpoint, "--input", path, "--output", out, "--regrid",
         "conservative")
    assert out.stat().st_mtime_ns == before


def test_predict_takes_ta_by_its_standard_name(checkpoint: Path, e1_path: Path,
                                               tmp_path: Path) -> None:
    from conftest import TINY

    with xr.open_dataset(e1_path) as ds:
        ds.isel(time=slice(0, 6)).rename({VARIABLE: "ta"}).to_netcdf(tmp_path / "ta.nc")
    out = tmp_path / "ta_fine.nc"
    cli_main(["predict", "--config", TINY, "--data.path", str(tmp_path / "ta.nc"),
              "--data.variable", "ta", "--ckpt_path", str(checkpoint),
              "--prediction_writer.output", str(out),
              "--trainer.default_root_dir", str(tmp_path)])
    with xr.open_dataset(out) as ds:
        assert "ta" in ds and ds["ta"].attrs["standard_name"] == "air_temperature"
