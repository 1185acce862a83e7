"""Data: every DATASETS entry loads offline and normalises; IDX parsing fails loudly; batches are worker-invariant."""
from __future__ import annotations

import gzip
import shutil
import struct
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from largebatch.data import (
    DATASETS, TensorData, dataset_size, epoch_permutation, load_dataset, rank_batches,
)
from largebatch.data import datasets as ds
from largebatch.data.idx import read_idx, read_idx_shape
from largebatch.errors import BadInput

FASHION = Path(ds.FASHION_DEBIAN_DIR)
needs_fashion = pytest.mark.skipif(
    not (FASHION / ds.FASHION_FILES["y_train"]).is_file(), reason="Debian package dataset-fashion-mnist not installed")


def write_npz(path: Path, n_train=50, n_test=20, shape=(6, 6), classes=4, seed=0, **drop) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": rng.normal(5, 3, (n_train, *shape)).astype(np.float32),
        "y_train": rng.integers(0, classes, n_train),
        "x_test": rng.normal(5, 3, (n_test, *shape)).astype(np.float32),
        "y_test": rng.integers(0, classes, n_test),
    }
    arrays["y_train"][0] = classes - 1
    for k in drop:
        arrays.pop(k)
    np.savez(path, **arrays)
    return path


_cache: dict[str, TensorData] = {}


@pytest.fixture
def source(request, tmp_path):
    """(name, path) for each DATASETS entry; fashion-mnist reads the Debian package path."""
    name = request.param
    if name == "fashion-mnist" and not (FASHION / ds.FASHION_FILES["y_train"]).is_file():
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    path = str(write_npz(tmp_path / "d.npz")) if name == "npz" else None
    return name, path


def loaded(name: str, path: str | None) -> TensorData:
    if name == "npz":
        return load_dataset(name, path)
    if name not in _cache:  # fashion-mnist takes ~2 s to decompress; load it once per session
        _cache[name] = load_dataset(name, path)
    return _cache[name]


@pytest.mark.parametrize("source", DATASETS.names(), indirect=True)
def test_every_dataset_loads_normalised(source):
    name, path = source
    d = loaded(name, path)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64 and d.y_test.dtype == torch.int64
    assert d.x_train.shape[1:] == d.x_test.shape[1:] == d.input_shape
    assert len(d.x_train) == len(d.y_train) and len(d.x_test) == len(d.y_test) > 0
    assert 0 <= int(d.y_train.min()) and int(max(d.y_train.max(), d.y_test.max())) < d.num_classes
    dims = [i for i in range(d.x_train.dim()) if i != 1]
    torch.testing.assert_close(d.x_train.mean(dims), torch.zeros(d.input_shape[0]), atol=1e-3, rtol=0)
    torch.testing.assert_close(d.x_train.std(dims), torch.ones(d.input_shape[0]), atol=1e-3, rtol=0)
    assert len(d.mean) == len(d.std) == d.input_shape[0]


@pytest.mark.parametrize("source", DATASETS.names(), indirect=True)
def test_dataset_size_matches_load(source):
    name, path = source
    assert dataset_size(name, path) == len(loaded(name, path).y_train)
    assert dataset_size(name, path, train_subset=7) == 7
    with pytest.raises(BadInput, match="train_subset"):
        dataset_size(name, path, train_subset=10**9)


@pytest.mark.parametrize("source", DATASETS.names(), indirect=True)
def test_every_entry_has_description(source):
    name, _ = source
    assert len(next(e for e in DATASETS.entries() if e.name == name).description) > 10


@needs_fashion
def test_fashion_mnist_is_the_real_thing():
    d = loaded("fashion-mnist", None)
    assert d.input_shape == (1, 28, 28) and d.num_classes == 10
    assert (len(d.y_train), len(d.y_test)) == (60000, 10000)
    assert torch.bincount(d.y_train).tolist() == [6000] * 10


def test_digits_split_is_fixed():
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=5)
    assert a.input_shape == (1, 8, 8) and (len(a.y_train), len(a.y_test)) == (1437, 360)
    assert torch.equal(a.y_test, b.y_test)  # the test set does not move with the trial seed
    assert set(torch.bincount(a.y_test).tolist()) <= {35, 36, 37}  # stratified
    with pytest.raises(BadInput, match="takes no path"):
        dataset_size("digits", "/some/dir")


