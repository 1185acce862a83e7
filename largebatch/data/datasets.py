"""Datasets that exist offline (docs/design.md §7), loaded whole into memory as tensors.

Each DATASETS entry is a DatasetSpec: `load(path)` returns the raw numpy splits and `count(path)` the number of
training examples, read cheaply (a file header, one array) so batch sizes can be validated before training.
`load_dataset` does what every entry shares: s3:// fetch, the seeded train subset, and normalisation with the
training set's per-channel mean and std (axis 1 is the channel, or the feature for (N, D) data).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from largebatch.data.idx import read_idx, read_idx_shape
from largebatch.data.npz import MAX_CLASSES, NPZ_KEYS, npz_file, open_npz, scan_npz  # noqa: F401  (re-exported)
from largebatch.errors import BadInput, unknown_choice
from largebatch.registry import Registry


@dataclass(frozen=True, eq=False)
class TensorData:
    x_train: torch.Tensor  # float32 (N, *input_shape), normalised with the training set's mean/std
    y_train: torch.Tensor  # int64 (N,)
    x_test: torch.Tensor  # float32, normalised with the *training* statistics
    y_test: torch.Tensor  # int64
    input_shape: tuple[int, ...]  # (C, H, W) for images, (D,) for vectors
    num_classes: int
    mean: tuple[float, ...] = ()  # per channel, subtracted; kept so inference can normalise the same way
    std: tuple[float, ...] = ()


@dataclass(frozen=True)
class RawSplits:
    x_train: np.ndarray  # (N, C, H, W) or (N, D), any real dtype
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int


@dataclass(frozen=True)
class DatasetSpec:
    load: Callable[[str | None], RawSplits]
    count: Callable[[str | None], int]  # training examples, without loading pixels where that is cheap


DATASETS: Registry[DatasetSpec] = Registry("dataset")

# --- fashion-mnist ---------------------------------------------------------------------------------------------

FASHION_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
FASHION_ENV = "LARGEBATCH_FASHION_MNIST_DIR"
FASHION_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
FASHION_LOCAL_DIR = "data/fashion-mnist/usr/share/datasets/fashion-mnist"  # non-root `dpkg-deb -x` into ./data


def fashion_mnist_dir(path: str | None = None) -> Path:
    """The folder holding the four IDX files: `path`, else $LARGEBATCH_FASHION_MNIST_DIR, the Debian path, ./data."""
    if path is not None:
        candidates = [path]
    else:
        candidates = [p for p in (os.environ.get(FASHION_ENV), FASHION_DEBIAN_DIR, FASHION_LOCAL_DIR) if p]
    for c in candidates:
        if all((Path(c) / f).is_file() for f in FASHION_FILES.values()):
            return Path(c)
    raise BadInput(
        f"fashion-mnist files ({', '.join(FASHION_FILES.values())}) not found; tried: {', '.join(candidates)}. "
        f"To fix: install the Debian package dataset-fashion-mnist (make setup does), set {FASHION_ENV}, "
        f"or pass a folder (local or s3://) holding the four files", field="dataset")


def _load_fashion(path: str | None) -> RawSplits:
    d = fashion_mnist_dir(path)
    a = {k: read_idx(d / f) for k, f in FASHION_FILES.items()}
    for split in ("train", "test"):
        x, y = a[f"x_{split}"], a[f"y_{split}"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise BadInput(f"fashion-mnist {split} images {x.shape} and labels {y.shape} do not match",
                           source=str(d))
    return RawSplits(a["x_train"][:, None], a["y_train"], a["x_test"][:, None], a["y_test"], num_classes=10)


def _count_fashion(path: str | None) -> int:
    """On the driver, before any process starts: the four headers agree, and the labels (60 KB) are 0..9."""
    d = fashion_mnist_dir(path)
    shapes = {k: read_idx_shape(d / f) for k, f in FASHION_FILES.items()}
    for split in ("train", "test"):
        x, y = shapes[f"x_{split}"], shapes[f"y_{split}"]
        if len(x) != 3 or len(y) != 1 or x[0] != y[0] or x[0] == 0:
            raise BadInput(f"fashion-mnist {split} images {x} and labels {y} do not match; reinstall the dataset or "
                           f"fix the folder", source=str(d))
        labels = read_idx(d / FASHION_FILES[f"y_{split}"])
        if len(labels) and int(labels.max()) >= 10:
            raise BadInput(f"fashion-mnist {split} labels go up to {int(labels.max())}, the dataset has 10 classes "
                           f"(0..9); reinstall the dataset or fix the folder",
                           source=str(d / FASHION_FILES[f"y_{split}"]))
    return shapes["y_train"][0]


DATASETS.add("fashion-mnist", DatasetSpec(_load_fashion, _count_fashion),
             "Fashion-MNIST, 60k/10k 1x28x28, 10 classes (Xiao et al. 2017, arXiv 1708.07747); Debian package")

# --- digits -----------------------------------------------------------------------------------------------------

DIGITS_TRAIN, DIGITS_TEST = 1437, 360
DIGITS_SPLIT_SEED = 0  # fixed, so every trial is scored on the same 360 test images whatever its seed


def _no_path(path: str | None) -> None:
    if path is not None:
        raise BadInput(f"dataset 'digits' ships with scikit-learn and takes no path, got {path!r}", field="path")


def _count_digits(path: str | None) -> int:
    _no_path(path)
    return DIGITS_TRAIN


# scikit-learn's copy of the UCI digits (1,797 rows of 64 pixels and the label), read as a file: importing sklearn
# (and its model_selection) took ~0.9 s of every process that loaded digits, e.g. each worker of a DDP smoke trial
DIGITS_FILE = ("datasets", "data", "digits.csv.gz")
DIGITS_MAX_BYTES = 4 * 2**20  # the file is 57 KB; anything far larger is not it


def _digits_file() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise BadInput("dataset 'digits' ships with scikit-learn, which is not installed; pip install scikit-learn "
                       "or use another dataset", field="dataset")
    return Path(list(spec.submodule_search_locations)[0], *DIGITS_FILE)


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """scikit-learn's per-class draw counts for a stratified split (utils.extmath._approximate_mode)."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need = int(n_draws - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need)
            floored[rng.choice(inds, size=add_now, replace=False)] += 1
            need -= add_now
            if need == 0:
                break
    return floored.astype(int)


