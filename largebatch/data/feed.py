"""Feeding a split to the loop: in-memory tensors by index_select, or a map-style Dataset through a DataLoader.

Both follow `rank_batches`: the global batch of step s is perm[s*B:(s+1)*B] of a permutation seeded by (seed, epoch),
rank r takes its contiguous share and cuts it into `accum` micro-batches. The DataLoader gets those index lists from
a batch sampler, so worker processes, prefetching and pinned memory change how fast a batch arrives, never which
examples it holds or their order: any worker count and accumulation see the same global batches.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, TypedDict

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, default_collate

from largebatch.data.loader import rank_batches

Batch = tuple[torch.Tensor, torch.Tensor]


class _LoaderKw(TypedDict, total=False):
    """The DataLoader settings LoaderFeed passes to its training loader and (less persistent_workers) eval loaders."""

    num_workers: int
    pin_memory: bool
    collate_fn: Callable[[Any], Batch]
    persistent_workers: bool
    prefetch_factor: int


class RankBatchSampler(Sampler[list[int]]):
    """Yields this rank's micro-batches of indices, step by step, for the order set by `set_epoch_order`. It lives in
    the main process (the DataLoader's workers only see the index lists), so a new order per epoch reaches
    persistent workers."""

    def __init__(self) -> None:
        self._micro: list[list[int]] = []

    def set_epoch_order(self, perm: torch.Tensor, global_batch: int, rank: int, world: int, accum: int) -> None:
        self._micro = [idx.tolist() for step in rank_batches(perm, global_batch, rank, world, accum) for idx in step]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._micro)

    def __len__(self) -> int:
        return len(self._micro)


def collate(data) -> Batch:
    """A Dataset's `__getitems__(indices)` may return the batch itself, a tuple (inputs, targets): it is used as is
    (no per-item collate). Anything else is a list of (input, target) items, stacked by default_collate."""
    return data if isinstance(data, tuple) else default_collate(data)


def _to(batch, device: torch.device) -> Batch:
    x, y = batch
    nb = device.type == "cuda"  # pinned host memory -> asynchronous copy
    return x.to(device, non_blocking=nb), y.to(device, non_blocking=nb)


class TensorFeed:
    """Tensors moved to the device once; batches by index_select (the same gather as x[idx] without advanced
    indexing's dispatch, which matters at small micro-batches)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, device: torch.device):
        self.x, self.y, self.device = x.to(device), y.to(device), device

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def steps(self, perm: torch.Tensor, global_batch: int, rank: int, world: int,
              accum: int) -> Iterator[Iterator[Batch]]:
        perm = perm.to(self.device)
        for micro in rank_batches(perm, global_batch, rank, world, accum):
            yield ((self.x.index_select(0, idx), self.y.index_select(0, idx)) for idx in micro)

    def gather(self, idx: torch.Tensor) -> Batch:
        idx = idx.to(self.device)
        return self.x.index_select(0, idx), self.y.index_select(0, idx)

    def eval_batches(self, lo: int, hi: int, batch: int) -> Iterator[Batch]:
        for i in range(lo, hi, batch):
            yield self.x[i:min(i + batch, hi)], self.y[i:min(i + batch, hi)]


class LoaderFeed:
    """A map-style Dataset read by a DataLoader over `RankBatchSampler`; `workers` loader processes (0: in this
    process), pinned memory on CUDA, `prefetch` micro-batches ahead per loader process."""

    def __init__(self, dataset: Dataset, device: torch.device, workers: int = 0, prefetch: Optional[int] = None):
        self.dataset, self.device, self.workers = dataset, device, workers
        self.sampler = RankBatchSampler()
        self._kw: _LoaderKw = {"num_workers": workers, "pin_memory": device.type == "cuda", "collate_fn": collate}
        if workers > 0:
            self._kw.update({"persistent_workers": True, "prefetch_factor": prefetch or 2})
        self.loader = DataLoader(dataset, batch_sampler=self.sampler, **self._kw)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def steps(self, perm: torch.Tensor, global_batch: int, rank: int, world: int,
              accum: int) -> Iterator[Iterator[Batch]]:
        self.sampler.set_epoch_order(perm.cpu(), global_batch, rank, world, accum)
        it = iter(self.loader)
        for _ in range(len(self.sampler) // accum):
            yield (_to(next(it), self.device) for _ in range(accum))

    def gather(self, idx: torch.Tensor) -> Batch:
        many = getattr(self.dataset, "__getitems__", None)
        items = many(idx.tolist()) if many else [self.dataset[int(i)] for i in idx]
        return _to(collate(items), self.device)

    def eval_batches(self, lo: int, hi: int, batch: int) -> Iterator[Batch]:
        kw = self._kw.copy()
        kw.pop("persistent_workers", None)
        loader = DataLoader(Subset(self.dataset, range(lo, hi)), batch_size=batch, shuffle=False, **kw)
        for b in loader:
            yield _to(b, self.device)


def make_feed(split, device: torch.device, workers: int = 0, seed: int = 0, rank: int = 0):
    """The feed for a split: tensors stay on the fast path, a Dataset goes through a DataLoader, a Ray Data shard
    is read by Ray (largebatch/tasks/raydata.py)."""
    if isinstance(split, tuple):
        return TensorFeed(split[0], split[1], device)
    from largebatch.tasks.raydata import RayShard, RayShardFeed

    if isinstance(split, RayShard):
        return RayShardFeed(split, device, seed, rank)
    return LoaderFeed(split, device, workers)