def test_digits_is_sklearn_split_read_without_importing_sklearn():
    import subprocess

    from sklearn.datasets import load_digits
    from sklearn.model_selection import StratifiedShuffleSplit, train_test_split

    raw = ds._load_digits(None)
    d = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(d.images, d.target, test_size=ds.DIGITS_TEST, stratify=d.target,
                                              random_state=ds.DIGITS_SPLIT_SEED)
    assert np.array_equal(raw.x_train, x_tr[:, None]) and np.array_equal(raw.x_test, x_te[:, None])
    assert np.array_equal(raw.y_train, y_tr) and np.array_equal(raw.y_test, y_te)
    for seed in (1, 7):  # the split rule itself, beyond the one seed digits uses
        ours = ds.stratified_split(d.target, 360, seed)
        theirs = next(StratifiedShuffleSplit(1, test_size=360, random_state=seed).split(d.images, d.target))
        assert all(np.array_equal(a, b) for a, b in zip(ours, theirs))
    code = ("import sys; from largebatch.data import load_dataset; load_dataset('digits'); "
            "print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # ~0.9 s of imports that every digits process used to pay


def test_digits_file_problems_are_bad_input(tmp_path, monkeypatch):
    monkeypatch.setattr(ds, "_digits_file", lambda: tmp_path / "digits.csv.gz")
    with pytest.raises(BadInput, match="cannot read scikit-learn's digits"):
        ds._load_digits(None)  # missing
    with gzip.open(tmp_path / "digits.csv.gz", "wt") as f:
        f.write("1,2,3\n4,5,6\n")
    with pytest.raises(BadInput, match="expected 1797 rows"):
        ds._load_digits(None)
    (tmp_path / "digits.csv.gz").write_bytes(b"\0" * (ds.DIGITS_MAX_BYTES + 1))
    with pytest.raises(BadInput, match="not scikit-learn's digits file"):
        ds._load_digits(None)
    monkeypatch.undo()
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BadInput, match="pip install scikit-learn"):
        ds._load_digits(None)


def test_train_subset_is_seeded():
    a = load_dataset("digits", train_subset=100, seed=1)
    b = load_dataset("digits", train_subset=100, seed=1)
    c = load_dataset("digits", train_subset=100, seed=2)
    assert len(a.y_train) == 100 and torch.equal(a.x_train, b.x_train) and not torch.equal(a.x_train, c.x_train)
    assert len(a.y_test) == 360


def test_npz_shapes_and_classes(tmp_path):
    d = load_dataset("npz", str(write_npz(tmp_path / "img.npz", classes=3)))
    assert d.input_shape == (1, 6, 6) and d.num_classes == 3  # N,H,W gains a channel; max label + 1
    v = load_dataset("npz", str(write_npz(tmp_path / "vec.npz", shape=(5,))))
    assert v.input_shape == (5,)
    torch.testing.assert_close(v.x_train.mean(0), torch.zeros(5), atol=1e-5, rtol=0)  # per feature
    c = load_dataset("npz", str(tmp_path / "vec.npz"))  # deterministic
    assert torch.equal(c.x_test, v.x_test)


def test_npz_missing_key_and_missing_path(tmp_path):
    p = write_npz(tmp_path / "bad.npz", y_test=True)
    with pytest.raises(BadInput, match="missing key y_test") as e:
        load_dataset("npz", str(p))
    assert str(p) in str(e.value)
    with pytest.raises(BadInput, match="needs a path"):
        load_dataset("npz")
    with pytest.raises(BadInput, match="no such .npz"):
        dataset_size("npz", str(tmp_path / "nope.npz"))


def test_s3_paths_go_through_storage(tmp_path, monkeypatch):
    local = write_npz(tmp_path / "s3copy.npz", n_train=33)
    calls = []
    fake = types.ModuleType("largebatch.storage")
    fake.fetch_to_cache = lambda uri: calls.append(uri) or str(local)
    monkeypatch.setitem(sys.modules, "largebatch.storage", fake)
    assert dataset_size("npz", "s3://bucket/data.npz") == 33
    assert len(load_dataset("npz", "s3://bucket/data.npz").y_train) == 33
    assert calls == ["s3://bucket/data.npz"] * 2


def test_unknown_dataset_is_bad_input():
    with pytest.raises(BadInput, match="did you mean 'digits'"):
        load_dataset("digit")


# --- fashion-mnist search and IDX parsing ---------------------------------------------------------------------------


def write_idx(path: Path, arr: np.ndarray, code=0x08, compress=True, magic=None) -> Path:
    header = magic if magic is not None else bytes([0, 0, code, arr.ndim])
    blob = header + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(">u1").tobytes()
    path.write_bytes(gzip.compress(blob) if compress else blob)
    return path


def test_idx_roundtrip_gzip_and_plain(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a.gz", a)), a)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a.raw", a, compress=False)), a)
    assert read_idx_shape(tmp_path / "a.gz") == (2, 3, 4)


