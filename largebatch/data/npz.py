"""`.npz` data files are untrusted input: every member is checked on the driver, before any process starts.

`scan_npz` reads each member's .npy header (object arrays are refused, never unpickled; sizes are bounded before a
byte is inflated), then streams the data in bounded chunks: features must be numeric and finite, labels whole
numbers in 0..MAX_CLASSES-1, and the four arrays must agree in length and example shape. The trial loads the same
file after the same scan, so what `validate` accepts is what the workers train on. A scan is kept per process for
the file's (path, size, mtime), so resolving many trials of one study reads the file once.
"""
from __future__ import annotations

import math
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from largebatch.data.idx import check_data_size
from largebatch.errors import BadInput

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
MAX_CLASSES = 100_000  # the output layer is num_classes wide: a stray label of 10**9 must not allocate it
MAX_MEMBERS = 256  # a .npz of the four arrays (and a few extras); a zip of thousands of entries is not one
CHUNK_BYTES = 8 * 2**20  # what one streaming read holds in memory
_FIX = "save it again with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...) of numeric arrays"


@dataclass(frozen=True)
class NpzInfo:
    n_train: int
    n_test: int
    example_shape: tuple[int, ...]  # one example, as stored: (D,), (H, W) or (C, H, W)
    num_classes: int  # the largest label of either split, plus one


def npz_file(path: str | None) -> Path:
    """`path` itself, or the single .npz inside the folder `path` (what an s3:// prefix is fetched to)."""
    if path is None:
        raise BadInput("dataset 'npz' needs a path to a .npz file with x_train, y_train, x_test, y_test",
                       field="path")
    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob("*.npz"))
        if len(found) != 1:
            raise BadInput(f"folder holds {len(found)} .npz files, expected exactly one; pass the file itself",
                           source=str(p))
        p = found[0]
    if not p.is_file():
        raise BadInput("no such .npz file; give the path of a .npz file (data.path)", source=str(p))
    return p


def open_npz(p: Path):
    try:
        if not zipfile.is_zipfile(p):  # an .npy, a pickle, a text file: np.load would return or refuse each its way
            raise BadInput(f"not a .npz file (a zip of .npy arrays); {_FIX}", source=str(p))
        return np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise BadInput(f"cannot read as .npz ({e}); {_FIX}", source=str(p)) from None


def _read_header(f: BinaryIO, key: str, p: Path) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise BadInput(f"{key}: cannot read its header ({e}); {_FIX}", source=str(p)) from None
    return tuple(int(n) for n in shape), bool(fortran), dtype


def _header(z, member: str, p: Path) -> tuple[tuple[int, ...], bool, np.dtype]:
    """A member's shape, order and dtype from its header alone: object arrays and oversized arrays refused."""
    key = member[:-4] if member.endswith(".npy") else member
    try:
        f = z.zip.open(member)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise BadInput(f"{key}: cannot read ({e}); {_FIX}", source=str(p)) from None
    with f:
        shape, fortran, dtype = _read_header(f, key, p)
    if dtype.hasobject:
        raise BadInput(f"{key} is an object array (dtype {dtype}, a pickle), which is never loaded; {_FIX}",
                       source=str(p))
    check_data_size(math.prod(shape) * dtype.itemsize, p, f"{key} {shape} {dtype}")
    return shape, fortran, dtype


