"""The truncation check: catch cut-off NetCDF-3 files that netCDF-C would read as fill values."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from downscale.errors import InputError

_NC_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 4, 6: 8, 7: 1, 8: 2, 9: 4, 10: 8, 11: 8}


class _Header:
    """Just enough of a NetCDF-3 (CDF-1/2/5) header parser to compute the file's size."""

    def __init__(self, buf: bytes) -> None:
        self.buf, self.pos, self.version = buf, 4, buf[3]

    def read(self, size: int) -> int:
        if self.pos + size > len(self.buf):
            raise EOFError
        value = int.from_bytes(self.buf[self.pos:self.pos + size], "big")
        self.pos += size
        return value

    def count(self) -> int:
        return self.read(8 if self.version == 5 else 4)

    def skip(self, nbytes: int) -> None:
        self.pos += -(-nbytes // 4) * 4
        if self.pos > len(self.buf):
            raise EOFError

    def attributes(self) -> None:
        self.read(4)
        for _ in range(self.count()):
            self.skip(self.count())
            nc_type = self.read(4)
            self.skip(self.count() * _NC_TYPE_SIZES.get(nc_type, 1))

    def required_size(self) -> int | None:
        """Bytes a complete file needs, or None for streamed files."""
        numrecs = self.count()
        if numrecs == (1 << (64 if self.version == 5 else 32)) - 1:
            return None
        self.read(4)
        dims = []
        for _ in range(self.count()):
            self.skip(self.count())
            dims.append(self.count())
        self.attributes()
        self.read(4)
        variables = []
        for _ in range(self.count()):
            self.skip(self.count())
            dimids = [self.count() for _ in range(self.count())]
            self.attributes()
            size = _NC_TYPE_SIZES.get(self.read(4), 1)
            self.count()  # vsize, unreliable for large variables
            begin = self.read(4 if self.version == 1 else 8)
            record = bool(dimids) and dims[dimids[0]] == 0
            size *= int(np.prod([dims[d] for d in dimids[int(record):]], dtype=np.int64))
            variables.append((begin, size, record))
        recs = [size for _, size, record in variables if record]
        recsize = recs[0] if len(recs) == 1 else sum(-(-s // 4) * 4 for s in recs)
        ends = [begin + size + (max(numrecs - 1, 0) * recsize if record else 0)
                for begin, size, record in variables if size and (numrecs or not record)]
        return max(ends, default=self.pos)


def _check_not_truncated(path: Path, variable: str) -> None:
    """Catch truncated NetCDF-3 files, which netCDF-C opens and reads as fill values.

    (NetCDF-4/HDF5 files record their length, so the library itself rejects those.)
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            buf = handle.read(min(size, 16 << 20))
    except OSError:
        return  # unreadable: the library's error says why
    if len(buf) < 4 or buf[:3] != b"CDF" or buf[3] not in (1, 2, 5):
        return
    try:
        required = _Header(buf).required_size()
    except EOFError:
        if len(buf) < size:
            return  # a header over 16 MiB: leave it to the library
        raise InputError("the file is truncated (its header is incomplete)", path=path,
                         variable=variable, hint="re-download or re-create it") from None
    except (IndexError, ValueError):
        return
    if required is not None and size < required:
        raise InputError(f"the file is truncated ({size} of {required} bytes)", path=path,
                         variable=variable, hint="re-download or re-create it")
