"""Building a task's data for one trial config: the seeded train subset, and the checks every split must pass."""
from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from typing import cast

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from largebatch.errors import BadInput
from largebatch.tasks.api import Split, Task, TaskData, split_len


def _describe(x: object) -> str:
    return f"Tensor{tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__


def check_split(split: Split, which: str, task_name: str) -> None:
    """A split is (inputs, targets) tensors of equal length, or a non-empty map-style Dataset whose items are
    (input tensor, target tensor) pairs. Only the first item is looked at: a Dataset is not read through here."""
    where = f"task {task_name!r} {which} data"
    if isinstance(split, tuple):
        if len(split) != 2 or not all(isinstance(t, torch.Tensor) for t in split):
            raise BadInput(f"{where} must be (inputs, targets) tensors or a torch Dataset, got a tuple of "
                           f"{', '.join(_describe(t) for t in split)}", field="task.name")
        if split[0].shape[0] != split[1].shape[0] or split[0].shape[0] == 0:
            raise BadInput(f"{where}: inputs {tuple(split[0].shape)} and targets {tuple(split[1].shape)} must be "
                           f"non-empty and of equal length", field="task.name")
        return
    if not isinstance(split, Dataset) or not hasattr(split, "__len__"):
        raise BadInput(f"{where} must be (inputs, targets) tensors or a map-style torch Dataset with __len__, got "
                       f"{type(split).__name__}", field="task.name")
    if len(split) == 0:
        raise BadInput(f"{where} is empty", field="task.name")
    item = split[0]
    if not (isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(t, torch.Tensor) for t in item)):
        shown = ", ".join(_describe(t) for t in item) if isinstance(item, (tuple, list)) else _describe(item)
        raise BadInput(f"{where}: items must be (input, target) pairs of torch tensors, item 0 is ({shown}); "
                       f"convert with torch.as_tensor in __getitem__", field="task.name")


def subset(split: Split, k: int, seed: int) -> Split:
    """The first k examples of a seed-permuted split (the same rule as the built-in datasets' train_subset)."""
    keep = np.random.default_rng(seed).permutation(split_len(split))[:k]
    if isinstance(split, tuple):
        idx = torch.from_numpy(keep)
        return split[0].index_select(0, idx), split[1].index_select(0, idx)
    # a map-style dataset (duck-typed: __len__ and __getitem__); a Ray Data shard only replaces a split later, on the
    # worker (train/ray_worker.py), so none reaches here
    return Subset(cast(Dataset, split), keep.tolist())


# data.eval_subset draws from this permutation of the eval split, whatever cfg.seed is: every trial, seed and epoch
# of a study is evaluated on the same examples, so their val_* compare on equal footing
EVAL_SUBSET_SEED = 0


def too_many_eval(k: int, n: int, cfg, name: str) -> str:
    what = repr(cfg.data.dataset) if name == "classification" else f"task {name!r}"
    return f"got {k}, more than the {n} eval examples of {what}; use at most {n}, or leave it unset to evaluate on " \
           f"the whole split"


def eval_subset(data: TaskData, cfg, name: str) -> TaskData:
    """data with its eval split cut to the first data.eval_subset examples of the fixed (EVAL_SUBSET_SEED)
    permutation: a larger N keeps the examples of a smaller one and adds more."""
    k = cfg.data.eval_subset
    if k is None:
        return data
    n = split_len(data.eval)
    if k > n:
        raise BadInput(too_many_eval(k, n, cfg, name), field="data.eval_subset")
    if k == n:
        return data
    return TaskData(train=data.train, eval=subset(data.eval, k, EVAL_SUBSET_SEED), info=data.info)


def build_data(task: Task, cfg) -> TaskData:
    """task.data(cfg), cut to data.train_subset (when the task did not already) and data.eval_subset, and checked."""
    data = task.data(cfg)
    if not isinstance(data, TaskData):
        raise BadInput(f"task {task.name or cfg.task.name!r}: data() returned {type(data).__name__}, not a TaskData",
                       field="task.name")
    name = task.name or cfg.task.name
    if task.ray_data is not None:  # the training rows come through Ray Train's dataset shards (tasks/raydata.py)
        if cfg.data.train_subset is not None:
            raise BadInput("a task whose training data is a Ray Dataset takes no data.train_subset; give a smaller "
                           "dataset (e.g. ds.limit(n) in ray_data)", field="data.train_subset")
        check_split(data.eval, "eval", name)
        return eval_subset(data, cfg, name)
    check_split(data.train, "train", name)
    check_split(data.eval, "eval", name)
    k = cfg.data.train_subset
    n = split_len(data.train)
    if k is not None and k > n:
        raise BadInput(f"got {k}, more than the {n} training examples of task {name!r}; use at most {n}",
                       field="data.train_subset")
    if k is not None and k < n:
        data = TaskData(train=subset(data.train, k, cfg.seed), eval=data.eval, info=data.info)
    return eval_subset(data, cfg, name)