def _chunks(z, key: str, p: Path, shape: tuple[int, ...], dtype: np.dtype):
    """The member's data as flat arrays of at most CHUNK_BYTES, in file order; a short member is refused."""
    want = math.prod(shape) * dtype.itemsize
    step = max(1, CHUNK_BYTES // max(1, dtype.itemsize)) * max(1, dtype.itemsize)
    got = 0
    try:
        with z.zip.open(f"{key}.npy") as f:
            _read_header(f, key, p)
            while got < want:
                buf = f.read(min(step, want - got))
                if not buf:
                    break
                got += len(buf)
                if len(buf) % dtype.itemsize:
                    raise BadInput(f"{key}: truncated data; {_FIX}", source=str(p))
                yield np.frombuffer(buf, dtype=dtype)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise BadInput(f"{key}: cannot read its data ({e}); {_FIX}", source=str(p)) from None
    if got != want:
        raise BadInput(f"{key}: its header says {shape} ({want} bytes) but the file holds {got}; the file is "
                       f"truncated or corrupt, {_FIX}", source=str(p))


def _numeric(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)


def check_features(chunk: np.ndarray, key: str, p: Path, start: int = 0, row: int = 0) -> None:
    """Finite values only (NaN or inf would reach the workers and fail every trial); `start` is the chunk's offset
    in elements and `row` the elements per example, to name the first bad example (0: not named)."""
    if np.issubdtype(chunk.dtype, np.floating):
        bad = ~np.isfinite(chunk)
        if bad.any():
            i = int(np.argmax(bad)) + start
            where = f" (first at example {i // row}, value {chunk[i - start].item()})" if row else ""
            raise BadInput(f"{key} has NaN or infinite values{where}; replace or drop those examples",
                           source=str(p))


class LabelRange:
    """Streams a label array: whole numbers in 0..MAX_CLASSES-1; keeps the largest."""

    def __init__(self, key: str, p: Path):
        self.key, self.p, self.max = key, p, -1

    def update(self, y: np.ndarray) -> None:
        key, p = self.key, str(self.p)
        if not len(y):
            return
        if not np.issubdtype(y.dtype, np.integer):
            whole = np.isfinite(y) & (np.mod(y, 1) == 0)
            if not whole.all():
                v = y[int(np.argmax(~whole))]
                raise BadInput(f"{key} must hold whole-number class labels 0..K-1, got {v.item()} (dtype {y.dtype}); "
                               f"store the class indices as integers", source=p)
        lo, hi = y.min(), y.max()
        if lo < 0:
            raise BadInput(f"{key} has negative labels (min {lo}); classes must be 0..K-1", source=p)
        if hi >= MAX_CLASSES:
            raise BadInput(f"{key} has label {int(hi) if hi == int(hi) else hi}, over the {MAX_CLASSES} classes "
                           f"allowed; labels must be the class indices 0..K-1", source=p)
        self.max = max(self.max, int(hi))


def check_headers(z, p: Path) -> dict[str, tuple[tuple[int, ...], bool, np.dtype]]:
    """Every member's header (any object array refused), the four keys present, their dtypes and shapes."""
    names = z.zip.namelist()
    if len(names) > MAX_MEMBERS:
        raise BadInput(f"the file has {len(names)} members, over the {MAX_MEMBERS} allowed; {_FIX}", source=str(p))
    missing = [k for k in NPZ_KEYS if k not in z.files]
    if missing:
        shown = ", ".join(z.files[:20]) or "nothing"
        raise BadInput(f"missing key {', '.join(missing)}; the file has: {shown}; {_FIX}", source=str(p))
    heads = {}
    for member in names:
        if member.endswith(".npy"):
            heads[member[:-4]] = _header(z, member, p)
    for k in NPZ_KEYS:
        shape, _, dtype = heads[k]
        if not _numeric(dtype):
            raise BadInput(f"{k} must be numeric (integers or floats), got dtype {dtype}; {_FIX}", source=str(p))
        if k.startswith("y") and len(shape) != 1:
            raise BadInput(f"{k} must be 1-D integer class labels, got shape {shape}; {_FIX}", source=str(p))
        if k.startswith("x") and len(shape) not in (2, 3, 4):
            raise BadInput(f"{k} must be (N, D), (N, H, W) or (N, C, H, W), got shape {shape}; {_FIX}",
                           source=str(p))
        if k.startswith("x") and 0 in shape[1:]:
            raise BadInput(f"{k} has empty examples, shape {shape}; {_FIX}", source=str(p))
    (xtr, _, _), (ytr, _, _) = heads["x_train"], heads["y_train"]
    (xte, _, _), (yte, _, _) = heads["x_test"], heads["y_test"]
    if xtr[0] != ytr[0] or xte[0] != yte[0] or ytr[0] == 0 or yte[0] == 0:
        raise BadInput(f"x_train/y_train ({xtr[0]}/{ytr[0]}) and x_test/y_test ({xte[0]}/{yte[0]}) must be non-empty "
                       f"and of equal length", source=str(p))
    if xtr[1:] != xte[1:]:
        raise BadInput(f"x_train examples {xtr[1:]} and x_test examples {xte[1:]} differ; give both splits the "
                       f"same example shape", source=str(p))
    return heads


def _scan(p: Path) -> NpzInfo:
    with open_npz(p) as z:
        heads = check_headers(z, p)
        labels = {}
        for k in NPZ_KEYS:
            shape, fortran, dtype = heads[k]
            if k.startswith("x"):
                row = 0 if fortran else math.prod(shape[1:])
                done = 0
                for chunk in _chunks(z, k, p, shape, dtype):
                    check_features(chunk, k, p, done, row)
                    done += len(chunk)
            else:
                labels[k] = LabelRange(k, p)
                for chunk in _chunks(z, k, p, shape, dtype):
                    labels[k].update(chunk)
    x = heads["x_train"][0]
    return NpzInfo(n_train=x[0], n_test=heads["x_test"][0][0], example_shape=x[1:],
                   num_classes=max(r.max for r in labels.values()) + 1)


_scanned: dict[tuple, NpzInfo] = {}
_lock = threading.Lock()


def scan_npz(path: str | None) -> NpzInfo:
    """Check the whole file (see the module docstring); the result is kept for this file's (path, size, mtime)."""
    p = npz_file(path)
    try:
        st = p.stat()
    except OSError as e:
        raise BadInput(f"cannot read ({e.strerror}); give a readable .npz file (data.path)", source=str(p)) from None
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    with _lock:
        if key in _scanned:
            return _scanned[key]
    info = _scan(p)
    with _lock:
        if len(_scanned) > 64:
            _scanned.clear()
        _scanned[key] = info
    return info
