"""Reading and writing NetCDF: lazy Dask-backed opening, validation, atomic CF output.

Opening returns a *normalised* field (see :mod:`downscale.grid`): a one-variable
``xr.Dataset`` whose variable has dimensions ``(time, lat, lon)`` (or ``(time, y, x)``),
ascending latitude, one longitude convention, ``lat_bnds``/``lon_bnds`` coordinates (from
the file's CF ``bounds`` variables, inferred where the file has none) and missing values
as NaN. Nothing is loaded: the data stay a Dask array until computed.

Every problem the user can fix raises :class:`~downscale.errors.InputError` whose message
is one line: the file, the variable, the problem and what to do.

One job per module:

* :mod:`downscale.io.open`: open one variable from one or many files, lazily, and join
  them in time; the variables a file offers.
* :mod:`downscale.io.normalise`: CF normalisation onto the internal form above.
* :mod:`downscale.io.truncation`: catch truncated NetCDF-3 files before netCDF-C reads
  their missing tail as fill values.
* :mod:`downscale.io.write`: atomic writing (temporary name, verify, rename), output
  folders, CF ``history`` lines.
* :mod:`downscale.io.paths`: the path type accepted, library errors without the path.

Value checks live in :mod:`downscale.validate`; ``check_values`` and
``SUSPICIOUS_MAGNITUDE`` stay importable from here.
"""

from downscale.io.normalise import normalise_field as normalise_field
from downscale.io.open import gridded_variables as gridded_variables
from downscale.io.open import gridded_variables_in as gridded_variables_in
from downscale.io.open import open_field as open_field
from downscale.io.paths import PathLike as PathLike
from downscale.io.write import check_output_target as check_output_target
from downscale.io.write import commit_output as commit_output
from downscale.io.write import history_line as history_line
from downscale.io.write import make_output_folder as make_output_folder
from downscale.io.write import output_errors as output_errors
from downscale.io.write import remove_output as remove_output
from downscale.io.write import temporary_path as temporary_path
from downscale.io.write import write_netcdf as write_netcdf
from downscale.validate import SUSPICIOUS_MAGNITUDE as SUSPICIOUS_MAGNITUDE
from downscale.validate import check_values as check_values