def train_size(task: Task, cfg) -> int:
    """Training examples before data.train_subset: the task's cheap count, else by building the data."""
    if task.train_size is not None:
        return int(task.train_size(cfg))
    full = cfg.model_copy(update={"data": cfg.data.model_copy(update={"train_subset": None})})
    return build_data(task, full).train_size


# ---- one decoded copy per process: a process that runs several trials (an in-process Tune trial actor, reused
# across trials) builds each dataset once. Bounded in bytes of tensors held; least recently used goes first.
CACHE_ENV = "LARGEBATCH_DATA_CACHE_MB"
DEFAULT_CACHE_MB = 2048
_cache: "OrderedDict[str, tuple[TaskData, int]]" = OrderedDict()
_cache_lock = threading.Lock()
cache_stats = {"hits": 0, "misses": 0}


def cache_key(task: Task, cfg) -> str:
    """What build_data(cfg) may read for a cacheable task: the task, its kwargs, the dataset, path, subsets, seed."""
    return json.dumps({"task": cfg.task.model_dump(mode="json"), "dataset": cfg.data.dataset, "path": cfg.data.path,
                       "subset": cfg.data.train_subset, "eval_subset": cfg.data.eval_subset, "seed": cfg.seed,
                       "impl": f"{getattr(task.data, '__module__', '')}.{getattr(task.data, '__qualname__', '')}"},
                      sort_keys=True, default=str)


def _nbytes(data: TaskData) -> int:
    """Bytes held by the tensor splits (a Dataset is counted as 0: it reads its items lazily)."""
    return sum(int(t.element_size() * t.nelement()) for split in (data.train, data.eval) if isinstance(split, tuple)
               for t in split)


def cache_limit_bytes() -> int:
    raw = os.environ.get(CACHE_ENV, str(DEFAULT_CACHE_MB))
    try:
        mb = float(raw)
    except ValueError:
        raise BadInput(f"got {raw!r}: set it to a number of MiB (0 turns the cache off)", field=CACHE_ENV) from None
    return max(0, int(mb * 2**20))


def cached_data(task: Task, cfg) -> TaskData:
    """build_data(task, cfg), kept for the next trial in this process when the task allows it and it fits."""
    limit = cache_limit_bytes()
    if not task.cache_data or limit == 0 or task.ray_data is not None:
        return build_data(task, cfg)
    key = cache_key(task, cfg)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            cache_stats["hits"] += 1
            return _cache[key][0]
    data = build_data(task, cfg)
    size = _nbytes(data)
    with _cache_lock:
        cache_stats["misses"] += 1
        if size <= limit:
            _cache[key] = (data, size)
            while sum(n for _, n in _cache.values()) > limit:
                _cache.popitem(last=False)
    return data


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()
        cache_stats.update(hits=0, misses=0)


# ---- relative paths: one meaning on the driver, in the profile and in every trial (issue #26). A Tune trial runs in
# its own trial folder and a Ray worker may run anywhere, so a relative path that the driver (and the study's load
# check) read from the folder `largebatch tune` ran in would name another file, or none, in a trial. The driver
# therefore makes them absolute, against its working directory, once: data.path when it is a local path, and every
# string in task.kwargs (nested ones too) that names an existing file or folder there. A kwarg string that names
# nothing there (a mode, a model name) is left as it is.
def _absolute(value: str, cwd: str, must_exist: bool) -> str:
    from pathlib import Path

    if not value or "://" in value or os.path.isabs(value) or value.startswith("~"):
        return value
    p = Path(cwd) / value
    return str(p.resolve()) if (p.exists() or not must_exist) else value


def _absolute_kwargs(value, cwd: str):
    if isinstance(value, str):
        return _absolute(value, cwd, must_exist=True)
    if isinstance(value, dict):
        return {k: _absolute_kwargs(v, cwd) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_absolute_kwargs(v, cwd) for v in value)
    return value


def absolute_paths(tree: dict, cwd: str) -> dict:
    """A trial tree (config dict) with its relative paths made absolute against `cwd` (see above); a new dict."""
    out = dict(tree)
    task, data = tree.get("task"), tree.get("data")
    if isinstance(task, dict) and task.get("kwargs"):
        out["task"] = {**task, "kwargs": _absolute_kwargs(task["kwargs"], cwd)}
    if isinstance(data, dict) and isinstance(data.get("path"), str):
        out["data"] = {**data, "path": _absolute(data["path"], cwd, must_exist=False)}
    return out