def stratified_split(y: np.ndarray, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices, the same as scikit-learn's train_test_split(test_size=n_test, stratify=y,
    random_state=seed) (StratifiedShuffleSplit, one split): the digits split stays what it was under sklearn."""
    _, y_idx, counts = np.unique(y, return_inverse=True, return_counts=True)
    per_class = np.split(np.argsort(y_idx, kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(seed)
    n_i = _approximate_mode(counts, len(y) - n_test, rng)
    t_i = _approximate_mode(counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for i, idx in enumerate(per_class):
        perm = idx.take(rng.permutation(counts[i]), mode="clip")
        train.extend(perm[: n_i[i]])
        test.extend(perm[n_i[i]: n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)


def _load_digits(path: str | None) -> RawSplits:
    import gzip

    _no_path(path)
    f = _digits_file()
    try:
        size = f.stat().st_size
        if size > DIGITS_MAX_BYTES:
            raise BadInput(f"{size} bytes, not scikit-learn's digits file; reinstall scikit-learn", source=str(f))
        with gzip.open(f, "rt", encoding="utf-8") as text:
            table = np.loadtxt(text, delimiter=",")
    except (OSError, ValueError, EOFError) as e:
        raise BadInput(f"cannot read scikit-learn's digits ({e}); reinstall scikit-learn", source=str(f)) from None
    if table.shape != (DIGITS_TRAIN + DIGITS_TEST, 65):
        raise BadInput(f"expected {DIGITS_TRAIN + DIGITS_TEST} rows of 64 pixels and a label, got shape "
                       f"{table.shape}; reinstall scikit-learn", source=str(f))
    images, target = table[:, :-1].reshape(-1, 1, 8, 8), table[:, -1].astype(int)
    train, test = stratified_split(target, DIGITS_TEST, DIGITS_SPLIT_SEED)
    return RawSplits(images[train], target[train], images[test], target[test], num_classes=10)


DATASETS.add("digits", DatasetSpec(_load_digits, _count_digits),
             "sklearn 8x8 digits, 1437/360 stratified split, 1x8x8, 10 classes; for seconds-long smoke tests")

# --- npz --------------------------------------------------------------------------------------------------------


def _load_npz(path: str | None) -> RawSplits:
    """The four arrays, after the whole-file scan (data/npz.py) the driver ran too."""
    info = scan_npz(path)
    p = npz_file(path)
    with open_npz(p) as z:
        try:
            a = {k: z[k] for k in NPZ_KEYS}
        except (OSError, ValueError, EOFError) as e:
            raise BadInput(f"cannot read as .npz ({e})", source=str(p)) from None
    x_tr, x_te = (x[:, None] if x.ndim == 3 else x for x in (a["x_train"], a["x_test"]))  # (N, H, W): one channel
    return RawSplits(x_tr, a["y_train"].astype(np.int64), x_te, a["y_test"].astype(np.int64), info.num_classes)


def _count_npz(path: str | None) -> int:
    return scan_npz(path).n_train


DATASETS.add("npz", DatasetSpec(_load_npz, _count_npz),
             "your own data: a .npz with x_train, y_train, x_test, y_test (x as N,D / N,H,W / N,C,H,W), local or s3://")

# --- shared -----------------------------------------------------------------------------------------------------


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise BadInput(unknown_choice("dataset", name, DATASETS.names()), field="dataset")
    return DATASETS.get(name)


def _localise(path: str | None) -> str | None:
    if path is not None and str(path).startswith("s3://"):
        from largebatch.storage import fetch_to_cache  # boto3 stays out of the core until an s3:// path is used

        return fetch_to_cache(str(path))
    return None if path is None else str(path)


def _check_subset(name: str, n: int, train_subset: int | None) -> int:
    if train_subset is None:
        return n
    if not 0 < train_subset <= n:
        raise BadInput(f"train_subset={train_subset} must be between 1 and the {n} training examples of {name!r}",
                       field="train_subset")
    return train_subset


def dataset_size(name: str, path: str | None = None, train_subset: int | None = None) -> int:
    """Training examples that `load_dataset(name, path, train_subset)` would return, without loading pixels."""
    spec = _spec(name)
    return _check_subset(name, spec.count(_localise(path)), train_subset)


def _channel_stats(x_train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel (axis 1) mean and std over the training set; constant channels keep std 1."""
    dims = [d for d in range(x_train.dim()) if d != 1]
    mean = x_train.mean(dim=dims)
    std = x_train.std(dim=dims, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return mean, std


def load_dataset(name: str, path: str | None = None, train_subset: int | None = None, seed: int = 0) -> TensorData:
    """Load DATASETS[name] into float32/int64 tensors; `train_subset` keeps the first N of a seed-permuted train."""
    spec = _spec(name)
    raw = spec.load(_localise(path))
    x_tr, y_tr = raw.x_train, raw.y_train
    k = _check_subset(name, len(y_tr), train_subset)
    if k < len(y_tr):
        keep = np.random.default_rng(seed).permutation(len(y_tr))[:k]
        x_tr, y_tr = x_tr[keep], y_tr[keep]
    x_train = torch.from_numpy(np.ascontiguousarray(x_tr, dtype=np.float32))
    x_test = torch.from_numpy(np.ascontiguousarray(raw.x_test, dtype=np.float32))
    floats = any(np.issubdtype(a.dtype, np.floating) for a in (x_tr, raw.x_test))
    # integer pixels (IDX, uint8 npz) cannot be NaN: the scan (0.1 s for Fashion-MNIST) is for float inputs only
    if floats and not (torch.isfinite(x_train).all() and torch.isfinite(x_test).all()):
        raise BadInput(f"dataset {name!r} has NaN or infinite inputs", source=path)
    mean, std = _channel_stats(x_train)
    shape = (-1,) + (1,) * (x_train.dim() - 2)
    x_train = x_train.sub_(mean.view(shape)).div_(std.view(shape))
    x_test = x_test.sub_(mean.view(shape)).div_(std.view(shape))
    return TensorData(
        x_train=x_train,
        y_train=torch.from_numpy(np.asarray(y_tr, dtype=np.int64).copy()),
        x_test=x_test,
        y_test=torch.from_numpy(np.asarray(raw.y_test, dtype=np.int64).copy()),
        input_shape=tuple(x_train.shape[1:]),
        num_classes=int(raw.num_classes),
        mean=tuple(mean.tolist()),
        std=tuple(std.tolist()),
    )
