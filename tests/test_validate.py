"""Plausibility checks: physical bounds, sentinels, valid ranges, coverage, coordinate units."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import NcFactory, field_values
from test_io import assert_one_line

from downscale.errors import InputError
from downscale.io import normalise_field, open_field
from downscale.main import main as cli_main
from downscale.validate import (
    PhysicalBounds,
    check_coverage,
    check_values,
    coordinate_scale,
    physical_bounds,
    suspicious,
)


# -- physical bounds from standard_name and units ---------------------------------------------
def test_bounds_follow_the_units_not_the_name() -> None:
    assert physical_bounds("air_temperature", "K") == PhysicalBounds(0.0, None, "K", True)
    celsius = physical_bounds("air_temperature", "degC")
    assert celsius is not None and celsius.lower == pytest.approx(-273.15)
    assert physical_bounds("surface_altitude", "km") == PhysicalBounds(-11.0, 9.0, "km")
    # Non-negative quantities keep 0 in any units, convertible or not.
    assert physical_bounds("precipitation_flux", "mm/day") == PhysicalBounds(0.0, None, "1")
    assert physical_bounds("specific_humidity", "g/kg") == PhysicalBounds(0.0, 1000.0, "g/kg")
    # Unknown quantities and units that do not fit the quantity: no bounds (not guessed).
    assert physical_bounds("tas_anomaly", "K") is None
    assert physical_bounds("air_temperature", "C") is None  # coulomb: HadISST's "C"
    assert physical_bounds("air_temperature", "not a unit") is None


def _field(values: np.ndarray, standard_name: str = "air_temperature", units: str = "K",
           name: str = "tas") -> xr.DataArray:
    nt, ny, nx = values.shape
    return xr.DataArray(values, name=name, dims=("time", "lat", "lon"),
                        coords={"time": np.array(["2000-01-01", "2000-01-02", "2000-01-03"][:nt],
                                                 dtype="datetime64[ns]"),
                                "lat": 40.5 + np.arange(ny), "lon": 10.5 + np.arange(nx)},
                        attrs={"standard_name": standard_name, "units": units})


@pytest.mark.parametrize(("bad", "fragments"), [
    (-9999.0, ("2 values equal to -9999 (a common fill value) look like an undeclared fill "
               "value (first at time=2000-01-02, lat=42.5, lon=13.5)", "_FillValue,tas,o,d,-9999")),
    (-32767.0, ("equal to -32767 (the int16 fill value)",)),
    (0.0, ("2 values at or below 0 K, impossible for air_temperature (first at "
           "time=2000-01-02, lat=42.5, lon=13.5: 0)",)),
    (1e20, ("values of magnitude 1e+20 look like undeclared fill values (1e+20, the CMIP "
            "fill value; 2 values, first at time=2000-01-02",)),
])
def test_impossible_values_are_refused_with_count_and_position(bad: float,
                                                               fragments: tuple[str, ...]
                                                               ) -> None:
    values = field_values(3, 4, 5)
    values[1, 2, 3] = values[2, 0, 0] = bad
    da = _field(values)
    with pytest.raises(InputError) as error:
        check_values(da, values, path="in.nc")
    for fragment in fragments:
        assert_one_line(error, "in.nc", "tas", fragment)
    assert suspicious(da, float(np.nanmin(values)), float(np.nanmax(values)), 0)
    check_values(da, values[0])  # the first step is clean
    assert not suspicious(da, float(values[0].min()), float(values[0].max()), 0)


def test_the_position_of_a_block_counts_from_its_offset() -> None:
    values = field_values(3, 4, 5)
    values[2, 1, 1] = -5.0
    with pytest.raises(InputError, match=r"time=2000-01-03, lat=41.5, lon=11.5: -5"):
        check_values(_field(values), values[2:], path="in.nc", offset={"time": 2})


def test_negative_precipitation_and_humidity_above_one_are_refused() -> None:
    rain = np.abs(field_values(2, 3, 3)) * 0.0
    rain[1, 0, 2] = -0.1
    with pytest.raises(InputError, match=r"1 value below 0, impossible for precipitation_flux"):
        check_values(_field(rain, "precipitation_flux", "mm/day", "pr"), rain, path="pr.nc")
    humidity = np.full((1, 2, 2), 0.01)
    humidity[0, 1, 1] = 1.5
    with pytest.raises(InputError, match=r"1 value above 1 kg/kg, impossible for specific_hum"):
        check_values(_field(humidity, "specific_humidity", "kg/kg", "hus"), humidity)


def test_plausible_sentinel_like_values_pass_where_the_quantity_allows_them() -> None:
    altitude = np.full((1, 3, 3), 120.0)
    altitude[0, 1, 1] = -999.0  # a depression below sea level, possible for surface_altitude
    check_values(_field(altitude, "surface_altitude", "m", "orog"), altitude)
    altitude[0, 1, 1] = -32767.0
    with pytest.raises(InputError, match="-32767"):
        check_values(_field(altitude, "surface_altitude", "m", "orog"), altitude)
    # In degC, -9999 is below absolute zero: both problems, the sentinel named first.
    celsius = np.full((1, 2, 2), 12.0)
    celsius[0, 0, 0] = -9999.0
    with pytest.raises(InputError, match="-9999"):
        check_values(_field(celsius, units="degC"), celsius)
    anomaly = np.full((1, 2, 2), -3.0)  # no standard_name: no bounds, no sentinel hits
    check_values(_field(anomaly, "", "K"), anomaly)


# -- CF valid range: outside is missing, and reported --------------------------------------------
def test_values_outside_valid_range_are_missing_and_counted(
        latlon_nc: NcFactory, caplog: pytest.LogCaptureFixture) -> None:
    data = field_values(2, 6, 8)
    data[0, 1, 1], data[1, 2, 2], data[1, 3, 3] = 150.0, 400.0, 401.0
    path = latlon_nc(nt=2, data=data, attrs={"valid_range": np.array([180.0, 340.0])})
    with caplog.at_level(logging.WARNING, logger="downscale"):
        field = open_field(path, "tas")
        open_field(path, "tas")  # counted and reported once per file
    values = field["tas"].values
    assert np.isnan(values).sum() == 3
    lines = [r.getMessage() for r in caplog.records if "valid range" in r.getMessage()]
    assert lines == [f"{path}: tas: 3 values outside the declared valid range [180, 340] are "
                     "treated as missing (CF valid_min/valid_max/valid_range)."]
    check_values(field["tas"], values)  # what is left is plausible


def test_valid_min_alone_and_packed_data(tmp_path: Path) -> None:
    raw = np.array([[[-5, 0, 100, 200]] * 2], dtype=np.int16)
    ds = xr.Dataset({"pr": (("time", "lat", "lon"), raw, {
        "units": "mm/day", "standard_name": "precipitation_flux", "valid_min": np.int16(0),
        "scale_factor": 0.5, "add_offset": 1.0})}, coords={
        "time": ("time", [0.0], {"units": "days since 2000-01-01"}),
        "lat": ("lat", [1.0, 2.0], {"units": "degrees_north"}),
        "lon": ("lon", [1.0, 2.0, 3.0, 4.0], {"units": "degrees_east"})})
    ds.to_netcdf(tmp_path / "packed.nc")
    values = open_field(tmp_path / "packed.nc", "pr")["pr"].values
    # valid_min 0 is in packed units: 0 * 0.5 + 1 = 1 mm/day unpacked.
    np.testing.assert_array_equal(np.isnan(values[0, 0]), [True, False, False, False])
    np.testing.assert_allclose(values[0, 0, 1:], [1.0, 51.0, 101.0])


# -- all missing ---------------------------------------------------------------------------------
def test_all_missing_warns_and_strict_refuses(caplog: pytest.LogCaptureFixture) -> None:
    empty = _field(np.full((3, 2, 2), np.nan))
    with caplog.at_level(logging.WARNING, logger="downscale"):
        counts = check_coverage(empty, path="gone.nc")
    assert counts.tolist() == [0, 0, 0]
    assert caplog.records[-1].getMessage() == (
        "gone.nc: tas: all values are missing (NaN or _FillValue) in all 3 time steps; the "
        "output is missing there too.")
    with pytest.raises(InputError) as error:
        check_coverage(empty, path="gone.nc", strict=True)
    assert_one_line(error, "gone.nc", "tas", "all values are missing")


def test_a_missing_time_step_warns_and_strict_refuses(caplog: pytest.LogCaptureFixture) -> None:
    values = field_values(3, 2, 2)
    values[1] = np.nan
    field = _field(values)
    with caplog.at_level(logging.WARNING, logger="downscale"):
        assert check_coverage(field, path="gap.nc").tolist() == [4, 0, 4]
    assert "1 of 3 time steps have no valid value (first: time=2000-01-02)" in (
        caplog.records[-1].getMessage())
    with pytest.raises(InputError, match="1 of 3 time steps have no valid value"):
        check_coverage(field, path="gap.nc", strict=True)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="downscale"):
        check_coverage(_field(field_values(3, 2, 2)), path="full.nc")
    assert not caplog.records


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    try:
        cli_main(["run", *args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def test_run_warns_about_a_missing_input_and_refuses_it_with_strict(
        latlon_nc: NcFactory, checkpoint: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    path = latlon_nc("nan.nc", 8, 8, data=np.full((3, 8, 8), np.nan),
                     variable="air_temperature")
    common = ["--checkpoint", str(checkpoint), "--input", str(path), "--workers", "0",
              "--no-progress", "--any-spacing"]
    code, err = _run([*common, "--output", str(tmp_path / "strict.nc"), "--strict"], capsys)
    lines = [line for line in err.splitlines() if line.startswith("downscale: error:")]
    assert code == 2 and len(lines) == 1, err
    assert f"{path}: air_temperature: all values are missing" in lines[0]
    assert not (tmp_path / "strict.nc").exists()
    with caplog.at_level(logging.WARNING, logger="downscale"):
        code, err = _run([*common, "--output", str(tmp_path / "lenient.nc")], capsys)
    assert code == 0, err
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [f"{path}: air_temperature: all values are missing (NaN or _FillValue) "
                      "in all 3 time steps; the output is missing there too."]
    with xr.open_dataset(tmp_path / "lenient.nc") as ds:
        assert bool(ds["air_temperature"].isnull().all())


# -- coordinate units ----------------------------------------------------------------------------
def _fail(problem: str, hint: str) -> InputError:
    return InputError(problem, path="f.nc", variable="v", hint=hint)


def test_angles_must_be_degrees() -> None:
    for units in (None, "degrees_north", "degree_N", "degrees"):
        assert coordinate_scale(units, "lat", "lat", latlon=True, fail=_fail) == 1.0
    with pytest.raises(InputError, match=r"'lat' coordinate is in radians, not degrees.*"
                                         r"multiply by 57.29577951"):
        coordinate_scale("radians", "lat", "lat", latlon=True, fail=_fail)
    with pytest.raises(InputError, match="units 'm', not degrees"):
        coordinate_scale("m", "lon", "longitude", latlon=True, fail=_fail)


def test_projected_axes_need_a_length_and_km_become_metres() -> None:
    assert coordinate_scale("m", "y", "y", latlon=False, fail=_fail) == 1.0
    assert coordinate_scale("km", "x", "x", latlon=False, fail=_fail) == 1000.0
    with pytest.raises(InputError, match="projected 'x' coordinate has no units"):
        coordinate_scale(None, "x", "x", latlon=False, fail=_fail)
    with pytest.raises(InputError, match="units 'degrees_east', not a length"):
        coordinate_scale("degrees_east", "x", "x", latlon=False, fail=_fail)


def test_radian_latitudes_are_refused_when_opened(latlon_nc: NcFactory) -> None:
    path = latlon_nc(lat=np.deg2rad(np.arange(6) + 40.5), lon=np.deg2rad(np.arange(8) + 10.5))
    import netCDF4

    with netCDF4.Dataset(path, "a") as nc:
        nc["lat"].units = "radians"
        nc["lon"].units = "radians"
    with pytest.raises(InputError) as error:
        open_field(path, "tas")
    assert_one_line(error, path, "tas", "the 'lat' coordinate is in radians, not degrees")


def test_kilometres_become_metres_with_their_bounds() -> None:
    da = xr.DataArray(np.ones((2, 3)), name="orog", dims=("y", "x"), coords={
        "y": ("y", [0.5, 1.5], {"units": "km"}), "x": ("x", [0.5, 1.5, 2.5], {"units": "km"})},
        attrs={"units": "m", "standard_name": "surface_altitude"})
    ds = normalise_field(da, bounds={"y": [[0, 1], [1, 2]]})
    np.testing.assert_allclose(ds["y"].values, [500.0, 1500.0])
    assert ds["y"].attrs["units"] == "m"
    np.testing.assert_allclose(ds["y_bnds"].values, [[0, 1000], [1000, 2000]])
    np.testing.assert_allclose(ds["x_bnds"].values[0], [0, 1000])
