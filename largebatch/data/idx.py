"""IDX files (the MNIST / Fashion-MNIST format, http://yann.lecun.com/exdb/mnist/), read with numpy.

Header: two zero bytes, a type code, the number of dimensions, then one big-endian uint32 per dimension; the
data follows, big-endian, row-major. Files may be gzip-compressed (detected by magic bytes, not by name).
"""
from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from largebatch.errors import BadInput

MAX_DATA_BYTES = 16 * 2**30  # one decoded array; more than this machine class holds is an error, not an OOM kill
_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


def _open(path: Path) -> BinaryIO:
    with open(path, "rb") as f:
        gz = f.read(2) == _GZIP_MAGIC
    return gzip.open(path, "rb") if gz else open(path, "rb")  # type: ignore[return-value]


def _read_header(f: BinaryIO, path: Path) -> tuple[np.dtype, tuple[int, ...]]:
    magic = f.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _DTYPES or magic[3] == 0:
        raise BadInput(f"not an IDX file (bad magic {magic.hex() or 'empty'}); re-download or reinstall it",
                       source=str(path))
    ndim = magic[3]
    raw = f.read(4 * ndim)
    if len(raw) < 4 * ndim:
        raise BadInput("IDX header is truncated; re-download or reinstall the file", source=str(path))
    return np.dtype(_DTYPES[magic[2]]), struct.unpack(f">{ndim}I", raw)


def check_data_size(nbytes: int, path: Path, what: str) -> None:
    """Refuse, before reading, an array larger than MAX_DATA_BYTES (a forged header, a compressed bomb)."""
    if nbytes > MAX_DATA_BYTES:
        raise BadInput(f"{what}: {nbytes / 2**30:.1f} GiB decoded, over the {MAX_DATA_BYTES // 2**30} GiB limit for "
                       f"one array; split the data or use a map-style Dataset task (docs/tasks.md)", source=str(path))


def read_idx_shape(path: str | Path) -> tuple[int, ...]:
    """The array shape from the header alone (reads a few bytes; used to count examples cheaply)."""
    path = Path(path)
    try:
        with _open(path) as f:
            return _read_header(f, path)[1]
    except (OSError, EOFError, zlib.error) as e:
        raise BadInput(f"cannot read IDX file ({e}); re-download or reinstall it", source=str(path)) from None


def read_idx(path: str | Path) -> np.ndarray:
    """The whole array, in native byte order."""
    path = Path(path)
    try:
        with _open(path) as f:
            dtype, shape = _read_header(f, path)
            want = math.prod(shape) * dtype.itemsize  # Python ints: a forged header cannot overflow this
            check_data_size(want, path, f"its header says {shape}")
            if not isinstance(f, gzip.GzipFile) and want > path.stat().st_size:
                raise BadInput(f"IDX header {shape} claims {want} data bytes but the file has {path.stat().st_size}; "
                               f"the file is truncated or corrupt, re-download or reinstall it", source=str(path))
            data = f.read(want + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise BadInput(f"cannot read IDX file ({e}); re-download or reinstall it", source=str(path)) from None
    if len(data) != want:
        raise BadInput(f"IDX file holds {len(data)} data bytes but its header {shape} says {want}; "
                       f"the file is truncated or corrupt, re-download or reinstall it", source=str(path))
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)
