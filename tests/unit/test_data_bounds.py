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


# ---- the driver's scan (data/npz.py): every member, before any process starts; the counting path included ----

from largebatch.data import dataset_size  # noqa: E402


@pytest.mark.parametrize("edit, match", [
    (dict(y_train=np.array([1] * 8, dtype=object)), "y_train is an object array"),
    (dict(y_test=np.array([1] * 8, dtype=object)), "y_test is an object array"),
    (dict(notes=np.array(["a", {"b": 1}], dtype=object)), "notes is an object array"),
    (dict(y_train=np.array(5)), r"y_train must be 1-D .* got shape \(\)"),
    (dict(y_train=np.full(8, 0.5)), r"y_train must hold whole-number class labels .* got 0.5"),
    (dict(y_test=np.full(8, np.nan)), r"y_test must hold whole-number class labels .* got nan"),
    (dict(y_test=-np.ones(8, np.int64)), r"y_test has negative labels \(min -1\)"),
    (dict(y_test=np.full(8, 10**9)), "y_test has label 1000000000, over the 100000 classes"),
    (dict(x_test=np.full((8, 4), np.inf, np.float32)), r"x_test has NaN or infinite values \(first at example 0"),
    (dict(x_train=np.zeros((8, 4), np.complex64)), "x_train must be numeric"),
    (dict(x_train=np.zeros(8, np.float32)), r"x_train must be \(N, D\)"),
    (dict(x_test=np.zeros((8, 5), np.float32)), r"x_train examples \(4,\) and x_test examples \(5,\) differ"),
    (dict(y_train=np.arange(7) % 2), r"x_train/y_train \(8/7\)"),
])
def test_the_count_checks_the_whole_file(tmp_path, edit, match):
    arrays = {**_good(), **edit}
    p = _npz(tmp_path, **arrays)
    with pytest.raises(BadInput, match=match) as e:
        dataset_size("npz", str(p))  # what validate/train/tune call on the driver
    assert str(p) in str(e.value)
    with pytest.raises(BadInput, match=match):
        load_dataset("npz", str(p))  # and the trial refuses it the same way


def test_nan_features_are_found_in_a_later_chunk(tmp_path, monkeypatch):
    from largebatch.data import npz

    monkeypatch.setattr(npz, "CHUNK_BYTES", 64)  # 16 floats a read: the NaN sits in the 5th chunk
    arrays = _good(32)
    arrays["x_train"][17, 2] = np.nan
    with pytest.raises(BadInput, match=r"first at example 17, value nan"):
        dataset_size("npz", str(_npz(tmp_path, **arrays)))


def test_a_truncated_member_is_refused(tmp_path):
    p = _npz(tmp_path, **_good())
    with zipfile.ZipFile(p) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members["x_train.npy"] = members["x_train.npy"][:-16]
    with zipfile.ZipFile(p, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    with pytest.raises(BadInput, match="truncated or corrupt"):
        dataset_size("npz", str(p))


def test_a_good_file_is_counted_once_per_change(tmp_path):
    p = _npz(tmp_path, **_good(8))
    assert dataset_size("npz", str(p)) == 8
    arrays = _good(8)
    arrays["x_train"][0, 0] = np.nan
    np.savez(p, **arrays)
    import os

    os.utime(p, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))  # a new mtime: the kept scan is not reused
    with pytest.raises(BadInput, match="NaN"):
        dataset_size("npz", str(p))


def test_fashion_labels_out_of_range_are_found_by_the_count(tmp_path):
    def idx(arr, dtype_code=0x08):
        return _idx_header(arr.shape) + arr.astype(np.uint8).tobytes()

    from largebatch.data.datasets import FASHION_FILES

    files = {"x_train": np.zeros((4, 2, 2)), "y_train": np.array([0, 1, 12, 3]),
             "x_test": np.zeros((2, 2, 2)), "y_test": np.array([0, 1])}
    for k, f in FASHION_FILES.items():
        (tmp_path / f).write_bytes(gzip.compress(idx(files[k])))
    with pytest.raises(BadInput, match="train labels go up to 12"):
        dataset_size("fashion-mnist", str(tmp_path))


@pytest.mark.parametrize("content", [b"", b"x_train,y_train\n1,2\n", b"\x80\x04K\x01."],
                         ids=["empty", "text", "pickle"])
def test_a_file_that_is_not_a_zip_is_refused(tmp_path, content):
    p = tmp_path / "data.npz"
    p.write_bytes(content)
    with pytest.raises(BadInput, match="not a .npz file"):
        dataset_size("npz", str(p))


def test_an_npy_named_npz_is_refused(tmp_path):
    p = tmp_path / "data.npz"
    with open(p, "wb") as f:
        np.save(f, np.zeros((4, 4)))
    with pytest.raises(BadInput, match="not a .npz file"):
        dataset_size("npz", str(p))
