"""Dataset path: what reading a map-style Dataset through the DataLoader adds to the loop's step time, at B=256
and B=4096, against the in-memory tensor path (index_select batches) on the same data and model.

The data is Fashion-MNIST wrapped as a map-style Dataset (item i = (x[i], y[i]), per-item __getitem__ + default
collate, as a user's Dataset would be read). Each variant is the real loop (`train_worker`) on 1 worker, 1 BLAS
thread; its steady-state epoch time is examples / throughput (epochs after the first). The share is
(t_dataset - t_tensor) / t_dataset, paired per round: the part of a step spent waiting for the data path. With
`loader_workers: 1` batches are made in a second process while the step computes. Goal: < 5% on this machine.
"""
from __future__ import annotations

import shutil
from typing import Any, Optional

import torch
from torch.utils.data import Dataset

from bench import common

NAME = "loader_path"
GOAL = 0.05


class Items(Dataset):
    """In-memory tensors, read one item at a time (what a user's map-style Dataset costs, minus their I/O)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


class BatchedItems(Items):
    """The same, with `__getitems__`: the DataLoader asks for a whole micro-batch at once (one gather)."""

    def __getitems__(self, indices: list[int]):
        idx = torch.as_tensor(indices)
        return self.x.index_select(0, idx), self.y.index_select(0, idx)


def _epoch_s(cfg, data) -> float:
    from largebatch.config import resolve
    from largebatch.train.loop import WorkerContext, train_worker

    history: list[dict] = []

    def report(metrics: dict, ckpt_dir: Optional[str]) -> None:
        history.append(dict(metrics))
        if ckpt_dir:
            shutil.rmtree(ckpt_dir, ignore_errors=True)

    res = resolve(cfg, 1, train_size=data.train_size)
    with common._quiet():
        train_worker(res, WorkerContext(report=report), data)
    return res.steps_per_epoch * res.global_batch_size / common.steady_throughput(history)


def run(quick: bool = False) -> dict[str, Any]:
    from largebatch.tasks import TaskData
    from largebatch.tasks.classification import from_tensors

    batches = (256, 4096)
    subset = 8192 if quick else None
    epochs = 2 if quick else 3
    rounds = 1 if quick else 3
    common.set_threads()
    tensors = from_tensors(common.dataset("fashion-mnist", subset))
    as_dataset = TaskData(train=Items(*tensors.train), eval=tensors.eval, info=tensors.info)
    batched = TaskData(train=BatchedItems(*tensors.train), eval=tensors.eval, info=tensors.info)
    rows = []
    for B in batches:
        over = {"data.global_batch_size": B, "data.train_subset": subset, "budget.epochs": epochs}
        cfgs = {w: common.trial_config({**over, "data.loader_workers": w}) for w in (0, 1)}
        per = common.alternate({  # the defaults bind this batch's configs (alternate calls them at once)
            "tensor_epoch_s": lambda cfgs=cfgs: _epoch_s(cfgs[0], tensors),
            "dataset_w0_epoch_s": lambda cfgs=cfgs: _epoch_s(cfgs[0], as_dataset),
            "dataset_w1_epoch_s": lambda cfgs=cfgs: _epoch_s(cfgs[1], as_dataset),
            "batched_w0_epoch_s": lambda cfgs=cfgs: _epoch_s(cfgs[0], batched),
        }, rounds)
        variants = {"w0": "dataset_w0", "w1": "dataset_w1", "batched_w0": "batched_w0"}
        shares = {k: [(d - t) / d for d, t in zip(per[f"{v}_epoch_s"], per["tensor_epoch_s"])]
                  for k, v in variants.items()}
        rows.append({"global_batch_size": B, "seconds": {k: common.median(v) for k, v in per.items()},
                     "rounds": per, **{f"share_{k}": common.median(v) for k, v in shares.items()},
                     **{f"share_{k}_per_round": v for k, v in shares.items()}})
    labels = {"w0": "per-item Dataset, 0 loader workers", "w1": "per-item Dataset, 1 loader worker",
              "batched_w0": "Dataset with __getitems__, 0 loader workers"}
    summary = []
    for r in rows:
        for k, label in labels.items():
            v = r[f"share_{k}"]
            summary.append(common.figure(f"DataLoader path adds ({label}), B={r['global_batch_size']}",
                                         v * 100, unit="%", goal=f"< {GOAL:.0%}", met=v < GOAL))
    return {"settings": {"dataset": "fashion-mnist", "train_subset": subset, "epochs_per_loop_run": epochs,
                         "rounds": rounds, "threads": common.THREADS},
            "rows": rows, "summary": summary}
