"""Per-epoch permutation and per-rank batches, by index slicing of in-memory tensors (x[idx], no collate).

The global batch of step s is perm[s*B:(s+1)*B] whatever the worker count; rank r takes the contiguous slice
[r*pw:(r+1)*pw] of it (pw = B // world) and cuts that into `accum` micro-batches. So 1 worker x accum 2 and
2 workers x accum 1 see exactly the same examples in each optimizer step (docs/design.md §4).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed from (seed, epoch): numpy's SeedSequence hash, so nearby pairs never collide."""
    words = [int(seed) & 0xFFFFFFFF, (int(seed) >> 32) & 0xFFFFFFFF, int(epoch)]
    lo, hi = np.random.SeedSequence(words).generate_state(2)
    return (int(hi) << 32 | int(lo)) & 0x7FFF_FFFF_FFFF_FFFF


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the n training examples in `epoch`; identical on every rank (all ranks compute it)."""
    g = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    return torch.randperm(n, generator=g)


def steps_per_epoch(n: int, global_batch: int) -> int:
    """Optimizer steps in one epoch of n examples: the last partial batch is dropped."""
    return n // global_batch


def rank_batches(
    perm: torch.Tensor, global_batch: int, rank: int, world: int, accum: int
) -> Iterator[list[torch.Tensor]]:
    """Per optimizer step, this rank's `accum` micro-batches of indices (each of B // world // accum)."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in [0, world={world})")
    if accum < 1 or global_batch % (world * accum):
        raise ValueError(f"global batch {global_batch} is not divisible by workers x accum = {world} x {accum}")
    steps = steps_per_epoch(len(perm), global_batch)
    if steps == 0:
        raise ValueError(f"global batch {global_batch} exceeds the {len(perm)} examples; an epoch would have no step")
    per_worker = global_batch // world
    micro = per_worker // accum
    for s in range(steps):
        start = s * global_batch + rank * per_worker
        yield [perm[start + i * micro: start + (i + 1) * micro] for i in range(accum)]