@pytest.mark.parametrize("kind", ["bad_magic", "truncated", "not_gzip_inside", "empty"])
def test_corrupt_idx_is_bad_input(tmp_path, kind):
    p = tmp_path / "x-idx3-ubyte.gz"
    a = np.zeros((2, 3, 3), dtype=np.uint8)
    if kind == "bad_magic":
        write_idx(p, a, magic=b"\x50\x4b\x03\x04")
    elif kind == "truncated":
        p.write_bytes(gzip.compress(bytes([0, 0, 8, 3]) + struct.pack(">3I", 2, 3, 3) + b"\0" * 10))
    elif kind == "not_gzip_inside":
        p.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    else:
        p.write_bytes(b"")
    with pytest.raises(BadInput) as e:
        read_idx(p)
    assert str(p) in str(e.value) and "reinstall" in str(e.value)


@needs_fashion
def test_fashion_from_local_folder_and_env(tmp_path, monkeypatch):
    for f in ds.FASHION_FILES.values():
        shutil.copy(FASHION / f, tmp_path / f)
    assert dataset_size("fashion-mnist", str(tmp_path)) == 60000
    monkeypatch.setenv(ds.FASHION_ENV, str(tmp_path))
    monkeypatch.setattr(ds, "FASHION_DEBIAN_DIR", str(tmp_path / "gone"))
    assert ds.fashion_mnist_dir() == tmp_path


def test_fashion_missing_everywhere_is_bad_input(tmp_path, monkeypatch):
    monkeypatch.setenv(ds.FASHION_ENV, str(tmp_path / "env"))
    monkeypatch.setattr(ds, "FASHION_DEBIAN_DIR", str(tmp_path / "debian"))
    monkeypatch.setattr(ds, "FASHION_LOCAL_DIR", str(tmp_path / "local"))
    with pytest.raises(BadInput, match="install the Debian package dataset-fashion-mnist") as e:
        dataset_size("fashion-mnist")
    for tried in ("env", "debian", "local"):
        assert str(tmp_path / tried) in str(e.value)
    with pytest.raises(BadInput, match="tried: " + str(tmp_path / "elsewhere")):
        load_dataset("fashion-mnist", str(tmp_path / "elsewhere"))


def test_fashion_folder_with_corrupt_file(tmp_path):
    for f in ds.FASHION_FILES.values():
        (tmp_path / f).write_bytes(gzip.compress(b"\0\0\x08\x01" + struct.pack(">I", 5)))  # header says 5, no data
    with pytest.raises(BadInput, match="truncated or corrupt"):
        load_dataset("fashion-mnist", str(tmp_path))


# --- permutation and per-rank batches -------------------------------------------------------------------------------


def test_epoch_permutation_is_deterministic_per_seed_and_epoch():
    p = epoch_permutation(1000, seed=3, epoch=0)
    assert torch.equal(torch.sort(p).values, torch.arange(1000))
    assert torch.equal(p, epoch_permutation(1000, seed=3, epoch=0))
    assert not torch.equal(p, epoch_permutation(1000, seed=3, epoch=1))
    assert not torch.equal(p, epoch_permutation(1000, seed=4, epoch=0))
    assert not torch.equal(epoch_permutation(1000, 0, 1), epoch_permutation(1000, 1, 0))


@pytest.mark.parametrize("world, accum", [(1, 1), (1, 2), (2, 1), (2, 2), (4, 2)])
def test_rank_shares_make_up_the_global_batch(world, accum):
    perm, B = epoch_permutation(103, seed=0, epoch=0), 16
    per_rank = [list(rank_batches(perm, B, r, world, accum)) for r in range(world)]
    assert all(len(steps) == 103 // B for steps in per_rank)  # drop_last
    for s in range(103 // B):
        micro = [m for r in range(world) for m in per_rank[r][s]]
        assert len(micro) == world * accum and all(len(m) == B // world // accum for m in micro)
        assert torch.equal(torch.cat(micro), perm[s * B:(s + 1) * B])


def test_one_worker_accum_two_equals_two_workers():
    perm = epoch_permutation(64, seed=1, epoch=2)
    one = [torch.cat(micro) for micro in rank_batches(perm, 8, rank=0, world=1, accum=2)]
    ranks = [list(rank_batches(perm, 8, rank=r, world=2, accum=1)) for r in range(2)]
    two = [torch.cat([ranks[0][s][0], ranks[1][s][0]]) for s in range(len(ranks[0]))]
    assert len(one) == len(two) == 8 and all(torch.equal(a, b) for a, b in zip(one, two))


@pytest.mark.parametrize("B, rank, world, accum", [(10, 0, 4, 1), (8, 0, 2, 3), (8, 2, 2, 1), (200, 0, 1, 1)])
def test_rank_batches_rejects_what_does_not_divide(B, rank, world, accum):
    with pytest.raises(ValueError):
        next(rank_batches(torch.arange(100), B, rank, world, accum))
