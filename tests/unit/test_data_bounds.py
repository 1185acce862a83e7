"""Data files are untrusted input: bounded before they are read, refused in one line, never unpickled."""
from __future__ import annotations

import gzip
import io
import struct
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from largebatch.data import load_dataset
from largebatch.data.idx import read_idx
from largebatch.errors import BadInput


def _idx_header(shape) -> bytes:
    return bytes([0, 0, 0x08, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "gzip"])
def test_idx_header_claiming_more_than_any_memory_is_refused_before_reading(tmp_path, compressed):
    blob = _idx_header((2**31, 2**31, 2**31)) + b"\x00" * 64
    p = tmp_path / "x-idx3-ubyte"
    p.write_bytes(gzip.compress(blob) if compressed else blob)
    t0 = time.monotonic()
    with pytest.raises(BadInput, match="GiB limit"):
        read_idx(p)
    assert time.monotonic() - t0 < 2


def test_idx_header_claiming_more_than_the_file_holds(tmp_path):
    p = tmp_path / "x-idx3-ubyte"
    p.write_bytes(_idx_header((1000, 28, 28)) + b"\x00" * 100)
    with pytest.raises(BadInput, match="claims 784000 data bytes but the file has"):
        read_idx(p)


def _npz(tmp_path: Path, **arrays) -> Path:
    p = tmp_path / "data.npz"
    np.savez(p, **arrays)
    return p


def _good(n=8):
    return dict(x_train=np.zeros((n, 4), np.float32), y_train=np.arange(n) % 2,
                x_test=np.zeros((n, 4), np.float32), y_test=np.arange(n) % 2)


def test_object_arrays_are_refused_not_unpickled(tmp_path):
    arrays = _good()
    arrays["y_train"] = np.array([{"a": 1}] * 8, dtype=object)
    with pytest.raises(BadInput, match="object array"):
        load_dataset("npz", str(_npz(tmp_path, **arrays)))


def test_a_member_whose_shape_expands_beyond_the_limit_is_refused_before_inflating(tmp_path):
    p = _npz(tmp_path, **_good())
    # forge x_train: a header claiming (10**6, 10**6) float64 (8 TB) over a few bytes of data, stored compressed
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": (10**6, 10**6)})
    forged = buf.getvalue() + b"\x00" * 1024
    with zipfile.ZipFile(p) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members["x_train.npy"] = forged
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        for n, data in members.items():
            z.writestr(n, data)
    t0 = time.monotonic()
    with pytest.raises(BadInput, match=r"x_train \(1000000, 1000000\).*GiB limit"):
        load_dataset("npz", str(p))
    assert time.monotonic() - t0 < 2


def test_an_absurd_label_does_not_size_the_output_layer(tmp_path):
    arrays = _good()
    arrays["y_train"][0] = 10**9
    with pytest.raises(BadInput, match="label 1000000000, over the 100000 classes"):
        load_dataset("npz", str(_npz(tmp_path, **arrays)))


def test_non_finite_inputs_are_refused(tmp_path):
    arrays = _good()
    arrays["x_train"][3, 1] = np.nan
    with pytest.raises(BadInput, match="NaN or infinite"):
        load_dataset("npz", str(_npz(tmp_path, **arrays)))


def test_a_good_npz_still_loads(tmp_path):
    data = load_dataset("npz", str(_npz(tmp_path, **_good())))
    assert data.num_classes == 2 and tuple(data.x_train.shape) == (8, 4)
