"""Training data as a Ray Data dataset (`Task.ray_data`), fed to the DDP workers through Ray Train's dataset shards.

The driver hands the dataset to the TorchTrainer (`datasets={"train": ...}`); Ray Train splits it with
`streaming_split(world, equal=True)` and each rank reads its shard with `iter_torch_batches`. Rows must have the
columns `x` (input) and `y` (target).

Ordering guarantee, weaker than the in-memory and DataLoader paths: in each epoch every row is read at most once over
all ranks (`equal=True` drops up to world-1 rows so all shards are the same size), each rank's micro-batches hold
rows of its own shard only, and the rows are mixed within a buffer of 8 micro-batches by a local shuffle seeded by
(trial seed, epoch, rank). Which rows land on which rank, and so which rows form a global batch, depends on how Ray
Data schedules blocks: it is not the seeded global permutation, and a different worker count or accumulation sees
different batches. Shuffle the dataset itself (`ds.random_shuffle()`) for a full per-epoch shuffle.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch

from largebatch.data.loader import epoch_seed

SHUFFLE_MICRO_BATCHES = 8


@dataclass(frozen=True)
class RayShard:
    """This rank's shard of the training dataset (a Ray DataIterator) and the dataset's row count."""

    iterator: Any
    size: int

    def __len__(self) -> int:
        return self.size


class RayShardFeed:
    can_gather = False  # a streaming shard cannot fetch rows by index: probes read the eval split instead

    def __init__(self, shard: RayShard, device: torch.device, seed: int = 0, rank: int = 0):
        self.shard, self.device, self.seed, self.rank, self.epoch = shard, device, seed, rank, 0

    def __len__(self) -> int:
        return self.shard.size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def steps(self, perm: torch.Tensor, global_batch: int, rank: int, world: int,
              accum: int) -> Iterator[Iterator[tuple[torch.Tensor, torch.Tensor]]]:
        micro = global_batch // world // accum
        n_steps = len(perm) // global_batch
        it = iter(self.shard.iterator.iter_torch_batches(
            batch_size=micro, drop_last=True, device="cpu", local_shuffle_buffer_size=SHUFFLE_MICRO_BATCHES * micro,
            local_shuffle_seed=epoch_seed(self.seed * 1009 + rank, self.epoch) % 2**31,
            pin_memory=self.device.type == "cuda"))
        try:
            for s in range(n_steps):
                yield (self._next(it, s) for _ in range(accum))
        finally:
            for _ in it:  # read the epoch to its end, so every rank's split finishes the epoch together
                pass

    def _next(self, it, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            batch = next(it)
        except StopIteration:
            raise RuntimeError(f"the Ray Data shard of rank {self.rank} ran out of rows at step {step} of the epoch; "
                               f"is Task.train_size the dataset's row count?") from None
        nb = self.device.type == "cuda"
        return batch["x"].to(self.device, non_blocking=nb), batch["y"].to(self.device, non_blocking=nb)


def parquet_rows(path: str) -> int:
    """Rows of a Parquet file or folder (local or s3://), from the footers alone: a `train_size` without Ray."""
    import pyarrow.dataset as pads

    return int(pads.dataset(path, format="parquet").count_rows())
